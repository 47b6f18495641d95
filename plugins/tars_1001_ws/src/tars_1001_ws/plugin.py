"""Hooks of the ``tars-1001-ws`` plugin (entry point ``tars.plugins``).

Imports only the core, attrs and the stdlib at module level: ``tars-run list`` must not import
``websockets``. The fix is a feature flag (``tars-1001-ws-reconnect`` by default) that the hub and the
T.A.R.S. services read: apply turns it on only after the hub at ``targets.websocket_url`` has shown it runs
the fixed build, then proves on the wire that it now speaks v1.0.1; verify runs the full behaviour
check (drops, silent drops, resubscription, exactly-once) through a fault-injecting proxy; rollback turns
the flag off and waits until the hub has withdrawn v1.0.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from tars_core import ApplyResult, BenchmarkResult, PluginInfo, ReportSection, VerifyResult, hookimpl
from tars_core.errors import FixError, TargetError
from tars_core.flags import is_on
from tars_core.model import PluginState, SandboxContribution, ServiceSpec, positive
from tars_core.waiting import WaitTimeout, await_until

if TYPE_CHECKING:
    from tars_core import Context, Release, SandboxSite

NAME = "tars-1001-ws"


@attrs.define
class BenchmarkConfig:
    """Sizes of the hook's benchmark run (``benchmarks/tars-1001-ws_bench.py`` defaults to full size)."""

    drops: int = attrs.field(default=50, validator=positive)
    detection_samples: int = attrs.field(default=5, validator=positive)
    detection_interval: float = attrs.field(default=1.0, validator=positive)
    detection_timeout: float = attrs.field(default=0.5, validator=positive)
    idle_clients: int = attrs.field(default=200, validator=positive)
    idle_window: float = attrs.field(default=35.0, validator=positive)
    messages: int = attrs.field(default=2000, validator=positive)
    message_drops: int = attrs.field(default=8, validator=positive)
    rate: float = attrs.field(default=250.0, validator=positive)
    # headless Chromium (tars-ws.js): resets for its reconnect times, page sessions for the refresh share,
    # and the time scale those sessions run at (0.1: a 5-minute session and the 30 s threshold in 30 s / 3 s)
    browser_drops: int = attrs.field(default=20, validator=positive)
    browser_sessions: int = attrs.field(default=40, validator=positive)
    browser_time_scale: float = attrs.field(default=0.1, validator=positive)


@attrs.define
class WsConfig:
    """The ``plugins.tars-1001-ws`` section."""

    flag: str = "tars-1001-ws-reconnect"
    verify_heartbeat_interval: float = attrs.field(default=0.2, validator=positive)
    verify_channels: int = attrs.field(default=3, validator=positive)
    verify_messages: int = attrs.field(default=150, validator=positive)
    probe_timeout: float = attrs.field(default=10.0, validator=positive)
    flag_propagation_timeout: float = attrs.field(default=10.0, validator=positive)
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


async def _wait_offered(url: str, want: bool, timeout: float) -> bool:
    """Until the hub offers (or withdraws) v1.0.1: it reads the flag asynchronously, so it lags a change."""

    async def settled() -> bool:
        return bool((await _info(url)).get("enabled")) is want

    return await await_until(settled, timeout=timeout, interval=0.2, what="the hub following the flag")


@hookimpl
async def tars_apply(ctx: Context) -> ApplyResult:
    from tars_1001_ws.check import HubError, probe_protocol
    from tars_1001_ws.protocol import SUBPROTOCOL

    cfg: WsConfig = ctx.config
    url = _url(ctx)
    info = await _info(url)  # an unusable hub or Redis raises TargetError here, before anything changed
    current = await ctx.flags.get(cfg.flag)
    if SUBPROTOCOL not in info.get("supported", []):
        raise FixError(
            f"the hub at targets.websocket_url runs {info.get('server')} {info.get('version')} without "
            f"{SUBPROTOCOL}: deploy the TARS-1001 hub (python -m tars_1001_ws.hub) first"
        )
    if info.get("flag") not in (None, cfg.flag):
        raise FixError(f"the hub obeys flag {info['flag']!r} but plugins.{NAME}.flag is {cfg.flag!r}: make them agree")
    # Where the hub already speaks v1.0.1 (it is not flag-driven, or the flag is on), prove it on the
    # wire before touching the flag. A flag-driven hub only speaks it once the flag is on: then the probe
    # follows the flag, and a failed probe puts the flag back.
    if info.get("enabled"):
        try:
            detail = await probe_protocol(url, cfg.probe_timeout)
        except HubError as exc:
            raise FixError(f"{exc}; flag {cfg.flag} left as {current!r}") from None
        if is_on(current):
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
    await ctx.flags.set(cfg.flag, "on", remember=True)  # rollback's restore brings back what this replaced
    if not info.get("enabled"):
        # From here on the flag is changed: every failure puts it back and is a FixError, never a
        # TargetError (which tells the runner that apply changed nothing, so it would skip the rollback).
        try:
            await _wait_offered(url, True, cfg.flag_propagation_timeout)
            detail = await probe_protocol(url, cfg.probe_timeout)
        except WaitTimeout:
            reason = (
                f"the hub did not pick up flag {cfg.flag} within {cfg.flag_propagation_timeout:g} s "
                f"(does it read {ctx.targets.flags_key} on the same Redis?)"
            )
            raise FixError(f"{reason}; {await _put_back(ctx, cfg.flag)}") from None
        except (HubError, FixError) as exc:
            raise FixError(f"{exc}; {await _put_back(ctx, cfg.flag)}") from None
    ctx.log.info("flag %s on; hub protocol probe: %s", cfg.flag, detail)
    return ApplyResult(changed=True, detail=f"flag {cfg.flag} on; {detail}")


async def _put_back(ctx: Context, flag: str) -> str:
    """Undo a failed apply's flag change; says what the flag is now, for the error message."""
    try:
        return f"flag {flag} restored to {await ctx.flags.restore(flag)!r}"
    except FixError as exc:
        return f"flag {flag} may still be on: {exc}"


@hookimpl
async def tars_verify(ctx: Context) -> VerifyResult:
    from tars_1001_ws.check import conformance

    cfg: WsConfig = ctx.config
    url = _url(ctx)
    checks: dict[str, str] = {}
    value = await ctx.flags.get(cfg.flag)
    flag_on = is_on(value)
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
    current = await ctx.flags.get(cfg.flag)
    if not is_on(current):
        ctx.log.warning("flag %s is already off (%r): nothing to roll back", cfg.flag, current)
        return ApplyResult(changed=False, detail=f"flag {cfg.flag} already off")
    if ctx.dry_run:
        ctx.log.info("dry run: would turn flag %s off (now %r)", cfg.flag, current)
        return ApplyResult(changed=False, detail="dry run: nothing changed")
    # the value apply replaced comes back (absent stays absent, "off" stays "off"); a replaced value that
    # was itself on still ends as "off": rolled back means the services use v1.0.0
    if is_on(await ctx.flags.restore(cfg.flag)):
        await ctx.flags.set(cfg.flag, "off")
    info = await _info(url)
    if info.get("flag") is not None:
        try:
            await _wait_offered(url, False, cfg.flag_propagation_timeout)
        except WaitTimeout:
            raise FixError(
                f"flag {cfg.flag} is off but the hub still offers v1.0.1 after "
                f"{cfg.flag_propagation_timeout:g} s: check the hub's flag source"
            ) from None
    return ApplyResult(changed=True, detail=f"flag {cfg.flag} off; new connections get v1.0.0")


@hookimpl
async def tars_benchmark(ctx: Context) -> BenchmarkResult:
    """A shorter run of ``benchmarks/tars-1001-ws_bench.py`` against a private hub process (not the target:
    a thousand benchmark connections do not belong on a production hub, and the hub's own CPU must not
    count as the client's)."""
    from tars_1001_ws import browser, check

    b: BenchmarkConfig = ctx.config.benchmark
    sizes = {k: v for k, v in attrs.asdict(b).items() if not k.startswith("browser_")}
    async with check.HubProcess(ctx.state_dir / "benchmark-hub.log") as hub:
        results = await check.measure(hub.url, **sizes, plain_drops=min(b.drops, 10))
        metrics = check.metrics(results)
        plain = results["reconnect_before_plain_websockets"]["n"]
        detail = (
            f"private hub process; {b.drops} resets (plain websockets: {plain}); "
            f"before = idiomatic websockets 17 `async for ws in connect()` loop on the v1.0.0 protocol"
        )
        try:
            web = await browser.measure(
                hub.url,
                drops=b.browser_drops,
                messages=b.messages,
                message_drops=b.message_drops,
                rate=b.rate,
                sessions=b.browser_sessions,
                scale=b.browser_time_scale,
            )
        except browser.BrowserUnavailable as exc:  # the Python figures stand; say why the others are missing
            detail += f"; browser figures not measured: {exc}"
        else:
            metrics += browser.metrics(web)
            detail += (
                f"; browser: Chromium {web['version']}, tars-ws.js vs the v1.0.0 page (one WebSocket, no reconnect "
                f"logic); {b.browser_sessions} page sessions at time scale {b.browser_time_scale:g}"
            )
    return BenchmarkResult(metrics=metrics, detail=detail)


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    """What the fix's state means on the wire; the core report already shows its phases and figures."""
    state = release.states.get(NAME)
    meaning = _STATE_MEANING.get(str(state))
    if meaning is None:
        return None
    return ReportSection(title="TARS-1001 WebSocket reconnection", markdown=meaning, data={"state": state})


_STATE_MEANING = {
    PluginState.APPLIED.value: "The hub offers protocol `tars.ws.v1.0.1` (per-channel sequence numbers, replay "
    "after reconnect, idempotent publish) to new connections; services on `ReconnectingWebSocketClient` "
    "reconnect with heartbeat, jittered backoff and resubscription, and lose no message across drops. "
    "Connections opened before the flag changed keep v1.0.0 until they reconnect.",
    PluginState.ROLLED_BACK.value: "The flag is back to its value before apply: new connections get the v1.0.0 "
    "protocol (no sequence numbers, no replay); open v1.0.1 connections keep it until they reconnect.",
}


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
    if ctx.targets.redis and await ctx.flags.get(cfg.flag) is None:
        await ctx.flags.set(cfg.flag, "off")
