"""The metrics catalogue of T.A.R.S.: every raw series the recording rules read, and a simulator for them.

One table (``FAMILIES``) names each metric family with its type, labels, help text and the exporter that
produces it in production (T.A.R.S. itself, postgres_exporter, redis_exporter, node_exporter). The same
table drives four consumers so they cannot drift apart: the README's catalogue, the synthetic inputs of
the ``promtool test rules`` unit tests (``test_values``), the sandbox exporter (``exporter.py``) and the
benchmark's OpenMetrics backfill.

The simulator is closed-form: every counter is the integral of a rate with a diurnal and an hourly
harmonic, so its value at any instant is computed directly (no state, monotonic by construction), and a
histogram is a mixture of a fast and a slow log-normal population whose mix drifts through the day, so
quantiles move the way real latency does. Computing values from the timestamp lets the exporter and the
backfill share one code path and lets a backfill be written family by family, as OpenMetrics requires.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import attrs

from tars_core.model import positive

if TYPE_CHECKING:
    from tars_core.sandbox.incidents import Incident

MetricType = Literal["counter", "gauge", "histogram"]
Source = Literal["tars", "postgres_exporter", "redis_exporter", "node_exporter"]

#: Evaluation latency buckets (seconds): an evaluation runs episodes, so it takes seconds, not ms.
EVAL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0)
#: HTTP latency buckets; 0.15 is the API latency SLO threshold so the SLI reads one bucket.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Queue wait and DB query buckets.
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def format_le(bound: float) -> str:
    """Bucket bound as the Python client prints it (``1.0``, ``0.15``, ``+Inf``); rules match on it."""
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))


@attrs.frozen
class Family:
    """One metric family as the exporter exposes it (histograms by base name, counters with ``_total``)."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    source: Source
    buckets: tuple[float, ...] = ()

    @property
    def series_names(self) -> tuple[str, ...]:
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)

    @property
    def bucket_labels(self) -> tuple[str, ...]:
        return (*(format_le(b) for b in self.buckets), "+Inf")


_AGENT = ("agent_id", "agent_type", "region")

FAMILIES: tuple[Family, ...] = (
    Family(
        "tars_evaluations_total",
        "counter",
        (*_AGENT, "status"),
        "Evaluations finished, by outcome (success, error, timeout).",
        "tars",
    ),
    Family(
        "tars_evaluation_duration_seconds",
        "histogram",
        _AGENT,
        "Wall time of one evaluation run, from dequeue to result.",
        "tars",
        EVAL_BUCKETS,
    ),
    Family("tars_agent_reward", "gauge", _AGENT, "Mean episode reward of the agent's last batch.", "tars"),
    Family("tars_agent_episodes_total", "counter", _AGENT, "Training episodes completed.", "tars"),
    Family("tars_agent_training_steps_total", "counter", _AGENT, "PPO optimisation steps taken.", "tars"),
    Family(
        "tars_agent_loss",
        "gauge",
        (*_AGENT, "loss_type"),
        "Last training loss by component (policy, value, entropy).",
        "tars",
    ),
    Family(
        "tars_queue_depth",
        "gauge",
        ("queue", "region"),
        "Entries waiting in the Redis Streams work queue (XLEN minus acknowledged).",
        "tars",
    ),
    Family(
        "tars_queue_wait_seconds",
        "histogram",
        ("queue", "region"),
        "Time an entry waited between XADD and XREADGROUP.",
        "tars",
        QUEUE_BUCKETS,
    ),
    Family(
        "tars_queue_messages_processed_total",
        "counter",
        ("queue", "region", "status"),
        "Queue entries processed, by outcome (ok, failed).",
        "tars",
    ),
    Family(
        "tars_http_requests_total",
        "counter",
        ("service", "endpoint", "method", "code", "region"),
        "HTTP requests served, by status code.",
        "tars",
    ),
    Family(
        "tars_http_request_duration_seconds",
        "histogram",
        ("service", "endpoint", "method", "region"),
        "HTTP request latency measured in the ASGI middleware.",
        "tars",
        HTTP_BUCKETS,
    ),
    Family(
        "tars_db_query_duration_seconds",
        "histogram",
        ("operation", "table", "region"),
        "PostgreSQL query latency seen by the application (asyncpg).",
        "tars",
        DB_BUCKETS,
    ),
    Family(
        "tars_replication_lag_seconds",
        "gauge",
        ("source_region", "target_region"),
        "Age of the newest replicated evaluation result in the target region.",
        "tars",
    ),
    Family(
        "pg_stat_activity_count",
        "gauge",
        ("instance", "datname", "state"),
        "Backends per database and state (postgres_exporter, pg_stat_activity).",
        "postgres_exporter",
    ),
    Family(
        "pg_stat_database_xact_commit",
        "counter",
        ("instance", "datname"),
        "Transactions committed (postgres_exporter, pg_stat_database).",
        "postgres_exporter",
    ),
    Family(
        "pg_stat_database_xact_rollback",
        "counter",
        ("instance", "datname"),
        "Transactions rolled back (postgres_exporter, pg_stat_database).",
        "postgres_exporter",
    ),
    Family(
        "pg_stat_database_blks_hit",
        "counter",
        ("instance", "datname"),
        "Buffer cache hits (postgres_exporter, pg_stat_database).",
        "postgres_exporter",
    ),
    Family(
        "pg_stat_database_blks_read",
        "counter",
        ("instance", "datname"),
        "Blocks read from disk (postgres_exporter, pg_stat_database).",
        "postgres_exporter",
    ),
    Family(
        "redis_commands_processed_total",
        "counter",
        ("instance",),
        "Commands processed by the server (redis_exporter, INFO stats).",
        "redis_exporter",
    ),
    Family(
        "redis_keyspace_hits_total",
        "counter",
        ("instance",),
        "Successful key lookups (redis_exporter).",
        "redis_exporter",
    ),
    Family(
        "redis_keyspace_misses_total",
        "counter",
        ("instance",),
        "Failed key lookups (redis_exporter).",
        "redis_exporter",
    ),
    Family("redis_memory_used_bytes", "gauge", ("instance",), "used_memory (redis_exporter).", "redis_exporter"),
    Family("redis_memory_max_bytes", "gauge", ("instance",), "maxmemory (redis_exporter).", "redis_exporter"),
    Family("redis_connected_clients", "gauge", ("instance",), "Client connections (redis_exporter).", "redis_exporter"),
    Family(
        "node_cpu_seconds_total",
        "counter",
        ("instance", "cpu", "mode"),
        "CPU time per core and mode (node_exporter).",
        "node_exporter",
    ),
    Family("node_memory_MemAvailable_bytes", "gauge", ("instance",), "MemAvailable (node_exporter).", "node_exporter"),
    Family("node_memory_MemTotal_bytes", "gauge", ("instance",), "MemTotal (node_exporter).", "node_exporter"),
    Family(
        "node_network_receive_bytes_total",
        "counter",
        ("instance", "device"),
        "Bytes received per interface (node_exporter).",
        "node_exporter",
    ),
    Family(
        "node_network_transmit_bytes_total",
        "counter",
        ("instance", "device"),
        "Bytes sent per interface (node_exporter).",
        "node_exporter",
    ),
)

FAMILY_BY_SERIES: dict[str, Family] = {s: f for f in FAMILIES for s in f.series_names}
FAMILY_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}

REGIONS = (
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
    "sa-east-1",
    "ca-central-1",
)
AGENT_TYPES = ("ppo", "dqn", "a2c", "sac")
#: (service, endpoint, method, share of traffic, median latency in seconds)
ENDPOINTS = (
    ("eval-api", "/v1/evaluations", "POST", 0.20, 0.045),
    ("eval-api", "/v1/evaluations/{id}", "GET", 0.30, 0.012),
    ("eval-api", "/v1/agents/{id}/metrics", "GET", 0.15, 0.060),
    ("orchestrator", "/v1/jobs", "POST", 0.08, 0.030),
    ("orchestrator", "/v1/jobs/{id}", "GET", 0.10, 0.008),
    ("dashboard-api", "/v1/leaderboard", "GET", 0.12, 0.110),
    ("dashboard-api", "/v1/health", "GET", 0.05, 0.002),
)
CODES = (("200", 0.955), ("404", 0.025), ("400", 0.012), ("500", 0.005), ("503", 0.003))
QUEUES = ("evaluation", "training", "results")
DB_QUERIES = (
    ("select", "evaluations"),
    ("select", "agents"),
    ("insert", "evaluations"),
    ("update", "agents"),
    ("select", "episodes"),
)

#: Two values per label (three where a rule selects a rare one) for the promtool unit-test inputs:
#: they must include every value a rule's matcher selects so that each rule has data to compare.
TEST_VALUES: dict[str, tuple[str, ...]] = {
    "agent_id": ("agent-000", "agent-001"),
    "agent_type": ("ppo",),
    "region": ("us-east-1", "eu-west-1"),
    "status": ("success", "error", "timeout", "ok", "failed"),
    "loss_type": ("policy", "value"),
    "queue": ("evaluation", "training"),
    "service": ("eval-api",),
    "endpoint": ("/v1/evaluations", "/v1/leaderboard"),
    "method": ("GET",),
    "code": ("200", "404", "503"),
    "operation": ("select",),
    "table": ("evaluations", "agents"),
    "source_region": ("us-east-1",),
    "target_region": ("eu-west-1", "ap-southeast-1"),
    "instance": ("db-0:9187", "db-1:9187"),
    "datname": ("tars", "postgres"),
    "state": ("active", "idle"),
    "cpu": ("0", "1"),
    "mode": ("idle", "user", "system"),
    "device": ("eth0", "lo"),
}


# -- incidents (``tars-run sandbox incident``) ---------------------------------------------------------------

#: The families an incident applies to when it names none: the request, evaluation and latency families the
#: SLOs read (queue and database families only when named).
INCIDENT_DEFAULTS: dict[str, tuple[str, ...]] = {
    "errors": ("tars_http_requests_total", "tars_evaluations_total"),
    "latency": ("tars_http_request_duration_seconds", "tars_evaluation_duration_seconds"),
    "traffic": (
        "tars_http_requests_total",
        "tars_http_request_duration_seconds",
        "tars_evaluations_total",
        "tars_evaluation_duration_seconds",
    ),
}


@attrs.frozen
class Outcome:
    """Where an errors incident moves events in a family: the outcome label and its bad values.

    Events leave the good series and land in the bad series of the same group (the series that differ only
    in the outcome label), in proportion to the bad series' normal rates, so totals stay what they were.
    """

    label: str
    bad: frozenset[str]


OUTCOMES: dict[str, Outcome] = {
    "tars_http_requests_total": Outcome("code", frozenset(c for c, _ in CODES if c.startswith("5"))),
    "tars_evaluations_total": Outcome("status", frozenset({"error", "timeout"})),
    "tars_queue_messages_processed_total": Outcome("status", frozenset({"failed"})),
}


def takes(kind: str, family: Family) -> bool:
    """Can an incident of ``kind`` change ``family``? errors: families with an outcome label; latency:
    histograms; traffic: counters and histograms (gauges are levels, not events)."""
    if kind == "errors":
        return family.name in OUTCOMES
    if kind == "latency":
        return family.type == "histogram"
    return family.type in ("counter", "histogram")


@attrs.frozen
class Window:
    """An incident as the simulator applies it: simulation seconds, and the families it changes here."""

    kind: str
    value: float
    start: float
    end: float
    match: tuple[tuple[str, str], ...]
    families: frozenset[str]

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match)


def windows(incidents: Iterable[Incident], origin: float) -> tuple[Window, ...]:
    """``incidents`` (unix times) in the time of a simulation that counts from ``origin``. Families the
    catalogue lacks or the kind cannot change are left out (:func:`ignored_families` names them)."""
    out = []
    for inc in incidents:
        names = inc.families or INCIDENT_DEFAULTS[inc.kind]
        fams = frozenset(n for n in names if n in FAMILY_BY_NAME and takes(inc.kind, FAMILY_BY_NAME[n]))
        if fams:
            out.append(Window(inc.kind, inc.value, inc.start - origin, inc.end - origin, tuple(inc.match), fams))
    return tuple(out)


def ignored_families(incident: Incident) -> list[str]:
    """The families ``incident`` names that this catalogue cannot apply it to (unknown, or the wrong type)."""
    return [n for n in incident.families if n not in FAMILY_BY_NAME or not takes(incident.kind, FAMILY_BY_NAME[n])]


_Segment = tuple[float, float, float, float, float]  # (from, to, traffic factor, latency factor, error share)


def _segments(t: float, ws: Sequence[Window]) -> list[_Segment]:
    """[0, t] cut wherever a window starts or ends, with the combined effect of the windows on each piece:
    traffic and latency factors multiply, error shares combine as 1 − Π(1 − r)."""
    if t <= 0:
        return []
    cuts = sorted({0.0, t, *(x for w in ws for x in (w.start, w.end) if 0.0 < x < t)})
    out = []
    for a, b in itertools.pairwise(cuts):
        k = f = keep = 1.0
        for w in ws:
            if w.start <= a and b <= w.end:
                if w.kind == "traffic":
                    k *= w.value
                elif w.kind == "latency":
                    f *= w.value
                else:
                    keep *= 1.0 - w.value
        out.append((a, b, k, f, 1.0 - keep))
    return out


def _counter(rate: _Rate, segments: Sequence[_Segment], can_fail: bool) -> tuple[float, float]:
    """(value, events turned bad): the integral of the rate scaled piece by piece."""
    value = lost = 0.0
    for a, b, k, _, e in segments:
        inc = k * (rate.integral(b) - rate.integral(a))
        if can_fail and e:
            value += inc * (1.0 - e)
            lost += inc * e
        else:
            value += inc
    return value, lost


@attrs.frozen
class Topology:
    """How big the simulated deployment is. Every agent is evaluated in every region (agents × regions)."""

    agents: int = attrs.field(default=20, validator=positive)
    regions: int = attrs.field(default=3, validator=positive)
    hosts: int = attrs.field(default=3, validator=positive)
    replicas: int = attrs.field(default=3, validator=positive)
    cpus: int = attrs.field(default=4, validator=positive)
    seed: int = 1002


@attrs.frozen
class Hist:
    """A histogram sample: cumulative bucket counts (le string → count), sum and count."""

    buckets: tuple[tuple[str, float], ...]
    sum: float
    count: float


_DAY = 86400.0
_HOUR = 3600.0


@attrs.frozen
class _Rate:
    """r(t) = r0 · (1 + a1·sin(2πt/day + p1) + a2·sin(2πt/hour + p2)), with a1 + a2 < 1 so r > 0."""

    r0: float
    a1: float
    p1: float
    a2: float
    p2: float

    def integral(self, t: float) -> float:
        w1, w2 = 2 * math.pi / _DAY, 2 * math.pi / _HOUR
        return self.r0 * (
            t
            + self.a1 / w1 * (math.cos(self.p1) - math.cos(w1 * t + self.p1))
            + self.a2 / w2 * (math.cos(self.p2) - math.cos(w2 * t + self.p2))
        )

    def at(self, t: float) -> float:
        return self.r0 * (
            1
            + self.a1 * math.sin(2 * math.pi * t / _DAY + self.p1)
            + self.a2 * math.sin(2 * math.pi * t / _HOUR + self.p2)
        )


def _lognormal_cdf(x: float, median: float, sigma: float) -> float:
    return 0.5 * (1 + math.erf((math.log(x) - math.log(median)) / (sigma * math.sqrt(2))))


@attrs.frozen
class _HistParams:
    fast: _Rate
    slow: _Rate
    fast_frac: tuple[float, ...]  # CDF per bucket bound of the fast population
    slow_frac: tuple[float, ...]
    fast_mean: float
    slow_mean: float
    les: tuple[str, ...]
    bounds: tuple[float, ...]  # the bucket bounds behind ``les`` (inf last)
    fast_median: float
    slow_median: float

    def fractions(self, factor: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The CDFs per bucket bound when every latency is ``factor`` times longer: F(b / factor)."""
        if factor == 1.0:
            return self.fast_frac, self.slow_frac
        return (
            tuple(1.0 if math.isinf(b) else _lognormal_cdf(b / factor, self.fast_median, 0.5) for b in self.bounds),
            tuple(1.0 if math.isinf(b) else _lognormal_cdf(b / factor, self.slow_median, 0.6) for b in self.bounds),
        )

    def sample_with(self, segments: Sequence[_Segment]) -> Hist:
        """The histogram when each piece of time has its own traffic and latency factor: the observations
        of a piece land in the buckets of F(b / factor), so cumulative counts grow in le and in time."""
        acc = [0.0] * len(self.les)
        total = 0.0
        for a, b, k, f, _ in segments:
            df = k * (self.fast.integral(b) - self.fast.integral(a))
            ds = k * (self.slow.integral(b) - self.slow.integral(a))
            ff, fs = self.fractions(f)
            for i in range(len(acc)):
                acc[i] += df * ff[i] + ds * fs[i]
            total += f * (df * self.fast_mean + ds * self.slow_mean)
        buckets = tuple((le, float(math.floor(c))) for le, c in zip(self.les, acc, strict=True))
        return Hist(buckets, total, buckets[-1][1])

    def sample(self, t: float) -> Hist:
        cf, cs = self.fast.integral(t), self.slow.integral(t)
        buckets = tuple(
            (le, float(math.floor(cf * ff + cs * fs)))
            for le, ff, fs in zip(self.les, self.fast_frac, self.slow_frac, strict=True)
        )
        count = buckets[-1][1]
        return Hist(buckets, cf * self.fast_mean + cs * self.slow_mean, count)


@attrs.frozen
class _Gauge:
    base: float
    amp: float
    phase: float
    noise: float
    period: float = _DAY
    integer: bool = False

    def at(self, t: float, salt: int) -> float:
        jitter = (((salt * 2654435761 + int(t) * 40503) % 10007) / 10007.0 - 0.5) * 2 * self.noise
        v = self.base * (1 + self.amp * math.sin(2 * math.pi * t / self.period + self.phase) + jitter)
        return float(round(v)) if self.integer else v


Series = tuple[tuple[tuple[str, str], ...], object]  # (label pairs, parameters)


class Simulator:
    """Realistic T.A.R.S. traffic for every family of the catalogue, as a pure function of time.

    ``with_instance``: include the ``instance`` label on exporter families (the backfill writes it;
    a scraped exporter must not, because Prometheus attaches the target's own ``instance``).
    ``extra_labels``: target labels added to every tars_* series in a backfill (``job``, ``instance``).
    """

    def __init__(self, topology: Topology, *, with_instance: bool = True) -> None:
        self.topology = topology
        self.with_instance = with_instance
        rng = random.Random(topology.seed)
        self.series: dict[str, list[Series]] = {f.name: [] for f in FAMILIES}
        self._build(rng)
        self._groups: dict[str, list[tuple[list[int], list[tuple[int, float]]]]] = {}

    # -- construction -------------------------------------------------------------------------------
    def _rate(self, rng: random.Random, r0: float) -> _Rate:
        return _Rate(
            r0 * rng.uniform(0.7, 1.3),
            rng.uniform(0.3, 0.5),
            rng.uniform(0, 2 * math.pi),
            rng.uniform(0.05, 0.2),
            rng.uniform(0, 2 * math.pi),
        )

    def _hist(self, rng: random.Random, fam: Family, r0: float, median: float) -> _HistParams:
        m_fast = median * rng.uniform(0.8, 1.25)
        m_slow = m_fast * rng.uniform(4, 8)
        bounds = (*fam.buckets, math.inf)
        ff = tuple(1.0 if math.isinf(b) else _lognormal_cdf(b, m_fast, 0.5) for b in bounds)
        fs = tuple(1.0 if math.isinf(b) else _lognormal_cdf(b, m_slow, 0.6) for b in bounds)
        fast = self._rate(rng, r0)
        slow_rate = self._rate(rng, r0 * rng.uniform(0.03, 0.12))
        slow = attrs.evolve(slow_rate, a1=0.8, a2=0.15)  # the slow share peaks at its own time of day
        return _HistParams(
            fast,
            slow,
            ff,
            fs,
            m_fast * math.exp(0.5**2 / 2),
            m_slow * math.exp(0.6**2 / 2),
            fam.bucket_labels,
            bounds,
            m_fast,
            m_slow,
        )

    def _add(self, name: str, labels: dict[str, str], params: object) -> None:
        fam = next(f for f in FAMILIES if f.name == name)
        pairs = tuple((k, labels[k]) for k in fam.labels if k != "instance" or self.with_instance)
        self.series[name].append((pairs, params))

    def _build(self, rng: random.Random) -> None:
        topo = self.topology
        fams = {f.name: f for f in FAMILIES}
        regions = [REGIONS[i % len(REGIONS)] if i < len(REGIONS) else f"region-{i}" for i in range(topo.regions)]
        for a in range(topo.agents):
            agent, atype = f"agent-{a:03d}", AGENT_TYPES[a % len(AGENT_TYPES)]
            skill = rng.uniform(0.2, 0.9)
            speed = rng.uniform(1.0, 12.0)  # median evaluation seconds of this agent
            for region in regions:
                lab = {"agent_id": agent, "agent_type": atype, "region": region}
                per_sec = rng.uniform(0.02, 0.2)
                for status, share in (("success", 0.985), ("error", 0.01), ("timeout", 0.005)):
                    self._add("tars_evaluations_total", {**lab, "status": status}, self._rate(rng, per_sec * share))
                self._add(
                    "tars_evaluation_duration_seconds",
                    lab,
                    self._hist(rng, fams["tars_evaluation_duration_seconds"], per_sec, speed),
                )
                self._add("tars_agent_reward", lab, _Gauge(200 * skill, 0.15, rng.uniform(0, 6), 0.05))
                self._add("tars_agent_episodes_total", lab, self._rate(rng, per_sec * 4))
                self._add("tars_agent_training_steps_total", lab, self._rate(rng, per_sec * 40))
                for lt, base in (("policy", 0.05), ("value", 0.4), ("entropy", 0.01)):
                    self._add(
                        "tars_agent_loss",
                        {**lab, "loss_type": lt},
                        _Gauge(base, 0.3, rng.uniform(0, 6), 0.1, period=_HOUR),
                    )
        n_combos = max(topo.agents * topo.regions, 1)
        for region in regions:
            for q, depth in zip(QUEUES, (40.0, 8.0, 15.0), strict=True):
                lab = {"queue": q, "region": region}
                self._add(
                    "tars_queue_depth", lab, _Gauge(depth * n_combos / 100, 0.6, rng.uniform(0, 6), 0.2, integer=True)
                )
                self._add(
                    "tars_queue_wait_seconds", lab, self._hist(rng, fams["tars_queue_wait_seconds"], n_combos / 50, 0.3)
                )
                for status, share in (("ok", 0.997), ("failed", 0.003)):
                    self._add(
                        "tars_queue_messages_processed_total",
                        {**lab, "status": status},
                        self._rate(rng, n_combos / 50 * share),
                    )
            for service, endpoint, method, share, median in ENDPOINTS:
                lab = {"service": service, "endpoint": endpoint, "method": method, "region": region}
                rps = 40.0 * share
                for code, cshare in CODES:
                    self._add("tars_http_requests_total", {**lab, "code": code}, self._rate(rng, rps * cshare))
                self._add(
                    "tars_http_request_duration_seconds",
                    lab,
                    self._hist(rng, fams["tars_http_request_duration_seconds"], rps, median),
                )
            for op, table in DB_QUERIES:
                self._add(
                    "tars_db_query_duration_seconds",
                    {"operation": op, "table": table, "region": region},
                    self._hist(rng, fams["tars_db_query_duration_seconds"], 25.0, 0.004),
                )
            for target in regions:
                if target != region:
                    self._add(
                        "tars_replication_lag_seconds",
                        {"source_region": region, "target_region": target},
                        _Gauge(rng.uniform(0.2, 2.0), 0.5, rng.uniform(0, 6), 0.3),
                    )
        hosts = topo.hosts if self.with_instance else 1
        for h in range(hosts):
            for db in ("tars", "postgres"):
                inst = {"instance": f"db-{h}:9187", "datname": db}
                load = 1.0 if db == "tars" else 0.02
                for state, n in (("active", 12.0), ("idle", 30.0), ("idle in transaction", 2.0)):
                    self._add(
                        "pg_stat_activity_count",
                        {**inst, "state": state},
                        _Gauge(n * load + 1, 0.4, rng.uniform(0, 6), 0.2, integer=True),
                    )
                self._add("pg_stat_database_xact_commit", inst, self._rate(rng, 300 * load))
                self._add("pg_stat_database_xact_rollback", inst, self._rate(rng, 2 * load))
                self._add("pg_stat_database_blks_hit", inst, self._rate(rng, 9000 * load))
                self._add("pg_stat_database_blks_read", inst, self._rate(rng, 150 * load))
            rinst = {"instance": f"redis-{h}:9121"}
            self._add("redis_commands_processed_total", rinst, self._rate(rng, 2500))
            self._add("redis_keyspace_hits_total", rinst, self._rate(rng, 900))
            self._add("redis_keyspace_misses_total", rinst, self._rate(rng, 60))
            self._add("redis_memory_used_bytes", rinst, _Gauge(1.2e9, 0.2, rng.uniform(0, 6), 0.02))
            self._add("redis_memory_max_bytes", rinst, _Gauge(4e9, 0.0, 0.0, 0.0))
            self._add("redis_connected_clients", rinst, _Gauge(80, 0.3, rng.uniform(0, 6), 0.1, integer=True))
            ninst = f"node-{h}:9100"
            for cpu in range(topo.cpus):
                for mode, share in (("idle", 0.55), ("user", 0.3), ("system", 0.1), ("iowait", 0.05)):
                    self._add(
                        "node_cpu_seconds_total",
                        {"instance": ninst, "cpu": str(cpu), "mode": mode},
                        self._rate(rng, share),
                    )
            self._add("node_memory_MemTotal_bytes", {"instance": ninst}, _Gauge(32e9, 0.0, 0.0, 0.0))
            self._add(
                "node_memory_MemAvailable_bytes", {"instance": ninst}, _Gauge(14e9, 0.25, rng.uniform(0, 6), 0.02)
            )
            for dev, bps in (("eth0", 4e6), ("lo", 2e5)):
                self._add("node_network_receive_bytes_total", {"instance": ninst, "device": dev}, self._rate(rng, bps))
                self._add(
                    "node_network_transmit_bytes_total", {"instance": ninst, "device": dev}, self._rate(rng, bps * 0.7)
                )

    # -- sampling -----------------------------------------------------------------------------------
    def samples(
        self, family: Family, t: float, windows: Sequence[Window] = ()
    ) -> Iterator[tuple[tuple[tuple[str, str], ...], object]]:
        """(label pairs, value) for every series of ``family`` at ``t`` seconds since the simulated start.

        The value is a float for counters and gauges and a :class:`Hist` for histograms. ``windows`` are the
        incidents (:func:`windows`); values stay a pure function of (t, windows).
        """
        started = [w for w in windows if family.name in w.families and w.start < t]
        if started:
            yield from self._incident_samples(family, t, started)
            return
        for i, (pairs, params) in enumerate(self.series[family.name]):
            if isinstance(params, _Rate):
                yield pairs, params.integral(t)
            elif isinstance(params, _Gauge):
                yield pairs, params.at(t, i)
            elif isinstance(params, _HistParams):
                yield pairs, params.sample(t)

    def _outcome_groups(self, name: str, outcome: Outcome) -> list[tuple[list[int], list[tuple[int, float]]]]:
        """Per group of series that differ only in the outcome label: the good indices, and the bad ones with
        the share of moved events each receives (its normal rate over the group's bad rate)."""
        if name not in self._groups:
            by_key: dict[tuple[tuple[str, str], ...], tuple[list[int], list[int]]] = {}
            for i, (pairs, _) in enumerate(self.series[name]):
                key = tuple(p for p in pairs if p[0] != outcome.label)
                good, bad = by_key.setdefault(key, ([], []))
                (bad if dict(pairs)[outcome.label] in outcome.bad else good).append(i)
            groups = []
            for good, bad in by_key.values():
                rates = [self._rate_of(name, j).r0 for j in bad]
                groups.append((good, [(j, r / sum(rates)) for j, r in zip(bad, rates, strict=True)]))
            self._groups[name] = groups
        return self._groups[name]

    def _rate_of(self, name: str, i: int) -> _Rate:
        params = self.series[name][i][1]
        assert isinstance(params, _Rate)
        return params

    def _incident_samples(
        self, family: Family, t: float, ws: Sequence[Window]
    ) -> Iterator[tuple[tuple[tuple[str, str], ...], object]]:
        series = self.series[family.name]
        mine = [[w for w in ws if w.selects(dict(pairs))] for pairs, _ in series]
        values: list[object] = []
        lost = [0.0] * len(series)
        outcome = OUTCOMES.get(family.name) if any(w.kind == "errors" for w in ws) else None
        can_fail: set[int] = set()
        if outcome is not None:
            for good, bad in self._outcome_groups(family.name, outcome):
                if bad:
                    can_fail.update(good)
        for i, (_, params) in enumerate(series):
            if isinstance(params, _Rate):
                if mine[i]:
                    counted, lost[i] = _counter(params, _segments(t, mine[i]), i in can_fail)
                    values.append(counted)
                else:
                    values.append(params.integral(t))
            elif isinstance(params, _HistParams):
                values.append(params.sample_with(_segments(t, mine[i])) if mine[i] else params.sample(t))
            else:
                values.append(params.at(t, i) if isinstance(params, _Gauge) else None)
        if outcome is not None and any(lost):
            for good, bad in self._outcome_groups(family.name, outcome):
                moved = sum(lost[g] for g in good)
                for j, share in bad:
                    received = values[j]
                    assert isinstance(received, float)
                    values[j] = received + moved * share
        for (pairs, _), value in zip(series, values, strict=True):
            yield pairs, value

    def series_count(self) -> int:
        return sum(
            len(s) * (len(f.buckets) + 3 if f.type == "histogram" else 1)
            for f in FAMILIES
            for s in [self.series[f.name]]
        )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_openmetrics(
    sim: Simulator,
    path: str | os.PathLike[str],
    *,
    start: float,
    end: float,
    step: float,
    t0: float,
    extra_labels: dict[str, str] | None = None,
    incidents: Iterable[Incident] = (),
) -> int:
    """Write samples from ``start`` to ``end`` (unix seconds, inclusive) every ``step`` as OpenMetrics.

    ``t0`` is the unix time the simulation counts from (counters are 0 there). Families are written one
    after the other (OpenMetrics forbids interleaving them); within a family, timestamps ascend. tars_*
    series get ``extra_labels`` (the target labels a scrape would add); ``incidents`` (unix times) change the
    values as they change a scraped exporter's. Returns the number of samples.
    """
    wins = windows(incidents, t0)
    n = 0
    times = []
    ts = start
    while ts <= end + 1e-9:
        times.append(ts)
        ts += step
    extra = extra_labels or {}
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        for fam in FAMILIES:
            # OpenMetrics requires counter samples to end in _total; postgres_exporter's counters do not,
            # so they are typed unknown here. The TSDB stores samples, not types: queries are unaffected.
            typ = fam.type if fam.type != "counter" or fam.name.endswith("_total") else "unknown"
            fam_name = fam.name[: -len("_total")] if typ == "counter" else fam.name
            fh.write(f"# TYPE {fam_name} {typ}\n")
            add = extra if fam.source == "tars" else {}
            prefixes = []
            for pairs, _ in sim.series[fam.name]:
                all_pairs = (*pairs, *add.items())
                prefixes.append(",".join(f'{k}="{_escape(v)}"' for k, v in all_pairs))
            for t in times:
                tsec = f"{t:.3f}"
                rel = t - t0
                for prefix, (_, value) in zip(prefixes, sim.samples(fam, rel, wins), strict=True):
                    if isinstance(value, Hist):
                        sep = "," if prefix else ""
                        for le, c in value.buckets:
                            fh.write(f'{fam.name}_bucket{{{prefix}{sep}le="{le}"}} {c:.0f} {tsec}\n')
                        fh.write(f"{fam.name}_sum{{{prefix}}} {value.sum:.6f} {tsec}\n")
                        fh.write(f"{fam.name}_count{{{prefix}}} {value.count:.0f} {tsec}\n")
                        n += len(value.buckets) + 2
                    else:
                        fh.write(f"{fam.name}{{{prefix}}} {value!r} {tsec}\n")
                        n += 1
        fh.write("# EOF\n")
    return n
