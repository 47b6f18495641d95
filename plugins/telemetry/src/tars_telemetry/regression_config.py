"""The ``plugins.tars-regression-monitor`` config section (attrs classes the core structures with cattrs).

Only attrs and the core's validators at import time, so the entry-point module stays cheap. No ``from
__future__ import annotations``: cattrs reads these annotations at run time. The metric kinds and
directions are spelled out here (not imported from ``judges``) for the same reason; a test keeps the two
lists equal.
"""

import re
from typing import Any

import attrs

from tars_core import non_empty, non_negative, positive, unit_interval

#: the judges' metric kinds (tars_telemetry.judges.KINDS; a test checks they agree)
KINDS = ("latency", "errors", "throughput", "memory", "counts", "gauge")
DIRECTIONS = ("increase", "decrease", "either")


def _kind(_: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if value not in KINDS:
        raise ValueError(f"{attribute.name}: unknown metric kind {value!r}: use one of {', '.join(KINDS)}")


def _selector(_: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name} is empty: give a PromQL expression (e.g. a tars:regression:* series)")


def _bad(_: object, attribute: "attrs.Attribute[Any]", value: str | None) -> None:
    if value is not None and value not in DIRECTIONS:
        raise ValueError(f"{attribute.name}: {value!r} is not one of {', '.join(DIRECTIONS)}")


def _optional_positive(_: object, attribute: "attrs.Attribute[Any]", value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _optional_fraction(_: object, attribute: "attrs.Attribute[Any]", value: float | None) -> None:
    if value is not None and not 0 <= value < 1:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value}")


def _per_kind(_: object, attribute: "attrs.Attribute[Any]", value: dict[str, float]) -> None:
    for kind, number in value.items():
        if kind not in KINDS:
            raise ValueError(f"{attribute.name}: unknown metric kind {kind!r}: use one of {', '.join(KINDS)}")
        if not 0 <= number < 10:
            raise ValueError(f"{attribute.name}.{kind} must be a relative change in [0, 10), got {number}")


def _label(_: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    if value and not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", value):
        raise ValueError(f"{attribute.name}: {value!r} is not a Prometheus label name")


@attrs.define
class MetricSpec:
    """One metric the gate judges: a PromQL ``selector`` (one series per instance, e.g. per service),
    its ``kind`` (which test), the direction that hurts (``bad``, default by kind), and what is asked of it.

    ``selector`` is read with a range query at ``step_s``. For ``errors`` and ``counts`` it is an event
    rate per second (``rate(...)``, a ``tars:regression:*`` rate) and ``exposure`` the rate of what the
    events happen to (requests per second; empty: equal time), which the gate turns into counts per
    ``count_chunk_s``; for the other kinds it is the value itself (seconds, bytes, requests per second).
    ``mde`` (the change a pass must be able to see) and ``margin`` (a change tolerated before it counts)
    override the per-kind settings; a metric that is not ``required`` is judged and reported, and fails the
    fix when it regresses, but its lack of data or power does not make the verdict inconclusive.
    """

    name: str = attrs.field(validator=non_empty)
    selector: str = attrs.field(validator=_selector)
    kind: str = attrs.field(validator=_kind)
    bad: str | None = attrs.field(default=None, validator=_bad)
    exposure: str = ""
    mde: float | None = attrs.field(default=None, validator=_optional_positive)
    margin: float | None = attrs.field(default=None, validator=_optional_fraction)
    required: bool = True


@attrs.define
class RegressionMonitorConfig:
    """``plugins.tars-regression-monitor``: what the regression gate compares, with which judge, how often.

    Defaults are for production (alpha 0.01 with Holm across metrics, a 10-minute pre-release window); the
    sandbox's contribution shortens the polling and marks the metrics a two-minute bake cannot power.
    """

    # the default set: the tars:regression:* recorded series (latency p95, error ratio, throughput, trainer
    # RSS), one judged metric per series (per service, per trainer)
    default_metrics: bool = True
    # further metrics for every fix
    metrics: list[MetricSpec] = attrs.field(factory=list)
    # the metrics a fix declares: fix plugin name -> its own metrics (judged besides the default set)
    metrics_for: dict[str, list[MetricSpec]] = attrs.field(factory=dict)
    # metric names (default set: the record name without "tars:regression:", e.g. api_error_ratio) judged
    # and reported, failing the fix on a regression, whose lack of data or power does not block a pass
    optional_metrics: list[str] = attrs.field(factory=list)
    # the judge: "sequential" (anytime-valid e-processes, judged at every poll, stops at the first
    # regression) or "fixed" (one fixed-sample test at the end of the bake)
    mode: str = attrs.field(default="sequential", validator=attrs.validators.in_(("sequential", "fixed")))
    alpha: float = attrs.field(default=0.01, validator=unit_interval)
    correction: str = attrs.field(default="holm", validator=attrs.validators.in_(("holm", "bh", "none")))
    # per kind: the change a pass must be able to see (merged over the judges' defaults) ...
    mde: dict[str, float] = attrs.field(factory=dict, validator=_per_kind)
    # ... and the relative change tolerated before it counts as a regression (before/after comparisons see
    # the traffic's own drift: the sandbox's hourly wave moves latency and throughput a few percent)
    margin: dict[str, float] = attrs.field(
        factory=lambda: {"latency": 0.05, "throughput": 0.10, "gauge": 0.05}, validator=_per_kind
    )
    # before/after: the pre-release window the bake is compared with (ending when the fix was applied)
    baseline_window_s: float = attrs.field(default=600.0, validator=positive)
    # range-query step (the tars:regression:* rule interval) and how often the gate judges during a bake
    step_s: float = attrs.field(default=5.0, validator=positive)
    poll_interval_s: float = attrs.field(default=15.0, validator=positive)
    # errors/counts: samples are summed into counts over this long (the recorded rates' window), so each
    # count is about an integer number of independent events
    count_chunk_s: float = attrs.field(default=60.0, validator=positive)
    # the label naming the instance a canary flag selects (TARS-1005's trainers: "trainer"); a metric whose
    # series carry it is judged canary against baseline when the fix leaves a flag at a fraction
    canary_label: str = attrs.field(default="trainer", validator=_label)
    # a bake shorter than this that ends inconclusive is not judged: the hook abstains (nothing recorded,
    # a warning logged) instead of failing every fix of a demo whose bakes are seconds long. A regression
    # seen in a short bake still fails the fix, and a powered pass still passes. 0 (default): always judge.
    min_bake_s: float = attrs.field(default=0.0, validator=non_negative)
    # a chart (PNG) of every judged metric, kept in the monitor's state folder and copied into the report
    charts: bool = True
    # apply/verify: the rule file of the default series (skipped when an identical one is already loaded)
    rule_file_name: str = attrs.field(default="tars-regression-rules.yml", validator=non_empty)
    reload_timeout_s: float = attrs.field(default=120.0, validator=positive)
    data_timeout_s: float = attrs.field(default=90.0, validator=positive)
