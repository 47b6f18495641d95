"""The TARS-1002 recording rules, generated from one declarative table, and their promtool checks.

``GROUPS`` below is the only place a rule is described. Each entry is a *recipe* (a rate, a quantile, a
ratio of sums, ...) that expands into one or more rules with a name in the ``level:metric:operations``
convention: ``level`` is the labels the output keeps (joined by ``_``; empty for a global aggregate, as
the Prometheus mixins do), ``metric`` the raw metric (``_total`` dropped under ``rate``), ``operations``
what was applied, newest first (``p95_rate5m``, ``ratio_rate5m``). Ratios are always the sum of the
numerator over the sum of the denominator, never an average of per-series ratios.

The same expansion yields (a) the rule file Prometheus loads, (b) one ``promtool test rules`` case per
rule proving that the recorded series equals its raw expression on synthetic input built from the
catalogue, and (c) the rule list the dashboard patcher matches panel queries against.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs
import yaml

from tars_1002_grafana.catalogue import FAMILY_BY_SERIES, TEST_VALUES
from tars_core.promtool import promtool

RULE_FILE_NAME = "tars-1002-recording-rules.yml"


def _label_pairs(labels: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(dict(labels).items()))


@attrs.frozen
class Rule:
    """One recording rule: its record name, expression, group and the labels its output keeps.

    ``labels`` are the rule's static ``labels:`` (sorted pairs): Prometheus sets them on every recorded
    series, overwriting a label of the same name, and rule files often record several rules under one
    name told apart only by them (``quantile: "0.9"``). ``source`` names the file the rule came from, so
    a reason can say which other file records the same name.
    """

    record: str
    expr: str
    group: str
    keeps: tuple[str, ...]
    reads: tuple[str, ...]  # raw selectors (name{matchers}) the rule reads, for tests and the README
    help: str = ""
    labels: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_label_pairs)
    source: str = ""

    @property
    def where(self) -> str:
        """Where the rule is defined, for messages: ``group g in file.yml`` (or just the group)."""
        return f"group {self.group} in {self.source}" if self.source else f"group {self.group}"


@attrs.frozen
class Sel:
    """A raw series selector: a series name and label matchers written as PromQL (``status="error"``)."""

    name: str
    matchers: str = ""

    def __str__(self) -> str:
        return f"{self.name}{{{self.matchers}}}" if self.matchers else self.name


def _by(labels: Sequence[str]) -> str:
    return f"sum by ({', '.join(labels)}) " if labels else "sum "


def _level(labels: Sequence[str]) -> str:
    return "_".join(labels)


def _base(name: str) -> str:
    for suffix in ("_total", "_bucket"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _sum_rates(sels: Sequence[Sel], by: Sequence[str], window: str) -> str:
    parts = [f"{_by(by)}(rate({s}[{window}]))" for s in sels]
    return parts[0] if len(parts) == 1 else "(" + " + ".join(parts) + ")"


@attrs.frozen
class Rate:
    """``sum by (by) (rate(counter[w]))`` per window; several counters are added (commit + rollback)."""

    counters: tuple[Sel, ...]
    by: tuple[str, ...]
    windows: tuple[str, ...] = ("5m",)
    name: str | None = None

    def expand(self, group: str) -> Iterable[Rule]:
        metric = self.name or _base(self.counters[0].name)
        for w in self.windows:
            yield Rule(
                f"{_level(self.by)}:{metric}:rate{w}",
                _sum_rates(self.counters, self.by, w),
                group,
                self.by,
                tuple(map(str, self.counters)),
            )


@attrs.frozen
class Quantile:
    """``histogram_quantile(q, sum by (by, le) (rate(h_bucket[w])))`` for each quantile."""

    histogram: str
    by: tuple[str, ...]
    quantiles: tuple[float, ...]
    window: str = "5m"

    def expand(self, group: str) -> Iterable[Rule]:
        for q in self.quantiles:
            expr = (
                f"histogram_quantile({q}, sum by ({', '.join((*self.by, 'le'))}) "
                f"(rate({self.histogram}_bucket[{self.window}])))"
            )
            yield Rule(
                f"{_level(self.by)}:{self.histogram}:p{round(q * 100)}_rate{self.window}",
                expr,
                group,
                self.by,
                (f"{self.histogram}_bucket",),
            )


@attrs.frozen
class _OfHistogram:
    """A rule over one histogram's rates in ``window``, aggregated by the labels ``by``."""

    histogram: str
    by: tuple[str, ...]
    window: str = "5m"


@attrs.frozen
class Mean(_OfHistogram):
    """Mean of a histogram: ``sum(rate(h_sum)) / sum(rate(h_count))`` (a ratio of sums)."""

    def expand(self, group: str) -> Iterable[Rule]:
        h, w = self.histogram, self.window
        expr = f"{_by(self.by)}(rate({h}_sum[{w}])) / {_by(self.by)}(rate({h}_count[{w}]))"
        yield Rule(f"{_level(self.by)}:{h}:mean{w}", expr, group, self.by, (f"{h}_sum", f"{h}_count"))


@attrs.frozen
class BucketRate(_OfHistogram):
    """``sum by (by, le) (rate(h_bucket[w]))``: what heatmaps and ad-hoc quantiles read."""

    def expand(self, group: str) -> Iterable[Rule]:
        keeps = (*self.by, "le")
        yield Rule(
            f"{_level(keeps)}:{self.histogram}_bucket:rate{self.window}",
            f"{_by(keeps)}(rate({self.histogram}_bucket[{self.window}]))",
            group,
            keeps,
            (f"{self.histogram}_bucket",),
        )


@attrs.frozen
class Ratio:
    """``sum(rate(num)) / sum(rate(den))``, each side possibly a sum of counters (hits / (hits+misses))."""

    name: str
    num: tuple[Sel, ...]
    den: tuple[Sel, ...]
    by: tuple[str, ...]
    windows: tuple[str, ...] = ("5m",)

    def expand(self, group: str) -> Iterable[Rule]:
        for w in self.windows:
            expr = f"{_sum_rates(self.num, self.by, w)} / {_sum_rates(self.den, self.by, w)}"
            yield Rule(
                f"{_level(self.by)}:{self.name}:ratio_rate{w}",
                expr,
                group,
                self.by,
                tuple(map(str, (*self.num, *self.den))),
            )


@attrs.frozen
class Share:
    """Each value of ``by``'s share of the global rate: ``sum by (by)(rate) / on() group_left sum(rate)``."""

    counter: Sel
    by: tuple[str, ...]
    window: str = "5m"

    def expand(self, group: str) -> Iterable[Rule]:
        part = f"{_by(self.by)}(rate({self.counter}[{self.window}]))"
        total = f"sum(rate({self.counter}[{self.window}]))"
        yield Rule(
            f"{_level(self.by)}:{_base(self.counter.name)}:share_rate{self.window}",
            f"{part} / on () group_left () {total}",
            group,
            self.by,
            (str(self.counter),),
        )


@attrs.frozen
class GaugeAgg:
    """``op by (by) (gauge)`` now, or ``op by (by) (op_over_time(gauge[w]))`` over a window."""

    gauge: str
    by: tuple[str, ...]
    op: str = "sum"
    window: str | None = None

    def expand(self, group: str) -> Iterable[Rule]:
        inner = f"{self.op}_over_time({self.gauge}[{self.window}])" if self.window else self.gauge
        expr = f"{self.op} by ({', '.join(self.by)}) ({inner})" if self.by else f"{self.op}({inner})"
        yield Rule(f"{_level(self.by)}:{self.gauge}:{self.op}{self.window or ''}", expr, group, self.by, (self.gauge,))


@attrs.frozen
class GaugeMean:
    """Time-and-series mean of a gauge as a ratio of sums: ``sum(sum_over_time) / sum(count_over_time)``."""

    gauge: str
    by: tuple[str, ...]
    windows: tuple[str, ...]

    def expand(self, group: str) -> Iterable[Rule]:
        for w in self.windows:
            expr = (
                f"{_by(self.by)}(sum_over_time({self.gauge}[{w}])) / {_by(self.by)}(count_over_time({self.gauge}[{w}]))"
            )
            yield Rule(f"{_level(self.by)}:{self.gauge}:avg{w}", expr, group, self.by, (self.gauge,))


@attrs.frozen
class GaugeRatio:
    """``sum(num) / sum(den)`` of two gauges, or one minus it (memory in use from memory available)."""

    name: str
    num: str
    den: str
    by: tuple[str, ...]
    complement: bool = False

    def expand(self, group: str) -> Iterable[Rule]:
        ratio = f"{_by(self.by)}({self.num}) / {_by(self.by)}({self.den})"
        yield Rule(
            f"{_level(self.by)}:{self.name}:ratio",
            f"1 - ({ratio})" if self.complement else ratio,
            group,
            self.by,
            (self.num, self.den),
        )


Recipe = Rate | Quantile | Mean | BucketRate | Ratio | Share | GaugeAgg | GaugeMean | GaugeRatio

AR = ("agent_id", "region")
EVAL, HTTP = "tars_evaluations_total", "tars_http_requests_total"
HTTP_LAT, EVAL_LAT = "tars_http_request_duration_seconds", "tars_evaluation_duration_seconds"

#: The seed's nine groups with their evaluation intervals, and every rule in them.
GROUPS: tuple[tuple[str, str, tuple[Recipe, ...]], ...] = (
    (
        "tars_evaluation_aggregations",
        "15s",
        (
            Rate((Sel(EVAL),), AR, ("1m", "5m")),
            Rate((Sel(EVAL),), ("region",)),
            Quantile(EVAL_LAT, AR, (0.5, 0.95, 0.99)),
            Quantile(EVAL_LAT, ("region",), (0.95,)),
            Mean(EVAL_LAT, AR),
            BucketRate(EVAL_LAT, ("region",)),
            Ratio("tars_evaluations_success", (Sel(EVAL, 'status="success"'),), (Sel(EVAL),), AR),
            Ratio("tars_evaluations_error", (Sel(EVAL, 'status=~"error|timeout"'),), (Sel(EVAL),), AR),
        ),
    ),
    (
        "tars_agent_aggregations",
        "30s",
        (
            GaugeMean("tars_agent_reward", ("agent_id", "agent_type", "region"), ("1h", "5m")),
            GaugeMean("tars_agent_reward", ("agent_type",), ("5m",)),
            Rate((Sel("tars_agent_episodes_total"),), AR),
            Rate((Sel("tars_agent_episodes_total"),), ("agent_type",)),
            Rate((Sel("tars_agent_training_steps_total"),), AR),
            GaugeMean("tars_agent_loss", ("agent_id", "region", "loss_type"), ("5m",)),
        ),
    ),
    (
        "tars_queue_aggregations",
        "10s",
        (
            GaugeAgg("tars_queue_depth", ("queue", "region")),
            GaugeMean("tars_queue_depth", ("queue", "region"), ("5m",)),
            GaugeAgg("tars_queue_depth", ("queue", "region"), "max", "5m"),
            Quantile("tars_queue_wait_seconds", ("queue", "region"), (0.5, 0.95)),
            Rate((Sel("tars_queue_messages_processed_total"),), ("queue", "region"), ("1m", "5m")),
            Ratio(
                "tars_queue_messages_failed",
                (Sel("tars_queue_messages_processed_total", 'status="failed"'),),
                (Sel("tars_queue_messages_processed_total"),),
                ("queue", "region"),
            ),
        ),
    ),
    (
        "tars_resource_aggregations",
        "30s",
        (
            Ratio(
                "node_cpu_utilisation",
                (Sel("node_cpu_seconds_total", 'mode!="idle"'),),
                (Sel("node_cpu_seconds_total"),),
                ("instance",),
            ),
            Ratio(
                "node_cpu_utilisation",
                (Sel("node_cpu_seconds_total", 'mode!="idle"'),),
                (Sel("node_cpu_seconds_total"),),
                (),
            ),
            GaugeRatio(
                "node_memory_utilisation",
                "node_memory_MemAvailable_bytes",
                "node_memory_MemTotal_bytes",
                ("instance",),
                complement=True,
            ),
            GaugeRatio(
                "node_memory_utilisation",
                "node_memory_MemAvailable_bytes",
                "node_memory_MemTotal_bytes",
                (),
                complement=True,
            ),
            Rate((Sel("node_network_receive_bytes_total", 'device!="lo"'),), ("instance",)),
            Rate((Sel("node_network_transmit_bytes_total", 'device!="lo"'),), ("instance",)),
        ),
    ),
    (
        "tars_api_aggregations",
        "15s",
        (
            Rate((Sel(HTTP),), ("service", "endpoint", "method"), ("1m", "5m")),
            Rate((Sel(HTTP),), ("service",)),
            Quantile(HTTP_LAT, ("service", "endpoint"), (0.5, 0.95, 0.99)),
            Quantile(HTTP_LAT, ("service",), (0.95,)),
            Ratio("tars_http_requests_5xx", (Sel(HTTP, 'code=~"5.."'),), (Sel(HTTP),), ("service", "endpoint")),
            Ratio("tars_http_requests_4xx", (Sel(HTTP, 'code=~"4.."'),), (Sel(HTTP),), ("service", "endpoint")),
            Ratio("tars_http_requests_5xx", (Sel(HTTP, 'code=~"5.."'),), (Sel(HTTP),), ("service",)),
        ),
    ),
    (
        "tars_database_aggregations",
        "30s",
        (
            Quantile("tars_db_query_duration_seconds", ("operation", "table"), (0.95, 0.99)),
            GaugeAgg("pg_stat_activity_count", ("datname", "state")),
            Rate(
                (Sel("pg_stat_database_xact_commit"), Sel("pg_stat_database_xact_rollback")),
                ("datname",),
                name="pg_stat_database_xact",
            ),
            Rate((Sel("pg_stat_database_xact_rollback"),), ("datname",)),
            Ratio(
                "pg_stat_database_blks_hit",
                (Sel("pg_stat_database_blks_hit"),),
                (Sel("pg_stat_database_blks_hit"), Sel("pg_stat_database_blks_read")),
                ("datname",),
            ),
        ),
    ),
    (
        "tars_redis_aggregations",
        "15s",
        (
            Rate((Sel("redis_commands_processed_total"),), ("instance",), ("1m", "5m")),
            Ratio(
                "redis_keyspace_hits",
                (Sel("redis_keyspace_hits_total"),),
                (Sel("redis_keyspace_hits_total"), Sel("redis_keyspace_misses_total")),
                ("instance",),
            ),
            GaugeRatio("redis_memory_utilisation", "redis_memory_used_bytes", "redis_memory_max_bytes", ("instance",)),
            GaugeAgg("redis_connected_clients", ("instance",)),
        ),
    ),
    (
        "tars_multiregion_aggregations",
        "30s",
        (
            Rate((Sel(EVAL),), ()),
            Quantile(EVAL_LAT, (), (0.95,)),
            Ratio("tars_evaluations_success", (Sel(EVAL, 'status="success"'),), (Sel(EVAL),), ("region",)),
            Share(Sel(EVAL), ("region",)),
            GaugeAgg("tars_replication_lag_seconds", ("source_region", "target_region"), "max"),
            GaugeAgg("tars_replication_lag_seconds", ("source_region", "target_region"), "max", "5m"),
        ),
    ),
    (
        "tars_slo_compliance",
        "60s",
        (
            Ratio(
                "tars_http_request_duration_seconds_le150ms",
                (Sel(f"{HTTP_LAT}_bucket", 'le="0.15"'),),
                (Sel(f"{HTTP_LAT}_count"),),
                (),
                ("5m", "30m", "1h", "6h"),
            ),
            Ratio(
                "tars_http_requests_non5xx", (Sel(HTTP, 'code!~"5.."'),), (Sel(HTTP),), (), ("5m", "30m", "1h", "6h")
            ),
            Ratio(
                "tars_evaluations_success",
                (Sel(EVAL, 'status="success"'),),
                (Sel(EVAL),),
                (),
                ("5m", "30m", "1h", "6h"),
            ),
        ),
    ),
)


def build_rules(groups: Sequence[tuple[str, str, Sequence[Recipe]]] | None = None) -> list[Rule]:
    """Expand ``GROUPS`` into the rule list; refuses duplicate record names (a copy-paste slip)."""
    groups = GROUPS if groups is None else groups
    rules = [rule for group, _, recipes in groups for recipe in recipes for rule in recipe.expand(group)]
    seen: set[str] = set()
    for r in rules:
        if r.record in seen:
            raise ValueError(f"recording rule {r.record} is defined twice in GROUPS")
        seen.add(r.record)
    return rules


def group_intervals() -> dict[str, str]:
    return {name: interval for name, interval, _ in GROUPS}


def rule_file_data(
    rules: Sequence[Rule] | None = None, intervals: Mapping[str, str] | None = None
) -> dict[str, object]:
    rules = build_rules() if rules is None else rules
    intervals = dict(intervals or group_intervals())
    for r in rules:
        intervals.setdefault(r.group, "30s")
    return {
        "groups": [
            {
                "name": g,
                "interval": intervals[g],
                "rules": [_rule_entry(r) for r in rules if r.group == g],
            }
            for g in intervals
        ]
    }


def _rule_entry(rule: Rule) -> dict[str, object]:
    entry: dict[str, object] = {"record": rule.record, "expr": rule.expr}
    if rule.labels:
        entry["labels"] = dict(rule.labels)
    return entry


def render_rule_file(rules: Sequence[Rule] | None = None, intervals: Mapping[str, str] | None = None) -> str:
    header = (
        "# Generated by tars_1002_grafana.rules from its GROUPS table; edit the table, not this file.\n"
        "# TARS-1002: recording rules for the T.A.R.S. Grafana dashboards.\n"
    )
    return header + yaml.safe_dump(rule_file_data(rules, intervals), sort_keys=False, width=120)


def load_rule_file(text: str, source: str = "") -> list[Rule]:
    """The recording rules of a Prometheus rule file, with their static ``labels:`` (alerting rules are
    left out). ``source`` (the file's name) is kept on each rule for messages.

    A file Prometheus would refuse (not a mapping, a group without a name, a rule without ``expr``) is
    a :class:`ValueError` naming the problem, which the CLI reports as bad input.
    """
    # every scalar as written (BaseLoader), as Prometheus reads them: `quantile: 0.90` is "0.90", not 0.9
    data = yaml.load(text, Loader=yaml.BaseLoader) or {}
    where = source or "rule file"
    if not isinstance(data, dict) or not isinstance(data.get("groups", []), list):
        raise ValueError(f"{where}: not a Prometheus rule file (expected a mapping with a 'groups' list)")
    out = []
    for g in data.get("groups") or []:
        if not isinstance(g, dict) or "name" not in g:
            raise ValueError(f"{where}: every group needs a name")
        for r in g.get("rules") or []:
            if not isinstance(r, dict) or "record" not in r:
                continue
            if "expr" not in r:
                raise ValueError(f"{where}: rule {r['record']} in group {g['name']} has no expr")
            labels = r.get("labels") or {}
            if not isinstance(labels, dict):
                raise ValueError(f"{where}: labels of rule {r['record']} must be a mapping")
            static = {str(k): str(v) for k, v in labels.items()}
            out.append(Rule(str(r["record"]), str(r["expr"]), str(g["name"]), (), (), labels=static, source=source))
    return out


def rules_from_api(groups: Iterable[Mapping[str, object]]) -> list[Rule]:
    """The recording rules a running Prometheus serves, from ``/api/v1/rules``'s groups
    (``tars_core.prometheus.Prometheus.rule_groups()``): what to give the patcher so that a rewrite is
    exact among every rule of the target, including files other teams load there."""
    out = []
    for g in groups:
        source = Path(str(g.get("file") or "")).name
        rules = g.get("rules")
        for r in rules if isinstance(rules, list) else []:
            if r.get("type") != "recording":
                continue
            labels = {str(k): str(v) for k, v in (r.get("labels") or {}).items()}
            out.append(Rule(str(r["name"]), str(r["query"]), str(g["name"]), (), (), labels=labels, source=source))
    return out


# -- promtool ------------------------------------------------------------------------------------------


def _input_series_for(selector_names: Iterable[str], step: str) -> list[dict[str, str]]:
    """Synthetic input (``'a+bxc'`` notation) for every raw series a rule reads, built from the catalogue.

    Each label takes the values in ``TEST_VALUES`` so every matcher of every rule selects something;
    every series gets its own slope so a wrong aggregation (e.g. averaging instead of summing) would show.
    """
    out: list[dict[str, str]] = []
    names = sorted({n.split("{")[0] for n in selector_names})
    fams = {FAMILY_BY_SERIES[n] for n in names}
    for fam in sorted(fams, key=lambda f: f.name):
        combos = list(itertools.product(*(TEST_VALUES[label] for label in fam.labels)))
        for i, combo in enumerate(combos):
            lab = ",".join(f'{k}="{v}"' for k, v in zip(fam.labels, combo, strict=True))
            sep = "," if lab else ""
            slope = i + 1
            if fam.type == "histogram":
                les = fam.bucket_labels
                for j, le in enumerate(les):
                    inc = slope * (j + 1) if le != "+Inf" else slope * (len(les) + 2)
                    out.append({"series": f'{fam.name}_bucket{{{lab}{sep}le="{le}"}}', "values": f"0+{inc}x{step}"})
                out.append({"series": f"{fam.name}_count{{{lab}}}", "values": f"0+{slope * (len(les) + 2)}x{step}"})
                out.append({"series": f"{fam.name}_sum{{{lab}}}", "values": f"0+{slope * 3.5}x{step}"})
            elif fam.type == "counter":
                out.append({"series": f"{fam.name}{{{lab}}}", "values": f"0+{slope * 6}x{step}"})
            else:
                # a larger "max" gauge so utilisation ratios stay below one, and a wobble for *_over_time
                base = 1000 * slope if fam.name.endswith(("_max_bytes", "MemTotal_bytes")) else 10 * slope
                out.append(
                    {
                        "series": f"{fam.name}{{{lab}}}",
                        "values": " ".join(str(base + (k % 3)) for k in range(int(step) + 1)),
                    }
                )
    return out


def _expected_label_sets(rule: Rule) -> list[str]:
    if not rule.keeps:
        return ["{}"]
    values = [TEST_VALUES[k] if k != "le" else _le_values(rule) for k in rule.keeps]
    return [
        "{" + ",".join(f'{k}="{v}"' for k, v in zip(rule.keeps, combo, strict=True)) + "}"
        for combo in itertools.product(*values)
    ]


def _le_values(rule: Rule) -> tuple[str, ...]:
    fam = FAMILY_BY_SERIES[rule.reads[0].split("{")[0]]
    return fam.bucket_labels


def _label_values_present(rule: Rule) -> bool:
    return all(k == "le" or k in TEST_VALUES for k in rule.keeps)


def unit_test_data(rules: Sequence[Rule], rule_file: str) -> dict[str, object]:
    """A ``promtool test rules`` document: one test case per group, one expression test per rule.

    Each case feeds the raw series its group reads. Each rule's expression test asserts, at an instant
    where every group has just been evaluated, that ``(raw expression) - recorded series`` is exactly 0
    for exactly the expected label sets: the recording exists for every output series, carries the
    right labels and equals the raw computation (a label set missing on either side would drop out of
    the subtraction and fail the test).
    """
    tests = []
    for group in dict.fromkeys(r.group for r in rules):
        members = [r for r in rules if r.group == group]
        for rule in members:
            if not _label_values_present(rule):
                raise ValueError(f"{rule.record}: a kept label has no TEST_VALUES entry")
        tests.append(
            {
                "name": group,
                "interval": "15s",
                "input_series": _input_series_for([s for r in members for s in r.reads], "60"),
                "promql_expr_test": [
                    {
                        "expr": f"({rule.expr}) - {rule.record}",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": ls, "value": 0} for ls in _expected_label_sets(rule)],
                    }
                    for rule in members
                ],
            }
        )
    return {"rule_files": [rule_file], "evaluation_interval": "5s", "tests": tests}


def write_unit_tests(directory: Path, rules: Sequence[Rule] | None = None) -> Path:
    """Write the rule file and its unit-test file into ``directory``; return the test file's path."""
    rules = build_rules() if rules is None else rules
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RULE_FILE_NAME).write_text(render_rule_file(rules), encoding="utf-8")
    test_path = directory / "tars-1002-recording-rules.test.yml"
    test_path.write_text(
        yaml.safe_dump(unit_test_data(rules, RULE_FILE_NAME), sort_keys=False, width=200), encoding="utf-8"
    )
    return test_path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tars_1002_grafana.rules OUTDIR [--test]``: write the rule file (and run promtool)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tars_1002_grafana.rules", description=main.__doc__)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--test", action="store_true", help="run promtool check rules and promtool test rules")
    ns = ap.parse_args(argv)
    test_path = write_unit_tests(ns.outdir)
    print(f"wrote {ns.outdir / RULE_FILE_NAME} ({len(build_rules())} rules) and {test_path}")
    if ns.test:
        print(promtool("check", "rules", str(ns.outdir / RULE_FILE_NAME)))
        print(promtool("test", "rules", str(test_path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
