"""Rewrite Grafana panel queries onto recording rules when they compute the same thing.

Queries are compared as parsed PromQL (``promql-parser``), never as strings: whitespace, label order,
the position of ``by``/``without``, parentheses and number spelling do not matter. Grafana's variables
and macros do not parse, so they are first replaced by placeholders: inside a range (``[$__rate_interval]``)
by a sentinel duration that can only match itself (or the window an operator opted in to), elsewhere by
a sentinel identifier; inside a quoted label value they parse as they are and stay.

A query (or any sub-expression of it, largest first) is rewritten to a rule's series when:

* **same computation**: the trees are equal except that the query's selectors may carry extra label
  filters, the same on every selector; a filter is kept on the recorded series only if filtering
  commutes with the rule (the label survives every aggregation, vector match and function on the way),
  otherwise the query is left alone with the reason ("label agent_id is aggregated away by ..."); or
* **re-aggregation**: ``sum|min|max by (L) (E)`` where a rule records ``same-op by (K) (E)`` with L ⊆ K:
  it becomes ``op by (L) (rule{filters})``, which equals the original because sums of sums are sums.

The recorded name alone does not identify a rule's series: several rules (often from several files) may
record one name, told apart by the labels their series keep (``job="node"`` vs ``job="node-exporter"``)
or by static ``labels:`` (``quantile="0.9"``). So the rewrite selects the rule's own series: it keeps
each of the rule's matchers on labels its series keep, each static label, and, where another rule
records the same name, a label the other rule's series always carry and this one's never (``job=""``).
It declines when it cannot prove the selection exact, when a static label may overwrite a label of the
rule's result, when the extra labels of the recorded series (their name, static labels) would change the
enclosing expression (a vector match on them), and inside a subquery (which samples the expression at
its own steps, not at the rule's evaluations).

Everything else is left untouched with a reason and a short code (``Rewrite.code``); library panels
(their query is not in the dashboard JSON) and non-Prometheus targets are reported and skipped.
Patching a patched dashboard changes nothing.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections import defaultdict
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
VARIABLE_RE = _VAR_RE  # the name is group 1, 2 or 3 (Grafana macros too: $__rate_interval)
# a dashboard variable as the whole value of a label matcher: agent_id=~"$agent", job="[[job]]"
VAR_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"(\$\{?\w+(?::[^}]*)?\}?|\[\[\w+\]\])"')
_LABEL_LIST_RE = re.compile(r"(\b(?:by|without|on|ignoring|group_left|group_right)\s*\()([^()]*)(?=\))")
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PLACEHOLDER_BASE = 987_600  # sentinel seconds; a rule with an 11-day window would be needed to collide
_AGG_REAGGREGATABLE = {"sum", "min", "max"}
_KEEPS_ALL_LABELS = {"topk", "bottomk", "limitk", "limit_ratio"}  # aggregations that return input series

#: Why a query was left as it is: the code in ``Rewrite.code``/``Change.code`` and what it means.
DECLINE_CODES: dict[str, str] = {
    "no-rule": "no recording rule computes the expression",
    "filter": "a label filter does not commute with the rule (the rule aggregates the label away)",
    "macro-window": "its window is a Grafana macro that follows the time range",
    "shared-name": "another rule records the same name and its series cannot be told apart",
    "static-label": "the rule's static labels may overwrite labels of its result",
    "extra-labels": "the recorded series' extra labels (static labels, name) would change the enclosing expression",
    "subquery": "inside a subquery, which samples the expression between the rule's evaluations",
    "recorded": "already reads recorded series",
    "unparsable": "does not parse as PromQL",
    "not-prometheus": "not a Prometheus query",
    "library-panel": "a library panel: its query is not in the dashboard",
}


class QueryError(ValueError):
    """A panel query that does not parse even with placeholders."""


@attrs.frozen
class Change:
    """What happened to one panel target: ``rewritten`` (with old and new query) or ``skipped`` (why).

    ``code`` is ``rewritten`` or a key of :data:`DECLINE_CODES`; ``selectors`` are the recorded
    selectors a rewrite reads (each with the matchers that pick its rule's series, without the query's
    own filters); ``groups`` where those rules are defined; ``extra_labels`` the static labels the
    rewritten series carry beyond the original's (besides their name).
    """

    panel: str
    ref: str
    action: str  # rewritten | skipped
    reason: str
    before: str = ""
    after: str = ""
    rules: tuple[str, ...] = ()
    code: str = ""
    selectors: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    extra_labels: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Rewrite:
    """What the patcher made of one query: the new query (None when declined), why, and a short code."""

    query: str | None
    reason: str
    code: str
    rules: tuple[str, ...] = ()
    selectors: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    extra_labels: tuple[tuple[str, str], ...] = ()


# -- placeholders --------------------------------------------------------------------------------------


@attrs.define
class _Placeholders:
    macro_windows: Mapping[str, str]
    numeric: bool = False  # variables outside ranges become numbers (for `histogram_quantile($q, ...)`)
    durations: dict[str, str] = attrs.field(factory=dict)  # printed sentinel duration -> macro text
    idents: dict[str, str] = attrs.field(factory=dict)  # sentinel identifier -> variable text
    seconds: dict[int, str] = attrs.field(factory=dict)  # sentinel seconds -> macro text
    windows: dict[float, float] = attrs.field(factory=dict)  # sentinel seconds -> opted-in window seconds

    def _duration(self, match: re.Match[str]) -> str:
        """A sentinel duration for a macro. An opted-in macro (``$__rate_interval=5m``) keeps its sentinel in
        the tree too, and only *matching* reads it as the window: the parts of the query that are not
        rewritten keep the macro, so they still follow the dashboard's time range."""
        macro = match.group(1)
        name = "$" + (match.group(2) or match.group(3) or match.group(4))
        for secs, text in self.seconds.items():
            if text == macro:
                return f"{secs}s"
        secs = _PLACEHOLDER_BASE + len(self.seconds)
        self.seconds[secs] = macro
        window = self.macro_windows.get(name) or self.macro_windows.get(macro)
        if window:
            try:
                self.windows[float(secs)] = pp.parse_duration(window).total_seconds()
            except ValueError:
                raise QueryError(f"macro window {window!r} for {macro} is not a PromQL duration") from None
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

_Matcher = tuple[str, str, str]  # (label, op, value)


def _matchers(ms: Any) -> frozenset[_Matcher]:
    return frozenset((m.name, _op(m.op), m.value) for m in ms)


def _selector(vs: Any) -> tuple[str, frozenset[_Matcher]]:
    """(metric name, other matchers): ``{__name__="x", a="b"}`` and ``x{a="b"}`` are the same selector."""
    name = str(vs.name) if vs.name is not None else ""
    out = set()
    for label, op, value in _matchers(vs.matchers.matchers):
        if label == "__name__" and op == "=" and (not name or name == value):
            name = value
            continue
        out.add((label, op, value))
    return name, frozenset(out)


def _op(op: Any) -> str:
    return {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}.get(str(op).split(".")[-1], str(op))


def _at(at: Any) -> tuple[str, float | None] | None:
    if at is None:
        return None
    when = getattr(at, "at", None)
    return (str(at.type).split(".")[-1], when.timestamp() if when is not None else None)


def _unwrap(node: Any) -> Any:
    while isinstance(node, pp.ParenExpr):
        node = node.expr
    return node


def canon(node: Any, windows: Mapping[float, float] | None = None) -> Any:
    """A hashable tree that is equal for two expressions iff they are the same PromQL computation
    up to formatting (label order, by/without placement, parentheses, number and duration spelling).

    ``windows`` maps sentinel durations of opted-in macros to the window they stand for.
    """
    windows = windows or {}

    def secs(d: timedelta | None) -> float | None:
        if d is None:
            return None
        s = d.total_seconds()
        return windows.get(s, s)

    def c(node: Any) -> Any:
        node = _unwrap(node)
        if isinstance(node, pp.VectorSelector):
            name, matchers = _selector(node)
            ors = frozenset(_matchers(group) for group in (node.matchers.or_matchers or ()))
            return ("vs", name, matchers, ors, secs(node.offset), _at(node.at))
        if isinstance(node, pp.MatrixSelector):
            return ("ms", c(node.vector_selector), secs(node.range))
        if isinstance(node, pp.AggregateExpr):
            mod = node.modifier
            labels = (str(mod.type).split(".")[-1], frozenset(mod.labels)) if mod else None
            return ("agg", str(node.op), labels, c(node.param) if node.param is not None else None, c(node.expr))
        if isinstance(node, pp.Call):
            return ("call", node.func.name, tuple(c(a) for a in node.args))
        if isinstance(node, pp.BinaryExpr):
            bmod = node.modifier
            m = None
            if bmod is not None:
                matching = bmod.matching
                card = str(bmod.card).split(".")[-1]
                group = frozenset(getattr(bmod, "group_labels", None) or ())
                fill = getattr(bmod, "fill_values", None)
                fills = (fill.lhs, fill.rhs) if fill is not None else (None, None)
                m = (
                    card,
                    (str(matching.type).split(".")[-1], frozenset(matching.labels)) if matching else None,
                    group,
                    bool(bmod.return_bool),
                    fills,
                )
                if m == ("OneToOne", None, frozenset(), False, (None, None)):
                    m = None
            return ("bin", str(node.op), m, c(node.lhs), c(node.rhs))
        if isinstance(node, pp.NumberLiteral):
            return ("num", float(node.val))
        if isinstance(node, pp.StringLiteral):
            return ("str", str(node.val))
        if isinstance(node, pp.UnaryExpr):
            return ("neg", c(node.expr))
        if isinstance(node, pp.SubqueryExpr):
            return ("sq", c(node.expr), secs(node.range), secs(node.step), secs(node.offset), _at(node.at))
        return ("other", str(node))

    return c(node)


# -- unification ---------------------------------------------------------------------------------------


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
_SCALAR_FUNCTIONS = {"scalar", "time", "pi"}


def filter_blocker(tree: Any, label: str) -> str | None:
    """Why filtering on ``label`` does *not* commute with the computation ``tree``, or None if it does.

    A filter commutes when the label survives every aggregation (in ``by``, not in ``without``), every
    vector match (in ``on(...)``, not in ``ignoring(...)``) and every function between the selectors and
    the result; then filtering the inputs equals filtering the recorded output. The same condition makes
    a matcher on every selector of a rule hold for every series the rule records.
    """
    kind = tree[0]
    if kind in ("vs", "num", "str", "other"):
        return None
    if kind == "ms":
        return filter_blocker(tree[1], label)
    if kind == "agg":
        labels = tree[2]
        if tree[1] == "count_values" and tree[3] == ("str", label):
            return f"count_values() writes label {label}"
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
    if tree[0] == "call" and tree[1] in _SCALAR_FUNCTIONS:
        return False
    if tree[0] == "neg":
        return _is_vector(tree[1])
    if tree[0] == "bin":
        return _is_vector(tree[3]) or _is_vector(tree[4])
    return True


def output_labels(tree: Any) -> frozenset[str] | None:
    """The label names the result of ``tree`` can carry (besides ``__name__``), or None when the
    expression does not bound them (a selector keeps whatever labels its series have)."""
    kind = tree[0]
    if kind in ("num", "str"):
        return frozenset()
    if kind in ("neg", "sq"):
        return output_labels(tree[1])
    if kind == "agg":
        op, mod, param, inner = tree[1], tree[2], tree[3], tree[4]
        if op in _KEEPS_ALL_LABELS:
            return output_labels(inner)
        written = frozenset({param[1]}) if op == "count_values" and param and param[0] == "str" else frozenset()
        if mod is None:
            return written
        if mod[0] == "By":
            return frozenset(mod[1]) | written
        kept = output_labels(inner)
        return None if kept is None else (kept - mod[1]) | written
    if kind == "call":
        fn, args = tree[1], tree[2]
        if fn in ("absent", "absent_over_time"):
            return None  # its labels come from the equality matchers of its argument
        labels: frozenset[str] = frozenset()
        for a in args:
            if a[0] in ("num", "str"):
                continue
            sub = output_labels(a)
            if sub is None:
                return None
            labels |= sub
        if fn == "histogram_quantile":
            labels -= {"le"}
        if fn in ("label_replace", "label_join") and len(args) > 1 and args[1][0] == "str":
            labels |= {args[1][1]}
        return labels
    if kind == "bin":
        op, mod, lhs, rhs = tree[1], tree[2], tree[3], tree[4]
        lv, rv = _is_vector(lhs), _is_vector(rhs)
        if not (lv and rv):
            return output_labels(lhs) if lv else output_labels(rhs) if rv else frozenset()
        left, right = output_labels(lhs), output_labels(rhs)
        card, group = (mod[0], mod[2]) if mod else ("OneToOne", frozenset())
        if op == "or":
            return None if left is None or right is None else left | right
        if op in ("and", "unless") or card == "OneToOne":
            return left
        if card == "OneToMany":
            return None if right is None else right | group
        return None if left is None else left | group
    return None  # selectors, ranges, anything unknown


def _selectors(tree: Any) -> list[frozenset[_Matcher]]:
    """The matchers of every vector selector in ``tree``."""
    if tree[0] == "vs":
        return [tree[2]]
    out: list[frozenset[_Matcher]] = []
    for part in tree[1:]:
        if isinstance(part, tuple) and part and isinstance(part[0], str) and part[0] in _NODE_KINDS:
            out += _selectors(part)
        elif isinstance(part, tuple):
            for x in part:
                if isinstance(x, tuple) and x and isinstance(x[0], str) and x[0] in _NODE_KINDS:
                    out += _selectors(x)
    return out


# -- telling apart the rules that record one name -------------------------------------------------------

_REGEX_META = set(".^$*+?()[]{}|\\")


def _literal_alternatives(regex: str) -> frozenset[str] | None:
    """The strings a Prometheus regex (fully anchored) matches, when it is a plain alternation of
    literals (``LIST|GET``, ``(a|b)``, escaped dots allowed); None for anything else."""
    body = regex
    if body.startswith("(?:") and body.endswith(")"):
        body = body[3:-1]
    elif body.startswith("(") and body.endswith(")") and not body.startswith("(?"):
        body = body[1:-1]
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            if i + 1 < len(body) and not body[i + 1].isalnum():
                cur.append(body[i + 1])
                i += 2
                continue
            return None
        if ch == "|":
            out.append("".join(cur))
            cur = []
        elif ch in _REGEX_META:
            return None
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return frozenset(out)


def _value_set(op: str, value: str) -> tuple[bool, frozenset[str]] | None:
    """(whether the matcher selects the set or its complement, the set), None when not decidable
    (a Grafana variable in the value, a regex that is not a list of literals)."""
    if op in ("=", "!="):
        if "$" in value or "[[" in value:
            return None
        return op == "=", frozenset({value})
    lits = _literal_alternatives(value)
    return None if lits is None else (op == "=~", lits)


def _incompatible(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """True when no label value satisfies both constraints ``(op, value)`` (``("=", "")``: label absent)."""
    sa, sb = _value_set(*a), _value_set(*b)
    if sa is None or sb is None:
        return False
    (pa, va), (pb, vb) = sa, sb
    if pa and pb:
        return not (va & vb)
    if pa:
        return va <= vb
    if pb:
        return vb <= va
    return False


@attrs.frozen
class _IndexedRule:
    rule: Rule
    tree: Any
    out: frozenset[str] | None  # labels the expression's result can carry; None: not bounded
    pins: frozenset[_Matcher]  # matchers every series the rule records satisfies
    unusable: str | None  # why no query may be rewritten to this rule

    def constraints(self, label: str) -> set[tuple[str, str]]:
        """What every series this rule records satisfies on ``label``; ``("=", "")`` when it never has it."""
        found = {(op, v) for name, op, v in self.pins if name == label}
        if not found and self.out is not None and label not in self.out and label != "__name__":
            found = {("=", "")}
        return found


def _index(rule: Rule) -> _IndexedRule:
    tree = canon(pp.parse(rule.expr))
    static = dict(rule.labels)
    out = output_labels(tree)
    sels = _selectors(tree)
    common = frozenset.intersection(*sels) if sels else frozenset()
    pins = {
        (label, op, value)
        for label, op, value in common
        if label != "__name__" and label not in static and filter_blocker(tree, label) is None
    }
    pins |= {(label, "=", value) for label, value in static.items()}
    unusable = None
    if static:
        names = ", ".join(f'{k}="{v}"' for k, v in sorted(static.items()))
        if out is None:
            unusable = (
                f"the static labels {names} of {rule.record} ({rule.where}) may overwrite labels of its "
                "expression's result, which no aggregation bounds"
            )
        elif out & static.keys():
            clash = ", ".join(sorted(out & static.keys()))
            unusable = (
                f"the static labels of {rule.record} ({rule.where}) overwrite label(s) {clash} its expression keeps"
            )
    return _IndexedRule(rule, tree, out, frozenset(pins), unusable)


@attrs.frozen
class _Candidate:
    text: str  # the replacement (with the query's filters)
    rule: _IndexedRule
    selector: str  # the recorded selector without the query's filters
    extra: frozenset[str]  # labels the replacement's series carry and the original's do not


class RuleIndex:
    """The rules in canonical form, for matching panel queries against.

    Give it every rule the Prometheus loads that records a name a rewrite may use: a rewrite is exact
    only among the rules it knows (another file recording the same name for other series would add them).
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = [_index(r) for r in rules]
        self.by_record: dict[str, list[_IndexedRule]] = defaultdict(list)
        for ir in self.rules:
            self.by_record[ir.rule.record].append(ir)
        self.records = set(self.by_record)

    def selector(self, rule: Rule) -> str:
        """The selector that picks ``rule``'s own series among every series of its name (or why not)."""
        ir = next(i for i in self.by_record[rule.record] if i.rule is rule)
        chosen, why = self._selection(ir, frozenset())
        if chosen is None:
            raise ValueError(why)
        return _selector_text(rule.record, chosen)

    def match(self, tree: Any) -> tuple[list[_Candidate], tuple[str, str] | None]:
        """The replacements for the canonical query ``tree`` (best first) and the first near miss."""
        near: tuple[str, str] | None = None
        direct: list[_Candidate] = []
        reagg: list[tuple[int, _Candidate]] = []
        for ir in self.rules:
            extras: list[frozenset[_Matcher]] = []
            if _unify(tree, ir.tree, extras):
                cand, miss = self._candidate(ir, extras, None)
                if cand is not None:
                    direct.append(cand)
                near = near or miss
            found = self._reaggregate(tree, ir)
            if found is not None:
                cand, miss = found
                if cand is not None:
                    reagg.append((len(ir.tree[2][1]), cand))
                near = near or miss
        reagg.sort(key=lambda pair: pair[0])
        return direct + [c for _, c in reagg], near

    def _candidate(
        self, ir: _IndexedRule, extras: list[frozenset[_Matcher]], reagg_by: frozenset[str] | None
    ) -> tuple[_Candidate | None, tuple[str, str] | None]:
        if ir.unusable:
            return None, ("static-label", ir.unusable)
        filters, why = self._filters(extras, ir)
        if why is not None:
            return None, ("filter", why)
        chosen, why = self._selection(ir, filters)
        if chosen is None:
            return None, ("shared-name", why or "")
        text = _selector_text(ir.rule.record, chosen | filters)
        selector = _selector_text(ir.rule.record, chosen)
        if reagg_by is None:
            extra = frozenset({"__name__", *dict(ir.rule.labels)})
            return _Candidate(text, ir, selector, extra), None
        by = f" by ({', '.join(sorted(reagg_by))})" if reagg_by else ""
        return _Candidate(f"{ir.tree[1]}{by} ({text})", ir, selector, frozenset()), None

    def _filters(self, extras: list[frozenset[_Matcher]], ir: _IndexedRule) -> tuple[frozenset[_Matcher], str | None]:
        if not extras:
            return frozenset(), None
        first = extras[0]
        if any(e != first for e in extras[1:]):
            return frozenset(), f"label filters differ between the selectors of {ir.rule.record}'s expression"
        for name, _, _ in sorted(first):
            why = filter_blocker(ir.tree, name)
            if why:
                return frozenset(), f"{why} in {ir.rule.record}"
        return first, None

    def _selection(
        self, ir: _IndexedRule, filters: frozenset[_Matcher]
    ) -> tuple[frozenset[_Matcher] | None, str | None]:
        """Matchers that select exactly ``ir``'s series among every rule recording its name: its pins, and
        for each other rule of that name a label this rule's series never carry and the other's always do
        (``job=""``) when the pins and the query's filters do not already exclude it."""
        chosen = set(ir.pins)
        for other in self.by_record[ir.rule.record]:
            if other is ir:
                continue
            if _excludes(chosen | filters, other):
                continue
            absent = [
                label
                for label, _, _ in sorted(other.pins)
                if ir.constraints(label) == {("=", "")}
                and any(_incompatible(("=", ""), c) for c in other.constraints(label))
            ]
            if absent:
                chosen.add((absent[0], "=", ""))
                continue
            return None, (
                f"{ir.rule.record} is also recorded by {other.rule.where}, whose series cannot be told apart "
                f"from those of {ir.rule.where}"
            )
        return frozenset(chosen), None

    def _reaggregate(self, tree: Any, ir: _IndexedRule) -> tuple[_Candidate | None, tuple[str, str] | None] | None:
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
        return self._candidate(ir, extras, qlabels)


def _excludes(matchers: frozenset[_Matcher] | set[_Matcher], other: _IndexedRule) -> bool:
    """Do ``matchers`` select none of ``other``'s series?"""
    return any(_incompatible((op, v), c) for label, op, v in matchers for c in other.constraints(label))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


def _selector_text(record: str, matchers: frozenset[_Matcher] | set[_Matcher]) -> str:
    if not matchers:
        return record
    return record + "{" + ", ".join(f'{n}{op}"{_esc(v)}"' for n, op, v in sorted(matchers)) + "}"


# -- where a sub-expression sits -----------------------------------------------------------------------


def _context_blocker(parents: Sequence[Any], extra: frozenset[str], windows: Mapping[float, float]) -> str | None:
    """Why series carrying the labels ``extra`` (their name, static labels) where the original's carry
    none would change the expression around them (``parents``, outermost first), or None.

    Walks outwards: an aggregation that drops a label absorbs it, ``scalar()`` absorbs everything, a
    vector match that would compare the label, ``absent()`` (whose labels come from its argument's
    selectors) and label functions reading it refuse. What reaches the top only labels the panel's
    series, which keep their values.
    """
    left = set(extra)
    for p in reversed(parents):
        if not left:
            return None
        if isinstance(p, (pp.ParenExpr, pp.UnaryExpr)):
            continue
        if isinstance(p, pp.AggregateExpr):
            op, mod = str(p.op), p.modifier
            if op == "count_values" and isinstance(p.param, pp.StringLiteral):
                left.discard(str(p.param.val))
            if op in _KEEPS_ALL_LABELS:
                continue
            if mod is None:
                left = set()
            elif str(mod.type).endswith("By"):
                left &= set(mod.labels)
            else:
                left -= {*mod.labels, "__name__"}
            continue
        if isinstance(p, pp.Call):
            fn = p.func.name
            strs = [str(a.val) for a in p.args if isinstance(a, pp.StringLiteral)]
            if fn in ("absent", "absent_over_time"):
                return f"{fn}() takes its labels from its argument's selectors"
            if fn == "scalar":
                return None
            if fn == "label_replace" and len(strs) >= 3 and strs[2] in left:
                return f"label_replace() reads label {strs[2]}, which the recorded series carry"
            if fn == "label_join" and strs:
                if any(s in left for s in strs[2:]):
                    return "label_join() reads a label the recorded series carry"
                left.discard(strs[0])
            if fn.startswith("sort_by_label") and any(s in left for s in strs):
                return f"{fn}() sorts by a label the recorded series carry"
            if fn == "histogram_quantile" and "le" in left:
                return "histogram_quantile() groups by le, a static label of the rule"
            continue
        if isinstance(p, pp.BinaryExpr):
            if not (_is_vector(canon(p.lhs, windows)) and _is_vector(canon(p.rhs, windows))):
                continue
            matching = p.modifier.matching if p.modifier is not None else None
            if matching is not None and str(matching.type).endswith("Include"):
                compared = left & set(matching.labels)
            else:
                compared = left - {"__name__"} - set(matching.labels if matching is not None else ())
            if compared:
                names = ", ".join(sorted(compared))
                return f"the vector match of '{p.op}' would compare label(s) {names}, which the recorded series carry"
            continue
        return f"{type(p).__name__} around the expression"  # subqueries are refused before; anything new too
    return None


def rewrite(expr: str, index: RuleIndex, macro_windows: Mapping[str, str] | None = None) -> Rewrite:
    """What the patcher makes of one PromQL query: the largest matching sub-expressions rewritten."""
    ast, ph = parse_query(expr, macro_windows)
    used: list[_Candidate] = []
    near: list[tuple[str, str]] = []
    stack: list[Any] = []

    def pre(node: Any) -> Any:
        stack.append(node)
        parents = stack[:-1]
        if isinstance(node, (pp.NumberLiteral, pp.StringLiteral, pp.MatrixSelector, pp.ParenExpr)):
            return None
        if isinstance(node, pp.VectorSelector) and (
            node.name in index.records or (parents and isinstance(parents[-1], pp.MatrixSelector))
        ):
            return None  # a recorded series already, or the samples of a range: never replaced
        tree = canon(node, ph.windows)
        if not _is_vector(tree):
            return None
        candidates, miss = index.match(tree)
        if miss:
            near.append(miss)
        if not candidates:
            return None
        if any(isinstance(p, pp.SubqueryExpr) for p in parents):
            near.append(
                (
                    "subquery",
                    f"{candidates[0].rule.rule.record} records it, but inside a subquery the expression is "
                    "sampled at the subquery's steps, between the rule's evaluations",
                )
            )
            return None
        for cand in candidates:
            why = _context_blocker(parents, cand.extra, ph.windows)
            if why is None:
                used.append(cand)
                return pp.parse(ph.substitute(cand.text))
            near.append(("extra-labels", f"{why} (rewriting to {cand.rule.rule.record})"))
        return None

    def post(node: Any) -> None:
        stack.pop()

    out = pp.transform(ast, pre_visit=pre, post_visit=post)
    if not used:
        names = selector_names(ast)
        if names and names <= index.records:
            return Rewrite(None, "already uses recorded series", "recorded")
        if near:
            return Rewrite(None, near[0][1], near[0][0])
        unopted = [m for s, m in ph.seconds.items() if float(s) not in ph.windows]
        if unopted:
            macros = ", ".join(sorted(set(unopted)))
            return Rewrite(
                None,
                f"its window {macros} follows the dashboard's time range and no rule records it "
                f"(opt in with --macro-window '{unopted[0]}=5m')",
                "macro-window",
            )
        return Rewrite(None, "no recording rule computes this expression", "no-rule")
    records = tuple(c.rule.rule.record for c in used)
    static = tuple(sorted({kv for c in used if c.extra for kv in c.rule.rule.labels}))
    return Rewrite(
        ph.restore(str(out)),
        "same computation as " + ", ".join(dict.fromkeys(records)),
        "rewritten",
        records,
        tuple(c.selector for c in used),
        tuple(c.rule.rule.where for c in used),
        static,
    )


def rewrite_query(
    expr: str, index: RuleIndex, macro_windows: Mapping[str, str] | None = None
) -> tuple[str | None, str, tuple[str, ...]]:
    """(new query or None, reason, rules used) for one PromQL query, largest matching sub-expression first."""
    r = rewrite(expr, index, macro_windows)
    return r.query, r.reason, r.rules


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
                    code="library-panel",
                )
            )
            continue
        for target in panel.get("targets") or []:
            ref = str(target.get("refId", "?"))
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                continue
            if not _is_prometheus(panel, target, ds_vars):
                changes.append(Change(title, ref, "skipped", "not a Prometheus query", expr, code="not-prometheus"))
                continue
            try:
                r = rewrite(expr, index, macro_windows)
            except QueryError as exc:
                changes.append(Change(title, ref, "skipped", str(exc), expr, code="unparsable"))
                continue
            if r.query is None:
                changes.append(Change(title, ref, "skipped", r.reason, expr, code=r.code))
                continue
            target["expr"] = r.query
            changes.append(
                Change(
                    title,
                    ref,
                    "rewritten",
                    r.reason,
                    expr,
                    r.query,
                    r.rules,
                    code=r.code,
                    selectors=r.selectors,
                    groups=r.groups,
                    extra_labels=r.extra_labels,
                )
            )
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
    ap.add_argument(
        "--rules",
        type=Path,
        action="append",
        default=[],
        help="a Prometheus rule file; repeat it for every file the Prometheus loads (default: the TARS-1002 rules)",
    )
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
        rules = [r for path in ns.rules for r in load_rule_file(path.read_text(encoding="utf-8"), path.name)] or None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    windows = dict(w.split("=", 1) for w in ns.macro_window)
    try:
        patched, changes = patch_dashboard(dashboard, rules, macro_windows=windows)
    except ValueError as exc:  # a rule whose expression does not parse
        print(f"error: a recording rule does not parse: {exc}", file=sys.stderr)
        return 2
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
