"""SLOs as code: OpenSLO v1 and Sloth ``prometheus/v1`` documents read into one model.

Both formats end up as :class:`SLO` objects so the rule generator, the generated promtool tests and (next)
the streaming monitor and the release gate never care where an SLO was written. What the formats cannot
say (a minimum-events guard, a runbook) comes from ``metadata.annotations`` (OpenSLO) or
``alerting.annotations`` (Sloth) under the ``tars.dev/`` prefix.

A bad document raises :class:`tars_core.errors.ConfigError` with one line naming the document, the path
inside it and the fix, because that line is all a user sees (``tars-run`` prints it and exits 2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import attrs
import yaml

from tars_core.errors import ConfigError

Budgeting = Literal["Occurrences", "Timeslices"]
Op = Literal["lt", "lte", "gt", "gte"]
OPS: dict[str, str] = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
# A calendar period's nominal length: what burn-rate thresholds are scaled to (b = share x period / window).
_CALENDAR = {"Day": 86400, "Week": 7 * 86400, "Month": 30 * 86400, "Quarter": 90 * 86400, "Year": 365 * 86400}
_CALENDAR_UNITS = {"d": "Day", "w": "Week", "M": "Month", "Q": "Quarter", "Y": "Year", "y": "Year"}
_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?")
_METRIC = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_SELECTOR = re.compile(rf"\s*({_METRIC})\s*(?:\{{(.*)\}})?\s*")
_SLOTH_SUM_RATE = re.compile(
    r"\s*sum\s*\(\s*rate\s*\(\s*(" + _METRIC + r"\s*(?:\{[^{}]*\})?)\s*\[\s*\{\{\s*\.window\s*\}\}\s*\]\s*\)\s*\)\s*"
)
WINDOW_TEMPLATE = "{{.window}}"


def seconds_text(seconds: int) -> str:
    """Prometheus duration text, largest units first (``90000`` -> ``1d1h``), so rule names stay short."""
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def parse_duration(text: object, where: str) -> int:
    """``5m``, ``1h30m``, ``28d``, ``2w`` -> seconds; anything else is a one-line ConfigError."""
    parts = re.fullmatch(r"((\d+)[smhdwy])+", str(text).strip())
    if not parts:
        raise ConfigError(f"{where}: {text!r} is not a duration; write it like 5m, 6h, 28d or 2w")
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdwy])", str(text)))


@attrs.frozen
class Matcher:
    name: str
    op: str
    value: str

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = re.fullmatch(self.value, value) is not None
        return hit if self.op == "=~" else not hit


@attrs.frozen
class Selector:
    """A counter, histogram bucket or gauge vector selector: the generator wraps it in windows itself."""

    metric: str
    matchers: tuple[Matcher, ...] = ()

    def with_matcher(self, name: str, value: str) -> Selector:
        kept = tuple(m for m in self.matchers if m.name != name)
        return Selector(self.metric, (*kept, Matcher(name, "=", value)))

    def __str__(self) -> str:
        inner = ",".join(str(m) for m in self.matchers)
        return f"{self.metric}{{{inner}}}" if inner else self.metric


@attrs.frozen
class RawQuery:
    """A Sloth query that is not ``sum(rate(SEL[{{.window}}]))``: used as written, window substituted."""

    template: str

    def at(self, window: str) -> str:
        return self.template.replace(WINDOW_TEMPLATE, window)


EventQuery = Selector | RawQuery


@attrs.frozen
class Ratio:
    """Good or bad events over total events (counters)."""

    total: EventQuery
    bad: EventQuery | None = None
    good: EventQuery | None = None


@attrs.frozen
class Latency:
    """Share of observations at or under one histogram bucket bound: good = ``le`` bucket, total = ``+Inf``."""

    histogram: Selector
    le: str


@attrs.frozen
class Threshold:
    """A gauge compared with a value per sample (a boolean gauge): each sample is one time slice."""

    gauge: Selector
    op: Op
    value: float


Indicator = Ratio | Latency | Threshold


@attrs.frozen
class SLO:
    name: str
    service: str
    description: str
    objective: float  # good share, in (0, 1)
    period: int  # seconds; for calendar windows the nominal length of the unit
    indicator: Indicator
    source: str  # "FILE document N (SLO name)": where a later error should point
    budgeting: Budgeting = "Occurrences"
    calendar: str | None = None  # Day | Week | Month | Quarter | Year when the window is calendar-aligned
    slice_target: float | None = None  # Timeslices over a ratio: a slice is good when its good share >= this
    slice_window: int | None = None
    runbook_url: str = ""
    min_events: int | None = None  # None: the generator's default (see rules.default_min_events)
    alert_labels: tuple[tuple[str, str], ...] = ()

    @property
    def budget(self) -> float:
        return 1.0 - self.objective

    @property
    def period_text(self) -> str:
        return seconds_text(self.period)


class _Doc:
    """Where we are inside one YAML document, so every error names the document, the path and the fix."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.label}: {path}: {problem}")

    def get(self, node: Mapping[str, Any], path: str, key: str, kind: type | tuple[type, ...] = object) -> Any:
        if not isinstance(node, Mapping) or key not in node or node[key] is None:
            raise self.fail(f"{path}.{key}" if path else key, "missing; add it")
        value = node[key]
        if not isinstance(value, kind):
            raise self.fail(f"{path}.{key}" if path else key, f"expected {_kind(kind)}, got {type(value).__name__}")
        return value

    def mapping(self, node: Mapping[str, Any], path: str, key: str) -> Mapping[str, Any]:
        value = node.get(key) if isinstance(node, Mapping) else None
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(f"{path}.{key}", f"expected a mapping, got {type(value).__name__}")
        return value


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def parse_selector(text: str, doc: _Doc, path: str) -> Selector:
    """A vector selector ``name{a="b",c=~"5.."}``; anything richer is refused with what to write instead."""
    m = _SELECTOR.fullmatch(text)
    if not m:
        raise doc.fail(path, f'{text!r} is not a metric selector; write the series as name{{label="value"}}')
    matchers: list[Matcher] = []
    body = m.group(2) or ""
    pos = 0
    while body[pos:].strip():
        mm = _MATCHER.match(body, pos)
        if not mm:
            raise doc.fail(path, f'cannot read the label matchers in {text!r}; write them as label="value"')
        name, op, value = mm.groups()
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise doc.fail(path, f"regex {value!r} in {text!r} does not compile ({exc}); fix the regex") from exc
        matchers.append(Matcher(name, op, value))
        pos = mm.end()
        if body[pos:].startswith(","):
            pos += 1
    return Selector(m.group(1), tuple(matchers))


def _query(node: Any, doc: _Doc, path: str) -> str:
    """The Prometheus query of an OpenSLO ``metricSource`` (``type: Prometheus``, ``spec.query``)."""
    source = doc.get(node, path, "metricSource", Mapping)
    kind = str(source.get("type", "Prometheus"))
    if kind.lower() != "prometheus":
        raise doc.fail(f"{path}.metricSource.type", f"{kind!r} is not supported; use type: Prometheus")
    spec = doc.get(source, f"{path}.metricSource", "spec", Mapping)
    query = spec.get("query") or spec.get("promql")
    if not isinstance(query, str) or not query.strip():
        raise doc.fail(f"{path}.metricSource.spec.query", 'missing metric; name the series, e.g. query: name{a="b"}')
    return query


def _objective(value: Any, doc: _Doc, path: str, percent: bool) -> float:
    """OpenSLO ``target`` (0..1) or ``targetPercent``/Sloth ``objective`` (0..100) -> share in (0, 1)."""
    scale = 100.0 if percent else 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < float(value) < scale:
        bound = "between 0 and 100 (e.g. 99.9)" if percent else "between 0 and 1 (e.g. 0.999)"
        raise doc.fail(path, f"objective {value!r} is out of range; give a value strictly {bound}")
    return float(value) / scale


def _name(value: Any, doc: _Doc, path: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise doc.fail(path, f"{value!r} is not a valid SLO name; use lower-case letters, digits, '-' and '_'")
    return value


def _min_events(annotations: Mapping[str, Any], doc: _Doc, path: str) -> int | None:
    raw = annotations.get("tars.dev/min-events")
    if raw is None:
        return None
    try:
        value = int(str(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise doc.fail(f"{path}.tars.dev/min-events", f"{raw!r} is not a positive whole number; write e.g. '500'")
    return value


# -- OpenSLO v1 ------------------------------------------------------------------------------------------


def _openslo_indicator(spec: Mapping[str, Any], doc: _Doc, path: str, objective: Mapping[str, Any]) -> Indicator:
    if "ratioMetric" in spec:
        ratio = doc.get(spec, path, "ratioMetric", Mapping)
        rpath = f"{path}.ratioMetric"
        good, bad = ratio.get("good"), ratio.get("bad")
        if (good is None) == (bad is None):
            raise doc.fail(rpath, "give exactly one of good and bad (events), next to total")
        total = parse_selector(_query(doc.get(ratio, rpath, "total", Mapping), doc, f"{rpath}.total"), doc, rpath)
        which = "good" if good is not None else "bad"
        part = parse_selector(_query(ratio[which], doc, f"{rpath}.{which}"), doc, f"{rpath}.{which}")
        return Ratio(total=total, good=part) if which == "good" else Ratio(total=total, bad=part)
    if "thresholdMetric" in spec:
        tpath = f"{path}.thresholdMetric"
        sel = parse_selector(_query(doc.get(spec, path, "thresholdMetric", Mapping), doc, tpath), doc, tpath)
        op = objective.get("op")
        if op not in OPS:
            raise doc.fail(
                "spec.objectives[0].op", f"{op!r} is not an operator; a thresholdMetric needs op lt|lte|gt|gte"
            )
        value = objective.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise doc.fail("spec.objectives[0].value", "missing; a thresholdMetric needs the threshold value")
        if sel.metric.endswith("_bucket"):
            if op not in ("lt", "lte"):
                raise doc.fail("spec.objectives[0].op", f"{op} cannot use a histogram: its buckets count le; use lte")
            source = spec["thresholdMetric"]["metricSource"]["spec"]
            le = str(source.get("le") or repr(float(value)))
            return Latency(histogram=Selector(sel.metric, tuple(m for m in sel.matchers if m.name != "le")), le=le)
        return Threshold(gauge=sel, op=op, value=float(value))
    known = ", ".join(k for k in spec if k.endswith("Metric")) or ", ".join(spec) or "nothing"
    raise doc.fail(path, f"unknown SLI kind ({known}); use ratioMetric (good|bad, total) or thresholdMetric")


def _openslo_slo(
    data: Mapping[str, Any], doc: _Doc, slis: Mapping[str, tuple[_Doc, Mapping[str, Any]]], where: str
) -> SLO:
    meta = doc.mapping(data, "", "metadata")
    name = _name(meta.get("name"), doc, "metadata.name")
    doc.label = f"{where} (SLO {name})"
    spec = doc.get(data, "", "spec", Mapping)
    objectives = doc.get(spec, "spec", "objectives", list)
    if len(objectives) != 1 or not isinstance(objectives[0], Mapping):
        raise doc.fail("spec.objectives", f"{len(objectives)} objectives; give exactly one (split it into SLOs)")
    obj = objectives[0]
    if "targetPercent" in obj:
        objective = _objective(obj["targetPercent"], doc, "spec.objectives[0].targetPercent", percent=True)
    else:
        objective = _objective(obj.get("target"), doc, "spec.objectives[0].target", percent=False)

    if "indicator" in spec:
        sli_doc, sli_spec = doc, doc.get(doc.get(spec, "spec", "indicator", Mapping), "spec.indicator", "spec", Mapping)
        sli_path = "spec.indicator.spec"
    else:
        ref = doc.get(spec, "spec", "indicatorRef", str)
        if ref not in slis:
            raise doc.fail("spec.indicatorRef", f"no SLI named {ref!r} in these files; add a kind: SLI document")
        sli_doc, sli_spec = slis[ref]
        sli_path = "spec"
    indicator = _openslo_indicator(sli_spec, sli_doc, sli_path, obj)

    windows = doc.get(spec, "spec", "timeWindow", list)
    if len(windows) != 1 or not isinstance(windows[0], Mapping):
        raise doc.fail("spec.timeWindow", "give exactly one time window")
    window = windows[0]
    duration = str(doc.get(window, "spec.timeWindow[0]", "duration"))
    calendar: str | None = None
    if window.get("isRolling", True) is False or "calendar" in window:
        m = re.fullmatch(r"1([dwMQYy])", duration.strip())
        if not m:
            raise doc.fail(
                "spec.timeWindow[0].duration", f"{duration!r}: a calendar window is one unit: 1d|1w|1M|1Q|1Y"
            )
        calendar = _CALENDAR_UNITS[m.group(1)]
        period = _CALENDAR[calendar]
    else:
        period = parse_duration(duration, f"{doc.label}: spec.timeWindow[0].duration")

    budgeting = spec.get("budgetingMethod", "Occurrences")
    if budgeting not in ("Occurrences", "Timeslices"):
        raise doc.fail("spec.budgetingMethod", f"unknown budgeting method {budgeting!r}; use Occurrences or Timeslices")
    slice_target = slice_window = None
    if isinstance(indicator, Threshold) and budgeting != "Timeslices":
        raise doc.fail("spec.budgetingMethod", "a gauge threshold counts time, not events; use Timeslices")
    if budgeting == "Timeslices" and not isinstance(indicator, Threshold):
        slice_target = _objective(obj.get("timeSliceTarget"), doc, "spec.objectives[0].timeSliceTarget", percent=False)
        slice_window = parse_duration(obj.get("timeSliceWindow", "1m"), f"{doc.label}: timeSliceWindow")
    annotations = doc.mapping(meta, "metadata", "annotations")
    return SLO(
        name=name,
        service=str(spec.get("service") or "tars"),
        description=str(spec.get("description") or meta.get("displayName") or name).strip(),
        objective=objective,
        period=period,
        indicator=indicator,
        source=doc.label,
        budgeting=budgeting,
        calendar=calendar,
        slice_target=slice_target,
        slice_window=slice_window,
        runbook_url=str(annotations.get("tars.dev/runbook-url") or ""),
        min_events=_min_events(annotations, doc, "metadata.annotations"),
    )


# -- Sloth prometheus/v1 ---------------------------------------------------------------------------------


def _sloth_query(text: Any, doc: _Doc, path: str) -> EventQuery:
    if not isinstance(text, str) or not text.strip():
        raise doc.fail(path, 'missing metric; give the query, e.g. sum(rate(name{a="b"}[{{.window}}]))')
    m = _SLOTH_SUM_RATE.fullmatch(text)
    if m:
        return parse_selector(m.group(1), doc, path)
    if WINDOW_TEMPLATE not in text.replace(" ", ""):
        raise doc.fail(path, "the query has no [{{.window}}]; Sloth queries take the window as [{{.window}}]")
    return RawQuery(re.sub(r"\{\{\s*\.window\s*\}\}", WINDOW_TEMPLATE, text.strip()))


def _sloth_slos(data: Mapping[str, Any], doc: _Doc, where: str) -> list[SLO]:
    service = str(data.get("service") or "tars")
    out = []
    for i, item in enumerate(doc.get(data, "", "slos", list)):
        path = f"slos[{i}]"
        name = _name(item.get("name") if isinstance(item, Mapping) else None, doc, f"{path}.name")
        doc.label = f"{where} (SLO {name})"
        objective = _objective(item.get("objective"), doc, f"{path}.objective", percent=True)
        sli = doc.get(item, path, "sli", Mapping)
        if "events" not in sli:
            kind = ", ".join(sli) or "nothing"
            raise doc.fail(f"{path}.sli", f"unknown SLI kind ({kind}); use events (error_query, total_query)")
        events = doc.get(sli, f"{path}.sli", "events", Mapping)
        bad = _sloth_query(events.get("error_query"), doc, f"{path}.sli.events.error_query")
        total = _sloth_query(events.get("total_query"), doc, f"{path}.sli.events.total_query")
        alerting = doc.mapping(item, path, "alerting")
        annotations = doc.mapping(alerting, f"{path}.alerting", "annotations")
        labels = doc.mapping(alerting, f"{path}.alerting", "labels")
        out.append(
            SLO(
                name=name,
                service=service,
                description=str(item.get("description") or name).strip(),
                objective=objective,
                period=30 * 86400,
                indicator=Ratio(total=total, bad=bad),
                source=doc.label,
                runbook_url=str(annotations.get("tars.dev/runbook-url") or annotations.get("runbook") or ""),
                min_events=_min_events(annotations, doc, f"{path}.alerting.annotations"),
                alert_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            )
        )
    return out


# -- loading ---------------------------------------------------------------------------------------------

_IGNORED_KINDS = {"Service", "DataSource", "AlertPolicy", "AlertCondition", "AlertNotificationTarget"}


def load_documents(texts: Iterable[tuple[str, str]]) -> list[SLO]:
    """Every SLO in ``(name, yaml text)`` pairs; SLI documents are shared across all of them.

    OpenSLO alert documents are skipped on purpose: the generator derives the multiwindow alerts from the
    objective, and OpenSLO's AlertCondition has a single lookback window.
    """
    slos: list[tuple[Mapping[str, Any], _Doc, str]] = []
    slis: dict[str, tuple[_Doc, Mapping[str, Any]]] = {}
    out: list[SLO] = []
    for fname, text in texts:
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{fname}{at}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from exc
        for n, data in enumerate(docs, start=1):
            if data is None:
                continue
            where = f"{fname} document {n}"
            doc = _Doc(where)
            if not isinstance(data, Mapping):
                raise doc.fail("", "expected a mapping (an OpenSLO or Sloth document)")
            api, kind = data.get("apiVersion"), data.get("kind")
            if data.get("version") == "prometheus/v1":
                out.extend(_sloth_slos(data, doc, where))
            elif api == "sloth.slok.dev/v1" and kind == "PrometheusServiceLevel":
                out.extend(_sloth_slos(doc.get(data, "", "spec", Mapping), doc, where))
            elif api == "openslo/v1":
                if kind == "SLO":
                    slos.append((data, doc, where))
                elif kind == "SLI":
                    sli_name = _name(doc.mapping(data, "", "metadata").get("name"), doc, "metadata.name")
                    doc.label = f"{where} (SLI {sli_name})"
                    slis[sli_name] = (doc, doc.get(data, "", "spec", Mapping))
                elif kind not in _IGNORED_KINDS:
                    raise doc.fail("kind", f"unknown OpenSLO kind {kind!r}; this reader takes SLO and SLI")
            elif isinstance(api, str) and api.startswith("openslo/"):
                raise doc.fail("apiVersion", f"{api} is not read; convert the document to openslo/v1")
            else:
                raise doc.fail("apiVersion", "neither openslo/v1 nor Sloth (version: prometheus/v1); say which")
    out.extend(_openslo_slo(data, doc, slis, where) for data, doc, where in slos)
    seen: dict[str, str] = {}
    for slo in out:
        if slo.name in seen:
            raise ConfigError(f"{slo.source}: metadata.name: also defined in {seen[slo.name]}; rename one of them")
        seen[slo.name] = slo.source
    return sorted(out, key=lambda s: s.name)


def load_files(paths: Sequence[Path]) -> list[SLO]:
    """SLOs from files (``.yaml``/``.yml``), folders of them, in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such SLO file or folder; give a path to OpenSLO or Sloth YAML")
    return load_documents((str(f), f.read_text(encoding="utf-8")) for f in files)


def tars_slos() -> list[SLO]:
    """The T.A.R.S. SLOs shipped with this package (``data/slos/``)."""
    folder = resources.files("tars_telemetry") / "data" / "slos"
    texts = sorted((f"data/slos/{f.name}", f.read_text(encoding="utf-8")) for f in folder.iterdir() if f.is_file())
    return load_documents(t for t in texts if t[0].endswith((".yaml", ".yml")))


def default_min_events(slo: SLO, bad_events: int = 10) -> int:
    """Events the fast page tier's long window must hold before any burn alert may fire.

    Chosen so that ``bad_events`` failures are needed to reach the fast page burn rate: with fewer events
    than this, a handful of failures would be a 1000x burn (the Workbook's low-traffic problem).
    """
    if slo.min_events is not None:
        return slo.min_events
    fast = 0.02 * slo.period / 3600  # the 1h page tier's burn-rate factor, scaled to the period
    return max(1, math.ceil(bad_events / min(1.0, fast * slo.budget)))
