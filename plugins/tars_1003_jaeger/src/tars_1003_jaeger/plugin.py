"""The ``tars-1003-jaeger`` hooks: trace context through Redis Streams, behind a feature flag.

The fixed code (``tars_1003_jaeger.streams``) ships inside the services; the hooks only flip the flag the
services obey, after checking that every required service runs code that can propagate (it says so in
the registry hash), and verify the running behaviour by sending probe entries through the live streams.

Imports here are cheap on purpose (tars_core, attrs, stdlib): redis and OpenTelemetry load inside hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

import attrs

from tars_core import ApplyResult, BenchmarkResult, Metric, PluginInfo, ReportSection, VerifyResult, hookimpl
from tars_core.errors import FixError
from tars_core.flags import is_on
from tars_core.model import SandboxContribution, ServiceSpec, non_empty, positive, unit_interval
from tars_core.waiting import WaitTimeout, await_until

if TYPE_CHECKING:
    from tars_core import Context, Release, SandboxSite

NAME = "tars-1003-jaeger"
CAPABILITY = "w3c-trace-context/redis-streams"  # same string as services.CAPABILITY (kept import-free)


@attrs.define
class JaegerConfig:
    """The ``plugins.tars-1003-jaeger`` config section."""

    #: Feature flag the services obey (in ``targets.flags_key``).
    flag: str = attrs.field(default="tars-1003-trace-propagation", validator=non_empty)
    #: Evaluation jobs stream (hop 1) and its worker group.
    stream: str = attrs.field(default="tars:evaluations:jobs", validator=non_empty)
    group: str = attrs.field(default="tars-evaluators", validator=non_empty)
    #: Results stream (hop 2) and the dashboard feed's group.
    result_stream: str = attrs.field(default="tars:evaluations:results", validator=non_empty)
    result_group: str = attrs.field(default="tars-dashboard", validator=non_empty)
    #: Hash where services report version, capability and propagation state (JSON per service name).
    registry_key: str = attrs.field(default="tars:services:tracing", validator=non_empty)
    #: Services that must report the capability before apply turns the flag on.
    services: tuple[str, ...] = ("eval-producer", "eval-consumer")
    #: A registry entry older than this is a dead service.
    heartbeat_max_age_s: float = attrs.field(default=10.0, validator=positive)
    #: How long apply/rollback wait for the services to report the new flag state.
    flag_ack_timeout_s: float = attrs.field(default=15.0, validator=positive)
    #: Hash where the consumer records the traces of probe entries (written by the services).
    probe_key: str = attrs.field(default="tars:trace:probes", validator=non_empty)
    #: Probe entries verify sends through the live streams; continuity must be 100%.
    probe_messages: int = attrs.field(default=20, validator=positive)
    probe_timeout_s: float = attrs.field(default=20.0, validator=positive)
    #: Prefix for verify's own two-hop pipeline streams (deleted afterwards).
    scratch_prefix: str = attrs.field(default="tars:trace:verify", validator=non_empty)
    pipeline_messages: int = attrs.field(default=40, validator=positive)
    #: Judge verify's own pipeline with process spans that link to the producer instead of parenting.
    links: bool = False
    #: OTLP protocol of the sandbox services' exporter (endpoint: ``targets.otlp_endpoint``).
    otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    #: Benchmark size for the hook (benchmarks/tars-1003-jaeger_bench.py runs 10,000).
    benchmark_messages: int = attrs.field(default=2000, validator=positive)
    benchmark_rounds: int = attrs.field(default=3, validator=positive)
    #: Root sampling ratio of the benchmark's 'sampled' mode (ParentBased, as production runs).
    benchmark_sample_ratio: float = attrs.field(default=0.1, validator=unit_interval)


@hookimpl
def tars_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        title="TARS-1003: W3C trace context through Redis Streams, exported over OTLP",
        kind="hotfix",
        fix_id="TARS-1003",
        config=JaegerConfig,
        description=(
            "Producers inject W3C traceparent/tracestate/baggage into stream entries; consumers process "
            "each entry in a CONSUMER span continuing the producer's trace, across XACK and XAUTOCLAIM."
        ),
        risk="high: changes the evaluation pipeline's running code (behind a feature flag)",
    )


def _client(ctx: Context) -> Any:
    """The target Redis for the registry, probes and streams (the flag hash is on the same one), used as
    ``async with`` (which closes it).

    Every hook reads the flag through ``ctx.flags`` before it calls this, so an unusable
    ``targets.redis`` has already become the core's :class:`TargetError` (exit 2) and nothing changed.
    """
    from tars_core.flags import redis_client

    # a Redis that pauses or restarts mid-phase is ridden out (retries), not a failed release
    return redis_client(ctx.targets.require("redis"), socket_connect_timeout=5)


async def _registry(client: Any, cfg: JaegerConfig) -> dict[str, dict[str, Any]]:
    out = {}
    for name, raw in (await client.hgetall(cfg.registry_key)).items():
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = {"invalid": raw}
    return out


def _service_problems(registry: dict[str, dict[str, Any]], cfg: JaegerConfig, want: str | None) -> list[str]:
    """Why the required services do not (yet) run the fixed code, or report ``want`` propagation."""
    problems = []
    now = time.time()
    for name in cfg.services:
        rec = registry.get(name)
        if rec is None:
            problems.append(f"{name} is not registered")
        elif now - float(rec.get("heartbeat", 0)) > cfg.heartbeat_max_age_s:
            problems.append(f"{name} heartbeat is {now - float(rec.get('heartbeat', 0)):.0f}s old")
        elif CAPABILITY not in rec.get("capabilities", ()):
            problems.append(f"{name} (version {rec.get('version', '?')}) lacks {CAPABILITY}")
        elif want is not None and rec.get("propagation") != want:
            problems.append(f"{name} reports propagation {rec.get('propagation')}")
    return problems


async def _wait_for_services(client: Any, cfg: JaegerConfig, want: str) -> list[str]:
    """What still keeps the services from reporting ``want`` after ``flag_ack_timeout_s`` (empty: done)."""
    problems: list[str] = []

    async def settled() -> bool:
        problems[:] = _service_problems(await _registry(client, cfg), cfg, want)
        return not problems

    with contextlib.suppress(WaitTimeout):
        await await_until(settled, timeout=cfg.flag_ack_timeout_s, interval=0.2, what=f"propagation {want}")
    return problems


@hookimpl
async def tars_apply(ctx: Context) -> ApplyResult:
    cfg: JaegerConfig = ctx.config
    before = await ctx.flags.get(cfg.flag)  # an unusable Redis: TargetError here, before anything changed
    async with _client(ctx) as client:
        problems = _service_problems(await _registry(client, cfg), cfg, None)
        if problems:
            raise FixError(
                f"TARS-1003: the fixed code is not what runs ({'; '.join(problems)} in {cfg.registry_key}); "
                "deploy tars-1003-jaeger to those services before applying"
            )
        if is_on(before):
            ctx.log.info("flag %s is already on (%s)", cfg.flag, before)
            return ApplyResult(changed=False, detail=f"flag {cfg.flag} already on")
        if ctx.dry_run:
            ctx.log.info("dry run: would turn on %s in %s", cfg.flag, ctx.targets.flags_key)
            return ApplyResult(changed=False, detail=f"dry run: would turn on {cfg.flag}")
        await ctx.flags.set(cfg.flag, "on", remember=True)
        ctx.log.info("turned on %s; waiting for %s to report propagation", cfg.flag, ", ".join(cfg.services))
        lagging = await _wait_for_services(client, cfg, "on")
        if lagging:
            raise FixError(
                f"TARS-1003: flag {cfg.flag} is on but {'; '.join(lagging)} after "
                f"{cfg.flag_ack_timeout_s:g}s; check the services' logs"
            )
        return ApplyResult(changed=True, detail=f"flag {cfg.flag} on; {', '.join(cfg.services)} propagating")


@hookimpl
async def tars_rollback(ctx: Context) -> ApplyResult:
    cfg: JaegerConfig = ctx.config
    current = await ctx.flags.get(cfg.flag)
    if not is_on(current):
        ctx.log.warning("flag %s is not on (%r): nothing to roll back", cfg.flag, current)
        return ApplyResult(changed=False, detail=f"flag {cfg.flag} already off")
    if ctx.dry_run:
        ctx.log.info("dry run: would turn off %s", cfg.flag)
        return ApplyResult(changed=False, detail=f"dry run: would turn off {cfg.flag}")
    await ctx.flags.restore(cfg.flag)  # the value apply replaced: "off" or absent (both off)
    async with _client(ctx) as client:
        lagging = await _wait_for_services(client, cfg, "off")
    if lagging:  # the flag is off; a service that is down will read it when it starts
        ctx.log.warning("flag %s is off but %s", cfg.flag, "; ".join(lagging))
    return ApplyResult(changed=True, detail=f"flag {cfg.flag} off")


async def probe_services(client: Any, cfg: JaegerConfig) -> tuple[Any, Any]:
    """Send probe entries through the live jobs stream and judge both hops from what the consumer saw.

    Returns (hop 1, hop 2) :class:`~tars_1003_jaeger.scenarios.Continuity`. Hop 1 must be a child of
    the probe's producer span; hop 2 a child of the span that sent the result (the one it extracted),
    in the same trace.
    """
    from tars_1003_jaeger.scenarios import Continuity, memory_provider
    from tars_1003_jaeger.streams import StreamTracing

    provider, exporter = memory_provider()
    tracing = StreamTracing(provider)
    run = uuid.uuid4().hex[:12]
    probes = [f"{run}-{i}" for i in range(cfg.probe_messages)]
    sent: dict[str, str] = {}
    for probe in probes:
        sent[probe] = await tracing.xadd(client, cfg.stream, {"tars_probe": probe, "agent": "tars-1003-probe"})
    producers = {(s.attributes or {}).get("messaging.message.id"): s.context for s in exporter.get_finished_spans()}
    provider.shutdown()
    fields = [f"{p}:{hop}" for p in probes for hop in (1, 2)]
    values: list[str | None] = []

    async def all_recorded() -> bool:
        values[:] = await client.hmget(cfg.probe_key, fields)
        return all(values)

    with contextlib.suppress(WaitTimeout):  # what is missing then is reported per probe below
        await await_until(all_recorded, timeout=cfg.probe_timeout_s, interval=0.2, what="probe traces")
    await client.hdel(cfg.probe_key, *fields)
    await client.xdel(cfg.stream, *sent.values())
    hops: list[list[str]] = [[], []]
    ok = [0, 0]
    for i, probe in enumerate(probes):
        want = producers[sent[probe]]
        for hop in (0, 1):
            raw = values[2 * i + hop]
            if raw is None:
                hops[hop].append(f"{probe}: not processed within {cfg.probe_timeout_s:g}s")
                continue
            rec = json.loads(raw)
            parent = f"{want.span_id:016x}" if hop == 0 else rec["producer_span_id"]
            if rec["trace_id"] == f"{want.trace_id:032x}" and parent and rec["parent_span_id"] == parent:
                ok[hop] += 1
            else:
                hops[hop].append(f"{probe}: trace {rec['trace_id']} parent {rec['parent_span_id'] or '-'}")
    n = len(probes)
    return Continuity(ok[0], n, 0, tuple(hops[0][:3])), Continuity(ok[1], n, 0, tuple(hops[1][:3]))


@hookimpl
async def tars_verify(ctx: Context) -> VerifyResult:
    from tars_1003_jaeger.scenarios import pipeline_check

    cfg: JaegerConfig = ctx.config
    flag = await ctx.flags.get(cfg.flag)
    checks: dict[str, str] = {}
    async with _client(ctx) as client:
        checks["flag"] = f"{cfg.flag}={flag!r}"
        problems = _service_problems(await _registry(client, cfg), cfg, "on")
        checks["services"] = "; ".join(problems) or f"{', '.join(cfg.services)} run the fix and propagate"
        pipeline = await pipeline_check(
            ctx.targets.require("redis"),
            prefix=cfg.scratch_prefix,
            messages=cfg.pipeline_messages,
            links=cfg.links,
        )
        hop1, hop2 = await probe_services(client, cfg)
    hops = {f"library {hop}": cont for hop, cont in pipeline.items()} | {"probes hop1": hop1, "probes hop2": hop2}
    checks |= {name: str(c) + ("" if c.complete else f": {'; '.join(c.failures)}") for name, c in hops.items()}
    ok = is_on(flag) and not problems and all(c.complete for c in hops.values())
    detail = f"trace continuity {hop1.percent:.2f}% / {hop2.percent:.2f}% over {hop1.total} probes (hop 1 / hop 2)"
    return VerifyResult(ok=ok, detail=detail, checks=checks)


@hookimpl
async def tars_benchmark(ctx: Context) -> BenchmarkResult:
    from tars_1003_jaeger.scenarios import BenchSettings, benchmark

    cfg: JaegerConfig = ctx.config
    url = ctx.targets.require("redis")
    size = BenchSettings(
        messages=cfg.benchmark_messages, rounds=cfg.benchmark_rounds, sample_ratio=cfg.benchmark_sample_ratio
    )
    figures = await asyncio.to_thread(benchmark, url, prefix=f"{cfg.scratch_prefix}:bench", settings=size)
    before, after = figures.continuity_before, figures.continuity_after
    tp = figures.throughput
    metrics = [
        Metric(
            "trace continuity",
            before.percent,
            after.percent,
            "%",
            target=f"100.00% over {size.messages} messages incl. {figures.redelivered} redeliveries",
            met=after.complete,
        ),
        Metric(
            "throughput XADD+XREADGROUP+XACK vs no tracing",
            tp["plain"],
            tp["propagated"],
            "msg/s",
            target=f">= 75% of uninstrumented (aim 90%); got {figures.ratio:.0%}",
            met=figures.ratio >= 0.75,
        ),
        Metric(
            "throughput vs v1.0.0 tracing (spans, no propagation)",
            tp["unpropagated"],
            tp["propagated"],
            "msg/s",
            target=f"cost of the fix itself; got {tp['propagated'] / tp['unpropagated']:.0%}",
        ),
        Metric(
            f"throughput with {size.sample_ratio:g} root sampling vs no tracing",
            tp["plain"],
            tp["sampled"],
            "msg/s",
            target=f">= 75% of uninstrumented; got {tp['sampled'] / tp['plain']:.0%}",
            met=tp["sampled"] / tp["plain"] >= 0.75,
        ),
        Metric(
            "client CPU per message, no tracing -> propagated",
            figures.cpu_us["plain"],
            figures.cpu_us["propagated"],
            "µs/msg",
            target=f"CPU-bound throughput ratio {figures.cpu_ratio:.0%} (steadier than wall clock on a shared host)",
        ),
        Metric("per-message wall overhead vs no tracing", None, figures.overhead_us, "µs/msg"),
        Metric("per-message wall overhead vs v1.0.0 tracing", None, figures.propagation_overhead_us, "µs/msg"),
        Metric("inject (propagator into entry fields)", None, figures.inject_us, "µs/msg"),
        Metric("extract (entry fields to context)", None, figures.extract_us, "µs/msg"),
    ]
    detail = (
        f"{size.messages} messages x {size.rounds} round(s) per mode on targets.redis; "
        "full size: python benchmarks/tars-1003-jaeger_bench.py"
    )
    return BenchmarkResult(metrics=metrics, detail=detail)


@hookimpl
def tars_report(release: Release) -> ReportSection | None:
    """What the fix is and how to read its verify checks; state, phases and benchmark figures are the core's."""
    if not any(p.name == NAME for p in release.plugins):
        return None
    markdown = (
        "Producers inject W3C `traceparent`/`tracestate`/`baggage` into stream entries; consumers process "
        "each entry in a CONSUMER span whose parent is the producer span (XREADGROUP and XAUTOCLAIM), "
        "exported over OTLP with ParentBased sampling.\n\n"
        "Verify judges the running services, not the flag: probe entries sent through the live jobs stream "
        "must arrive in the producer's trace at the worker (hop 1) and at the dashboard feed (hop 2), and "
        "verify's own two-hop pipeline (with a dead consumer's entries taken over by XAUTOCLAIM) must show "
        "100% trace continuity."
    )
    return ReportSection(title="TARS-1003 Jaeger trace context", markdown=markdown)


@hookimpl
def tars_sandbox(site: SandboxSite) -> SandboxContribution:
    """The evaluation stream's producer and consumer, plus an OTLP receiver standing in for Jaeger."""
    assert site.targets.redis, "the sandbox Redis is up before plugins contribute"
    cfg = JaegerConfig()
    otlp = site.targets.otlp_endpoint
    services = []
    hints: dict[str, str] = {}
    if not otlp:
        port = site.free_port()
        otlp = f"http://127.0.0.1:{port}"
        hints["otlp_endpoint"] = otlp
        services.append(
            ServiceSpec(
                "otlp-receiver",
                [
                    site.python,
                    "-m",
                    "tars_1003_jaeger.otlp_receiver",
                    "--port",
                    str(port),
                    "--out",
                    str(site.dir / "spans.jsonl"),
                ],
                port=port,
                ready="tcp",
            )
        )
    common = [
        "--redis",
        site.targets.redis,
        "--flags-key",
        site.targets.flags_key,
        "--flag",
        cfg.flag,
        "--stream",
        cfg.stream,
        "--result-stream",
        cfg.result_stream,
        "--group",
        cfg.group,
        "--result-group",
        cfg.result_group,
        "--registry-key",
        cfg.registry_key,
        "--probe-key",
        cfg.probe_key,
        "--otlp-endpoint",
        otlp,
        "--otlp-protocol",
        cfg.otlp_protocol,
    ]
    scrape = []
    for role, name in (("producer", cfg.services[0]), ("consumer", cfg.services[1])):
        port = site.free_port()
        scrape.append(f"127.0.0.1:{port}")
        services.append(
            ServiceSpec(
                name,
                [
                    site.python,
                    "-m",
                    "tars_1003_jaeger.services",
                    role,
                    "--name",
                    name,
                    "--metrics-port",
                    str(port),
                    *common,
                ],
                port=port,
                ready="tcp",
            )
        )
    config: dict[str, Any] = {"targets": hints} if hints else {}
    return SandboxContribution(services=services, scrape_targets=scrape, config=config)


@hookimpl
async def tars_sandbox_seed(ctx: Context) -> None:
    """v1.0.0 baseline: the streams and consumer groups exist, the flag is off."""
    import redis

    cfg: JaegerConfig = ctx.config
    seeded = await ctx.flags.get(cfg.flag)
    client = _client(ctx)
    try:
        for stream, group in ((cfg.stream, cfg.group), (cfg.result_stream, cfg.result_group)):
            try:
                await client.xgroup_create(stream, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        if seeded is None:
            await ctx.flags.set(cfg.flag, "off")
    finally:
        await client.aclose()
