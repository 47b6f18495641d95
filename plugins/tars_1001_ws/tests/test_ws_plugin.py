"""The hooks against a real hub that reads its flag from real Redis (our own key, deleted afterwards)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from tars_1001_ws import plugin
from tars_1001_ws.check import HubProcess
from tars_1001_ws.hub import serve
from ws_testlib import eventually

from tars_core import ApplyResult, Context, FixError, SandboxSite, TargetError, Targets
from tars_core.processes import free_port
from tars_core.report import metrics_table
from tars_core.testing import (
    assert_cheap_import,
    assert_hooks_raise_target_error,
    assert_unreachable_target_exits_2,
    check_conformance,
    make_context,
    release_for,
    unreachable_target_test,
)

pytestmark = [pytest.mark.timeout(180)]
FLAG = "tars-1001-ws-reconnect"


@pytest_asyncio.fixture
async def flagged_hub(tars_redis_url, flags_key):
    """The sandbox's arrangement: a hub that offers v1.0.1 only while the flag is on."""
    async with serve(port=0, flags_redis=tars_redis_url, flags_key=flags_key, flag_refresh=0.05) as hub:
        yield hub


@pytest.fixture
def ctx_for(tars_redis_url, flags_key, tmp_path):
    """``ctx_for(hub_url, **make_context options)``: the hooks' context on the real Redis, our flags hash."""

    def build(url: str | None, **kw) -> Context:
        targets = Targets(websocket_url=url, redis=tars_redis_url, flags_key=flags_key)
        return make_context(plugin, targets=targets, config=kw.pop("config", {}), state_dir=tmp_path / "state", **kw)

    return build


@pytest.fixture
def flag_value(tars_redis_url, flags_key):
    """``await flag_value()``: the flag as the services read it, straight from Redis."""

    async def read() -> str | None:
        client = aioredis.from_url(tars_redis_url, decode_responses=True)
        try:
            return await client.hget(flags_key, FLAG)
        finally:
            await client.aclose()

    return read


def test_entry_point_module_imports_no_heavy_library():
    assert_cheap_import("tars-1001-ws")  # websockets, redis and prometheus_client among them


def test_plugin_info_and_config_defaults():
    info = plugin.tars_plugin_info()
    assert (info.name, info.fix_id, info.kind) == ("tars-1001-ws", "TARS-1001", "hotfix")
    cfg = info.config()
    assert cfg.flag == FLAG and cfg.benchmark.drops == 50


def test_a_misspelt_config_key_is_an_error_naming_its_path(tmp_path):
    with pytest.raises(Exception, match=r"plugins\.tars-1001-ws"):
        make_context(plugin, targets=Targets(), config={"verify_heartbeat_intervall": 1}, state_dir=tmp_path)


@pytest.mark.asyncio
async def test_conformance_apply_verify_rollback(flagged_hub, ctx_for, flag_value):
    ctx = ctx_for(flagged_hub.url)
    await check_conformance(plugin, ctx)
    assert await flag_value() is None  # rollback restored "absent", the state before apply
    assert await ctx.flags.remembered(FLAG) == (False, None)  # and forgot it: the next apply starts afresh
    await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_rollback_brings_back_the_value_apply_replaced(flagged_hub, ctx_for, flag_value):
    """The sandbox seeds "off": a rollback puts "off" back, not "absent". A flag someone else turned on
    (nothing remembered) is still turned off: rolled back means the services use v1.0.0."""
    ctx = ctx_for(flagged_hub.url)
    await plugin.tars_sandbox_seed(ctx)
    assert (await plugin.tars_apply(ctx)).changed and await flag_value() == "on"
    assert (await plugin.tars_rollback(ctx)).changed and await flag_value() == "off"
    await ctx.flags.set(FLAG, "yes")
    assert (await plugin.tars_rollback(ctx)).changed and await flag_value() == "off"
    assert flagged_hub.hub.enabled is False
    await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_conformance_with_a_hub_that_is_not_flag_driven(hub, ctx_for):
    """A hub that always offers v1.0.1: apply proves the protocol before touching the flag; verify then
    fails after rollback because the services' flag is off, though the hub still speaks v1.0.1."""
    ctx = ctx_for(hub.url)
    await check_conformance(plugin, ctx)


@pytest.mark.asyncio
async def test_verify_reports_each_behaviour(flagged_hub, ctx_for):
    ctx = ctx_for(flagged_hub.url)
    assert (await plugin.tars_apply(ctx)).changed
    result = await plugin.tars_verify(ctx)
    assert result.ok, result.checks
    for check in ("handshake", "forced_drop", "silent_drop", "outbox", "resubscribe", "exactly_once_in_order"):
        assert result.checks[check].startswith("ok"), (check, result.checks[check])
    assert (await plugin.tars_rollback(ctx)).changed
    after = await plugin.tars_verify(ctx)
    assert not after.ok and "not offer" in after.detail
    await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_dry_run_changes_nothing(flagged_hub, ctx_for, flag_value):
    ctx = ctx_for(flagged_hub.url, dry_run=True)
    result = await plugin.tars_apply(ctx)
    assert result == ApplyResult(changed=False, detail="dry run: nothing changed")
    assert await flag_value() is None
    assert await ctx.flags.remembered(FLAG) == (False, None)
    await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_apply_refuses_a_v100_hub_and_leaves_the_flag_alone(ctx_for, flag_value):
    async with serve(port=0, legacy=True) as old:
        ctx = ctx_for(old.url)
        with pytest.raises(FixError, match=r"without tars\.ws\.v1\.0\.1: deploy the TARS-1001 hub"):
            await plugin.tars_apply(ctx)
        assert await flag_value() is None
        await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_apply_restores_the_flag_when_the_hub_never_follows_it(tars_redis_url, flags_key, ctx_for, flag_value):
    # this hub reads a different hash, so turning our flag on changes nothing on the wire
    async with serve(port=0, flags_redis=tars_redis_url, flags_key=flags_key + ":other", flag_refresh=0.05) as hub:
        ctx = ctx_for(hub.url, config={"flag_propagation_timeout": 0.5})
        with pytest.raises(FixError, match=r"did not pick up flag .* restored to None") as err:
            await plugin.tars_apply(ctx)
        assert type(err.value) is FixError  # not TargetError: apply had changed the flag, so it must be undone
        assert await flag_value() is None
        await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_a_hub_lost_after_the_flag_changed_is_a_failure_not_an_unreached_target(
    tars_redis_url, flags_key, ctx_for, flag_value
):
    """TargetError tells the runner that apply changed nothing (no rollback follows), so once the flag is
    on, a hub that goes away is a FixError and the flag is put back first."""

    async def flag_on() -> bool:
        return await flag_value() == "on"

    # this hub reads a different hash: apply sets our flag, then waits for a hub that never follows
    hub = await serve(port=0, flags_redis=tars_redis_url, flags_key=flags_key + ":other", flag_refresh=0.05).start()
    ctx = ctx_for(hub.url, config={"flag_propagation_timeout": 60.0})
    applying = asyncio.create_task(plugin.tars_apply(ctx))
    try:
        await eventually(flag_on, what="apply turned the flag on")
    finally:
        await hub.close()
    with pytest.raises(FixError, match=r"cannot reach the hub .*; flag tars-1001-ws-reconnect restored to None") as err:
        await applying
    assert type(err.value) is FixError
    assert await flag_value() is None
    await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_clear_errors_for_missing_or_unreachable_target(ctx_for, tmp_path):
    ctx = ctx_for(None)
    with pytest.raises(FixError, match=r"targets\.websocket_url is not set"):
        await plugin.tars_apply(ctx)
    ctx = ctx_for("ws://user:s3cret@127.0.0.1:1/")
    with pytest.raises(TargetError, match="cannot reach the hub") as err:
        await plugin.tars_apply(ctx)
    assert "s3cret" not in str(err.value)
    await ctx.flags.aclose()
    async with serve(port=0) as hub:  # a good hub, an unreachable Redis: apply stops before any change
        targets = Targets(websocket_url=hub.url, redis=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
        ctx = make_context(plugin, targets=targets, config={}, state_dir=tmp_path / "fresh-state")
        await assert_hooks_raise_target_error(plugin, ctx, expect=r"cannot reach targets\.redis at 127\.0\.0\.1:\d+ ")


test_cli_against_a_dead_hub_port = unreachable_target_test(
    "tars-1001-ws",
    "websocket_url",
    "ws://user:{password}@127.0.0.1:{port}/",
    expect=["cannot reach the hub at ws://user:***@127.0.0.1:{port}/", "connection refused"],
    targets=lambda tars_redis_url, flags_key: {"redis": tars_redis_url, "flags_key": flags_key},
)


def test_cli_against_a_dead_flags_redis_exits_2_and_rolls_back_nothing(tmp_path):
    """The hub answers, the flags' Redis does not: apply stops before changing anything, so the automatic
    rollback after it is the runner's recorded no-op (no "rollback failed", no exit 4)."""
    hub = HubProcess(tmp_path / "hub.log")
    with hub.service:
        res = assert_unreachable_target_exits_2(
            "tars-1001-ws",
            "redis",
            "redis://:{password}@127.0.0.1:{port}/0",
            expect="cannot reach targets.redis at 127.0.0.1:{port} to read flag tars-1001-ws-reconnect",
            targets={"websocket_url": hub.url},
            tmp_path=tmp_path,
        )
    assert "rollback failed" not in res.stderr.lower()


@pytest.mark.asyncio
async def test_sandbox_contribution_and_seed(tars_redis_url, flags_key, ctx_for, flag_value, tmp_path):
    site = SandboxSite(dir=tmp_path, targets=Targets(redis=tars_redis_url, flags_key=flags_key), python=sys.executable)
    contrib = plugin.tars_sandbox(site)
    (service,) = contrib.services
    assert service.argv[1:3] == ["-m", "tars_1001_ws.hub"] and "--flags-redis" in service.argv
    assert contrib.config["targets"]["websocket_url"] == f"ws://127.0.0.1:{service.port}/"
    assert contrib.scrape_targets == [f"127.0.0.1:{service.port}"]
    ctx = ctx_for(None)
    await plugin.tars_sandbox_seed(ctx)
    await plugin.tars_sandbox_seed(ctx)
    assert await flag_value() == "off"
    await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_benchmark_hook_gives_before_and_after_figures(tmp_path):
    config = {
        "benchmark": {
            "drops": 3,
            "detection_samples": 2,
            "detection_interval": 0.2,
            "detection_timeout": 0.1,
            "idle_clients": 20,
            "idle_window": 1.0,
            "messages": 300,
            "message_drops": 2,
            "rate": 300.0,
            "browser_drops": 3,
            "browser_sessions": 10,
            "browser_time_scale": 0.02,
        }
    }
    ctx = make_context(plugin, targets=Targets(), config=config, state_dir=tmp_path)
    result = await plugin.tars_benchmark(ctx)
    metrics = {m.name: m for m in result.metrics}
    assert set(metrics) >= {
        "reconnect_p50",
        "reconnect_p95",
        "reconnect_max",
        "silent_disconnect_detection_max",
        "messages_lost",
        "messages_duplicated",
        "heartbeat_cpu",
        "memory_per_client",
        "browser_reconnect_p50",
        "browser_reconnect_p95",
        "browser_reconnect_max",
        "browser_messages_lost",
        "browser_messages_duplicated",
        "manual_refresh_share",
        "manual_refresh_share_of_faulted",
    }
    assert metrics["messages_lost"].after == 0 and metrics["messages_duplicated"].after == 0
    assert metrics["messages_lost"].met is True and metrics["messages_duplicated"].met is True
    # the browser figures: the v1.0.0 page loses what comes after its first drop, tars-ws.js nothing
    assert metrics["browser_messages_lost"].after == 0 and metrics["browser_messages_duplicated"].after == 0
    assert metrics["browser_messages_lost"].before > 0
    assert "Chromium" in result.detail
    assert all(m.unit and m.target and m.met is not None for m in result.metrics)
    assert "messages_lost" in metrics_table(result.metrics)  # the core renders the figures, judged by `met`

    release = release_for(plugin.tars_plugin_info(), report_dir=tmp_path, benchmark=result)
    section = plugin.tars_report(release)
    assert section is not None and section.data == {"state": "applied"}
    assert "tars.ws.v1.0.1" in section.markdown and "|" not in section.markdown  # prose, no re-rendered table
