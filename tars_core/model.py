"""The values that cross the boundary between the core and a plugin.

Everything here is a plain attrs class so that plugins can build them without importing the runner,
and so that the ledger and the reports can serialise them with cattrs without special cases.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from tars_core.errors import TargetError

if TYPE_CHECKING:
    from tars_core.flags import FeatureFlags
    from tars_core.state import PluginStateStore

Kind = Literal["hotfix", "monitor"]
Phase = Literal["apply", "verify", "rollback", "benchmark"]
Verdict = Literal["pass", "fail", "inconclusive"]
GateKind = Literal["preflight", "observe"]


class _Text(str, enum.Enum):
    """A string enum whose ``str()`` is its value, so ledger rows, JSON and reports carry plain words."""

    def __str__(self) -> str:
        return str(self.value)


class Outcome(_Text):
    """How one phase of one plugin ended: the ``outcome`` column of the ledger and of every report.

    ``UNREACHED``: ``tars_apply`` raised :class:`~tars_core.errors.TargetError`, i.e. it stopped at an
    unusable target before changing anything, so the automatic rollback that follows is a recorded no-op.
    ``UNKNOWN``: a hook timed out and its worker thread did not stop within the grace period; nobody
    knows what it changed, so nothing is rolled back over it (exit 4, manual action).
    """

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    UNREACHED = "unreached"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"
    DRY_RUN = "dry-run"
    UNKNOWN = "unknown"


class PluginState(_Text):
    """Where a fix stands on the target, as the ledger records it per release and plugin."""

    NOT_APPLIED = "not_applied"
    APPLYING = "applying"
    APPLIED = "applied"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    UNKNOWN = "unknown"


class ExitCode(enum.IntEnum):
    """The exit-code contract of ``tars-run`` (DESIGN.md, "Fixed contracts")."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    LOCKED = 3
    MANUAL_ACTION = 4
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _EXIT_MEANINGS[self]


_EXIT_MEANINGS = {
    ExitCode.OK: "ok",
    ExitCode.FAILED: "a fix failed (rolled back by policy)",
    ExitCode.BAD_INPUT: "bad input",
    ExitCode.LOCKED: "another run holds the lock",
    ExitCode.MANUAL_ACTION: "a rollback failed or a hook would not stop: manual action needed",
    ExitCode.INTERRUPTED: "interrupted (rolled back by policy)",
}


# -- validators for config classes (here, not in tars_core.config, so a plugin's entry-point module can
#    use them without importing cattrs and yaml at discovery)
def positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator for a count, size or duration that must be above zero.

    Its message reaches the user as is (``plugins.tars-1004-db: attempts must be > 0, got 0``, see
    :func:`_format_exception`), so a plugin's config class uses it instead of writing its own.
    """
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator for a value where zero means "none" (a grace period, a coefficient)."""
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def unit_interval(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator for a share or probability written as a fraction (``canary_fraction: 0.1``)."""
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def non_empty(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    """attrs validator for a name (a flag, a Redis key, a schema): an empty one would silently address
    something else (the flag named "", the hash named "")."""
    if not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")


def percentage(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator for a share written as a percentage (``freeze_below_percent: 10``)."""
    if not 0 <= value <= 100:
        raise ValueError(f"{attribute.name} must be a percentage between 0 and 100, got {value!r}")


@attrs.frozen
class PluginInfo:
    """What a plugin says about itself; returned by ``tars_plugin_info``.

    ``requires`` names plugins that must be applied before this one; the runner orders the release by it
    and refuses a cycle or a requirement that is not installed. ``config`` is the attrs class of the
    plugin's ``plugins.<name>`` config section (``None``: the plugin takes no config); the core structures
    the section into it with cattrs so a typo is reported with its path before anything runs.
    """

    name: str
    title: str
    requires: Sequence[str] = ()
    kind: Kind = "hotfix"
    fix_id: str | None = None
    config: type | None = None
    description: str = ""
    risk: str = ""


@attrs.frozen
class ApplyResult:
    """Outcome of ``tars_apply`` or ``tars_rollback``.

    ``changed`` is false when the target was already in the wanted state: the conformance check relies on
    a second apply reporting ``changed=False``. A hook may also return ``None`` (changed unknown).
    """

    changed: bool = True
    detail: str = ""


@attrs.frozen
class VerifyResult:
    """Outcome of ``tars_verify``: is the fix in place and behaving as intended on the target?

    ``ok`` false is a failed verification (the release rolls back). ``checks`` maps a check's name to a
    short human result, shown in reports so an SRE can see *which* property did not hold.
    """

    ok: bool
    detail: str = ""
    checks: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Metric:
    """One before/after figure from ``tars_benchmark``; ``target`` states what it is judged against."""

    name: str
    before: float | None
    after: float
    unit: str
    target: str = ""
    met: bool | None = None


@attrs.frozen
class BenchmarkResult:
    metrics: Sequence[Metric] = ()
    detail: str = ""


@attrs.frozen
class ReportSection:
    """A plugin's section of the release report (Markdown body plus machine-readable data)."""

    title: str
    markdown: str = ""
    data: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Targets:
    """Where the running T.A.R.S. deployment lives (the ``targets`` config section).

    Plugins read only the keys they need and raise ``FixError`` naming the key when it is missing.
    """

    postgres: str | None = None
    redis: str | None = None
    prometheus_url: str | None = None
    prometheus_rules_dir: str | None = None
    grafana_dashboards_dir: str | None = None
    grafana_url: str | None = None
    websocket_url: str | None = None
    otlp_endpoint: str | None = None
    flags_key: str = "tars:feature_flags"

    def require(self, key: str) -> str:
        """The value of ``targets.<key>``, or a ``FixError`` that tells the user which key to set."""
        value = getattr(self, key)
        if not value:
            raise TargetError(f"targets.{key} is not set: add it to the config (or run against the sandbox)")
        return str(value)


@attrs.define
class Context:
    """What a phase hook receives.

    ``state_dir`` is the plugin's own persistent folder (``.tars/plugins/<name>/``) for files its
    rollback needs (backups); ``state`` is a JSON store in that folder for the small facts a rollback
    needs (a previous value, what apply created); ``flags`` reads and writes the feature flags the
    running services obey (with remember/restore of the value apply replaced).
    """

    plugin: PluginInfo
    config: Any
    targets: Targets
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    dry_run: bool
    flags: FeatureFlags
    state_dir: Path
    release: str = "v1.0.1"
    phase: str = ""
    state: PluginStateStore = attrs.field(
        default=attrs.Factory(lambda self: _state_store(self.state_dir), takes_self=True)
    )


def _state_store(state_dir: Path) -> PluginStateStore:
    from tars_core.state import PluginStateStore

    return PluginStateStore(state_dir / "state.json")


@attrs.frozen
class ServiceSpec:
    """A long-running process a plugin adds to the sandbox (a hub, a producer, an exporter, a trainer).

    ``ready`` says how readiness is checked: ``"tcp"`` waits for ``port`` to accept, ``"http:/path"``
    waits for a 2xx on that path, ``None`` waits only for the process to stay up.
    """

    name: str
    argv: Sequence[str]
    port: int | None = None
    ready: str | None = "tcp"
    env: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class SandboxContribution:
    """What a plugin adds to the sandbox; returned by ``tars_sandbox``.

    ``config`` is the plugin's section of the generated ``.tars/sandbox/tars.yaml``; ``scrape_targets``
    are ``host:port`` exporters the sandbox Prometheus scrapes; ``remote_write`` are URLs the sandbox
    Prometheus pushes its samples to (remote write 1.0), only the series whose name matches
    ``remote_write_keep`` when it is set (a receiver that needs a few series should not get them all).
    """

    services: Sequence[ServiceSpec] = ()
    scrape_targets: Sequence[str] = ()
    config: Mapping[str, Any] = attrs.field(factory=dict)
    remote_write: Sequence[str] = ()
    remote_write_keep: str | None = None


@attrs.define
class SandboxSite:
    """The sandbox being built, as ``tars_sandbox`` sees it.

    ``targets`` already point at the sandbox's own PostgreSQL, Redis and Prometheus; ``dir`` is the
    plugin's folder under ``.tars/sandbox/`` for its files; ``python`` is the interpreter to run plugin
    services with (``[site.python, "-m", "my_plugin.hub", ...]``).
    """

    dir: Path
    targets: Targets
    python: str

    def free_port(self) -> int:
        """A loopback TCP port that is free now (the sandbox keeps it for the services' lifetime)."""
        from tars_core.processes import free_port

        return free_port()


@attrs.frozen
class PhaseRecord:
    """One ledger row: a phase of a plugin in a run."""

    run_id: str
    plugin: str
    phase: str
    outcome: str  # an Outcome value
    started_at: str
    ended_at: str | None = None
    error: str | None = None
    detail: str | None = None
    version: str = ""
    config_digest: str = ""


@attrs.frozen
class Evidence:
    """One observation a judgement rests on: the query a monitor ran, the value it got and when.

    Kept with the judgement in the ledger and the report, so a rolled-back fix can be argued about with
    the numbers that rolled it back (``value`` is ``None`` when the query returned no data).
    """

    query: str
    value: float | None
    at: str
    detail: str = ""


@attrs.frozen
class Judgement:
    """A monitor's verdict on a release (``tars_preflight``) or on one fix (``tars_observe``).

    ``fail`` is handled like a failed verify; ``inconclusive`` (no data, a query that failed, a monitor
    that raised) follows ``release.on_inconclusive``, so a blind monitor never passes a release silently.
    ``reasons`` are one-line sentences for people (the first is the one the final line quotes);
    ``monitor`` is filled in by the runner.
    """

    verdict: Verdict
    reasons: Sequence[str] = ()
    evidence: Sequence[Evidence] = ()
    score: float | None = None
    monitor: str = ""


@attrs.frozen
class Change:
    """What ``tars_observe`` is told about the fix it watches.

    ``flags`` are the feature flags whose value the fix's apply changed (name -> new value; empty when
    ``targets.redis`` is not set); ``canary`` names the ones set to a fraction (``"ws_fix=0.1"``), i.e. the
    share of traffic the new code serves, ``None`` when the fix went to everyone at once.
    """

    plugin: str
    fix_id: str | None
    applied_at: str
    flags: Mapping[str, str] = attrs.field(factory=dict)
    canary: str | None = None
    bake_seconds: float = 0.0


@attrs.frozen
class Plan:
    """What ``tars_preflight`` sees: the release about to be applied, in order.

    ``reliability`` (``release.reliability`` in the config) marks a release whose purpose is to restore
    reliability: an error-budget policy lets it through with a warning instead of freezing it.
    """

    release: str
    plugins: Sequence[PluginInfo]
    reliability: bool = False


@attrs.frozen
class JudgementRecord:
    """One ledger row of ``tars_judgements``: a judgement with who judged what, in which run, when.

    ``plugin`` is the fix observed, ``None`` for a preflight (which judges the whole release).
    """

    run_id: str
    monitor: str
    plugin: str | None
    kind: GateKind
    verdict: Verdict
    reasons: Sequence[str]
    evidence: Sequence[Evidence]
    score: float | None
    started_at: str
    ended_at: str


@attrs.frozen
class Release:
    """What ``tars_report`` sees: the release as the ledger knows it, secrets already redacted."""

    name: str
    plugins: Sequence[PluginInfo]
    states: Mapping[str, str]  # plugin name -> a PluginState value
    phases: Sequence[PhaseRecord]
    benchmarks: Mapping[str, BenchmarkResult]
    targets: Mapping[str, str | None]
    report_dir: Path
    judgements: Sequence[JudgementRecord] = ()
