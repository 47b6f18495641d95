"""The live state of every SLO: what the streaming daemon serves and ``tars-slo watch`` shows.

Two feeds, one state. Remote write pushes each sample the SLO rules record or alert on (with its own
timestamp, and a stale marker when a series ends); when nothing pushes, the same series are read through
the query API (:func:`poll`), values *and* sample timestamps, so a reading means the same thing whichever
way it came and a test can hold both paths against Prometheus itself.

The status is decided from the recorded rules and the alerts Prometheus evaluated, never recomputed
here: the monitor shows what the alerting rules decided (and their guard), so a page on the screen is a
page in Alertmanager. Order of precedence, most urgent first: ``no-data`` (blind: every other verdict
would be a guess), ``page``, ``budget-exhausted``, ``ticket``, ``insufficient-data``, ``ok``.

Cheap to import (attrs and the spec model only); the Prometheus client is imported by :func:`poll`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from tars_telemetry.rules import BURN_ALERT, tiers_for, windows
from tars_telemetry.spec import SLO

if TYPE_CHECKING:
    from tars_core.prometheus import Prometheus

STATUSES = ("ok", "ticket", "page", "budget-exhausted", "insufficient-data", "no-data")
BUDGET = "slo:period_error_budget_remaining:ratio"
BURN = "slo:burn_rate:ratio_rate"
ERROR = "slo:sli_error:ratio_rate"
EVENTS = "slo:sli_events:increase"
INSUFFICIENT = "slo:insufficient_data:bool"
MIN_EVENTS = "slo:min_events:total"
EXHAUSTED_ALERT = "SLOErrorBudgetExhausted"
ABSENT_ALERT = "SLOMetricAbsent"
# every series the monitor keeps: the SLO rules' records, and the alerts they raise (with an `slo` label)
SELECTOR = '{__name__=~"slo:.+|ALERTS",slo!=""}'
# the sample timestamps of the same series: timestamp() drops the metric name, so it is copied first
_STAMP_LABEL = "tars_series_name"


def stamps_query(selector: str) -> str:
    """``timestamp()`` of the series ``selector`` picks, with their metric name kept in a label."""
    return f'timestamp(label_replace({selector}, "{_STAMP_LABEL}", "$1", "__name__", "(.+)"))'


STAMPS = stamps_query(SELECTOR)
_WINDOW = re.compile(r"slo:(?:burn_rate|sli_error):ratio_rate(\w+)$")


def is_kept(name: str, slo: str | None) -> bool:
    """Whether a series is one the monitor keeps (``slo:*`` and ``ALERTS``, both with an ``slo`` label)."""
    return bool(slo) and (name.startswith("slo:") or name == "ALERTS")


@attrs.define
class Reading:
    value: float
    at: float  # the sample's timestamp, seconds


@attrs.define
class Alert:
    alert: str
    tier: str
    severity: str
    state: str  # firing | pending
    at: float


@attrs.define
class SLOState:
    """One SLO as the monitor sees it: the latest reading of each of its series and its active alerts."""

    name: str
    service: str = ""
    objective: float | None = None
    period: str | None = None
    windows: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    series: dict[str, Reading] = attrs.field(factory=dict)
    alerts: dict[tuple[str, str, str], Alert] = attrs.field(factory=dict)
    status: str = "no-data"
    since: float = attrs.field(factory=time.time)
    changes: int = 0

    def value(self, name: str) -> float | None:
        reading = self.series.get(name)
        return None if reading is None or math.isnan(reading.value) else reading.value

    @property
    def updated_at(self) -> float | None:
        stamps = [r.at for r in self.series.values()] + [a.at for a in self.alerts.values()]
        return max(stamps) if stamps else None

    def tiers_in(self, state: str) -> list[str]:
        return sorted({a.tier for a in self.alerts.values() if a.state == state})

    def _firing(self, alert: str, severity: str | None = None) -> bool:
        return any(
            a.alert == alert and a.state == "firing" and (severity is None or a.severity == severity)
            for a in self.alerts.values()
        )

    def decide(self, now: float, stale_after: float) -> str:
        """The status from the recorded series and the evaluated alerts (see the module docstring)."""
        updated = self.updated_at
        budget = self.value(BUDGET)
        if updated is None or now - updated > stale_after or self._firing(ABSENT_ALERT) or budget is None:
            return "no-data"
        if self._firing(BURN_ALERT, "page"):
            return "page"
        events, minimum = self.value(f"{EVENTS}{self.period}"), self.value(MIN_EVENTS)
        spent = budget <= 0 and events is not None and minimum is not None and events >= minimum
        if self._firing(EXHAUSTED_ALERT) or spent:
            return "budget-exhausted"
        if self._firing(BURN_ALERT):
            return "ticket"
        if self.value(INSUFFICIENT) == 1:
            return "insufficient-data"
        return "ok"

    def view(self) -> dict[str, Any]:
        """The JSON form served at ``/api/slos`` and printed by ``tars-slo watch --format json``."""
        shown = self.windows or tuple(sorted({m.group(1) for n in self.series if (m := _WINDOW.match(n))}))
        insufficient = self.value(INSUFFICIENT)
        return {
            "slo": self.name,
            "service": self.service,
            "objective": self.objective,
            "period": self.period,
            "tiers": list(self.tiers),
            "status": self.status,
            "status_since": self.since,
            "status_changes": self.changes,
            "budget_remaining": self.value(BUDGET),
            "burn_rate": {w: self.value(f"{BURN}{w}") for w in shown},
            "error_ratio": {w: self.value(f"{ERROR}{w}") for w in shown},
            "insufficient_data": None if insufficient is None else insufficient == 1,
            "absent": self._firing(ABSENT_ALERT),
            "firing": self.tiers_in("firing"),
            "pending": self.tiers_in("pending"),
            "alerts": [attrs.asdict(a) for _, a in sorted(self.alerts.items())],
            "updated_at": self.updated_at,
            "series": {n: {"value": _json_number(r.value), "at": r.at} for n, r in sorted(self.series.items())},
        }


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


@attrs.define
class Sample:
    """One kept sample: its labels (``__name__`` and ``slo`` at least), value and timestamp (seconds).

    ``stale`` marks the end of a series (Prometheus' stale marker: a resolved alert, a rule that stopped
    producing it); its value is meaningless.
    """

    labels: Mapping[str, str]
    value: float
    at: float
    stale: bool = False


class MonitorState:
    """Every SLO's :class:`SLOState`, fed by remote write (:meth:`ingest`) or the query API (:meth:`replace`).

    SLOs from the specs are listed from the start (``no-data`` until their series arrive); an ``slo``
    label that no spec names is tracked too, without objective or tiers, so a rule file loaded by someone
    else is still visible.
    """

    def __init__(self, slos: Sequence[SLO] = (), *, stale_after: float = 300.0) -> None:
        self.stale_after = stale_after
        self.slos: dict[str, SLOState] = {s.name: _from_spec(s) for s in slos}
        self.samples_received = 0  # pushed samples (kept and dropped); a query-API read is not counted
        self.samples_dropped = 0
        self.source = "none"
        self.last_update: float | None = None

    def _slo(self, name: str) -> SLOState:
        state = self.slos.get(name)
        if state is None:
            state = self.slos[name] = SLOState(name)
        return state

    def _put(self, sample: Sample) -> SLOState:
        labels = sample.labels
        state = self._slo(labels["slo"])
        name = labels["__name__"]
        if name == "ALERTS":
            key = (labels.get("alertname", ""), labels.get("tier", ""), labels.get("alertstate", ""))
            if sample.stale or math.isnan(sample.value):
                state.alerts.pop(key, None)
            elif sample.at >= (old.at if (old := state.alerts.get(key)) else -math.inf):
                state.alerts[key] = Alert(key[0], key[1], labels.get("severity", ""), key[2], sample.at)
            return state
        if sample.stale:
            state.series.pop(name, None)
            return state
        if not state.service and labels.get("service"):
            state.service = labels["service"]
        old_reading = state.series.get(name)
        if old_reading is None or sample.at >= old_reading.at:  # shards may deliver out of order
            state.series[name] = Reading(sample.value, sample.at)
        return state

    def ingest(
        self, samples: Iterable[Sample], *, dropped: int = 0, elsewhere: int = 0, source: str = "remote-write"
    ) -> int:
        """Apply pushed samples (in any order; the newest reading of a series wins) and re-decide the SLOs
        they touched. Returns how many were applied. ``elsewhere``: samples of the same push kept for
        another consumer (the forecasts), counted as received only."""
        touched: dict[str, SLOState] = {}
        count = 0
        for sample in samples:
            state = self._put(sample)
            touched[state.name] = state
            count += 1
        self.samples_received += count + dropped + elsewhere
        self.samples_dropped += dropped
        if count:
            self.source = source
            self.last_update = time.time()
        self.decide(touched.values())
        return count

    def replace(self, samples: Iterable[Sample], *, source: str = "query") -> None:
        """A full snapshot (the query API's view): series and alerts not in it are gone, like a stale marker."""
        for state in self.slos.values():
            state.series.clear()
            state.alerts.clear()
        for sample in samples:
            self._put(sample)
        self.source = source
        self.last_update = time.time()
        self.decide()

    def decide(self, states: Iterable[SLOState] | None = None, now: float | None = None) -> None:
        """Re-decide each SLO's status; a change records its time and counts."""
        now = time.time() if now is None else now
        for state in self.slos.values() if states is None else states:
            status = state.decide(now, self.stale_after)
            if status != state.status:
                state.status, state.since, state.changes = status, now, state.changes + 1

    def view(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "generated_at": time.time(),
            "last_update": self.last_update,
            "samples_received": self.samples_received,
            "samples_dropped": self.samples_dropped,
            "slos": [self.slos[n].view() for n in sorted(self.slos)],
        }


def _from_spec(slo: SLO) -> SLOState:
    return SLOState(
        slo.name,
        service=slo.service,
        objective=slo.objective,
        period=slo.period_text,
        windows=tuple(windows(slo)),
        tiers=tuple(t.name for t in tiers_for(slo)),
    )


def poll(prom: Prometheus, at: float | None = None, selector: str = SELECTOR) -> list[Sample]:
    """Every kept series (or those ``selector`` picks) at ``at`` (default now) through the query API, with
    the sample's own timestamp.

    Two instant queries at the same evaluation time: the values (an instant query honours stale markers,
    so a resolved alert is not returned) and ``timestamp()`` of the same series, joined on their labels.
    """
    at = time.time() if at is None else at
    values = prom.query(selector, at=at)
    stamps: dict[tuple[tuple[str, str], ...], float] = {}
    for row in prom.query(stamps_query(selector), at=at):
        labels = dict(row["metric"])
        labels["__name__"] = labels.pop(_STAMP_LABEL, "")
        stamps[tuple(sorted(labels.items()))] = float(row["value"][1])
    samples = []
    for row in values:
        labels = dict(row["metric"])
        stamp = stamps.get(tuple(sorted(labels.items())), float(row["value"][0]))
        samples.append(Sample(labels, float(row["value"][1]), stamp))
    return samples
