"""The dashboard patcher: parsed-PromQL equivalence, Grafana JSON shapes, variables, macros, reasons."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from tars_1002_grafana import patch_dashboard
from tars_1002_grafana.patcher import RuleIndex, dumps, format_changes, iter_panels, rewrite_query
from tars_1002_grafana.rules import Rule, build_rules

INDEX = RuleIndex(build_rules())
P95 = "agent_id_region:tars_evaluation_duration_seconds:p95_rate5m"


def rw(expr: str, **kw: Any) -> tuple[str | None, str]:
    new, reason, _ = rewrite_query(expr, INDEX, **kw)
    return new, reason


def test_seed_example_becomes_the_recorded_series() -> None:
    new, reason = rw(
        "histogram_quantile(0.95,\n  sum(rate(tars_evaluation_duration_seconds_bucket[5m])) "
        "by (agent_id, region, le)\n)"
    )
    assert new == P95
    assert P95 in reason


@pytest.mark.parametrize(
    "expr",
    [
        "histogram_quantile(0.95, sum by (agent_id, region, le) (rate(tars_evaluation_duration_seconds_bucket[5m])))",
        "histogram_quantile(0.95,sum(rate(tars_evaluation_duration_seconds_bucket[5m]))by(le,region,agent_id))",
        "histogram_quantile( 0.950 , sum  by(region,le,agent_id)( rate( tars_evaluation_duration_seconds_bucket [300s] ) )"  # noqa: E501
        " )",
        "histogram_quantile(0.95, (sum(rate(tars_evaluation_duration_seconds_bucket{}[5m])) by (agent_id, region, le)))",  # noqa: E501
        'histogram_quantile(95e-2, sum(rate({__name__="tars_evaluation_duration_seconds_bucket"}[5m]))'
        " by (agent_id,region,le))",
    ],
)
def test_whitespace_label_order_by_placement_and_spelling_do_not_matter(expr: str) -> None:
    assert rw(expr)[0] == P95


def test_label_filters_are_kept_on_labels_the_rule_keeps_in_any_order() -> None:
    a = rw(
        'histogram_quantile(0.95, sum(rate(tars_evaluation_duration_seconds_bucket{region="eu-west-1",'
        'agent_id=~"agent-0.*"}[5m])) by (agent_id, region, le))'
    )[0]
    b = rw(
        "histogram_quantile(0.95, sum by (le, agent_id, region) (rate(tars_evaluation_duration_seconds_bucket"
        '{agent_id=~"agent-0.*", region="eu-west-1"}[5m])))'
    )[0]
    assert a == b == f'{P95}{{agent_id=~"agent-0.*",region="eu-west-1"}}'


def test_a_filter_on_a_label_the_rule_aggregates_away_is_left_with_the_reason() -> None:
    new, reason = rw(
        "histogram_quantile(0.95, sum by (agent_id, region, le) "
        '(rate(tars_evaluation_duration_seconds_bucket{job="tars-eval-api"}[5m])))'
    )
    assert new is None
    assert "label job is aggregated away" in reason and P95 in reason


def test_filters_must_be_the_same_on_every_selector_of_a_ratio() -> None:
    new, _ = rw(
        'sum by (agent_id, region) (rate(tars_evaluations_total{status="success",region="a"}[5m])) '
        "/ sum by (agent_id, region) (rate(tars_evaluations_total[5m]))"
    )
    # the numerator alone is filtered: a different computation; sub-expressions may still be recorded
    assert new is None or "ratio" not in new
    assert new is None or new.startswith("sum by (agent_id, region)") or "rate5m" in new


def test_without_is_not_by() -> None:
    new, _ = rw("sum without (instance, job, agent_type, status) (rate(tars_evaluations_total[5m]))")
    assert new is None


def test_a_different_window_or_quantile_is_a_different_computation() -> None:
    assert (
        rw(
            "histogram_quantile(0.9, sum by (agent_id, region, le) (rate(tars_evaluation_duration_seconds_bucket[5m])))"
        )[0]
        is None
    )
    assert rw("sum by (region) (rate(tars_evaluations_total[10m]))")[0] is None


def test_reaggregation_of_a_finer_sum() -> None:
    new, _ = rw('sum(rate(tars_evaluations_total{agent_id=~"$agent"}[5m])) by (region)')
    assert new == 'sum by (region)(agent_id_region:tars_evaluations:rate5m{agent_id=~"$agent"})'


def test_share_rule_does_not_take_a_filter_through_its_global_denominator() -> None:
    q = (
        'sum by (region) (rate(tars_evaluations_total{region="eu-west-1"}[5m])) / on() group_left '
        'sum(rate(tars_evaluations_total{region="eu-west-1"}[5m]))'
    )
    new, _ = rw(q)
    assert new is None or "share_rate5m" not in new
    plain, _ = rw(q.replace('{region="eu-west-1"}', ""))
    assert plain == "region:tars_evaluations:share_rate5m"


@pytest.mark.parametrize(
    ("query", "rewritten"),
    [
        pytest.param(
            'sum by (region) (rate(tars_evaluations_total{region=~"${region:regex}"}[5m]))',
            'region:tars_evaluations:rate5m{region=~"${region:regex}"}',
            id="variable in a label value",
        ),
        pytest.param(
            'sum by (region) (rate(tars_evaluations_total{region=~"[[region]]"}[5m]))',
            'region:tars_evaluations:rate5m{region=~"[[region]]"}',
            id="old-style variable in a label value",
        ),
        pytest.param(
            "histogram_quantile($quantile, sum by (le) (rate(tars_evaluation_duration_seconds_bucket[5m])))",
            "histogram_quantile($quantile, sum by (le)(region_le:tars_evaluation_duration_seconds_bucket:rate5m))",
            id="variable as the quantile",
        ),
        pytest.param(
            "sum by (region) (rate(tars_evaluations_total[5m])) > bool ${threshold}",
            "region:tars_evaluations:rate5m > bool ${threshold}",
            id="variable as a threshold",
        ),
        pytest.param(
            "sum by (region) (rate(tars_evaluations_total[5m]))"
            " / sum by (region) (rate(tars_evaluations_total[$__range]))",
            "region:tars_evaluations:rate5m / sum by (region)(rate(tars_evaluations_total[$__range]))",
            id="macro range in the unmatched side",
        ),
    ],
)
def test_variables_and_macros_survive_a_rewrite_verbatim(query: str, rewritten: str) -> None:
    assert rw(query)[0] == rewritten


def test_a_subquery_is_left_alone_even_with_a_macro_step() -> None:
    """Inside a subquery the expression is sampled at the subquery's steps, between the rule's evaluations."""
    new, reason = rw("max_over_time(sum(rate(tars_evaluations_total[5m]))[1h:$__interval])")
    assert new is None and "subquery" in reason and ":tars_evaluations:rate5m" in reason


def test_macros_in_ranges_match_nothing_by_default_and_say_why() -> None:
    new, reason = rw("sum by (region) (rate(tars_evaluations_total[$__rate_interval]))")
    assert new is None and "$__rate_interval" in reason and "--macro-window" in reason
    new, _ = rw(
        "sum by (region) (rate(tars_evaluations_total[$__rate_interval]))", macro_windows={"$__rate_interval": "5m"}
    )
    assert new == "region:tars_evaluations:rate5m"


def test_recorded_queries_and_unparseable_ones_are_left_alone() -> None:
    assert rw(f'{P95}{{region="x"}}') == (None, "already uses recorded series")
    from tars_1002_grafana.patcher import QueryError

    with pytest.raises(QueryError, match="does not parse"):
        rw("sum(rate(tars_evaluations_total[5m]) by")


def test_rules_from_another_file_are_matched_too() -> None:
    own = RuleIndex([Rule("job:up:sum", "sum by (job) (up)", "g", ("job",), ("up",))])
    assert rewrite_query('sum(up{job="a"}) by (job)', own)[0] == 'job:up:sum{job="a"}'


# -- dashboards ----------------------------------------------------------------------------------------


def _target(expr: str, ref: str = "A", **kw: Any) -> dict[str, Any]:
    return {"refId": ref, "expr": expr, **kw}


EVAL_RATE = "sum by (region) (rate(tars_evaluations_total[5m]))"
GLOBAL_RATE = "sum(rate(tars_evaluations_total[5m]))"


def test_nested_collapsed_rows_legacy_rows_library_panels_and_other_datasources() -> None:
    dash = {
        "schemaVersion": 37,
        "templating": {
            "list": [
                {"name": "ds", "type": "datasource", "query": "prometheus"},
                {"name": "logs", "type": "datasource", "query": "loki"},
            ]
        },
        "panels": [
            {
                "type": "timeseries",
                "title": "top",
                "datasource": {"type": "prometheus", "uid": "p"},
                "targets": [_target(EVAL_RATE)],
            },
            {
                "type": "row",
                "title": "collapsed",
                "collapsed": True,
                "panels": [
                    {"type": "stat", "title": "inner", "datasource": "$ds", "targets": [_target(GLOBAL_RATE)]},
                    {
                        "type": "logs",
                        "title": "loki",
                        "datasource": {"uid": "${logs}"},
                        "targets": [_target('sum(rate({app="x"}[5m]))')],
                    },
                ],
            },
            {"title": "lib", "libraryPanel": {"uid": "u1", "name": "shared"}},
        ],
        "rows": [
            {
                "title": "legacy",
                "panels": [
                    {"type": "graph", "title": "old", "datasource": "Prometheus", "targets": [_target(EVAL_RATE, "B")]},
                    {"type": "graph", "title": "es", "datasource": "Elasticsearch", "targets": [_target(EVAL_RATE)]},
                ],
            }
        ],
    }
    before = copy.deepcopy(dash)
    patched, changes = patch_dashboard(dash)
    assert dash == before, "the input must not be modified"
    by_title = {c.panel: c for c in changes}
    assert by_title["top"].after == "region:tars_evaluations:rate5m"
    assert by_title["inner"].after == ":tars_evaluations:rate5m"
    assert by_title["old"].after == "region:tars_evaluations:rate5m"
    assert by_title["loki"].action == "skipped" and by_title["loki"].reason == "not a Prometheus query"
    assert by_title["es"].action == "skipped"
    assert by_title["lib"].action == "skipped" and "library panel shared" in by_title["lib"].reason
    assert patched["panels"][1]["panels"][0]["targets"][0]["expr"] == ":tars_evaluations:rate5m"
    assert patched["rows"][0]["panels"][0]["targets"][0]["expr"] == "region:tars_evaluations:rate5m"
    assert patched["templating"] == dash["templating"]
    assert [p.get("title") for p in iter_panels(patched)] == ["top", "collapsed", "inner", "loki", "lib", "old", "es"]


def test_patching_is_idempotent_and_accepts_json_text() -> None:
    text = (files("tars_1002_grafana") / "data" / "dashboards" / "v1.0.0" / "tars-overview.json").read_text()
    once, changes = patch_dashboard(text)
    assert sum(c.action == "rewritten" for c in changes) >= 35
    twice, again = patch_dashboard(once)
    assert twice == once
    assert not any(c.action == "rewritten" for c in again)


@pytest.mark.parametrize("name", ["tars-overview.json", "tars-infrastructure.json"])
def test_checked_in_patched_dashboards_are_the_patchers_output(name: str) -> None:
    root = files("tars_1002_grafana") / "data" / "dashboards"
    before = json.loads((root / "v1.0.0" / name).read_text())
    after = (root / "v1.0.1" / name).read_text()
    assert dumps(patch_dashboard(before)[0]) == after, "run the patcher CLI to refresh data/dashboards/v1.0.1"


def test_every_panel_of_the_shipped_overview_is_accounted_for() -> None:
    root = files("tars_1002_grafana") / "data" / "dashboards" / "v1.0.0"
    dash = json.loads((root / "tars-overview.json").read_text())
    _, changes = patch_dashboard(dash)
    skipped = {c.panel: c.reason for c in changes if c.action == "skipped"}
    assert set(skipped) == {
        "Evaluations per second (live)",
        "Requests by status code",
        "Build info",
        "Recent evaluation errors (logs)",
    }
    text = format_changes(changes)
    assert "- " in text and "+   agent_id_region:tars_evaluation_duration_seconds:p95_rate5m" in text
    assert text.rstrip().endswith("4 left as they are")


def test_cli_prints_the_diff_writes_the_output_and_refuses_bad_input(tmp_path: Path) -> None:
    src = files("tars_1002_grafana") / "data" / "dashboards" / "v1.0.0" / "tars-infrastructure.json"
    inp = tmp_path / "in.json"
    inp.write_text(src.read_text())
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tars_1002_grafana.patcher", str(inp), "-o", str(out), "--json-diff"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "5 queries rewritten, 2 left as they are" in proc.stdout
    expected = '"expr": "instance:node_cpu_utilisation:ratio_rate5m{instance=~\\"$instance\\"}",'
    assert "+              " + expected in proc.stdout
    assert json.loads(out.read_text())["rows"][0]["panels"][0]["targets"][0]["expr"].startswith("instance:")
    proc = subprocess.run(
        [sys.executable, "-m", "tars_1002_grafana.patcher", str(out), "--in-place"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "0 queries rewritten" in proc.stdout
    (tmp_path / "bad.json").write_text("{not json")
    bad = subprocess.run(
        [sys.executable, "-m", "tars_1002_grafana.patcher", str(tmp_path / "bad.json")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "error:" in bad.stderr
