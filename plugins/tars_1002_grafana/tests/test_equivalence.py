"""Issue 17's proof, short version: every rewrite the patcher makes on rule files from several sources,
loaded together into a real Prometheus with real node_exporters and the T.A.R.S. exporter, returns what
its original returns (``tars_1002_grafana.equivalence``; the full run is
``benchmarks/tars-1002-grafana_equivalence.py``).

Needs ``prometheus-node-exporter`` (Debian): without it the harness test fails with the package to install.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from tars_1002_grafana.equivalence import (
    NO_MATCH,
    Options,
    Report,
    _Variable,
    combinations,
    compare,
    control,
    material,
    node_exporter_binary,
    run,
)
from tars_1002_grafana.patcher import DECLINE_CODES, Change
from tars_1002_grafana.rules import RULE_FILE_NAME


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    node_exporter_binary()  # fails (not skips) with "apt-get install prometheus-node-exporter"
    yield run(tmp_path_factory.mktemp("equivalence"), Options(), log=print)


@pytest.mark.timeout(240)
def test_no_rewrite_differs_from_its_original_on_a_live_prometheus(report: Report) -> None:
    figures = report.figures()
    assert not report.wrong, [(c.panel, c.after, c.mismatches) for c in report.wrong]
    assert not report.unverified, [(c.panel, c.unverified) for c in report.unverified]
    assert not report.served, "the patcher did not match against exactly the rules Prometheus serves"
    assert figures["rewrites_checked"] == figures["rewritten"] >= 70
    for c in report.checked:
        assert c.instants == report.options.instants, (c.panel, c.instants)
        assert c.with_data, f"{c.panel}: never compared with data"
    # material from more than one source, with record names shared across files
    assert len(report.rule_files) >= 4 and RULE_FILE_NAME in report.rule_files
    rules = material().rules()
    sources = {r.record: set() for r in rules}
    for r in rules:
        sources[r.record].add(r.source)
    assert sum(len(s) > 1 for s in sources.values()) >= 10
    assert any(RULE_FILE_NAME in s and len(s) > 1 for s in sources.values())  # ours shares a name too


def test_the_tars_dashboards_keep_their_44_rewrites_among_foreign_rules(report: Report) -> None:
    per = report.figures()["per_dashboard"]
    assert per["tars-overview.json"]["rewritten"] + per["tars-infrastructure.json"]["rewritten"] == 44


def test_every_decline_says_why_and_the_shapes_the_issue_names_are_declined(report: Report) -> None:
    declined = [c for cs in report.changes.values() for c in cs if c.action != "rewritten"]
    assert all(c.code in DECLINE_CODES and c.reason for c in declined)
    codes = {c.code for c in declined}
    assert {"static-label", "shared-name", "extra-labels", "subquery", "filter", "macro-window"} <= codes


def test_the_comparison_catches_the_rewrites_the_patcher_made_before_the_fix(report: Report) -> None:
    """Controls: each rewrite that needed matchers to select its rule's series, without them."""
    assert len(report.controls) >= 20
    missed = [(c.panel, c.after) for c in report.controls if not c.wrong]
    assert not missed


# -- the comparison itself ---------------------------------------------------------------------------


def _vec(*series: tuple[dict[str, str], float]) -> list[dict[str, object]]:
    return [{"metric": m, "value": [1.0, repr(v) if not math.isnan(v) else "NaN"]} for m, v in series]


def test_compare_ignores_the_recorded_name_and_static_labels_the_original_cannot_have() -> None:
    orig = _vec(({"instance": "a"}, 1.0))
    rec = _vec(({"__name__": "r", "instance": "a", "quantile": "0.9"}, 1.0 + 1e-9))
    assert compare(orig, rec, {"quantile": "0.9"}) == (1, None)
    # without the static label declared, the extra label is a difference
    assert compare(orig, rec, {})[1] is not None
    # a static label the original does carry is compared
    carried = _vec(({"instance": "a", "quantile": "0.5"}, 1.0))
    assert compare(carried, rec, {"quantile": "0.9"})[1] is not None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (1.0, 1.0 + 5e-7, True),
        (1.0, 1.0 + 2e-6, False),
        (0.0, 1e-17, True),
        (float("nan"), float("nan"), True),
        (float("nan"), 0.0, False),
        (float("inf"), float("inf"), True),
    ],
)
def test_values_agree_within_one_millionth(a: float, b: float, same: bool) -> None:
    assert (compare(_vec(({}, a)), _vec(({}, b)), {})[1] is None) is same


def test_extra_or_missing_series_are_differences() -> None:
    one = _vec(({"job": "node"}, 1.0))
    two = _vec(({"job": "node"}, 1.0), ({"job": "node-exporter"}, 2.0))
    n, why = compare(one, two, {})
    assert n == 0 and why is not None and "1 series vs 2" in why and "node-exporter" in why
    assert compare([], [], {}) == (0, None)
    assert compare([1.0, "3"], [1.0, "3"], {}) == (1, None)  # a scalar result


def test_every_value_all_and_a_value_matching_nothing() -> None:
    variables = {
        "region": _Variable("region", ("a", "b"), ".*"),
        "agent": _Variable("agent", ("x",), "(x)"),
        "unused": _Variable("unused", ("u",), ".*"),
    }
    expr = 'sum(r{region=~"$region", agent_id=~"${agent}"})'
    combos = combinations(expr, variables, cap=64)
    assert len(combos) == 4 * 3
    assert {c["region"] for c in combos} == {"a", "b", ".*", NO_MATCH}
    assert all("unused" not in c for c in combos)
    # above the cap, each variable in turn with the other at All
    one_at_a_time = combinations(expr, variables, cap=5)
    assert len(one_at_a_time) == 4 + 3
    assert {"agent": "(x)", "region": NO_MATCH} in one_at_a_time


def test_a_control_drops_only_the_matchers_that_select_the_rules_series() -> None:
    change = Change(
        "p",
        "A",
        "rewritten",
        "",
        "",
        'r{instance=~"$i",job="node"} / rate(x{job="node"}[5m])',
        ("r",),
        selectors=('r{job="node"}',),
    )
    assert control(change) == 'r{instance=~"$i"} / rate(x{job="node"}[5m])'
    assert control(Change("p", "A", "rewritten", "", "", "r", ("r",), selectors=("r",))) is None


def test_the_harness_material_is_what_promtool_accepts(tmp_path: Path) -> None:
    from tars_core.promtool import check_rules_text

    for name, text in material("3s").rule_files.items():
        assert "SUCCESS" in check_rules_text(text), name
