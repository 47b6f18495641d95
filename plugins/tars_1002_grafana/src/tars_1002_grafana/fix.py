"""Apply, verify and roll back TARS-1002 on a real Prometheus and a Grafana provisioning folder.

Order matters and follows the issue: the rule file is checked by ``promtool`` before Prometheus can see
it, written atomically, Prometheus is reloaded and we wait until every rule reports healthy; only then
are the dashboards rewritten, so a Grafana that re-reads its provisioning folder never shows a panel
whose recorded series does not exist yet. Whatever was there before (the previous rule file, or none,
and every dashboard file we touch) is copied under ``ctx.state_dir/backup`` first, with the list of what
was copied kept in ``ctx.state``; rollback puts exactly that back and reloads.

The functions here block (HTTP, promtool, file writes); the hooks are plain functions so the core runs
them in a worker thread that it waits for after a timeout instead of abandoning it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
from pathlib import Path
from typing import Any

import attrs

from tars_1002_grafana.config import GrafanaConfig
from tars_1002_grafana.patcher import VAR_MATCHER, Change, dumps, fill_variables, iter_panels, patch_dashboard
from tars_1002_grafana.rules import (
    Rule,
    build_rules,
    group_intervals,
    render_rule_file,
)
from tars_core import ApplyResult, Context, FixError, TargetError, Targets, VerifyResult
from tars_core.errors import PrometheusError, PromtoolError
from tars_core.prometheus import Prometheus, connect, load_rule_file, rule_health, unload_rule_file
from tars_core.promtool import check_rules_text
from tars_core.state import atomic_write_bytes, atomic_write_text
from tars_core.waiting import WaitTimeout, wait_until

BACKUP = "backup"  # the folder under ctx.state_dir holding the copies, and the ctx.state key listing them


@attrs.define
class Plan:
    """What apply would do: the rule file text and each dashboard's new text (only those that change)."""

    rules_path: Path
    rules_text: str
    rules_changed: bool
    dashboards: dict[Path, str]
    changes: dict[Path, list[Change]]

    @property
    def changed(self) -> bool:
        return self.rules_changed or bool(self.dashboards)

    def summary(self) -> str:
        rewritten = sum(1 for cs in self.changes.values() for c in cs if c.action == "rewritten")
        return (
            f"rule file {self.rules_path} {'to write' if self.rules_changed else 'up to date'}; "
            f"{len(self.dashboards)} dashboard(s) to patch ({rewritten} queries)"
        )


def _dashboard_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.json") if p.is_file())


def all_rules(config: GrafanaConfig) -> list[Rule]:
    """The built-in rules plus the site's ``extra_rules`` from the config (validated like the others)."""
    extra = [Rule(e.record, e.expr, e.group, (), ()) for e in config.extra_rules]
    return build_rules() + extra


def _intervals(config: GrafanaConfig) -> dict[str, str]:
    intervals = group_intervals()
    for e in config.extra_rules:
        intervals.setdefault(e.group, e.interval)
    return intervals


def _target_dir(targets: Targets, key: str) -> Path:
    """A folder the config names: missing or not a folder is bad input (exit 2), not a failed fix."""
    path = Path(targets.require(key))
    if not path.is_dir():
        raise TargetError(
            f"targets.{key} {path} is {'not a folder' if path.exists() else 'missing'}: "
            "fix the path in the config (or create the folder)"
        )
    return path


def _check_writable(*paths: Path) -> None:
    for path in paths:
        if not os.access(path, os.W_OK | os.X_OK):
            raise TargetError(f"{path} is not writable by this user: fix its permissions or the targets path")


def make_plan(config: GrafanaConfig, targets: Targets, rules: list[Rule] | None = None) -> Plan:
    rules = all_rules(config) if rules is None else rules
    rules_dir = _target_dir(targets, "prometheus_rules_dir")
    dash_dir = _target_dir(targets, "grafana_dashboards_dir")
    rules_path = rules_dir / config.rule_file_name
    text = render_rule_file(rules, _intervals(config))
    current = rules_path.read_text(encoding="utf-8") if rules_path.exists() else None
    dashboards: dict[Path, str] = {}
    changes: dict[Path, list[Change]] = {}
    for path in _dashboard_files(dash_dir):
        raw = path.read_text(encoding="utf-8")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise FixError(f"dashboard {path} is not valid JSON ({exc}): fix or remove it") from None
        if not isinstance(data, dict) or not ("panels" in data or "rows" in data):
            continue
        try:
            patched, cs = patch_dashboard(data, rules, macro_windows=config.macro_windows)
        except ValueError as exc:  # an extra rule whose expression does not parse
            raise FixError(f"cannot patch {path.name}: a recording rule does not parse ({exc})") from None
        changes[path] = cs
        if patched != data:
            dashboards[path] = dumps(patched)
    return Plan(rules_path, text, current != text, dashboards, changes)


def _reload(prom: Prometheus, config: GrafanaConfig) -> None:
    if config.reload_method == "sighup":
        if not config.prometheus_pid_file:
            raise FixError("reload_method sighup needs prometheus_pid_file in the tars-1002-grafana config")
        try:
            pid = int(Path(config.prometheus_pid_file).read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise FixError(f"cannot signal Prometheus from {config.prometheus_pid_file}: {exc}") from None
        return
    prom.reload()


def _names(rules: list[Rule]) -> list[str]:
    return [r.record for r in rules]


def apply(ctx: Context) -> ApplyResult:
    log = ctx.log
    config: GrafanaConfig = ctx.config
    rules = all_rules(config)
    try:
        check_rules_text(render_rule_file(rules, _intervals(config)))
    except PromtoolError as exc:
        raise FixError(f"promtool refused the generated rule file, nothing was changed: {exc}") from None
    plan = make_plan(config, ctx.targets, rules)
    with connect(ctx.targets) as prom:
        if not plan.changed:
            health = rule_health(prom, _names(rules))
            if all(v == "ok" for v in health.values()):
                return ApplyResult(changed=False, detail=f"{len(rules)} rules loaded; dashboards already patched")
        if ctx.dry_run:
            log.info("dry run: would %s", plan.summary())
            for path, cs in plan.changes.items():
                for c in cs:
                    if c.action == "rewritten":
                        log.info("dry run: %s: %s [%s]: %s -> %s", path.name, c.panel, c.ref, c.before, c.after)
            return ApplyResult(changed=False, detail="dry run: " + plan.summary())
        _check_writable(plan.rules_path.parent, *{p.parent for p in plan.dashboards})
        _backup(ctx, plan)
        load_rule_file(
            prom,
            plan.rules_path,
            plan.rules_text,
            _names(rules),
            timeout=config.reload_timeout_s,
            reload=lambda: _reload(prom, config),
        )
        for path, text in plan.dashboards.items():
            atomic_write_text(path, text)
    log.info("applied: %s", plan.summary())
    return ApplyResult(changed=True, detail=f"{len(rules)} recording rules loaded and healthy; " + plan.summary())


def _backup(ctx: Context, plan: Plan) -> None:
    """Keep the pre-fix state once: a later apply (new version) must not overwrite the original backup.

    The copies are files under ``state_dir/backup``, byte for byte, with each original's mode in the
    manifest (rollback must give Grafana and Prometheus back files they can read, not just the bytes);
    what they are copies of is recorded in ``ctx.state`` after they are written, so a crash midway
    leaves at worst unreferenced copies, never a dangling list.
    """
    bdir = ctx.state_dir / BACKUP
    manifest: dict[str, Any] = ctx.state.get(BACKUP) or {"rules": None, "dashboards": {}}
    modes: dict[str, int] = manifest.setdefault("modes", {})
    bdir.mkdir(parents=True, exist_ok=True)
    if manifest["rules"] is None:
        existed = plan.rules_path.exists()
        if existed:
            atomic_write_bytes(bdir / "rules.yml", plan.rules_path.read_bytes(), mode=0o600)
            modes[str(plan.rules_path)] = stat.S_IMODE(plan.rules_path.stat().st_mode)
        manifest["rules"] = {"path": str(plan.rules_path), "existed": existed}
    for path in sorted(plan.dashboards):
        if str(path) in manifest["dashboards"]:
            continue
        name = f"dashboard-{len(manifest['dashboards'])}-{path.name}"
        atomic_write_bytes(bdir / name, path.read_bytes(), mode=0o600)
        manifest["dashboards"][str(path)] = name
        modes[str(path)] = stat.S_IMODE(path.stat().st_mode)
    ctx.state[BACKUP] = manifest


def rollback(ctx: Context) -> ApplyResult:
    config: GrafanaConfig = ctx.config
    bdir = ctx.state_dir / BACKUP
    manifest = ctx.state.get(BACKUP)
    if manifest is None:
        ctx.log.warning("tars-1002-grafana: nothing to roll back (no backup recorded in %s)", ctx.state.path)
        return ApplyResult(changed=False, detail="not applied")
    if ctx.dry_run:
        ctx.log.info(
            "dry run: would restore %s and %d dashboard(s)", manifest["rules"]["path"], len(manifest["dashboards"])
        )
        return ApplyResult(changed=False, detail="dry run")
    modes: dict[str, int] = manifest.get("modes", {})  # absent in backups taken before modes were kept
    rules_info = manifest["rules"]
    rules_path = Path(rules_info["path"])
    for path, name in manifest["dashboards"].items():
        atomic_write_bytes(Path(path), (bdir / name).read_bytes(), mode=modes.get(path))
    previous = (bdir / "rules.yml").read_bytes() if rules_info["existed"] else None
    with connect(ctx.targets) as prom:
        unload_rule_file(
            prom,
            rules_path,
            previous,
            _names(all_rules(config)),
            timeout=config.reload_timeout_s,
            reload=lambda: _reload(prom, config),
        )
    if previous is not None and str(rules_path) in modes:
        os.chmod(rules_path, modes[str(rules_path)])
    del ctx.state[BACKUP]
    shutil.rmtree(bdir, ignore_errors=True)
    return ApplyResult(changed=True, detail=f"restored {rules_path} and {len(manifest['dashboards'])} dashboard(s)")


# -- verify --------------------------------------------------------------------------------------------


def instantiate(expr: str, dashboard: dict[str, Any]) -> str:
    """A panel query as Grafana would send it with every variable at "All" and default macro values."""

    def matcher(m: re.Match[str]) -> str:
        label, op = m.group(1), m.group(2)
        return f'{label}!~""' if op in ("=", "=~") else f'{label}=~".*"'

    expr = VAR_MATCHER.sub(matcher, expr)
    expr = fill_variables(expr, {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"})
    current = {
        str(v.get("name")): (v.get("current") or {}).get("value")
        for v in (dashboard.get("templating") or {}).get("list") or []
    }
    chosen = {k: v for k, v in current.items() if isinstance(v, str) and v and not v.startswith("$")}
    return fill_variables(expr, chosen)


def verify(ctx: Context) -> VerifyResult:
    config: GrafanaConfig = ctx.config
    rules = all_rules(config)
    checks: dict[str, str] = {}
    try:
        plan = make_plan(config, ctx.targets, rules)
    except TargetError:
        raise
    except FixError as exc:
        return VerifyResult(ok=False, detail=str(exc), checks={"plan": str(exc)})
    checks["rule file"] = "missing or different" if plan.rules_changed else f"{plan.rules_path} current"
    checks["dashboards"] = (
        f"{len(plan.dashboards)} not patched: " + ", ".join(p.name for p in plan.dashboards)
        if plan.dashboards
        else f"{len(plan.changes)} patched"
    )
    try:
        prom = connect(ctx.targets)
    except TargetError:
        raise
    except FixError as exc:
        checks["prometheus"] = str(exc)
        return VerifyResult(ok=False, detail=str(exc), checks=checks)
    with prom:
        health = rule_health(prom, _names(rules))
        bad = {k: v for k, v in health.items() if v != "ok"}
        checks["rules healthy"] = f"{len(rules) - len(bad)}/{len(rules)}" + (
            f"; e.g. {next(iter(bad))}: {next(iter(bad.values()))}" if bad else ""
        )
        no_data: list[str] = []
        if not bad and config.verify_data:
            # Healthy rules loaded seconds ago (a fresh apply, a new sandbox) have not been evaluated over
            # enough scrapes yet: give them up to data_timeout_s before calling the fix broken.
            no_data = wait_until_data(prom, rules, config.data_timeout_s)
            checks["rules with data"] = f"{len(rules) - len(no_data)}/{len(rules)}" + (
                f"; none for {', '.join(no_data[:3])}" if no_data else ""
            )
        empty_panels: list[str] = []
        if not bad and config.verify_data and not plan.dashboards:
            for path in plan.changes:
                dash = json.loads(path.read_text(encoding="utf-8"))
                for panel in iter_panels(dash):
                    for t in panel.get("targets") or []:
                        expr = t.get("expr")
                        if isinstance(expr, str) and any(r.record in expr for r in rules):
                            try:
                                result = prom.query(instantiate(expr, dash))
                            except PrometheusError as exc:
                                result = []
                                ctx.log.warning("panel %s query failed: %s", panel.get("title"), exc)
                            if not result:
                                empty_panels.append(f"{path.name}:{panel.get('title')}[{t.get('refId')}]")
            checks["patched panels with data"] = "all" if not empty_panels else ", ".join(empty_panels[:5])
    ok = not plan.rules_changed and not plan.dashboards and not bad and not no_data and not empty_panels
    return VerifyResult(
        ok=ok, detail="TARS-1002 rules and dashboards in place" if ok else "not (fully) applied", checks=checks
    )


def wait_until_data(prom: Prometheus, rules: list[Rule], timeout: float) -> list[str]:
    """Rules still without data after ``timeout``: freshly loaded rules need a few evaluations first."""
    names = "|".join(re.escape(r.record) for r in rules)
    query = f'group by (__name__) ({{__name__=~"{names}"}})'
    missing: list[str] = [r.record for r in rules]

    def all_recorded() -> bool:
        have = {s["metric"]["__name__"] for s in prom.query(query)}
        missing[:] = [r.record for r in rules if r.record not in have]
        return not missing

    with contextlib.suppress(WaitTimeout):
        wait_until(all_recorded, timeout=timeout, interval=1.0, what="recorded data")
    return missing
