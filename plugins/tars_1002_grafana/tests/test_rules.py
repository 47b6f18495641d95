"""The recording rules: shape, naming, generation from one table, and promtool check/test on the real binary."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import attrs
import pytest
import yaml
from tars_1002_grafana.catalogue import FAMILY_BY_SERIES
from tars_1002_grafana.rules import (
    GROUPS,
    RULE_FILE_NAME,
    build_rules,
    load_rule_file,
    render_rule_file,
    rules_from_api,
    unit_test_data,
    write_unit_tests,
)

from tars_core.errors import PromtoolError
from tars_core.promtool import check_rules_text, promtool

SEED_GROUPS = {
    "tars_evaluation_aggregations": "15s",
    "tars_agent_aggregations": "30s",
    "tars_queue_aggregations": "10s",
    "tars_resource_aggregations": "30s",
    "tars_api_aggregations": "15s",
    "tars_database_aggregations": "30s",
    "tars_redis_aggregations": "15s",
    "tars_multiregion_aggregations": "30s",
    "tars_slo_compliance": "60s",
}
# level:metric:operations — level may be empty (global aggregate), operations lower-case with digits
NAME_RE = re.compile(r"^[a-z_]*:[A-Za-z0-9_]+:[a-z0-9_]+$")


def test_sixty_plus_rules_in_the_seeds_nine_groups_and_intervals() -> None:
    rules = build_rules()
    assert len(rules) >= 60
    data = yaml.safe_load(render_rule_file(rules))
    assert {g["name"]: g["interval"] for g in data["groups"]} == SEED_GROUPS
    assert all(g["rules"] for g in data["groups"])
    assert sum(len(g["rules"]) for g in data["groups"]) == len(rules)


def test_names_follow_level_metric_operations() -> None:
    for r in build_rules():
        assert NAME_RE.match(r.record), r.record
        level = r.record.split(":")[0]
        assert level == "_".join(r.keeps), f"{r.record}: level must name the labels it keeps {r.keeps}"
        assert "_total:" not in r.record, f"{r.record}: drop _total under rate()"


def test_every_rule_reads_only_catalogued_series() -> None:
    for r in build_rules():
        for sel in r.reads:
            assert sel.split("{")[0] in FAMILY_BY_SERIES, f"{r.record} reads {sel}, not in the catalogue"


def test_ratios_are_sums_over_sums_never_averages() -> None:
    for r in build_rules():
        if ":ratio" in r.record or ":mean" in r.record or ":avg" in r.record or ":share" in r.record:
            assert "avg" not in r.expr.split(":")[0] and not r.expr.startswith("avg"), r.expr
            assert " / " in r.expr, f"{r.record} is not a ratio of two aggregates: {r.expr}"
            num, den = r.expr.split(" / ", 1)
            assert "sum" in num and "sum" in den, f"{r.record}: numerator and denominator must be sums"


def test_no_duplicate_records_and_a_duplicate_is_refused() -> None:
    records = [r.record for r in build_rules()]
    assert len(records) == len(set(records))
    name, interval, recipes = GROUPS[0]
    doubled = ((name, interval, (*recipes, recipes[0])), *GROUPS[1:])
    with pytest.raises(ValueError, match="defined twice"):
        build_rules(doubled)


def test_checked_in_rule_file_and_unit_tests_are_what_the_table_generates(tmp_path: Path) -> None:
    shipped = files("tars_1002_grafana") / "data" / "rules"
    write_unit_tests(tmp_path)
    assert (shipped / RULE_FILE_NAME).read_text() == (tmp_path / RULE_FILE_NAME).read_text(), (
        "data/rules is stale: run python -m tars_1002_grafana.rules src/tars_1002_grafana/data/rules"
    )
    test_name = "tars-1002-recording-rules.test.yml"
    assert (shipped / test_name).read_text() == (tmp_path / test_name).read_text()


def test_promtool_check_rules_passes() -> None:
    out = check_rules_text(render_rule_file())
    assert f"SUCCESS: {len(build_rules())} rules found" in out


def test_promtool_check_rules_refuses_a_malformed_file() -> None:
    bad = render_rule_file().replace(
        "sum by (region) (rate(tars_evaluations_total[5m]))", "sum by (region) (rate(tars_evaluations_total[5m])", 1
    )
    with pytest.raises(PromtoolError, match=r"parse error|unclosed|unexpected"):
        check_rules_text(bad)


def test_promtool_unit_tests_prove_every_rule_equals_its_raw_expression(tmp_path: Path) -> None:
    rules = build_rules()
    test_file = write_unit_tests(tmp_path, rules)
    doc = yaml.safe_load(test_file.read_text())
    exprs = [t["expr"] for case in doc["tests"] for t in case["promql_expr_test"]]
    assert len(exprs) == len(rules)  # one expression test per rule
    for rule in rules:
        case = next(c for c in doc["tests"] if c["name"] == rule.group)
        test = next(t for t in case["promql_expr_test"] if t["expr"].endswith(f" - {rule.record}"))
        assert test["exp_samples"], rule.record
    out = promtool("test", "rules", str(test_file), timeout=600)
    assert "SUCCESS" in out


def test_unit_tests_catch_a_rule_that_computes_something_else(tmp_path: Path) -> None:
    """Averaging instead of summing (the classic ratio mistake) must fail the generated unit test."""
    rules = build_rules()
    tests = unit_test_data([r for r in rules if r.group == "tars_evaluation_aggregations"], RULE_FILE_NAME)
    text = render_rule_file(rules).replace(
        "expr: sum by (agent_id, region) (rate(tars_evaluations_total[5m]))",
        "expr: avg by (agent_id, region) (rate(tars_evaluations_total[5m]))",
        1,
    )
    assert "avg by (agent_id, region)" in text
    (tmp_path / RULE_FILE_NAME).write_text(text)
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    with pytest.raises(PromtoolError) as exc:
        promtool("test", "rules", str(tmp_path / "t.yml"))
    assert "agent_id_region:tars_evaluations:rate5m" in str(exc.value)


def test_rules_cli_writes_and_tests(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "tars_1002_grafana.rules", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert f"({len(build_rules())} rules)" in proc.stdout
    assert (tmp_path / RULE_FILE_NAME).exists()


def test_the_rule_file_loader_keeps_static_labels_as_written() -> None:
    """Several rules under one name told apart by a static label (issue 17): the loader must keep it, as
    Prometheus reads it (``0.90`` stays the string "0.90"), and leave alerting rules out."""
    text = """
groups:
- name: kube-apiserver-histogram.rules
  rules:
  - record: cluster_quantile:apiserver_request_sli_duration_seconds:histogram_quantile
    expr: histogram_quantile(0.99, sum by (cluster, le, resource) (rate(x_bucket{verb=~"LIST|GET"}[5m]))) > 0
    labels:
      quantile: 0.90
      verb: read
  - alert: KubeAPIErrorBudgetBurn
    expr: vector(1)
    labels: {severity: critical}
  - record: job:up:sum
    expr: sum by (job) (up)
"""
    rules = load_rule_file(text, "kube.yml")
    assert [(r.record, r.labels, r.group, r.source) for r in rules] == [
        (
            "cluster_quantile:apiserver_request_sli_duration_seconds:histogram_quantile",
            (("quantile", "0.90"), ("verb", "read")),
            "kube-apiserver-histogram.rules",
            "kube.yml",
        ),
        ("job:up:sum", (), "kube-apiserver-histogram.rules", "kube.yml"),
    ]
    assert rules[0].where == "group kube-apiserver-histogram.rules in kube.yml"
    # rendered back, the labels are there again and promtool accepts the file
    again = render_rule_file(rules, {"kube-apiserver-histogram.rules": "30s"})
    assert load_rule_file(again) == [attrs.evolve(r, source="") for r in rules]
    check_rules_text(again)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just a list", "not a Prometheus rule file"),
        ("groups:\n- rules: []", "every group needs a name"),
        ("groups:\n- name: g\n  rules:\n  - record: x", "rule x in group g has no expr"),
        ("groups:\n- name: g\n  rules:\n  - record: x\n    expr: up\n    labels: [a]", "labels of rule x"),
    ],
)
def test_a_rule_file_prometheus_would_refuse_is_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_rule_file(text, "site.yml")


def test_rules_as_a_running_prometheus_serves_them() -> None:
    """``/api/v1/rules`` groups (shape of Prometheus 2.42's answer) become rules with their static labels."""
    groups = [
        {
            "name": "node-exporter.rules",
            "file": "/etc/prometheus/rules/node-mixin.yml",
            "interval": 30,
            "rules": [
                {
                    "name": "instance:node_vmstat_pgmajfault:rate5m",
                    "query": 'rate(node_vmstat_pgmajfault{job="node"}[5m])',
                    "health": "ok",
                    "type": "recording",
                },
                {
                    "name": "q:h:histogram_quantile",
                    "query": "histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))",
                    "labels": {"quantile": "0.9"},
                    "health": "ok",
                    "type": "recording",
                },
                {"name": "NodeDown", "query": "up == 0", "type": "alerting", "labels": {"severity": "page"}},
            ],
        }
    ]
    rules = rules_from_api(groups)
    assert [(r.record, r.labels, r.where) for r in rules] == [
        ("instance:node_vmstat_pgmajfault:rate5m", (), "group node-exporter.rules in node-mixin.yml"),
        ("q:h:histogram_quantile", (("quantile", "0.9"),), "group node-exporter.rules in node-mixin.yml"),
    ]
