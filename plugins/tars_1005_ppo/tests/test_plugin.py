"""The hooks against real Redis and real trainer service processes started from the sandbox contribution.

Two trainers run (canary buckets 0.21 and 0.26 under the flag), so the sandbox's canary fraction of 0.25
switches exactly one of them first. Each module-level fixture owns its flags hash and status prefix under
the run's prefix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import redis
import tars_1005_ppo.plugin as plugin
from ppo_support import SMALL
from tars_1005_ppo.config import FLAG_NAME, PPOFixConfig, implementation_for

from tars_core import ApplyResult, FixError, PluginInfo, SandboxSite, TargetError, Targets
from tars_core.errors import ConfigError
from tars_core.flags import canary_bucket
from tars_core.model import BenchmarkResult, Metric, PhaseRecord
from tars_core.processes import Service, free_port, tcp_ready
from tars_core.testing import (
    assert_cheap_import,
    assert_hooks_raise_target_error,
    check_conformance,
    make_context,
    release_for,
    unreachable_target_test,
)
from tars_core.waiting import wait_until

pytestmark = pytest.mark.anyio

FAST = {
    "canary_fraction": plugin.SANDBOX_CANARY,
    "canary_observe_s": 2.0,
    "switch_timeout_s": 60.0,
    "verify_iterations": 24,
    "verify_warmup": 0.25,
    "min_trainers": 2,
    "trainer": SMALL,
}


def test_entry_point_is_registered_and_imports_nothing_heavy() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="tars.plugins")}
    assert names.get("tars-1005-ppo") == "tars_1005_ppo.plugin"
    assert_cheap_import("tars-1005-ppo")


def test_plugin_info() -> None:
    info = plugin.tars_plugin_info()
    assert (info.name, info.fix_id, info.kind, info.config) == ("tars-1005-ppo", "TARS-1005", "hotfix", PPOFixConfig)


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"trainer": {"num_envs": "many"}}, "plugins.tars-1005-ppo.trainer.num_envs"),
        ({"canary_fraction": "half"}, "plugins.tars-1005-ppo.canary_fraction"),
        ({"trainer": {"n_steps": 0}}, "plugins.tars-1005-ppo.trainer"),
        ({"verify_iterations": 0}, "plugins.tars-1005-ppo"),
        ({"canary": 0.1}, "plugins.tars-1005-ppo"),
    ],
)
def test_bad_config_names_its_path(section: dict[str, Any], path: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_context(plugin, targets=Targets(), config=section, state_dir=tmp_path)
    assert str(info.value).startswith(path + ":") or f"{path}:" in str(info.value)


def test_flag_value_picks_the_implementation_per_trainer() -> None:
    """on/off for everyone; a fraction switches the trainers whose stable bucket is under it, and a larger
    fraction keeps every trainer a smaller one switched (widening a canary never switches one back)."""
    ids = [f"trainer-{i}" for i in range(400)]

    def fixed(value: str | None, flag: str = FLAG_NAME) -> set[str]:
        return {t for t in ids if implementation_for(value, flag, t) == "fixed"}

    assert fixed("on") == set(ids) and fixed("1") == set(ids)
    assert fixed(None) == fixed("off") == fixed("0") == set()
    quarter, half = fixed("0.25"), fixed("0.5")
    assert quarter < half < set(ids)
    assert quarter == {t for t in ids if canary_bucket(FLAG_NAME, t) < 0.25}
    assert 60 <= len(quarter) <= 140  # a quarter of 400, give or take what a hash spreads
    assert fixed("0.25", "another-flag") != quarter  # each flag draws its own canary


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, tars_redis_url: str, tars_redis_prefix: str, services: dict[str, Service]
) -> Iterator[dict[str, Any]]:
    """Two trainer services started with the argv the sandbox contribution gives, under test-owned keys."""
    ns = f"{tars_redis_prefix}:{uuid.uuid4().hex[:8]}"
    targets = Targets(redis=tars_redis_url, flags_key=f"{ns}:flags")
    site_dir = tmp_path_factory.mktemp("sandbox")
    contribution = plugin.tars_sandbox(SandboxSite(dir=site_dir, targets=targets, python=sys.executable))
    prefix = f"{ns}:ppo"
    (site_dir / "trainer-config.json").write_text(json.dumps(SMALL))
    ids = []
    for spec in contribution.services:
        argv = list(spec.argv)
        argv[argv.index("--status-prefix") + 1] = prefix
        argv[argv.index("--pause") + 1] = "1.0"
        tid = argv[argv.index("--trainer-id") + 1]
        ids.append(tid)
        assert spec.port is not None
        services[tid] = Service(
            tid, argv, site_dir / f"{spec.name}.log", ready=tcp_ready(spec.port), env=dict(spec.env), start_timeout=120
        ).start()
    client = redis.Redis.from_url(tars_redis_url, decode_responses=True)

    def reported() -> bool:
        for tid in ids:
            if not services[tid].alive():
                raise RuntimeError(f"trainer service {tid} exited: {services[tid].tail()}")
        return all(client.hget(f"{prefix}:trainer:{t}", "iteration") for t in ids)

    try:
        wait_until(reported, timeout=90, interval=0.5, what=f"trainers {ids} report an iteration")
        yield {
            "targets": targets,
            "prefix": prefix,
            "ids": ids,
            "client": client,
            "site": site_dir,
            "contribution": contribution,
        }
    finally:
        client.close()


def ctx_for(fleet: dict[str, Any], tmp_path: Path, *, dry_run: bool = False, **overrides: Any) -> Any:
    config = {**FAST, "status_prefix": fleet["prefix"], **overrides}
    return make_context(plugin, targets=fleet["targets"], config=config, state_dir=tmp_path / "state", dry_run=dry_run)


def test_sandbox_contribution(fleet: dict[str, Any]) -> None:
    contribution = fleet["contribution"]
    assert len(contribution.services) == 2
    # The contributed canary fraction picks one trainer of the two, by the stable bucket of its id.
    fraction = str(contribution.config["canary_fraction"])
    assert sorted(implementation_for(fraction, FLAG_NAME, t) for t in fleet["ids"]) == ["fixed", "legacy"]
    for spec in contribution.services:
        assert spec.argv[1:3] == ["-m", "tars_1005_ppo.trainer_service"] and spec.ready == "tcp"
        assert f"127.0.0.1:{spec.port}" in contribution.scrape_targets
    # The contributed config section structures into the plugin's config class.
    ctx = make_context(plugin, targets=fleet["targets"], config=dict(contribution.config), state_dir=fleet["site"])
    assert ctx.config.canary_fraction == plugin.SANDBOX_CANARY and ctx.config.min_trainers == 2


def test_trainers_serve_prometheus_metrics(fleet: dict[str, Any]) -> None:
    import urllib.request

    port = fleet["contribution"].services[0].port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "tars_ppo_rss_bytes{" in body and "tars_ppo_fixed{" in body


async def test_dry_run_changes_nothing(fleet: dict[str, Any], tmp_path: Path) -> None:
    ctx = ctx_for(fleet, tmp_path, dry_run=True)
    result = await plugin.tars_apply(ctx)
    assert result == ApplyResult(changed=False, detail=result.detail) and result.detail.startswith("dry run: would")
    assert f"to {plugin.SANDBOX_CANARY:g} (canary: " in result.detail
    assert fleet["client"].hget(fleet["targets"].flags_key, FLAG_NAME) is None
    assert await ctx.flags.remembered(FLAG_NAME) == (False, None)  # nothing kept for a rollback either
    await ctx.flags.aclose()


async def test_conformance_with_canary(fleet: dict[str, Any], tmp_path: Path) -> None:
    """apply (canary, then on), verify, apply again, verify, rollback, verify not ok, rollback again."""
    client = fleet["client"]
    prefix = fleet["prefix"]
    ctx = ctx_for(fleet, tmp_path)
    await check_conformance(plugin, ctx)
    # The canary trainer switched first and ran the fixed trainer while the other still ran v1.0.0;
    # after the rollback both report the legacy trainer, each having switched exactly twice.
    statuses = {t: client.hgetall(f"{prefix}:trainer:{t}") for t in fleet["ids"]}
    assert {s["implementation"] for s in statuses.values()} == {"legacy"}
    assert all(s["switches"] == "2" for s in statuses.values())
    assert client.hget(fleet["targets"].flags_key, FLAG_NAME) is None  # absent before, absent after
    assert client.hget(f"{fleet['targets'].flags_key}:previous", FLAG_NAME) is None  # the kept value is forgotten
    log = tmp_path / "state" / "verify-soak" / "verdict.json"
    assert json.loads(log.read_text())["ok"]


async def test_canary_switches_its_fraction_first(fleet: dict[str, Any], tmp_path: Path) -> None:
    client = fleet["client"]
    prefix = fleet["prefix"]
    canary, rest = sorted(fleet["ids"], key=lambda t: canary_bucket(FLAG_NAME, t))
    ctx = ctx_for(fleet, tmp_path, canary_observe_s=4.0)
    try:
        assert (await plugin.tars_apply(ctx)).changed
        fixed_iters = {t: int(client.hget(f"{prefix}:trainer:{t}", "impl_iterations")) for t in (canary, rest)}
        # The canary has run the fixed trainer through the observation window; the rest just switched.
        assert fixed_iters[canary] > fixed_iters[rest] + 3
    finally:
        await plugin.tars_rollback(ctx)
        await ctx.flags.aclose()


async def test_apply_fails_when_a_trainer_does_not_switch(
    fleet: dict[str, Any], tmp_path: Path, services: dict[str, Service]
) -> None:
    """A trainer that stops responding (SIGSTOP) still looks live; apply must judge reports, not the flag."""
    stuck = fleet["ids"][1]
    pid = services[stuck].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    ctx = ctx_for(fleet, tmp_path, canary_fraction=0.0, switch_timeout_s=6.0)
    try:
        with pytest.raises(FixError, match=rf"did not switch .*{stuck}: runs 'legacy'"):
            await plugin.tars_apply(ctx)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (await plugin.tars_rollback(ctx)).changed
    await ctx.flags.aclose()
    status = fleet["client"].hgetall(f"{fleet['prefix']}:trainer:{stuck}")
    assert status["implementation"] == "legacy" and status["flag_value"] == ""


async def test_apply_without_trainers_is_a_clear_error(
    tars_redis_url: str, tars_redis_prefix: str, tmp_path: Path
) -> None:
    ns = f"{tars_redis_prefix}:{uuid.uuid4().hex[:8]}"
    ctx = make_context(
        plugin,
        targets=Targets(redis=tars_redis_url, flags_key=f"{ns}:flags"),
        config={"status_prefix": f"{ns}:ppo"},
        state_dir=tmp_path,
    )
    with pytest.raises(FixError, match=r"0 live PPO trainer\(s\) report .* start the trainer services"):
        await plugin.tars_apply(ctx)
    result = await plugin.tars_rollback(ctx)
    assert result == ApplyResult(changed=False, detail="not applied")
    assert not (await plugin.tars_verify(ctx)).ok
    await ctx.flags.aclose()


async def test_unreachable_redis_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    port = free_port()  # nobody listens on it
    ctx = make_context(plugin, targets=Targets(redis=f"redis://:s3cret@127.0.0.1:{port}/0"), state_dir=tmp_path)
    hooks = ("tars_rollback", "tars_apply", "tars_verify")
    expect = rf"cannot reach targets\.redis at 127\.0\.0\.1:{port} "
    await assert_hooks_raise_target_error(plugin, ctx, expect=expect, hooks=hooks)


test_cli_against_a_dead_redis_port = unreachable_target_test(
    "tars-1005-ppo",
    "redis",
    "redis://:{password}@127.0.0.1:{port}/0",
    expect="cannot reach targets.redis at 127.0.0.1:{port} ",
)


async def test_missing_redis_target_names_the_key(tmp_path: Path) -> None:
    ctx = make_context(plugin, targets=Targets(), state_dir=tmp_path)
    with pytest.raises(TargetError, match=r"need targets\.redis"):
        await plugin.tars_apply(ctx)


async def test_sandbox_seed_is_idempotent_and_keeps_an_existing_flag(
    tars_redis_url: str, tars_redis_prefix: str, tmp_path: Path
) -> None:
    ns = f"{tars_redis_prefix}:{uuid.uuid4().hex[:8]}"
    flags = f"{ns}:flags"
    ctx = make_context(plugin, targets=Targets(redis=tars_redis_url, flags_key=flags), state_dir=tmp_path)
    client = redis.Redis.from_url(tars_redis_url, decode_responses=True)
    try:
        await plugin.tars_sandbox_seed(ctx)
        await plugin.tars_sandbox_seed(ctx)
        assert client.hgetall(flags) == {FLAG_NAME: "off"}
        client.hset(flags, FLAG_NAME, "on")
        await plugin.tars_sandbox_seed(ctx)
        assert client.hget(flags, FLAG_NAME) == "on"
    finally:
        client.close()
        await ctx.flags.aclose()


def test_report_section_says_what_the_core_report_does_not(tmp_path: Path) -> None:
    release = release_for(
        plugin.tars_plugin_info(),
        report_dir=tmp_path,
        phases=[
            PhaseRecord("r1", "tars-1005-ppo", "apply", "ok", "2026-11-27T22:00:00Z", detail="2 trainer(s) switched")
        ],
        benchmark=BenchmarkResult(metrics=[Metric("peak_rss", 1100.0, 640.0, "MB", "< 1024", True)]),
    )
    section = plugin.tars_report(release)
    assert section is not None and "**applied**" in section.markdown and "RSS" in section.markdown
    # the core report renders the phases and the metric table; the section does not repeat them
    assert "peak_rss" not in section.markdown and "2 trainer(s) switched" not in section.markdown
    assert section.data == {"state": "applied"}
    assert plugin.tars_report(release_for(PluginInfo(name="other", title="other"), report_dir=tmp_path)) is None


def test_trainer_service_refuses_a_bad_config(tmp_path: Path, tars_redis_url: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"num_envs": 0}))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tars_1005_ppo.trainer_service",
            "--redis",
            tars_redis_url,
            "--trainer-id",
            "x",
            "--config",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "num_envs must be > 0" in run.stderr
