"""The patcher's guarantee, checked on a live Prometheus: every rewrite returns what its original returns.

A real Prometheus loads rule files from several sources at once (TARS-1002's rules, the node-exporter
mixin as plain hosts run it, the same mixin as kube-prometheus runs it, kubernetes-mixin-shaped API
rules, a site's legacy file), scrapes three real node_exporters under two jobs (``node`` and
``node-exporter``, one machine in both) and the T.A.R.S. exporter, and evaluates every rule live. The
patcher rewrites every panel query of the T.A.R.S. dashboards and of two dashboards in the public
mixins' shapes against all of those rules. Each rewrite is then queried beside its original, for every
value of every dashboard variable it uses (each value, "All", and a value matching nothing), at several
instants where the rules it reads were evaluated: the two must return the same series (label sets,
ignoring the recorded name and the rule's static labels the original cannot carry) with the same
values (1e-6 relative).

Why the instants matter: a recorded series holds the value of its expression at the group's
evaluation, so the comparison is exact only at evaluation timestamps (read from the recorded samples
themselves), and only where no scrape was in flight (a scrape's samples carry its start time but land
when it ends, so a rule evaluated mid-scrape saw less than a later query sees). Instants within
``race_margin_s`` of a scrape of any target are skipped, and counted.

Controls show the comparison can fail: each rewrite that selects its rule's series by matchers
(``job="node"``, ``quantile="0.9"``, ``job=""``) is also checked without them, as the patcher wrote it
before issue 17; each such control must come out wrong.

``python -m tars_1002_grafana.equivalence --quick`` runs the short version the tests run; the full one
is ``benchmarks/tars-1002-grafana_equivalence.py``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import itertools
import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from tars_1002_grafana.dashboards import dashboard_files
from tars_1002_grafana.patcher import DECLINE_CODES, VARIABLE_RE, Change, RuleIndex, patch_dashboard
from tars_1002_grafana.rules import (
    RULE_FILE_NAME,
    Rule,
    build_rules,
    group_intervals,
    load_rule_file,
    render_rule_file,
    rules_from_api,
)

NO_MATCH = "__no_such_value__"  # a variable value no series carries
REL_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-12  # sums of sums in another order may leave 1e-17 where the original has 0
MACRO_VALUES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
NODE_COLLECTORS = ("cpu", "meminfo", "vmstat", "netdev", "diskstats", "loadavg", "uname")


@attrs.frozen
class Options:
    """One harness run. The defaults are the short run of the tests; the benchmark runs the full one."""

    scrape_interval: str = "7s"  # not a divisor of the rule intervals, so scrapes drift across evaluations
    rule_interval: str | None = "3s"  # every group's interval; None keeps each file's own
    instants: int = 3  # evaluation instants compared per rewrite
    agents: int = 2
    regions: int = 2
    race_margin_s: float = 1.0  # after a scrape's end, for its samples to be committed
    max_combinations: int = 64  # above: each variable in turn with the others at All
    macro_windows: Mapping[str, str] = attrs.field(factory=dict)
    timeout_s: float = 150.0  # waiting for clean evaluation instants

    @classmethod
    def full(cls) -> Options:
        """The benchmark's run: each file's own group intervals (TARS-1002's 10 s to 60 s), a 13 s scrape,
        5 instants per rewrite, the sandbox's 20 agents x 3 regions, every variable combination."""
        return cls(
            scrape_interval="13s",
            rule_interval=None,
            instants=5,
            agents=20,
            regions=3,
            max_combinations=400,
            timeout_s=900.0,
        )


@attrs.frozen
class Material:
    """Rule files (name -> text, as loaded into Prometheus) and dashboards (name -> JSON)."""

    rule_files: Mapping[str, str]
    dashboards: Mapping[str, dict[str, Any]]

    def rules(self) -> list[Rule]:
        return [r for name, text in self.rule_files.items() for r in load_rule_file(text, name)]


def _data() -> Any:
    return importlib.resources.files("tars_1002_grafana") / "data" / "equivalence"


def material(rule_interval: str | None = None) -> Material:
    """TARS-1002's rules and dashboards plus the mixin-shaped ones shipped for the harness; with
    ``rule_interval`` every group is evaluated at that interval (the short run)."""
    intervals = group_intervals()
    if rule_interval:
        intervals = {g: rule_interval for g in intervals}
    files = {RULE_FILE_NAME: render_rule_file(build_rules(), intervals)}
    for f in sorted(_data().joinpath("rules").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".yml"):
            text = f.read_text(encoding="utf-8")
            if rule_interval:
                doc = yaml.safe_load(text)
                for g in doc["groups"]:
                    g["interval"] = rule_interval
                text = yaml.safe_dump(doc, sort_keys=False, width=200)
            files[f.name] = text
    dashboards = {name: json.loads(text) for name, text in sorted(dashboard_files().items())}
    for f in sorted(_data().joinpath("dashboards").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".json"):
            dashboards[f.name] = json.loads(f.read_text(encoding="utf-8"))
    return Material(files, dashboards)


# -- results -------------------------------------------------------------------------------------------


@attrs.define
class Checked:
    """One rewrite compared with its original."""

    dashboard: str
    panel: str
    ref: str
    before: str
    after: str
    groups: tuple[str, ...]
    instants: int = 0
    combinations: int = 0
    comparisons: int = 0  # (variable combination, instant) pairs compared
    with_data: int = 0  # ... where the original returned at least one series
    series: int = 0  # series compared, summed over comparisons
    mismatches: list[str] = attrs.field(factory=list)
    unverified: str | None = None
    control: bool = False  # the pre-issue-17 rewrite (without the matchers selecting the rule's series)

    @property
    def wrong(self) -> bool:
        return bool(self.mismatches)


@attrs.define
class Report:
    options: Options
    rule_files: dict[str, int]  # file -> recording rules
    targets: dict[str, list[str]]  # job -> targets
    prometheus: str
    changes: dict[str, list[Change]]  # dashboard -> changes
    checked: list[Checked] = attrs.field(factory=list)
    controls: list[Checked] = attrs.field(factory=list)
    skipped_instants: int = 0  # evaluation instants dropped because a scrape was in flight
    seconds: float = 0.0
    served: str = ""  # how the rules Prometheus serves differ from those the patcher indexed ("" = none)

    @property
    def wrong(self) -> list[Checked]:
        return [c for c in self.checked if c.wrong]

    @property
    def unverified(self) -> list[Checked]:
        return [c for c in self.checked if c.unverified]

    @property
    def vacuous(self) -> list[Checked]:
        """Rewrites never compared while the original had data (they prove less)."""
        return [c for c in self.checked if not c.unverified and not c.with_data]

    @property
    def ok(self) -> bool:
        return not self.wrong and not self.unverified and not self.served

    def figures(self) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        for dash, changes in self.changes.items():
            declined = Counter(c.code for c in changes if c.action != "rewritten")
            per[dash] = {
                "queries": len(changes),
                "rewritten": sum(c.action == "rewritten" for c in changes),
                "declined": dict(sorted(declined.items())),
            }
        total_declined: Counter[str] = Counter()
        for d in per.values():
            total_declined.update(d["declined"])
        return {
            "queries": sum(d["queries"] for d in per.values()),
            "rewritten": sum(d["rewritten"] for d in per.values()),
            "declined": dict(sorted(total_declined.items(), key=lambda kv: (-kv[1], kv[0]))),
            "per_dashboard": per,
            "rewrites_checked": len(self.checked),
            "wrong_rewrites": len(self.wrong),
            "unverified_rewrites": len(self.unverified),
            "rewrites_without_data": len(self.vacuous),
            "comparisons": sum(c.comparisons for c in self.checked),
            "comparisons_with_data": sum(c.with_data for c in self.checked),
            "series_compared": sum(c.series for c in self.checked),
            "variable_combinations": sum(c.combinations for c in self.checked),
            "patcher_rules_equal_served_rules": not self.served,
            "controls": len(self.controls),
            "controls_caught": sum(c.wrong for c in self.controls),
            "instants_skipped_for_scrapes": self.skipped_instants,
            "seconds": round(self.seconds, 1),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "options": attrs.asdict(self.options),
            "prometheus": self.prometheus,
            "rule_files": self.rule_files,
            "targets": self.targets,
            "figures": self.figures(),
            "rewrites": [attrs.asdict(c) for c in self.checked],
            "controls": [attrs.asdict(c) for c in self.controls],
            "declined": [
                {"dashboard": d, "panel": c.panel, "ref": c.ref, "code": c.code, "reason": c.reason, "query": c.before}
                for d, cs in self.changes.items()
                for c in cs
                if c.action != "rewritten"
            ],
        }

    def to_markdown(self, command: str = "") -> str:
        from tars_core.report import markdown_table

        f = self.figures()
        lines = [
            "# TARS-1002 patcher: every rewrite against its original on a live Prometheus",
            "",
            f"{'**PASS**' if self.ok else '**FAIL**'}: {f['rewrites_checked']} rewrites checked, "
            f"{f['wrong_rewrites']} wrong, {f['unverified_rewrites']} unverified; "
            f"{f['comparisons']} comparisons ({f['comparisons_with_data']} with data, "
            f"{f['series_compared']} series), {f['variable_combinations']} variable combinations. "
            f"Controls (the rewrites without the matchers that select their rule's series, as before issue 17): "
            f"{f['controls_caught']} of {f['controls']} caught as wrong. "
            f"{f['instants_skipped_for_scrapes']} evaluation instants skipped because a scrape was in flight. "
            f"{f['seconds']} s.",
            "",
        ]
        if command:
            lines += [f"Reproduce: `{command}`", ""]
        lines += [
            f"Prometheus {self.prometheus}; scrape every {self.options.scrape_interval}; rule groups every "
            f"{self.options.rule_interval or 'interval of their file'}; {self.options.instants} evaluation instants "
            f"per rewrite; T.A.R.S. exporter {self.options.agents} agents x {self.options.regions} regions.",
            "",
            "Rule files loaded together: "
            + ", ".join(f"`{n}` ({k} recording rule{'s' if k != 1 else ''})" for n, k in self.rule_files.items())
            + ".",
            "",
            "The rules the patcher matched against are exactly the recording rules the server serves "
            "(`/api/v1/rules`: record, static labels, group)" + ("." if not self.served else f": NO, {self.served}."),
            "",
            "Scrape jobs: " + "; ".join(f"`{j}`: {len(t)} target(s)" for j, t in self.targets.items()) + ".",
            "",
            "## Queries seen, rewritten, declined",
            "",
        ]
        codes = sorted({c for d in f["per_dashboard"].values() for c in d["declined"]})
        rows = [
            [dash, d["queries"], d["rewritten"], *(d["declined"].get(c, 0) for c in codes)]
            for dash, d in f["per_dashboard"].items()
        ]
        rows.append(["**all**", f["queries"], f["rewritten"], *(f["declined"].get(c, 0) for c in codes)])
        lines += [markdown_table(["dashboard", "queries", "rewritten", *codes], rows), ""]
        lines += [markdown_table(["decline code", "meaning"], [[c, DECLINE_CODES[c]] for c in codes]), ""]
        lines += ["## Rewrites checked", ""]
        lines.append(
            markdown_table(
                ["dashboard", "panel", "rewrite", "combinations", "instants", "with data", "series", "result"],
                [
                    [
                        c.dashboard,
                        f"{c.panel} [{c.ref}]",
                        f"`{c.after}`",
                        c.combinations,
                        c.instants,
                        f"{c.with_data}/{c.comparisons}",
                        c.series,
                        "unverified: " + c.unverified
                        if c.unverified
                        else ("WRONG: " + "; ".join(c.mismatches[:2]) if c.wrong else "same"),
                    ]
                    for c in self.checked
                ],
            )
        )
        lines += ["", "## Controls: the same rewrites without the matchers that select their rule's series", ""]
        lines.append(
            markdown_table(
                ["dashboard", "panel", "control (pre-issue-17 rewrite)", "result"],
                [
                    [
                        c.dashboard,
                        f"{c.panel} [{c.ref}]",
                        f"`{c.after}`",
                        "caught: " + c.mismatches[0] if c.wrong else "NOT caught",
                    ]
                    for c in self.controls
                ],
            )
        )
        lines += ["", "## Declined, with the patcher's reason", ""]
        lines.append(
            markdown_table(
                ["dashboard", "panel", "code", "reason"],
                [
                    [d, f"{c.panel} [{c.ref}]", c.code, c.reason]
                    for d, cs in self.changes.items()
                    for c in cs
                    if c.action != "rewritten"
                ],
            )
        )
        return "\n".join(lines) + "\n"


# -- the live setup ---------------------------------------------------------------------------------------


def node_exporter_binary() -> str:
    """The node_exporter binary, or a one-line error naming the package to install."""
    from tars_core.errors import ServiceError

    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if exe is None:
        raise ServiceError("node_exporter is not installed: apt-get install prometheus-node-exporter")
    return exe


@contextlib.contextmanager
def live(workdir: Path, mat: Material, options: Options) -> Iterator[tuple[Any, dict[str, list[str]]]]:
    """A Prometheus loading ``mat``'s rule files and scraping three node_exporters (two as ``node``, two
    as ``node-exporter``: one is in both) and the T.A.R.S. exporter (``tars``); yields (its client, jobs)."""
    from tars_core.processes import Service, free_port, http_ready
    from tars_core.prometheus import Prometheus, PrometheusServer

    exe = node_exporter_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    rules_dir = workdir / "rules"
    rules_dir.mkdir(exist_ok=True)
    for name, text in mat.rule_files.items():
        (rules_dir / (name if name.endswith(".yml") else name + ".yml")).write_text(text, encoding="utf-8")
    with contextlib.ExitStack() as stack:
        nodes = []
        for i in range(3):
            port = free_port()
            argv = [exe, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults"]
            argv += [f"--collector.{c}" for c in NODE_COLLECTORS]
            url = f"http://127.0.0.1:{port}/metrics"
            stack.enter_context(
                Service(f"node_exporter-{i}", argv, log=workdir / f"node{i}.log", ready=http_ready(url))
            )
            nodes.append(f"127.0.0.1:{port}")
        port = free_port()
        argv = [sys.executable, "-m", "tars_1002_grafana.exporter", "--port", str(port)]
        argv += ["--agents", str(options.agents), "--regions", str(options.regions)]
        url = f"http://127.0.0.1:{port}/metrics"
        stack.enter_context(
            Service("tars-exporter", argv, log=workdir / "exporter.log", ready=http_ready(url), start_timeout=30)
        )
        # one machine in both jobs: a host that joined the cluster and is still scraped by the old job
        jobs = {"tars": [f"127.0.0.1:{port}"], "node": nodes[:2], "node-exporter": nodes[1:]}
        server = PrometheusServer(
            workdir / "prom",
            rules_dir=rules_dir,
            scrape_targets=jobs["tars"],
            scrape_jobs={"node": jobs["node"], "node-exporter": jobs["node-exporter"]},
            scrape_interval=options.scrape_interval,
        )
        stack.enter_context(server)
        prom = stack.enter_context(Prometheus(server.url))
        yield prom, jobs


def prometheus_version() -> str:
    out = subprocess.run(["prometheus", "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()[:1]
    m = re.search(r"version (\S+)", first[0]) if first else None
    return m.group(1) if m else "unknown"


# -- evaluation instants ------------------------------------------------------------------------------------


@attrs.define
class _Clock:
    """Where each rule group was evaluated and when scrapes were in flight, read from the server."""

    prom: Any
    index: RuleIndex
    since: float
    margin: float
    probes: dict[str, str] = attrs.field(factory=dict)  # group -> a selector of its own series with data
    skipped: set[float] = attrs.field(factory=set)

    def window(self) -> str:
        return f"[{int(time.time() - self.since) + 5}s]"

    def scrape_windows(self) -> list[tuple[float, float]]:
        out = []
        for s in self.prom.query(f"scrape_duration_seconds{self.window()}"):
            for ts, value in s["values"]:
                out.append((float(ts), float(ts) + float(value) + self.margin))
        return out

    def first_scrapes(self) -> float:
        """The instant by which every target has been scraped twice (rates have two samples)."""
        latest = self.since
        for s in self.prom.query(f"up{self.window()}"):
            times = sorted(float(ts) for ts, _ in s["values"])
            latest = max(latest, times[1] if len(times) > 1 else math.inf)
        return latest

    def group_instants(self, group: str, rules: Sequence[Rule]) -> list[float]:
        """Evaluation timestamps of ``group``: the sample times of one of its rules' own series."""
        selectors = [self.probes[group]] if group in self.probes else []
        for rule in rules:
            with contextlib.suppress(ValueError):
                selectors.append(self.index.selector(rule))
        for sel in selectors:
            found = {float(ts) for s in self.prom.query(f"{sel}{self.window()}") for ts, _ in s["values"]}
            if found:
                self.probes[group] = sel
                return sorted(found)
        return []

    def clean(self, instants: Sequence[float], after: float, scrapes: Sequence[tuple[float, float]]) -> list[float]:
        out = []
        for t in instants:
            if t <= after:
                continue
            if any(start <= t <= end for start, end in scrapes):
                self.skipped.add(t)
                continue
            out.append(t)
        return out


def _instants_by_group(
    clock: _Clock, groups: Mapping[str, Sequence[Rule]], need: int, timeout: float
) -> dict[str, list[float]]:
    """For each group, the first ``need`` clean evaluation instants after every target's second scrape,
    looked for every 2 s; what was found by ``timeout`` when some group still has fewer."""
    from tars_core.waiting import rounds

    found: dict[str, list[float]] = {}
    for _ in rounds(timeout, 2.0):
        warm = clock.first_scrapes()
        scrapes = clock.scrape_windows()
        found = {g: clock.clean(clock.group_instants(g, rules), warm, scrapes)[:need] for g, rules in groups.items()}
        if all(len(v) >= need for v in found.values()):
            break
    return found


# -- variables ---------------------------------------------------------------------------------------------


@attrs.frozen
class _Variable:
    name: str
    values: tuple[str, ...]  # as Grafana sends each selected value
    all_value: str


_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]])")


def _grafana_escape(value: str) -> str:
    """A multi-value variable's value as Grafana's Prometheus data source writes it into a query: regex
    special characters escaped, and the backslash doubled for the PromQL string."""
    return _REGEX_SPECIAL.sub(r"\\\\\1", value)


def dashboard_variables(dashboard: Mapping[str, Any], prom: Any) -> dict[str, _Variable]:
    """Every query, custom, interval and constant variable with its values on this Prometheus."""
    out: dict[str, _Variable] = {}
    for v in (dashboard.get("templating") or {}).get("list") or []:
        name, kind = str(v.get("name")), v.get("type")
        if kind == "query":
            query = v.get("query")
            text = str(query.get("query") if isinstance(query, dict) else query or v.get("definition") or "")
            raw = _label_values(prom, text)
        elif kind in ("custom", "interval"):
            raw = [x.strip() for x in str(v.get("query") or "").split(",") if x.strip()]
        elif kind in ("constant", "textbox"):
            raw = [str(v.get("query") or "")]
        else:
            continue
        multi = bool(v.get("multi") or v.get("includeAll"))
        values = tuple(_grafana_escape(x) if multi else x for x in raw)
        all_value = str(v["allValue"]) if v.get("allValue") else "(" + "|".join(values) + ")" if multi else ""
        out[name] = _Variable(name, values, all_value)
    return out


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.S)


def _label_values(prom: Any, query: str) -> list[str]:
    m = _LABEL_VALUES.match(query)
    if m is None:
        return []
    selector, label = m.group(1), m.group(2)
    # a chained variable ($region in agent's query) at All
    selector = VARIABLE_RE.sub(".*", selector) if selector else f'{{{label}!=""}}'
    return sorted({s["metric"].get(label, "") for s in prom.query(f"group by ({label}) ({selector})")} - {""})


def _fill(expr: str, values: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return values.get(name, m.group(0))

    return VARIABLE_RE.sub(sub, expr)


def combinations(expr: str, variables: Mapping[str, _Variable], cap: int) -> list[dict[str, str]]:
    """Every value (each one, All, one matching nothing) of every variable ``expr`` uses; when the product
    exceeds ``cap``, each variable in turn with the others at All."""
    used = sorted({m.group(1) or m.group(2) or m.group(3) for m in VARIABLE_RE.finditer(expr)} & set(variables))
    choices = [[*variables[n].values, variables[n].all_value, NO_MATCH] for n in used]
    if math.prod(len(c) for c in choices) <= cap:
        return [dict(zip(used, combo, strict=True)) for combo in itertools.product(*choices)]
    at_all = {n: variables[n].all_value for n in used}
    return [{**at_all, n: value} for n, c in zip(used, choices, strict=True) for value in c]


def control(change: Change) -> str | None:
    """``change``'s rewrite without the matchers that select its rules' own series (what the patcher wrote
    before issue 17), or None when it has none. Only the recorded selectors are edited."""
    import promql_parser as pp

    text = change.after
    for sel in dict.fromkeys(change.selectors):
        vs: Any = pp.parse(sel)  # a selector: VectorSelector
        pins = [str(m) for m in vs.matchers.matchers if m.name != "__name__"]
        if not pins:
            continue

        def strip(m: re.Match[str], pins: list[str] = pins) -> str:
            kept = [x for x in _split_matchers(m.group(2)) if x not in pins]
            return m.group(1) + ("{" + ",".join(kept) + "}" if kept else "")

        text = re.sub(r"(" + re.escape(str(vs.name)) + r")\{((?:[^{}\"]|\"(?:[^\"\\]|\\.)*\")*)\}", strip, text)
    return None if text == change.after else text


def _split_matchers(body: str) -> list[str]:
    """``a="x,y",b=~"z"`` -> [``a="x,y"``, ``b=~"z"``] (commas inside quoted values stay)."""
    out, cur, quoted, escaped = [], "", False, False
    for ch in body:
        if ch == "," and not quoted:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
    if cur.strip():
        out.append(cur.strip())
    return out


# -- comparing -----------------------------------------------------------------------------------------------


def _series(result: Any) -> list[tuple[dict[str, str], float]]:
    """[(labels, value)] of an instant query's result (vector or scalar)."""
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return [({}, float(result[1]))]
    return [(dict(s["metric"]), float(s["value"][1])) for s in result]


def _same_value(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)


def compare(original: Any, rewritten: Any, static: Mapping[str, str]) -> tuple[int, str | None]:
    """(series compared, None) when the two results are the same, else (0, what differs). The recorded
    name and the rule's static labels (when the original's series do not have them) are not compared."""
    orig = _series(original)
    new = _series(rewritten)
    carried = {k for labels, _ in orig for k in labels}
    ignore = {"__name__", *(k for k in static if k not in carried)}

    def key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, v) for k, v in labels.items() if k not in ignore))

    a = sorted((key(labels), v) for labels, v in orig)
    b = sorted((key(labels), v) for labels, v in new)
    if [k for k, _ in a] != [k for k, _ in b]:
        ca, cb = Counter(k for k, _ in a), Counter(k for k, _ in b)
        only_a, only_b = sorted((ca - cb).elements())[:2], sorted((cb - ca).elements())[:2]
        return 0, f"{len(a)} series vs {len(b)}; only original: {only_a}; only rewrite: {only_b}"
    for (k, va), (_, vb) in zip(a, b, strict=True):
        if not _same_value(va, vb):
            return 0, f"{dict(k)}: {va!r} vs {vb!r}"
    return len(a), None


def _check(
    prom: Any, item: Checked, instants: Sequence[float], combos: Sequence[Mapping[str, str]], static: Mapping[str, str]
) -> None:
    item.instants, item.combinations = len(instants), len(combos)
    for values in combos:
        original, rewritten = _fill(item.before, values), _fill(item.after, values)
        for t in instants:
            a, b = prom.query(original, at=t), prom.query(rewritten, at=t)
            n, why = compare(a, b, static)
            item.comparisons += 1
            item.with_data += bool(_series(a))
            item.series += n
            if why is not None and len(item.mismatches) < 5:
                chosen = {k: v for k, v in values.items() if not k.startswith("__")}
                item.mismatches.append(f"at {t:.3f} with {chosen}: {why}")


def run(workdir: Path, options: Options | None = None, log: Callable[[str], None] | None = None) -> Report:
    """Patch every dashboard of the material against every rule file, then check every rewrite live."""
    options = options or Options()
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    started = time.monotonic()
    mat = material(options.rule_interval)
    rules = mat.rules()
    index = RuleIndex(rules)
    changes = {
        name: patch_dashboard(dash, index, macro_windows=options.macro_windows)[1]
        for name, dash in mat.dashboards.items()
    }
    rewrites = [(d, c) for d, cs in changes.items() for c in cs if c.action == "rewritten"]
    say(f"{sum(map(len, changes.values()))} queries, {len(rewrites)} rewritten; starting the live setup")
    by_group: dict[str, list[Rule]] = {}
    for r in rules:
        by_group.setdefault(r.where, []).append(r)
    with live(workdir, mat, options) as (prom, jobs):
        since = time.time()
        from tars_core.waiting import wait_until

        wait_until(
            lambda: len(prom.query("up == 1")) == sum(map(len, jobs.values())),
            timeout=60,
            interval=1.0,
            what="every target scraped",
        )
        # the patcher must know every rule the server records (else a rewrite could pick up others' series)
        served = sorted((r.record, r.labels, r.group) for r in rules_from_api(prom.rule_groups()))
        indexed = sorted((r.record, r.labels, r.group) for r in rules)
        differ = "" if served == indexed else f"{len(served)} rules served, {len(indexed)} indexed"
        clock = _Clock(prom, index, since - 1, options.race_margin_s)
        needed = {g: by_group[g] for _, c in rewrites for g in c.groups}
        instants = _instants_by_group(clock, needed, options.instants, options.timeout_s)
        complete = sum(len(v) >= options.instants for v in instants.values())
        say(f"evaluation instants found for {complete}/{len(needed)} groups")
        variables = {name: dashboard_variables(dash, prom) for name, dash in mat.dashboards.items()}
        macros = {**MACRO_VALUES, **{k.lstrip("$"): v for k, v in options.macro_windows.items()}}
        report = Report(
            options,
            {n: len(load_rule_file(t)) for n, t in mat.rule_files.items()},
            jobs,
            prometheus_version(),
            changes,
            served=differ,
        )
        for dash, c in rewrites:
            item = Checked(dash, c.panel, c.ref, c.before, c.after, c.groups)
            report.checked.append(item)
            common = sorted(set.intersection(*(set(instants.get(g, ())) for g in c.groups)))
            if not common:
                item.unverified = "no evaluation instant shared by " + ", ".join(sorted(set(c.groups)))
                continue
            combos = [
                {**macros, **combo} for combo in combinations(c.before, variables[dash], options.max_combinations)
            ]
            _check(prom, item, common[: options.instants], combos, dict(c.extra_labels))
            wrong_on_purpose = control(c)
            if wrong_on_purpose is not None:
                ctl = Checked(dash, c.panel, c.ref, c.before, wrong_on_purpose, c.groups, control=True)
                report.controls.append(ctl)
                _check(prom, ctl, common[: options.instants], combos, dict(c.extra_labels))
        report.skipped_instants = len(clock.skipped)
    report.seconds = time.monotonic() - started
    f = report.figures()
    say(
        f"{f['rewrites_checked']} rewrites checked: {f['wrong_rewrites']} wrong, {f['unverified_rewrites']} "
        f"unverified, {f['comparisons']} comparisons ({f['comparisons_with_data']} with data) in {f['seconds']} s"
    )
    return report


def write(report: Report, out: Path, command: str = "") -> tuple[Path, Path]:
    """``out``.md and ``out``.json."""
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    md.write_text(report.to_markdown(command), encoding="utf-8")
    js.write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    return md, js


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tars_1002_grafana.equivalence [--quick] [--workdir DIR] [--out PREFIX]``: exit 0 when
    no rewrite is wrong or unverified, 1 otherwise."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m tars_1002_grafana.equivalence", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the tests' short run (rules every 3 s, 3 instants)")
    ap.add_argument("--workdir", type=Path, help="keep the Prometheus and exporters' files here")
    ap.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    ns = ap.parse_args(argv)
    options = Options() if ns.quick else Options.full()
    with contextlib.ExitStack() as stack:
        workdir = ns.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tars-equivalence-")))
        report = run(workdir, options)
    if ns.out:
        for path in write(report, ns.out, "python -m tars_1002_grafana.equivalence" + (" --quick" if ns.quick else "")):
            print(f"wrote {path}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
