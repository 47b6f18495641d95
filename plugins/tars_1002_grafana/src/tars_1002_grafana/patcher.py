"""Rewrite Grafana panel queries onto recording rules when they compute the same thing.

Queries are compared as parsed PromQL (``promql-parser``), never as strings: whitespace, label order,
the position of ``by``/``without``, parentheses and number spelling do not matter. Grafana's variables
and macros do not parse, so they are first replaced by placeholders: inside a range (``[$__rate_interval]``)
by a sentinel duration that can only match itself, elsewhere by a sentinel identifier; inside a quoted
label value they parse as they are and stay.

A query (or any sub-expression of it, largest first) is rewritten to a rule's series when:

* **same computation**: the trees are equal except that the query's selectors may carry extra label
  filters, the same on every selector; a filter is kept on the recorded series only if filtering
  commutes with the rule (the label survives every aggregation, vector match and function on the way),
  otherwise the query is left alone with the reason ("label agent_id is aggregated away by ..."); or
* **re-aggregation**: ``sum|min|max by (L) (E)`` where a rule records ``same-op by (K) (E)`` with L ⊆ K:
  it becomes ``op by (L) (rule{filters})``, which equals the original because sums of sums are sums.

Everything else is left untouched with a reason; library panels (their query is not in the dashboard
JSON) and non-Prometheus targets are reported and skipped. Patching a patched dashboard changes nothing.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import attrs
import promql_parser as pp

from tars_1002_grafana.rules import Rule, build_rules

# Grafana macros that stand for a duration; only meaningful inside a range selector or a subquery.
_MACRO_RE = re.compile(r"\$\{?(__rate_interval|__interval|__range|__interval_ms|__range_s|__range_ms)\}?")
# a variable or macro standing where a duration goes: [$__rate_interval], [${window}], [5m:$__interval]
_RANGE_VAR_RE = re.compile(r"(?<=[\[:])\s*(\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\])\s*(?=[\]:])")
# Dashboard variables: $name, ${name}, ${name:format}, [[name]]
_VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")
# a dashboard variable as the whole value of a label matcher: agent_id=~"$agent", job="[[job]]"
VAR_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"(\$\{?\w+(?::[^}]*)?\}?|\[\[\w+\]\])"')
_LABEL_LIST_RE = re.compile(r"(\b(?:by|without|on|ignoring|group_left|group_right)\s*\()([^()]*)(?=\))")
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PLACEHOLDER_BASE = 987_600  # sentinel seconds; a rule with an 11-day window would be needed to collide
_AGG_REAGGREGATABLE = {"sum", "min", "max"}


class QueryError(ValueError):
    """A panel query that does not parse even with placeholders."""


@attrs.frozen
class Change:
    """What happened to one panel target: ``rewritten`` (with old and new query) or ``skipped`` (why)."""

    panel: str
    ref: str
    action: str  # rewritten | skipped
    reason: str
    before: str = ""
    after: str = ""
    rules: tuple[str, ...] = ()


# -- placeholders --------------------------------------------------------------------------------------


@attrs.define
class _Placeholders:
    macro_windows: Mapping[str, str]
    numeric: bool = False  # variables outside ranges become numbers (for `histogram_quantile($q, ...)`)
    durations: dict[str, str] = attrs.field(factory=dict)  # printed sentinel duration -> macro text
    idents: dict[str, str] = attrs.field(factory=dict)  # sentinel identifier -> variable text
    seconds: dict[int, str] = attrs.field(factory=dict)  # sentinel seconds -> macro text

    def _duration(self, match: re.Match[str]) -> str:
        macro = match.group(1)
        name = "$" + (match.group(2) or match.group(3) or match.group(4))
        if name in self.macro_windows or macro in self.macro_windows:
            return self.macro_windows.get(name) or self.macro_windows[macro]
        for secs, text in self.seconds.items():
            if text == macro:
                return f"{secs}s"
        secs = _PLACEHOLDER_BASE + len(self.seconds)
        self.seconds[secs] = macro
        printed = str(pp.parse(f"x[{secs}s]"))
        self.durations[printed[printed.index("[") + 1 : -1]] = macro
        return f"{secs}s"

    def substitute(self, expr: str) -> str:
        """Replace macros and variables outside string literals; quoted label values keep theirs."""
        return _outside_strings(expr, self._code)

    def _code(self, text: str) -> str:
        text = _RANGE_VAR_RE.sub(self._duration, text)

        def var(m: re.Match[str], numeric: bool = self.numeric) -> str:
            ident = str(1_000_000_000 + len(self.idents)) if numeric else f"__grafana_var_{len(self.idents)}__"
            self.idents[ident] = m.group(0)
            return ident

        # a variable in a label list (`by ($group)`) is always a label name
        text = _LABEL_LIST_RE.sub(lambda m: m.group(1) + _VAR_RE.sub(lambda v: var(v, False), m.group(2)), text)
        return _VAR_RE.sub(var, text)

    def restore(self, printed: str) -> str:
        """Put macros and variables back into a printed expression, and drop the printer's bare ``{}``."""
        return _outside_strings(printed, self._restore_code)

    def _restore_code(self, text: str) -> str:
        for printed, macro in self.durations.items():
            # literal replacements (no backslash processing): macros contain `$` and braces
            text = re.sub(r"\[" + re.escape(printed) + r"(?=[\]:])", "[" + macro.replace("\\", "\\\\"), text)
            text = text.replace(f":{printed}]", f":{macro}]")
        for ident, original in sorted(self.idents.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(ident + "{}", original)
            text = re.sub(r"(?<![\w.])" + re.escape(ident) + r"(?![\w.])", original.replace("\\", "\\\\"), text)
        return re.sub(r"([A-Za-z_:][A-Za-z0-9_:]*)\{\}", r"\1", text)


def _outside_strings(text: str, fn: Callable[[str], str]) -> str:
    """``text`` with ``fn`` applied to each stretch between string literals; the literals stay as they are."""
    out, pos = [], 0
    for m in _STRING_RE.finditer(text):
        out += [fn(text[pos : m.start()]), m.group(0)]
        pos = m.end()
    out.append(fn(text[pos:]))
    return "".join(out)


def parse_query(expr: str, macro_windows: Mapping[str, str] | None = None) -> tuple[Any, _Placeholders]:
    """Parse a panel query with its variables replaced: first as identifiers (a variable standing for a
    metric or label name), then as numbers (one standing for a quantile or a k)."""
    error = ""
    for numeric in (False, True):
        ph = _Placeholders(dict(macro_windows or {}), numeric=numeric)
        text = ph.substitute(expr)
        try:
            return pp.parse(text), ph
        except ValueError as exc:
            error = error or str(exc)
            if not ph.idents:
                break
    raise QueryError(f"does not parse as PromQL: {error}")


# -- canonical form ------------------------------------------------------------------------------------


def _selector(vs: Any) -> tuple[str, frozenset[tuple[str, str, str]]]:
    """(metric name, other matchers): ``{__name__="x", a="b"}`` and ``x{a="b"}`` are the same selector."""
    name = str(vs.name) if vs.name is not None else ""
    out = set()
    for m in vs.matchers.matchers:
        op = _op(m.op)
        if m.name == "__name__" and op == "=" and (not name or name == m.value):
            name = m.value
            continue
        out.add((m.name, op, m.value))
    return name, frozenset(out)


def _op(op: Any) -> str:
    return {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}.get(str(op).split(".")[-1], str(op))


def _secs(d: timedelta | None) -> float | None:
    return None if d is None else d.total_seconds()


def _unwrap(node: Any) -> Any:
    while isinstance(node, pp.ParenExpr):
        node = node.expr
    return node


def canon(node: Any) -> Any:
    """A hashable tree that is equal for two expressions iff they are the same PromQL computation
    up to formatting (label order, by/without placement, parentheses, number and duration spelling)."""
    node = _unwrap(node)
    if isinstance(node, pp.VectorSelector):
        name, matchers = _selector(node)
        return ("vs", name, matchers, _secs(node.offset), str(node.at) if node.at else None)
    if isinstance(node, pp.MatrixSelector):
        return ("ms", canon(node.vector_selector), _secs(node.range))
    if isinstance(node, pp.AggregateExpr):
        mod = node.modifier
        labels = (str(mod.type).split(".")[-1], frozenset(mod.labels)) if mod else None
        return ("agg", str(node.op), labels, canon(node.param) if node.param is not None else None, canon(node.expr))
    if isinstance(node, pp.Call):
        return ("call", node.func.name, tuple(canon(a) for a in node.args))
    if isinstance(node, pp.BinaryExpr):
        bmod = node.modifier
        m = None
        if bmod is not None:
            matching = bmod.matching
            card = str(bmod.card).split(".")[-1]
            group = frozenset(getattr(bmod, "group_labels", None) or ())
            m = (
                card,
                (str(matching.type).split(".")[-1], frozenset(matching.labels)) if matching else None,
                group,
                bool(bmod.return_bool),
            )
            if m == ("OneToOne", None, frozenset(), False):
                m = None
        return ("bin", str(node.op), m, canon(node.lhs), canon(node.rhs))
    if isinstance(node, pp.NumberLiteral):
        return ("num", float(node.val))
    if isinstance(node, pp.StringLiteral):
        return ("str", str(node.val))
    if isinstance(node, pp.UnaryExpr):
        return ("neg", canon(node.expr))
    if isinstance(node, pp.SubqueryExpr):
        return (
            "sq",
            canon(node.expr),
            _secs(node.range),
            _secs(node.step),
            _secs(node.offset),
            str(node.at) if node.at else None,
        )
    return ("other", str(node))


# -- unification ---------------------------------------------------------------------------------------

_Matcher = tuple[str, str, str]


def _unify(q: Any, r: Any, extras: list[frozenset[_Matcher]]) -> bool:
    """Is the query tree ``q`` the rule tree ``r`` with extra label filters on its selectors?

    Collects, per selector, the query's matchers the rule's selector lacks into ``extras``.
    """
    if q[0] != r[0]:
        return False
    if q[0] == "vs":
        if q[1] != r[1] or q[3:] != r[3:] or not r[2] <= q[2]:
            return False
        extras.append(q[2] - r[2])
        return True
    if len(q) != len(r):
        return False
    for a, b in zip(q[1:], r[1:], strict=True):
        if isinstance(a, tuple) and a and isinstance(a[0], str) and a[0] in _NODE_KINDS:
            if not isinstance(b, tuple) or not _unify(a, b, extras):
                return False
        elif isinstance(a, tuple) and a and all(isinstance(x, tuple) and x and x[0] in _NODE_KINDS for x in a):
            if not isinstance(b, tuple) or len(a) != len(b):
                return False
            if not all(_unify(x, y, extras) for x, y in zip(a, b, strict=True)):
                return False
        elif a != b:
            return False
    return True


_NODE_KINDS = {"vs", "ms", "agg", "call", "bin", "num", "str", "neg", "sq", "other"}

# functions whose output labels do not come from their vector argument, so a filter cannot move past
_LABEL_BREAKING = {"absent", "absent_over_time", "vector", "scalar", "time", "count_values"}


def filter_blocker(tree: Any, label: str) -> str | None:
    """Why filtering on ``label`` does *not* commute with the computation ``tree``, or None if it does.

    A filter commutes when the label survives every aggregation (in ``by``, not in ``without``), every
    vector match (in ``on(...)``, not in ``ignoring(...)``) and every function between the selectors and
    the result; then filtering the inputs equals filtering the recorded output.
    """
    kind = tree[0]
    if kind in ("vs", "num", "str", "other"):
        return None
    if kind == "ms":
        return filter_blocker(tree[1], label)
    if kind == "agg":
        labels = tree[2]
        if labels is None or (labels[0] == "By" and label not in labels[1]):
            return f"label {label} is aggregated away by {tree[1]}"
        if labels[0] == "Without" and label in labels[1]:
            return f"label {label} is aggregated away by {tree[1]} without ({label})"
        return filter_blocker(tree[4], label)
    if kind == "call":
        fn, args = tree[1], tree[2]
        if fn in _LABEL_BREAKING:
            return f"{fn}() does not keep its input's labels"
        if fn in ("label_replace", "label_join") and len(args) > 1 and args[1] == ("str", label):
            return f"{fn}() rewrites label {label}"
        if fn == "histogram_quantile" and label == "le":
            return "label le is consumed by histogram_quantile"
        for a in args:
            why = filter_blocker(a, label)
            if why:
                return why
        return None
    if kind == "bin":
        mod = tree[2]
        both_vectors = _is_vector(tree[3]) and _is_vector(tree[4])
        if both_vectors and mod is not None and mod[1] is not None:
            mtype, mlabels = mod[1]
            if mtype == "Include" and label not in mlabels:
                return f"label {label} is not in the on(...) of a vector match"
            if mtype == "Exclude" and label in mlabels:
                return f"label {label} is ignored by a vector match"
        return filter_blocker(tree[3], label) or filter_blocker(tree[4], label)
    if kind == "neg":
        return filter_blocker(tree[1], label)
    if kind == "sq":
        return filter_blocker(tree[1], label)
    return "unknown expression"


def _is_vector(tree: Any) -> bool:
    if tree[0] in ("num", "str"):
        return False
    if tree[0] == "call" and tree[1] in ("scalar", "time", "pi"):
        return False
    if tree[0] == "neg":
        return _is_vector(tree[1])
    if tree[0] == "bin":
        return _is_vector(tree[3]) or _is_vector(tree[4])
    return True


@attrs.frozen
class _IndexedRule:
    rule: Rule
    tree: Any


class RuleIndex:
    """The rules in canonical form, for matching panel queries against."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = [_IndexedRule(r, canon(pp.parse(r.expr))) for r in rules]
        self.records = {r.record for r in rules}

    def match(self, tree: Any) -> tuple[str | None, str | None, tuple[str, ...]]:
        """(replacement PromQL, near-miss reason, rules used) for the canonical query ``tree``."""
        near_miss = None
        best_reagg: tuple[int, str, tuple[str, ...]] | None = None
        for ir in self.rules:
            extras: list[frozenset[_Matcher]] = []
            if _unify(tree, ir.tree, extras):
                filters, why = self._filters(extras, ir)
                if why is None:
                    return f"{ir.rule.record}{filters}", None, (ir.rule.record,)
                near_miss = near_miss or why
            reagg = self._reaggregate(tree, ir)
            if reagg is not None:
                text, why = reagg
                if why is not None:
                    near_miss = near_miss or why
                    continue
                size = len(ir.tree[2][1])
                if best_reagg is None or size < best_reagg[0]:
                    best_reagg = (size, text or "", (ir.rule.record,))
        if best_reagg is not None:
            return best_reagg[1], None, best_reagg[2]
        return None, near_miss, ()

    def _filters(self, extras: list[frozenset[_Matcher]], ir: _IndexedRule) -> tuple[str, str | None]:
        if not extras:
            return "", None
        first = extras[0]
        if any(e != first for e in extras[1:]):
            return "", f"label filters differ between the selectors of {ir.rule.record}'s expression"
        for name, _, _ in sorted(first):
            why = filter_blocker(ir.tree, name)
            if why:
                return "", f"{why} in {ir.rule.record}"
        if not first:
            return "", None
        return "{" + ", ".join(f'{n}{op}"{_esc(v)}"' for n, op, v in sorted(first)) + "}", None

    def _reaggregate(self, tree: Any, ir: _IndexedRule) -> tuple[str | None, str | None] | None:
        q, r = tree, ir.tree
        if q[0] != "agg" or r[0] != "agg" or q[1] != r[1] or q[1] not in _AGG_REAGGREGATABLE:
            return None
        if q[3] is not None or r[3] is not None or r[2] is None or r[2][0] != "By":
            return None
        qlabels = frozenset() if q[2] is None else q[2][1]
        if q[2] is not None and q[2][0] != "By":
            return None
        if not qlabels <= r[2][1] or qlabels == r[2][1]:
            return None
        extras: list[frozenset[_Matcher]] = []
        if not _unify(q[4], r[4], extras):
            return None
        filters, why = self._filters(extras, ir)
        if why is not None:
            return None, why
        by = f" by ({', '.join(sorted(qlabels))})" if qlabels else ""
        return f"{q[1]}{by} ({ir.rule.record}{filters})", None


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


def rewrite_query(
    expr: str, index: RuleIndex, macro_windows: Mapping[str, str] | None = None
) -> tuple[str | None, str, tuple[str, ...]]:
    """(new query or None, reason, rules used) for one PromQL query, largest matching sub-expression first."""
    ast, ph = parse_query(expr, macro_windows)
    used: list[str] = []
    reasons: list[str] = []

    def pre(node: Any) -> Any:
        if isinstance(node, (pp.NumberLiteral, pp.StringLiteral)):
            return None
        if isinstance(node, pp.VectorSelector) and node.name in index.records:
            return None
        new, why, rules = index.match(canon(node))
        if new is not None:
            used.extend(rules)
            return pp.parse(ph.substitute(new))
        if why:
            reasons.append(why)
        return None

    out = pp.transform(ast, pre_visit=pre)
    if not used:
        names = selector_names(ast)
        if names and names <= index.records:
            return None, "already uses recorded series", ()
        if reasons:
            return None, reasons[0], ()
        if ph.seconds:
            macros = ", ".join(sorted(set(ph.seconds.values())))
            return (
                None,
                (
                    f"its window {macros} follows the dashboard's time range and no rule records it "
                    f"(opt in with --macro-window '{next(iter(ph.seconds.values()))}=5m')"
                ),
                (),
            )
        return None, "no recording rule computes this expression", ()
    return ph.restore(str(out)), "same computation as " + ", ".join(dict.fromkeys(used)), tuple(used)


def vector_selectors(ast: Any) -> list[Any]:
    """Every vector selector of a parsed query (``pp.VectorSelector``), in walk order."""
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, pp.VectorSelector):
            found.append(node)

    pp.walk(ast, pre_visit=visit)
    return found


def selector_names(ast: Any) -> set[str]:
    """The metric names a parsed query reads."""
    return {str(vs.name) for vs in vector_selectors(ast) if vs.name}


# -- dashboards ----------------------------------------------------------------------------------------


def fill_variables(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with each variable or macro of ``values`` (name without ``$``) replaced, in both spellings
    (``$name`` and ``${name}``): how Grafana's query text becomes what it sends."""
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel: top level, nested in (collapsed) rows, and in the legacy ``rows[].panels[]`` schema."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels") or [])

    yield from walk(dashboard.get("panels") or [])
    for row in dashboard.get("rows") or []:
        yield from walk(row.get("panels") or [])


_OTHER_DATASOURCES = (
    "loki",
    "tempo",
    "jaeger",
    "elasticsearch",
    "influx",
    "mysql",
    "postgres",
    "graphite",
    "cloudwatch",
    "testdata",
    "grafana",
)


def _is_prometheus(panel: dict[str, Any], target: dict[str, Any], ds_vars: Mapping[str, str]) -> bool:
    """Decide from the target's, then the panel's datasource; a ``$var`` resolves through templating.

    Loki targets also carry ``expr``, so an explicit non-Prometheus type or name is respected; an
    unnamed or unknown one is taken as Prometheus (its query must still parse as PromQL to be touched).
    """
    for ds in (target.get("datasource"), panel.get("datasource")):
        if ds is None:
            continue
        typ = ""
        if isinstance(ds, dict):
            typ = str(ds.get("type") or "")
            if not typ:
                uid = str(ds.get("uid") or "")
                typ = ds_vars.get(uid.strip("${}"), uid)
        elif isinstance(ds, str):
            typ = ds_vars.get(ds.strip("${}"), ds)
        typ = typ.lower()
        if typ in ("", "-- mixed --", "-- dashboard --"):
            continue
        return not any(other in typ for other in _OTHER_DATASOURCES)
    return True


def _datasource_vars(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        str(v.get("name")): str(v.get("query") or "")
        for v in (dashboard.get("templating") or {}).get("list") or []
        if v.get("type") == "datasource"
    }


def patch_dashboard(
    dashboard_json: dict[str, Any] | str,
    rules: Sequence[Rule] | RuleIndex | None = None,
    *,
    macro_windows: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[Change]]:
    """Return a patched copy of a Grafana dashboard and what happened to every panel target.

    ``rules`` defaults to the TARS-1002 rules. ``macro_windows`` (e.g. ``{"$__rate_interval": "5m"}``)
    opts in to treating a Grafana macro as a fixed window; by default a macro window matches no rule,
    because its length follows the dashboard's time range while a recorded window does not.
    The input is not modified. Templating variables (``templating.list``) are left as they are.
    """
    dash = json.loads(dashboard_json) if isinstance(dashboard_json, str) else copy.deepcopy(dashboard_json)
    index = rules if isinstance(rules, RuleIndex) else RuleIndex(build_rules() if rules is None else rules)
    ds_vars = _datasource_vars(dash)
    changes: list[Change] = []
    for panel in iter_panels(dash):
        title = str(panel.get("title") or f"panel {panel.get('id')}")
        if panel.get("libraryPanel"):
            lib = panel["libraryPanel"]
            changes.append(
                Change(
                    title,
                    "-",
                    "skipped",
                    f"library panel {lib.get('name') or lib.get('uid')}: its queries live in the "
                    "panel library, not in this dashboard; patch the library panel itself",
                )
            )
            continue
        for target in panel.get("targets") or []:
            ref = str(target.get("refId", "?"))
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                continue
            if not _is_prometheus(panel, target, ds_vars):
                changes.append(Change(title, ref, "skipped", "not a Prometheus query", expr))
                continue
            try:
                new, reason, used = rewrite_query(expr, index, macro_windows)
            except QueryError as exc:
                changes.append(Change(title, ref, "skipped", str(exc), expr))
                continue
            if new is None:
                changes.append(Change(title, ref, "skipped", reason, expr))
                continue
            target["expr"] = new
            changes.append(Change(title, ref, "rewritten", reason, expr, new, used))
    return dash, changes


def dumps(dashboard: dict[str, Any]) -> str:
    """The dashboard as written to disk: stable key order as given, two-space indent, trailing newline."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def format_changes(changes: Sequence[Change], *, color: bool = False) -> str:
    """A readable, diff-like account of the patch: every rewritten target, then every skipped one."""
    red, green, dim, reset = ("\x1b[31m", "\x1b[32m", "\x1b[2m", "\x1b[0m") if color else ("", "", "", "")
    lines = []
    rewritten = [c for c in changes if c.action == "rewritten"]
    skipped = [c for c in changes if c.action == "skipped"]
    for c in rewritten:
        lines.append(f"~ {c.panel} [{c.ref}]  ({c.reason})")
        before = c.before.replace("\n", "\n    ")
        lines.append(f"{red}-   {before}{reset}")
        lines.append(f"{green}+   {c.after}{reset}")
    for c in skipped:
        lines.append(f"{dim}= {c.panel} [{c.ref}]  left as is: {c.reason}{reset}")
    lines.append(f"{len(rewritten)} queries rewritten, {len(skipped)} left as they are")
    return "\n".join(lines)


def unified_diff(before: str, after: str, name: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{name}", f"b/{name}"))


def main(argv: Sequence[str] | None = None) -> int:
    """``tars-1002-patch-dashboard IN.json [-o OUT.json] [--rules FILE] [--json-diff]``.

    Prints what changed (and why other queries did not); writes the patched dashboard to ``-o`` (or
    in place with ``--in-place``). Exit 0 on success, 2 on unreadable input.
    """
    import argparse
    import sys
    from pathlib import Path

    from tars_1002_grafana.rules import load_rule_file

    ap = argparse.ArgumentParser(
        prog="tars-1002-patch-dashboard", description="Rewrite Grafana panel queries onto TARS-1002 recording rules."
    )
    ap.add_argument("dashboard", type=Path)
    ap.add_argument("-o", "--output", type=Path, help="write the patched dashboard here")
    ap.add_argument("--in-place", action="store_true", help="overwrite the input dashboard")
    ap.add_argument("--rules", type=Path, help="a Prometheus rule file (default: the built-in TARS-1002 rules)")
    ap.add_argument(
        "--macro-window",
        action="append",
        default=[],
        metavar="MACRO=DURATION",
        help="treat a Grafana macro as a fixed window, e.g. '$__rate_interval=5m'",
    )
    ap.add_argument("--json-diff", action="store_true", help="also print a unified diff of the JSON")
    ns = ap.parse_args(argv)
    try:
        text = ns.dashboard.read_text(encoding="utf-8")
        dashboard = json.loads(text)
        rules = load_rule_file(ns.rules.read_text(encoding="utf-8")) if ns.rules else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    windows = dict(w.split("=", 1) for w in ns.macro_window)
    patched, changes = patch_dashboard(dashboard, rules, macro_windows=windows)
    print(format_changes(changes, color=sys.stdout.isatty()))
    out_text = dumps(patched)
    if ns.json_diff:
        print(unified_diff(dumps(dashboard), out_text, ns.dashboard.name))
    target = ns.dashboard if ns.in_place else ns.output
    if target is not None:
        target.write_text(out_text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
