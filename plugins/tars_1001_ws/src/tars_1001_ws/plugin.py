"""Hooks of the ``tars-1001-ws`` plugin (entry point ``tars.plugins``).

Imports only the core, attrs and the stdlib at module level: ``tars-run list`` must not import
``websockets``. The fix is a feature flag (``tars-1001-ws-reconnect`` by default) that the hub and the
T.A.R.S. services read: apply turns it on only after the hub at ``targets.websocket_url`` has shown it runs
the fixed build, then proves on the wire that it now speaks v1.0.1; verify runs the full behaviour
check (drops, silent drops, resubscription, exactly-once) through a fault-injecting proxy; rollback turns
the flag off and waits until the hub has withdrawn v1.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import attrs

from tars_core import (
    ApplyResult,
    BenchmarkResult,
    Context,
    FixError,
    Metric,
    PluginInfo,
    Release,
    ReportSection,
    SandboxContribution,
    SandboxSite,
    ServiceSpec,
    TargetError,
    VerifyResult,
    hookimpl,
)

NAME = "tars-1001-ws"
OFF_VALUES = (None, "", "0", "off", "false")


@attrs.define
class BenchmarkConfig:
    """Sizes of the hook's benchmark run (``benchmarks/tars-1001-ws_bench.py`` defaults to full size)."""

    drops: int = 50
    detection_samples: int = 5
    detection_interval: float = 1.0
    detection_timeout: float = 0.5
    idle_clients: int = 200
    idle_window: float = 35.0
    messages: int = 2000
    message_drops: int = 8
    rate: float = 250.0


@attrs.define
class WsConfig:
    """The ``plugins.tars-1001-ws`` section."""

    flag: str = "tars-1001-ws-reconnect"
    verify_heartbeat_interval: float = 0.2
    verify_channels: int = 3
    verify_messages: int = 150
    probe_timeout: float = 10.0
    flag_propagation_timeout: float = 10.0
    benchmark: BenchmarkConfig = attrs.Factory(BenchmarkConfig)


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        title="TARS-1001: WebSocket reconnection with heartbeat, backoff, resubscription and replay",
        kind="hotfix",
        fix_id="TARS-1001",
        config=WsConfig,
        description="Hub protocol v1.0.1 (per-channel sequence numbers, epochs, replay, idempotent publish) "
        "and ReconnectingWebSocketClient, enabled by a feature flag.",
        risk="Runtime behaviour behind a flag; rollback turns the flag off (new connections fall back to v1.0.0).",
    )


def _url(ctx: Context) -> str:
    return ctx.targets.require("websocket_url")


async def _info(url: str) -> dict[str, Any]:
    from tars_1001_ws.check import HubError, HubUnreachable, hub_info

    try:
        return await hub_info(url)
    except HubUnreachable as exc:
        raise TargetError(f"{exc}; fix targets.websocket_url or start the hub") from None
    except HubError as exc:
        raise FixError(str(exc)) from None


async def _flag(ctx: Context, name: str) -> str | None:
    """The flag's value; a missing, malformed or unreachable ``targets.redis`` is bad input (exit 2)."""
    from urllib.parse import urlsplit

    from redis.exceptions import RedisError

    url = ctx.targets.require("redis")
    try:
        return await ctx.flags.get(name)
    except (RedisError, OSError, ValueError) as exc:
        parts = urlsplit(url)
        where = f"{parts.hostname or '?'}:{parts.port or 6379}{parts.path or ''}"  # never the password
        raise TargetError(
            f"cannot reach targets.redis at {where} to read flag {name} ({type(exc).__name__}): start Redis "
            "or fix targets.redis"
        ) from None


async def _wait_enabled(url: str, want: bool, timeout: float) -> dict[str, Any]:
    """Poll the hub's info until it offers (or withdraws) v1.0.1: the flag is read asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        info = await _info(url)
        if bool(info.get("enabled")) is want or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.2)


# present while the last apply stopped at an unusable target before changing anything: its rollback has
# nothing to undo even when Redis is unreachable (otherwise a dead target turns into "rollback failed", exit 4)
UNREACHED_FILE = "apply-unreached.json"


def _state_file(ctx: Context) -> Path:
    return ctx.state_dir / "flag-before-apply.json"


@hookimpl
async def tars_apply(ctx: Context) -> ApplyResult:
    from tars_1001_ws.check import HubError, probe_protocol
    from tars_1001_ws.protocol import SUBPROTOCOL

    cfg: WsConfig = ctx.config
    url = _url(ctx)
    unreached = ctx.state_dir / UNREACHED_FILE
    try:
        info = await _info(url)
        current = await _flag(ctx, cfg.flag)
    except TargetError as exc:
        if not ctx.dry_run:
            ctx.state_dir.mkdir(parents=True, exist_ok=True)
            unreached.write_text(json.dumps({"at": time.time(), "error": str(exc)}))
        raise
    unreached.unlink(missing_ok=True)
    if SUBPROTOCOL not in info.get("supported", []):
        raise FixError(
            f"the hub at targets.websocket_url runs {info.get('server')} {info.get('version')} without "
            f"{SUBPROTOCOL}: deploy the TARS-1001 hub (python -m tars_1001_ws.hub) first"
        )
    if info.get("flag") not in (None, cfg.flag):
        raise FixError(f"the hub obeys flag {info['flag']!r} but plugins.{NAME}.flag is {cfg.flag!r}: make them agree")
    flag_on = current not in OFF_VALUES
    # Where the hub already speaks v1.0.1 (it is not flag-driven, or the flag is on), prove it on the
    # wire before touching the flag. A flag-driven hub only speaks it once the flag is on: then the probe
    # follows the flag, and a failed probe puts the flag back.
    if info.get("enabled"):
        try:
            detail = await probe_protocol(url, cfg.probe_timeout)
        except HubError as exc:
            raise FixError(f"{exc}; flag {cfg.flag} left as {current!r}") from None
        if flag_on:
            return ApplyResult(changed=False, detail=f"flag {cfg.flag} already on and the hub speaks {SUBPROTOCOL}")
    if ctx.dry_run:
        ctx.log.info(
            "dry run: would set flag %s from %r to 'on' at %s (hub offers %s: %s)",
            cfg.flag,
            current,
            ctx.targets.flags_key,
            SUBPROTOCOL,
            "yes" if info.get("enabled") else "once the flag is on",
        )
        return ApplyResult(changed=False, detail="dry run: nothing changed")
    state = _state_file(ctx)
    if not state.exists():
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"flag": cfg.flag, "value": current}))
    await ctx.flags.set(cfg.flag, "on")
    if not info.get("enabled"):
        try:
            info = await _wait_enabled(url, True, cfg.flag_propagation_timeout)
            if not info.get("enabled"):
                raise HubError(
                    f"the hub did not pick up flag {cfg.flag} within {cfg.flag_propagation_timeout:g} s "
                    f"(does it read {ctx.targets.flags_key} on the same Redis?)"
                )
            detail = await probe_protocol(url, cfg.probe_timeout)
        except HubError as exc:
            await _restore_flag(ctx, cfg.flag, current)
            raise FixError(f"{exc}; flag {cfg.flag} restored to {current!r}") from None
    ctx.log.info("flag %s on; hub protocol probe: %s", cfg.flag, detail)
    return ApplyResult(changed=True, detail=f"flag {cfg.flag} on; {detail}")


async def _restore_flag(ctx: Context, flag: str, value: str | None) -> None:
    if value is None:
        await ctx.flags.clear(flag)
    else:
        await ctx.flags.set(flag, value)


@hookimpl
async def tars_verify(ctx: Context) -> VerifyResult:
    from tars_1001_ws.check import conformance

    cfg: WsConfig = ctx.config
    url = _url(ctx)
    checks: dict[str, str] = {}
    value = await _flag(ctx, cfg.flag)
    flag_on = value not in OFF_VALUES
    checks["flag"] = f"{cfg.flag} = {value!r}"
    info = await _info(url)
    checks["hub"] = (
        f"{info.get('server')} {info.get('version')}, v1.0.1 {'offered' if info.get('enabled') else 'not offered'}"
    )
    if not info.get("enabled"):
        return VerifyResult(ok=False, detail="the hub does not offer v1.0.1 (fix not applied)", checks=checks)
    try:
        results = await conformance(
            url,
            heartbeat_interval=cfg.verify_heartbeat_interval,
            channels=cfg.verify_channels,
            messages=cfg.verify_messages,
        )
    except Exception as exc:
        checks["conformance"] = f"FAILED: {type(exc).__name__}: {exc}"
        return VerifyResult(ok=False, detail=f"behaviour check could not run: {exc}", checks=checks)
    for name, (ok, detail) in results.items():
        checks[name] = ("ok: " if ok else "FAILED: ") + detail
    failed = [name for name, (ok, _) in results.items() if not ok]
    if not flag_on:
        return VerifyResult(
            ok=False, detail=f"hub behaves, but flag {cfg.flag} is off: services use v1.0.0", checks=checks
        )
    if failed:
        return VerifyResult(ok=False, detail="failed: " + ", ".join(failed), checks=checks)
    return VerifyResult(
        ok=True, detail="reconnect, silent-drop detection, resubscription, replay and outbox hold", checks=checks
    )


@hookimpl
async def tars_rollback(ctx: Context) -> ApplyResult:
    cfg: WsConfig = ctx.config
    url = _url(ctx)
    state = _state_file(ctx)
    try:
        current = await _flag(ctx, cfg.flag)
    except TargetError:
        if not state.exists() and (ctx.state_dir / UNREACHED_FILE).exists():
            ctx.log.warning("a target is unreachable, but the last apply never got past it: nothing to undo")
            return ApplyResult(changed=False, detail="nothing to undo: the last apply never reached its targets")
        raise
    before = json.loads(state.read_text()).get("value") if state.exists() else None
    if current in OFF_VALUES:
        ctx.log.warning("flag %s is already off (%r): nothing to roll back", cfg.flag, current)
        return ApplyResult(changed=False, detail=f"flag {cfg.flag} already off")
    if ctx.dry_run:
        ctx.log.info("dry run: would turn flag %s off (now %r)", cfg.flag, current)
        return ApplyResult(changed=False, detail="dry run: nothing changed")
    if before in OFF_VALUES:
        await _restore_flag(ctx, cfg.flag, before)  # absent stays absent, "off" stays "off"
    else:
        await ctx.flags.set(cfg.flag, "off")
    state.unlink(missing_ok=True)
    info = await _info(url)
    if info.get("flag") is not None:
        info = await _wait_enabled(url, False, cfg.flag_propagation_timeout)
        if info.get("enabled"):
            raise FixError(
                f"flag {cfg.flag} is off but the hub still offers v1.0.1 after "
                f"{cfg.flag_propagation_timeout:g} s: check the hub's flag source"
            )
    return ApplyResult(changed=True, detail=f"flag {cfg.flag} off; new connections get v1.0.0")


@hookimpl
async def tars_benchmark(ctx: Context) -> BenchmarkResult:
    """A shorter run of ``benchmarks/tars-1001-ws_bench.py`` against a private hub process (not the target:
    a thousand benchmark connections do not belong on a production hub, and the hub's own CPU must not
    count as the client's)."""
    from tars_1001_ws import check

    b: BenchmarkConfig = ctx.config.benchmark
    hub = await check.HubProcess.start()
    try:
        after_rc = check.summary(await check.reconnect_times(hub.url, b.drops))
        before_rc = check.summary(await check.plain_reconnect_times(hub.url, min(b.drops, 10)))
        detect = check.summary(
            await check.silent_detection_times(
                hub.url, b.detection_samples, interval=b.detection_interval, timeout=b.detection_timeout
            )
        )
        bound = b.detection_interval + 3 * b.detection_timeout
        loss_before = await check.loss_over_drops(
            hub.url, messages=b.messages, drops=b.message_drops, rate=b.rate, plain=True
        )
        loss_after = await check.loss_over_drops(
            hub.url, messages=b.messages, drops=b.message_drops, rate=b.rate, plain=False
        )
        idle = await check.idle_clients_isolated(hub.url, b.idle_clients, b.idle_window)
    finally:
        hub.stop()
    metrics = [
        Metric("reconnect_p50", before_rc["p50"], after_rc["p50"], "s", "< 5 s typical (seed)", after_rc["p50"] < 5),
        Metric(
            "reconnect_p95",
            before_rc["p95"],
            after_rc["p95"],
            "s",
            "< 1.5 s with the hub reachable",
            after_rc["p95"] < 1.5,
        ),
        Metric("reconnect_max", before_rc["max"], after_rc["max"], "s", "< 30 s (seed)", after_rc["max"] < 30),
        Metric(
            "silent_disconnect_detection_max",
            None,
            detect["max"],
            "s",
            f"<= interval + 3 x timeout = {bound:g} s (at interval {b.detection_interval:g} s)",
            detect["max"] <= bound + 0.25,
        ),
        Metric(
            "messages_lost",
            loss_before["lost"],
            loss_after["lost"],
            "messages",
            f"0 of {b.messages} over {b.message_drops} drops",
            loss_after["lost"] == 0,
        ),
        Metric(
            "messages_duplicated",
            loss_before["duplicated"],
            loss_after["duplicated"],
            "messages",
            "0",
            loss_after["duplicated"] == 0,
        ),
        Metric(
            "heartbeat_cpu",
            None,
            idle["cpu_percent"],
            "% of a core",
            f"< 1% ({b.idle_clients} idle clients, 30 s heartbeat)",
            idle["cpu_percent"] < 1,
        ),
        Metric(
            "memory_per_client",
            None,
            idle["kb_per_client"],
            "KB",
            "< 200 KB (seed: 10 MB)",
            idle["kb_per_client"] < 200,
        ),
    ]
    detail = (
        f"private hub process; {b.drops} resets (plain websockets: {before_rc['n']}); "
        f"before = idiomatic websockets 17 `async for ws in connect()` loop on the v1.0.0 protocol"
    )
    return BenchmarkResult(metrics=metrics, detail=detail)


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    if NAME not in release.states:
        return None
    lines = [f"State: **{release.states[NAME]}**.", ""]
    bench = release.benchmarks.get(NAME)
    if bench is not None and bench.metrics:
        lines += ["| metric | before | after | unit | target | met |", "|---|---|---|---|---|---|"]
        for m in bench.metrics:
            before = "n/a" if m.before is None else f"{m.before:.3g}"
            met = {True: "yes", False: "NO", None: ""}[m.met]
            lines.append(f"| {m.name} | {before} | {m.after:.3g} | {m.unit} | {m.target} | {met} |")
        if bench.detail:
            lines += ["", bench.detail]
    verifies = [p for p in release.phases if p.plugin == NAME and p.phase == "verify"]
    if verifies and verifies[-1].detail:
        lines += ["", f"Last verify: {verifies[-1].outcome}: {verifies[-1].detail}"]
    return ReportSection(
        title="TARS-1001 WebSocket reconnection",
        markdown="\n".join(lines),
        data={
            "state": release.states[NAME],
            "metrics": {
                m.name: {"before": m.before, "after": m.after, "unit": m.unit} for m in (bench.metrics if bench else ())
            },
        },
    )


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    """The hub, obeying the sandbox Redis flag (off at first: the sandbox stands in for v1.0.0)."""
    port = site.free_port()
    argv = [site.python, "-m", "tars_1001_ws.hub", "--host", "127.0.0.1", "--port", str(port)]
    if site.targets.redis:
        argv += ["--flags-redis", site.targets.redis, "--flags-key", site.targets.flags_key, "--flag", WsConfig().flag]
    else:
        argv += ["--legacy"]
    return SandboxContribution(
        services=[ServiceSpec(name="hub", argv=argv, port=port, ready="http:/tars-ws/info")],
        scrape_targets=[f"127.0.0.1:{port}"],
        config={"targets": {"websocket_url": f"ws://127.0.0.1:{port}/"}},
    )


@hookimpl
async def tars_sandbox_seed(ctx: Context) -> None:
    """The v1.0.0 baseline: the flag exists and is off (only written when absent, so reset is idempotent)."""
    cfg: WsConfig = ctx.config
    if ctx.targets.redis and await _flag(ctx, cfg.flag) is None:
        await ctx.flags.set(cfg.flag, "off")
