"""apply / verify / rollback against a real Prometheus (and through the real ``tars-run``)."""

from __future__ import annotations

import json
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from tars_1002_grafana import plugin
from tars_1002_grafana.rules import GROUPS, RULE_FILE_NAME, build_rules, render_rule_file

from tars_core import FixError, TargetError, Targets
from tars_core.processes import free_port
from tars_core.prometheus import Prometheus, PrometheusServer
from tars_core.testing import (
    HEAVY_MODULES,
    assert_cheap_import,
    assert_hooks_raise_target_error,
    check_conformance,
    make_context,
    unreachable_target_test,
)

SHIPPED = files("tars_1002_grafana") / "data" / "dashboards"


def ctx_for(env: Any, *, dry_run: bool = False, **config: Any) -> Any:
    return make_context(plugin, targets=env.targets, config=config, state_dir=env.state_dir, dry_run=dry_run)


def loaded_groups(url: str) -> dict[str, Any]:
    with Prometheus(url) as prom:
        return {g["name"]: g for g in prom.rule_groups()}


def test_conformance_and_rollback_restores_every_byte(env: Any) -> None:
    env.wait_scraped()
    before = env.snapshot()
    anyio.run(check_conformance, plugin, ctx_for(env))
    assert env.snapshot() == before, "rollback must restore the rules dir and the dashboards exactly"
    assert loaded_groups(env.server.url) == {}
    assert not (env.state_dir / "backup").exists()


def test_tars_run_applies_verifies_and_rolls_back(env: Any, tmp_path: Path) -> None:
    """The real CLI: rule file written and healthy with data, dashboards patched, then rolled back."""
    env.wait_scraped()
    cfg = tmp_path / "tars.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "targets": {
                    "prometheus_url": env.server.url,
                    "prometheus_rules_dir": str(env.rules_dir),
                    "grafana_dashboards_dir": str(env.dash_dir),
                }
            }
        )
    )
    base = [
        "tars-run",
        "--plugins",
        "TARS-1002",
        "--config",
        str(cfg),
        "--state",
        f"sqlite:///{tmp_path / 'ledger.db'}",
        "--format",
        "json",
    ]

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *cmd], capture_output=True, text=True, cwd=tmp_path, timeout=600)

    applied = run("apply")
    assert applied.returncode == 0, applied.stderr
    assert (env.rules_dir / RULE_FILE_NAME).read_text() == render_rule_file()
    groups = loaded_groups(env.server.url)
    assert {n: g["interval"] for n, g in groups.items()} == {n: float(i[:-1]) for n, i, _ in GROUPS}
    rules = [r for g in groups.values() for r in g["rules"]]
    assert len(rules) == len(build_rules()) and all(r["health"] == "ok" for r in rules)
    for name in ("tars-overview.json", "tars-infrastructure.json"):
        assert (env.dash_dir / name).read_text() == (SHIPPED / "v1.0.1" / name).read_text()
    verified = run("verify")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["exit_code"] == 0
    checks = plugin.tars_verify(ctx_for(env)).checks
    assert checks["rules healthy"] == "71/71" and checks["rules with data"] == "71/71", checks
    assert checks["patched panels with data"] == "all", checks
    rolled = run("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert not (env.rules_dir / RULE_FILE_NAME).exists()
    for name in ("tars-overview.json", "tars-infrastructure.json"):
        assert (env.dash_dir / name).read_text() == (SHIPPED / "v1.0.0" / name).read_text()
    assert loaded_groups(env.server.url) == {}
    assert run("verify").returncode != 0


def test_dry_run_changes_nothing(env: Any) -> None:
    before = env.snapshot()
    result = plugin.tars_apply(ctx_for(env, dry_run=True))
    assert not result.changed and result.detail.startswith("dry run")
    assert env.snapshot() == before and not (env.state_dir / "backup").exists()
    assert loaded_groups(env.server.url) == {}


def test_verify_before_apply_says_what_is_missing(env: Any) -> None:
    result = plugin.tars_verify(ctx_for(env))
    assert not result.ok
    assert result.checks["rule file"] == "missing or different"
    assert result.checks["rules healthy"].startswith("0/71")
    assert "2 not patched" in result.checks["dashboards"]


def test_a_malformed_rule_is_refused_before_prometheus_sees_it(env: Any) -> None:
    before = env.snapshot()
    ctx = ctx_for(env, extra_rules=[{"record": "job:broken:sum", "expr": "sum(rate(up[5m]) by (job)"}])
    with pytest.raises(FixError, match="promtool refused the generated rule file, nothing was changed"):
        plugin.tars_apply(ctx)
    assert env.snapshot() == before
    assert loaded_groups(env.server.url) == {}


def test_prometheus_unreachable_is_one_clear_line_without_the_password(tmp_path: Path) -> None:
    rules, dash = tmp_path / "rules", tmp_path / "dash"
    rules.mkdir()
    dash.mkdir()
    (dash / "a.json").write_text((SHIPPED / "v1.0.0" / "tars-overview.json").read_text())
    port = free_port()
    targets = Targets(
        prometheus_url=f"http://admin:s3cret@127.0.0.1:{port}",
        prometheus_rules_dir=str(rules),
        grafana_dashboards_dir=str(dash),
    )
    ctx = make_context(plugin, targets=targets, config={}, state_dir=tmp_path / "state")
    expect = rf"Prometheus at http://admin:\*\*\*@127\.0\.0\.1:{port} is unreachable.*targets\.prometheus_url"
    anyio.run(lambda: assert_hooks_raise_target_error(plugin, ctx, expect=expect, hooks=("tars_apply", "tars_verify")))
    assert (
        list(rules.iterdir()) == []
        and (dash / "a.json").read_text() == (SHIPPED / "v1.0.0" / "tars-overview.json").read_text()
    )
    assert not plugin.tars_rollback(ctx).changed  # the failed apply changed nothing


def test_a_missing_or_wrong_folder_is_bad_input(tmp_path: Path) -> None:
    rules, dash = tmp_path / "rules", tmp_path / "dash.json"
    rules.mkdir()
    dash.write_text("{}")
    for r, d, key, what in (
        (tmp_path / "nope", tmp_path, "prometheus_rules_dir", "missing"),
        (rules, dash, "grafana_dashboards_dir", "not a folder"),
    ):
        targets = Targets(
            prometheus_url=f"http://127.0.0.1:{free_port()}", prometheus_rules_dir=str(r), grafana_dashboards_dir=str(d)
        )
        ctx = make_context(plugin, targets=targets, config={}, state_dir=tmp_path / "state")
        for hook in (plugin.tars_apply, plugin.tars_verify):
            with pytest.raises(TargetError, match=rf"targets\.{key} .* is {what}: fix the path"):
                hook(ctx)
    assert not (tmp_path / "nope").exists() and list(rules.iterdir()) == []


test_cli_against_a_dead_port = unreachable_target_test(
    plugin.NAME,
    "prometheus_url",
    "http://admin:{password}@127.0.0.1:{port}",
    expect=["Prometheus at http://admin:***@127.0.0.1:{port} is unreachable", "Connection refused"],
    targets=lambda tmp_path: {"prometheus_rules_dir": str(tmp_path), "grafana_dashboards_dir": str(tmp_path)},
)


def test_reload_refused_restores_the_previous_rule_file(tmp_path: Path, exporter: str) -> None:
    """A Prometheus without --web.enable-lifecycle refuses /-/reload: the old rule file comes back."""
    rules, dash = tmp_path / "rules", tmp_path / "dash"
    rules.mkdir()
    dash.mkdir()
    old = "groups:\n- name: site\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n"
    (rules / RULE_FILE_NAME).write_text(old)
    (dash / "a.json").write_text((SHIPPED / "v1.0.0" / "tars-overview.json").read_text())
    with PrometheusServer(tmp_path / "prom", rules_dir=rules, lifecycle=False) as server:
        targets = Targets(prometheus_url=server.url, prometheus_rules_dir=str(rules), grafana_dashboards_dir=str(dash))
        ctx = make_context(plugin, targets=targets, config={}, state_dir=tmp_path / "state")
        with pytest.raises(FixError, match=r"web\.enable-lifecycle"):
            plugin.tars_apply(ctx)
        assert (rules / RULE_FILE_NAME).read_text() == old
        assert (dash / "a.json").read_text() == (SHIPPED / "v1.0.0" / "tars-overview.json").read_text()
        assert set(loaded_groups(server.url)) == {"site"}


def test_rules_dir_not_in_rule_files_fails_fast_and_rollback_cleans_up(tmp_path: Path, exporter: str) -> None:
    rules, dash = tmp_path / "rules", tmp_path / "dash"
    rules.mkdir()
    dash.mkdir()
    (dash / "a.json").write_text((SHIPPED / "v1.0.0" / "tars-overview.json").read_text())
    with PrometheusServer(tmp_path / "prom", rules_dir=tmp_path / "elsewhere") as server:
        targets = Targets(prometheus_url=server.url, prometheus_rules_dir=str(rules), grafana_dashboards_dir=str(dash))
        ctx = make_context(plugin, targets=targets, config={}, state_dir=tmp_path / "state")
        with pytest.raises(FixError, match=r"add '.*/rules/\*\.yml' to rule_files"):
            plugin.tars_apply(ctx)
        assert (dash / "a.json").read_text() == (SHIPPED / "v1.0.0" / "tars-overview.json").read_text()
        assert plugin.tars_rollback(ctx).changed  # the runner rolls a failed apply back
        assert list(rules.iterdir()) == []


def test_missing_target_key_is_named(tmp_path: Path) -> None:
    ctx = make_context(
        plugin, targets=Targets(prometheus_url="http://127.0.0.1:1"), config={}, state_dir=tmp_path / "s"
    )
    with pytest.raises(FixError, match=r"targets\.prometheus_rules_dir is not set"):
        plugin.tars_apply(ctx)


def test_a_wrong_config_field_names_its_path(tmp_path: Path) -> None:
    from tars_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"plugins\.tars-1002-grafana\.reload_method"):
        make_context(plugin, targets=Targets(), config={"reload_method": "carrier-pigeon"}, state_dir=tmp_path)


def test_rollback_without_apply_changes_nothing(env: Any) -> None:
    result = plugin.tars_rollback(ctx_for(env))
    assert not result.changed


def test_plugin_module_imports_cheaply() -> None:
    assert_cheap_import(plugin.NAME, (*HEAVY_MODULES, "promql_parser", "yaml"))
