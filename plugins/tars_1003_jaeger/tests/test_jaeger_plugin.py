"""The hooks against real Redis and the real producer/consumer services running as subprocesses."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import tars_1003_jaeger.plugin as plugin

from tars_core import ApplyResult, FixError, PluginInfo, SandboxSite, TargetError, Targets
from tars_core.processes import terminate
from tars_core.testing import (
    assert_cheap_import,
    check_conformance,
    make_context,
    release_for,
    unreachable_target_test,
)

pytestmark = pytest.mark.timeout(180)


def _config(services: Any, **extra: object) -> dict[str, object]:
    k = services.keys
    return {
        "stream": k["stream"],
        "result_stream": k["result_stream"],
        "registry_key": k["registry_key"],
        "probe_key": k["probe_key"],
        "scratch_prefix": f"{services.prefix}:verify",
        "probe_messages": 10,
        "probe_timeout_s": 8.0,
        "pipeline_messages": 20,
        "flag_ack_timeout_s": 8.0,
        **extra,
    }


def _ctx(services: Any, tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    targets = Targets(redis=services.redis_url, flags_key=services.keys["flags_key"])
    config = kw.pop("config", None) or _config(services)
    return make_context(plugin, targets=targets, config=config, state_dir=tmp_path / "state", **kw)


def test_entry_point_import_is_cheap() -> None:
    assert_cheap_import("tars-1003-jaeger")


def test_plugin_info_and_config_errors(tmp_path: Path) -> None:
    info = plugin.tars_plugin_info()
    assert (info.name, info.fix_id, info.kind) == ("tars-1003-jaeger", "TARS-1003", "hotfix")
    with pytest.raises(Exception, match="probe_messages"):
        make_context(plugin, targets=Targets(redis="redis://x"), config={"probe_messages": "many"}, state_dir=tmp_path)


def test_conformance_with_running_services(services: Any, tmp_path: Path, sync_client: redis.Redis) -> None:
    services.start("producer", "eval-producer")
    services.start("consumer", "eval-consumer")
    ctx = _ctx(services, tmp_path)
    anyio.run(check_conformance, plugin, ctx)
    assert "trace propagation on" in services.log("eval-consumer")
    # rollback put back what apply replaced (the flag did not exist) and forgot it
    flags_key = services.keys["flags_key"]
    assert sync_client.hget(flags_key, "tars-1003-trace-propagation") is None
    assert sync_client.hgetall(f"{flags_key}:previous") == {}


def test_rollback_restores_the_value_apply_replaced(services: Any, tmp_path: Path, sync_client: redis.Redis) -> None:
    services.start("producer", "eval-producer")
    services.start("consumer", "eval-consumer")
    flags_key = services.keys["flags_key"]
    sync_client.hset(flags_key, "tars-1003-trace-propagation", "disabled")  # an operator's own off value
    ctx = _ctx(services, tmp_path)

    async def scenario() -> None:
        try:
            assert (await plugin.tars_apply(ctx)).changed
            assert await ctx.flags.get("tars-1003-trace-propagation") == "on"
            assert (await plugin.tars_rollback(ctx)).changed
        finally:
            await ctx.flags.aclose()

    anyio.run(scenario)
    assert sync_client.hget(flags_key, "tars-1003-trace-propagation") == "disabled"


def test_verify_reports_continuity_and_fails_while_flag_off(services: Any, tmp_path: Path) -> None:
    services.start("producer", "eval-producer")
    services.start("consumer", "eval-consumer")
    ctx = _ctx(services, tmp_path)

    async def scenario() -> None:
        try:
            before = await plugin.tars_verify(ctx)
            assert not before.ok
            assert before.checks["probes hop1"].startswith("0/10 (0.00%)"), before.checks
            assert before.checks["library hop1"].startswith("20/20 (100.00%)"), before.checks
            applied = await plugin.tars_apply(ctx)
            assert applied.changed
            after = await plugin.tars_verify(ctx)
            assert after.ok, after.checks
            assert after.checks["probes hop1"] == "10/10 (100.00%)"
            assert after.checks["probes hop2"] == "10/10 (100.00%)"
            assert "100.00% / 100.00%" in after.detail
        finally:
            await plugin.tars_rollback(ctx)
            await ctx.flags.aclose()

    anyio.run(scenario)


def test_apply_refuses_when_the_fixed_code_is_not_running(services: Any, tmp_path: Path) -> None:
    services.start("producer", "eval-producer")  # no consumer registered
    ctx = _ctx(services, tmp_path)

    async def scenario() -> None:
        try:
            with pytest.raises(FixError, match="eval-consumer is not registered"):
                await plugin.tars_apply(ctx)
            assert not await ctx.flags.is_on("tars-1003-trace-propagation")
        finally:
            await ctx.flags.aclose()

    anyio.run(scenario)


def test_apply_refuses_a_stale_or_old_service(services: Any, tmp_path: Path, sync_client: redis.Redis) -> None:
    k = services.keys
    sync_client.hset(k["registry_key"], "eval-producer", json.dumps({"version": "1.0.0", "heartbeat": time.time()}))
    sync_client.hset(
        k["registry_key"],
        "eval-consumer",
        json.dumps({"version": "1.0.1", "capabilities": [plugin.CAPABILITY], "heartbeat": time.time() - 600}),
    )
    ctx = _ctx(services, tmp_path)

    async def scenario() -> None:
        try:
            with pytest.raises(FixError) as err:
                await plugin.tars_apply(ctx)
            assert "eval-producer (version 1.0.0) lacks" in str(err.value)
            assert "eval-consumer heartbeat is 600s old" in str(err.value)
        finally:
            await ctx.flags.aclose()

    anyio.run(scenario)


def test_dry_run_changes_nothing(services: Any, tmp_path: Path) -> None:
    services.start("producer", "eval-producer")
    services.start("consumer", "eval-consumer")
    ctx = _ctx(services, tmp_path, dry_run=True)

    async def scenario() -> None:
        try:
            result = await plugin.tars_apply(ctx)
            assert result == ApplyResult(changed=False, detail="dry run: would turn on tars-1003-trace-propagation")
            assert await ctx.flags.get("tars-1003-trace-propagation") is None
        finally:
            await ctx.flags.aclose()

    anyio.run(scenario)


@pytest.mark.parametrize("hook", ["tars_apply", "tars_verify", "tars_rollback", "tars_sandbox_seed"])
def test_unreachable_redis_is_a_target_error_without_the_password(tmp_path: Path, hook: str) -> None:
    targets = Targets(redis="redis://:s3cret@127.0.0.1:1/0")
    ctx = make_context(plugin, targets=targets, config={}, state_dir=tmp_path)
    with pytest.raises(TargetError) as err:
        anyio.run(getattr(plugin, hook), ctx)
    assert "s3cret" not in str(err.value) and "targets.redis at 127.0.0.1:1" in str(err.value)


test_cli_against_a_dead_redis_port = unreachable_target_test(
    "tars-1003-jaeger",
    "redis",
    "redis://:{password}@127.0.0.1:{port}/0",
    expect="cannot reach targets.redis at 127.0.0.1:{port}",
)


def test_sandbox_contribution_and_seed(services: Any, tmp_path: Path, sync_client: redis.Redis) -> None:
    site = SandboxSite(dir=tmp_path, targets=Targets(redis=services.redis_url), python=sys.executable)
    contrib = plugin.tars_sandbox(site)
    names = [s.name for s in contrib.services]
    assert names == ["otlp-receiver", "eval-producer", "eval-consumer"]
    assert contrib.config["targets"]["otlp_endpoint"].startswith("http://127.0.0.1:")
    assert len(contrib.scrape_targets) == 2
    for spec in contrib.services:
        assert spec.argv[:2] == [sys.executable, "-m"] and spec.port
    with_otlp = plugin.tars_sandbox(
        SandboxSite(dir=tmp_path, targets=Targets(redis="redis://x", otlp_endpoint="http://j:4318"), python="py")
    )
    assert [s.name for s in with_otlp.services] == ["eval-producer", "eval-consumer"]

    ctx = _ctx(services, tmp_path)

    async def seed() -> None:
        try:
            await plugin.tars_sandbox_seed(ctx)
            await plugin.tars_sandbox_seed(ctx)  # idempotent
            assert await ctx.flags.get("tars-1003-trace-propagation") == "off"
        finally:
            await ctx.flags.aclose()

    anyio.run(seed)
    k = services.keys
    assert [g["name"] for g in sync_client.xinfo_groups(k["stream"])] == ["tars-evaluators"]
    assert [g["name"] for g in sync_client.xinfo_groups(k["result_stream"])] == ["tars-dashboard"]


def test_benchmark_hook_measures_before_and_after(services: Any, tmp_path: Path) -> None:
    ctx = _ctx(services, tmp_path, config=_config(services, benchmark_messages=300))
    result = anyio.run(plugin.tars_benchmark, ctx)
    metrics = {m.name: m for m in result.metrics}
    continuity = metrics["trace continuity"]
    assert (continuity.before, continuity.after, continuity.met) == (0.0, 100.0, True)
    throughput = metrics["throughput XADD+XREADGROUP+XACK vs no tracing"]
    assert throughput.before and throughput.before > 0 and throughput.after > 0 and throughput.unit == "msg/s"
    assert metrics["inject (propagator into entry fields)"].after > 0


def test_apply_waits_until_in_flight_reads_switch(services: Any, tmp_path: Path) -> None:
    """Regression: a consumer blocked in a v1.0.0 XREADGROUP when the flag flips must not be reported as
    propagating until that read is over, or the first entries after apply lose their trace."""
    services.start("producer", "eval-producer", "--rate", "0")
    services.start("consumer", "eval-consumer")
    ctx = _ctx(services, tmp_path, config=_config(services, probe_messages=3))

    async def scenario() -> None:
        from tars_1003_jaeger.plugin import probe_services

        client = plugin._client(ctx)
        try:
            for _ in range(3):
                await anyio.sleep(1.2)  # the consumer is now inside a blocking read in the old mode
                assert (await plugin.tars_apply(ctx)).changed
                hop1, hop2 = await probe_services(client, ctx.config)
                assert hop1.complete and hop2.complete, (hop1, hop2)
                await plugin.tars_rollback(ctx)
        finally:
            await client.aclose()
            await ctx.flags.aclose()

    anyio.run(scenario)


def test_verify_fails_clearly_when_the_consumer_is_down(services: Any, tmp_path: Path) -> None:
    services.start("producer", "eval-producer")
    consumer = services.start("consumer", "eval-consumer")
    ctx = _ctx(services, tmp_path, config=_config(services, probe_messages=2, probe_timeout_s=1.5))

    async def scenario() -> None:
        try:
            assert (await plugin.tars_apply(ctx)).changed
            terminate(consumer.ident, sig=signal.SIGKILL)  # no deregistration, the heartbeat just stops
            result = await plugin.tars_verify(ctx)
            assert not result.ok
            assert result.checks["probes hop1"].startswith("0/2 (0.00%)")
            assert "not processed within 1.5s" in result.checks["probes hop1"]
            assert result.checks["library hop1"].startswith("20/20"), "the library itself still works"
        finally:
            await plugin.tars_rollback(ctx)
            await ctx.flags.aclose()

    anyio.run(scenario)


def test_report_section_adds_only_what_the_core_does_not_render(tmp_path: Path) -> None:
    from tars_core import BenchmarkResult, Metric, PhaseRecord

    info = plugin.tars_plugin_info()
    release = release_for(
        info,
        report_dir=tmp_path,
        phases=[PhaseRecord("r1", info.name, "verify", "ok", "t0", "t1", detail="trace continuity 100.00%")],
        benchmark=BenchmarkResult(metrics=[Metric("trace continuity", 0.0, 100.0, "%", "100.00%", True)]),
    )
    section = plugin.tars_report(release)
    assert section is not None and "`traceparent`" in section.markdown and "hop 2" in section.markdown
    # state, phases and metrics are the core report's tables, not repeated here
    for rendered in ("applied", "100.00%", "Last verify", "|"):
        assert rendered not in section.markdown
    assert plugin.tars_report(release_for(PluginInfo(name="other", title="other"), report_dir=tmp_path)) is None
