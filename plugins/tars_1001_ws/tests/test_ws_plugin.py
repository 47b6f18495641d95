"""The hooks against a real hub that reads its flag from real Redis (our own key, deleted afterwards)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from tars_1001_ws import plugin
from tars_1001_ws.hub import serve
from ws_testlib import REDIS_URL

from tars_core import ApplyResult, FixError, Release, SandboxSite, TargetError, Targets
from tars_core.testing import check_conformance, make_context

pytestmark = [pytest.mark.timeout(180)]
FLAG = "tars-1001-ws-reconnect"


@pytest_asyncio.fixture
async def flagged_hub(flags_key):
    """The sandbox's arrangement: a hub that offers v1.0.1 only while the flag is on."""
    async with serve(port=0, flags_redis=REDIS_URL, flags_key=flags_key, flag_refresh=0.05) as hub:
        yield hub


def ctx_for(url: str | None, flags_key: str, tmp_path: Path, **kw):
    targets = Targets(websocket_url=url, redis=REDIS_URL, flags_key=flags_key)
    return make_context(plugin, targets=targets, config=kw.pop("config", {}), state_dir=tmp_path / "state", **kw)


async def flag_value(flags_key: str) -> str | None:
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    try:
        return await client.hget(flags_key, FLAG)
    finally:
        await client.aclose()


def test_entry_point_module_imports_no_heavy_library():
    code = (
        "import sys, tars_1001_ws.plugin; print(sorted(m for m in ('websockets', 'redis', 'prometheus_client') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_info_and_config_defaults():
    info = plugin.tars_plugin_info()
    assert (info.name, info.fix_id, info.kind) == ("tars-1001-ws", "TARS-1001", "hotfix")
    cfg = info.config()
    assert cfg.flag == FLAG and cfg.benchmark.drops == 50


def test_a_misspelt_config_key_is_an_error_naming_its_path(tmp_path):
    with pytest.raises(Exception, match=r"plugins\.tars-1001-ws"):
        make_context(plugin, targets=Targets(), config={"verify_heartbeat_intervall": 1}, state_dir=tmp_path)


@pytest.mark.asyncio
async def test_conformance_apply_verify_rollback(flagged_hub, flags_key, tmp_path):
    ctx = ctx_for(flagged_hub.url, flags_key, tmp_path)
    await check_conformance(plugin, ctx)
    assert await flag_value(flags_key) is None  # rollback restored "absent", the state before apply


@pytest.mark.asyncio
async def test_conformance_with_a_hub_that_is_not_flag_driven(hub, flags_key, tmp_path):
    """A hub that always offers v1.0.1: apply proves the protocol before touching the flag; verify then
    fails after rollback because the services' flag is off, though the hub still speaks v1.0.1."""
    ctx = ctx_for(hub.url, flags_key, tmp_path)
    await check_conformance(plugin, ctx)


@pytest.mark.asyncio
async def test_verify_reports_each_behaviour(flagged_hub, flags_key, tmp_path):
    ctx = ctx_for(flagged_hub.url, flags_key, tmp_path)
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
async def test_dry_run_changes_nothing(flagged_hub, flags_key, tmp_path):
    ctx = ctx_for(flagged_hub.url, flags_key, tmp_path, dry_run=True)
    result = await plugin.tars_apply(ctx)
    assert result == ApplyResult(changed=False, detail="dry run: nothing changed")
    assert await flag_value(flags_key) is None
    assert not (tmp_path / "state" / "flag-before-apply.json").exists()
    await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_apply_refuses_a_v100_hub_and_leaves_the_flag_alone(flags_key, tmp_path):
    async with serve(port=0, legacy=True) as old:
        ctx = ctx_for(old.url, flags_key, tmp_path)
        with pytest.raises(FixError, match=r"without tars\.ws\.v1\.0\.1: deploy the TARS-1001 hub"):
            await plugin.tars_apply(ctx)
        assert await flag_value(flags_key) is None
        await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_apply_restores_the_flag_when_the_hub_never_follows_it(flags_key, tmp_path):
    # this hub reads a different hash, so turning our flag on changes nothing on the wire
    async with serve(port=0, flags_redis=REDIS_URL, flags_key=flags_key + ":other", flag_refresh=0.05) as hub:
        ctx = ctx_for(hub.url, flags_key, tmp_path, config={"flag_propagation_timeout": 0.5})
        with pytest.raises(FixError, match=r"did not pick up flag .* restored to None"):
            await plugin.tars_apply(ctx)
        assert await flag_value(flags_key) is None
        await ctx.flags.aclose()


@pytest.mark.asyncio
async def test_clear_errors_for_missing_or_unreachable_target(flags_key, tmp_path):
    ctx = ctx_for(None, flags_key, tmp_path)
    with pytest.raises(FixError, match=r"targets\.websocket_url is not set"):
        await plugin.tars_apply(ctx)
    ctx = ctx_for("ws://user:s3cret@127.0.0.1:1/", flags_key, tmp_path)
    with pytest.raises(TargetError, match="cannot reach the hub") as err:
        await plugin.tars_apply(ctx)
    assert "s3cret" not in str(err.value)
    await ctx.flags.aclose()
    targets = Targets(websocket_url="ws://127.0.0.1:1/", redis=f"redis://:s3cret@127.0.0.1:{_dead_port()}/0")
    ctx = make_context(plugin, targets=targets, config={}, state_dir=tmp_path / "fresh-state")
    with pytest.raises(TargetError, match=r"cannot reach targets\.redis at 127\.0\.0\.1:\d+/0") as err:
        await plugin.tars_rollback(ctx)  # no failed apply recorded: the flag may be on, so this is a failure
    assert "s3cret" not in str(err.value)
    with pytest.raises(TargetError, match="cannot reach the hub"):
        await plugin.tars_apply(ctx)
    assert (await plugin.tars_rollback(ctx)).changed is False  # that apply changed nothing: nothing to undo
    await ctx.flags.aclose()


def _dead_port() -> int:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["apply", "verify"])
def test_cli_against_a_dead_hub_port_exits_2_with_one_line(flags_key, tmp_path, command):
    """An unreachable hub is bad input (TargetError): exit 2, one line naming it, no password. Redis is
    real (our own, never written flags hash), so the rollback after the failed apply has nothing to undo."""
    port = _dead_port()
    config = tmp_path / "tars.yaml"
    config.write_text(
        f"targets:\n  websocket_url: ws://user:s3cret@127.0.0.1:{port}/\n  redis: {REDIS_URL}\n"
        f"  flags_key: {flags_key}\nplugins:\n  tars-1001-ws: {{}}\n"
    )
    exe = shutil.which("tars-run")
    argv = [exe] if exe else [sys.executable, "-m", "tars_core.cli"]
    res = subprocess.run(
        [*argv, "--plugins", "tars-1001-ws", "--config", str(config), command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TARS_TRACE_PLUGINS": ""},
    )
    assert res.returncode == 2, res.stderr
    assert "s3cret" not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    reasons = [line for line in res.stderr.splitlines() if f"cannot reach the hub at ws://127.0.0.1:{port}/" in line]
    assert reasons, res.stderr
    assert all("connection refused" in line for line in reasons)


@pytest.mark.asyncio
async def test_sandbox_contribution_and_seed(flags_key, tmp_path):
    site = SandboxSite(dir=tmp_path, targets=Targets(redis=REDIS_URL, flags_key=flags_key), python=sys.executable)
    contrib = plugin.tars_sandbox(site)
    (service,) = contrib.services
    assert service.argv[1:3] == ["-m", "tars_1001_ws.hub"] and "--flags-redis" in service.argv
    assert contrib.config["targets"]["websocket_url"] == f"ws://127.0.0.1:{service.port}/"
    assert contrib.scrape_targets == [f"127.0.0.1:{service.port}"]
    ctx = ctx_for(None, flags_key, tmp_path)
    await plugin.tars_sandbox_seed(ctx)
    await plugin.tars_sandbox_seed(ctx)
    assert await flag_value(flags_key) == "off"
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
    }
    assert metrics["messages_lost"].after == 0 and metrics["messages_duplicated"].after == 0
    assert all(m.unit and m.target for m in result.metrics)

    release = Release(
        name="v1.0.1",
        plugins=[plugin.tars_plugin_info()],
        states={"tars-1001-ws": "applied"},
        phases=[],
        benchmarks={"tars-1001-ws": result},
        targets={},
        report_dir=tmp_path,
    )
    section = plugin.tars_report(release)
    assert section is not None and "| messages_lost |" in section.markdown
    assert section.data["metrics"]["messages_lost"]["after"] == 0
