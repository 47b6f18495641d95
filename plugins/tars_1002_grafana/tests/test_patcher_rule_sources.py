"""The patcher on rule files we did not write (issue 17): several files recording one name for different
series, static ``labels:``, and what the recorded series carry beyond the original query's.

Each rule file here is short and written in the shape of the public mixins (node-exporter mixin,
kube-prometheus, kubernetes-mixin); the live proof on a real Prometheus is ``test_equivalence.py``.
The first tests of each section failed on the patcher before the fix (checked against a copy of it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tars_1002_grafana.patcher import DECLINE_CODES, RuleIndex, patch_dashboard, rewrite, rewrite_query
from tars_1002_grafana.rules import Rule, build_rules, load_rule_file

# the node-exporter mixin as a plain-host Prometheus runs it, and as kube-prometheus runs it
NODE_HOSTS = """
groups:
- name: node-exporter.rules
  rules:
  - record: instance:node_vmstat_pgmajfault:rate5m
    expr: rate(node_vmstat_pgmajfault{job="node"}[5m])
  - record: instance:node_memory_utilisation:ratio
    expr: 1 - (node_memory_MemAvailable_bytes{job="node"} / node_memory_MemTotal_bytes{job="node"})
  - record: instance:node_network_receive_bytes_excluding_lo:rate5m
    expr: sum without (device) (rate(node_network_receive_bytes_total{job="node", device!="lo"}[5m]))
"""
NODE_K8S = NODE_HOSTS.replace('job="node"', 'job="node-exporter"')
PGMAJFAULT = 'rate(node_vmstat_pgmajfault{job="node"}[5m])'

QUANTILE = "service_endpoint_quantile:tars_http_request_duration_seconds:histogram_quantile"
READ, WRITE = "GET|HEAD", "POST|PUT|PATCH|DELETE"


def p(q: float, methods: str = READ, extra: str = "") -> str:
    """The raw expression of one of API's rules, with an optional extra filter."""
    return (
        f"histogram_quantile({q}, sum by (service, endpoint, le) (rate(tars_http_request_duration_seconds_bucket"
        f'{{job="tars", method=~"{methods}"{extra}}}[5m]))) > 0'
    )


# kubernetes-mixin's apiserver histogram rules: one name, told apart only by static labels
API = "groups:\n- name: tars-api-histogram.rules\n  rules:\n" + "".join(
    f"  - record: {QUANTILE}\n    expr: {p(q, methods)}\n    labels: {{quantile: '{q}', verb: {verb}}}\n"
    for q, methods, verb in ((0.99, READ, "read"), (0.9, READ, "read"), (0.9, WRITE, "write"))
)


def rules(*texts: str) -> list[Rule]:
    return [r for t in texts for r in load_rule_file(t)]


# -- defect 1: the rule's own matchers -------------------------------------------------------------------


def test_a_rewrite_keeps_the_rules_matchers_on_labels_its_series_keep() -> None:
    index = RuleIndex(rules(NODE_HOSTS))
    assert rewrite_query(PGMAJFAULT, index)[0] == 'instance:node_vmstat_pgmajfault:rate5m{job="node"}'
    with_var = rewrite_query('rate(node_vmstat_pgmajfault{job="node", instance=~"$node"}[5m])', index)[0]
    assert with_var == 'instance:node_vmstat_pgmajfault:rate5m{instance=~"$node",job="node"}'


def test_two_files_recording_one_name_for_two_jobs_each_select_their_own_series() -> None:
    index = RuleIndex(rules(NODE_HOSTS, NODE_K8S))
    assert rewrite_query(PGMAJFAULT, index)[0] == 'instance:node_vmstat_pgmajfault:rate5m{job="node"}'
    k8s = rewrite_query(PGMAJFAULT.replace('"node"', '"node-exporter"'), index)[0]
    assert k8s == 'instance:node_vmstat_pgmajfault:rate5m{job="node-exporter"}'
    net = rewrite_query(
        'sum without (device) (rate(node_network_receive_bytes_total{device!="lo", job="node"}[5m]))', index
    )[0]
    # device is aggregated away, so its matcher says nothing about the recorded series
    assert net == 'instance:node_network_receive_bytes_excluding_lo:rate5m{job="node"}'


def test_a_rule_bounded_by_its_aggregation_is_told_apart_by_a_label_it_never_has() -> None:
    """TARS-1002's memory rule and the node mixin's record the same name; ours keeps only instance."""
    index = RuleIndex([*build_rules(), *rules(NODE_HOSTS)])
    ours = (
        '1 - (sum by (instance) (node_memory_MemAvailable_bytes{instance=~"$instance"})'
        ' / sum by (instance) (node_memory_MemTotal_bytes{instance=~"$instance"}))'
    )
    assert rewrite_query(ours, index)[0] == 'instance:node_memory_utilisation:ratio{instance=~"$instance",job=""}'
    mixin = '1 - (node_memory_MemAvailable_bytes{job="node"} / node_memory_MemTotal_bytes{job="node"})'
    assert rewrite_query(mixin, index)[0] == 'instance:node_memory_utilisation:ratio{job="node"}'
    # against TARS-1002's rules alone nothing needs telling apart: the shipped dashboards are unchanged
    assert rewrite_query(ours, RuleIndex(build_rules()))[0] == (
        'instance:node_memory_utilisation:ratio{instance=~"$instance"}'
    )


def test_rules_whose_series_cannot_be_told_apart_are_not_used() -> None:
    legacy = """
groups:
- name: legacy
  rules:
  - record: instance:node_vmstat_pgmajfault:rate5m
    expr: rate(node_vmstat_pgmajfault{instance=~"10\\\\.1\\\\..+"}[5m])
"""
    index = RuleIndex(rules(NODE_HOSTS, legacy))
    result = rewrite(PGMAJFAULT, index)
    assert result.query is None and result.code == "shared-name"
    assert "also recorded by group legacy" in result.reason


def test_a_regex_of_literals_tells_rules_apart_and_any_other_regex_does_not() -> None:
    def two(read: str, write: str) -> RuleIndex:
        text = "groups:\n- name: g\n  rules:\n" + "".join(
            f'  - record: code_verb:req:rate5m\n    expr: sum by (code, verb) (rate(req{{verb=~"{v}"}}[5m]))\n'
            for v in (read, write)
        )
        return RuleIndex(rules(text))

    q = 'sum by (code, verb) (rate(req{verb=~"LIST|GET"}[5m]))'
    assert rewrite_query(q, two("LIST|GET", "POST|PUT"))[0] == 'code_verb:req:rate5m{verb=~"LIST|GET"}'
    assert rewrite(q.replace("LIST|GET", "L.*"), two("L.*", "POST|PUT")).code == "shared-name"


def test_reaggregation_keeps_the_rules_matchers() -> None:
    text = """
groups:
- name: g
  rules:
  - record: instance_job:node_vmstat_pgmajfault:sum_rate5m
    expr: sum by (instance, job) (rate(node_vmstat_pgmajfault{job="node"}[5m]))
  - record: instance_job:node_vmstat_pgmajfault:sum_rate5m
    expr: sum by (instance, job) (rate(node_vmstat_pgmajfault{job="node-exporter"}[5m]))
"""
    new = rewrite_query('sum by (job) (rate(node_vmstat_pgmajfault{job="node"}[5m]))', RuleIndex(rules(text)))[0]
    assert new == 'sum by (job)(instance_job:node_vmstat_pgmajfault:sum_rate5m{job="node"})'


# -- defect 2: static labels ---------------------------------------------------------------------------------


def test_rules_told_apart_by_static_labels_are_selected_by_them() -> None:
    index = RuleIndex(rules(API))
    assert rewrite_query(p(0.99), index)[0] == f'{QUANTILE}{{quantile="0.99",verb="read"}}'
    assert rewrite_query(p(0.9), index)[0] == f'{QUANTILE}{{quantile="0.9",verb="read"}}'
    write = rewrite(p(0.9, WRITE, ', endpoint=~"$endpoint"'), index)
    assert write.query == f'{QUANTILE}{{endpoint=~"$endpoint",quantile="0.9",verb="write"}}'
    assert write.extra_labels == (("quantile", "0.9"), ("verb", "write"))
    assert rewrite_query(p(0.5), index)[0] is None  # no rule records the median


def test_a_static_label_that_overwrites_a_label_the_expression_keeps_never_matches() -> None:
    text = """
groups:
- name: slo
  rules:
  - record: job_service:tars_http_requests_5xx:rate5m
    expr: sum by (job, service) (rate(tars_http_requests_total{code=~"5.."}[5m]))
    labels: {job: tars-slo}
"""
    result = rewrite('sum by (job, service) (rate(tars_http_requests_total{code=~"5.."}[5m]))', RuleIndex(rules(text)))
    assert result.query is None and result.code == "static-label"
    assert "overwrite label(s) job" in result.reason


def test_a_static_label_on_a_result_no_aggregation_bounds_never_matches() -> None:
    """The older kubernetes-mixin shape: ``sum ... without (instance, pod)`` keeps whatever labels the data has."""
    text = """
groups:
- name: kube-apiserver.rules
  rules:
  - record: cluster_quantile:apiserver_request_duration_seconds:histogram_quantile
    expr: >-
      histogram_quantile(0.9, sum(rate(apiserver_request_duration_seconds_bucket{job="apiserver"}[5m]))
      without (instance, pod))
    labels: {quantile: "0.9"}
"""
    q = (
        "histogram_quantile(0.9, sum without (instance, pod)"
        ' (rate(apiserver_request_duration_seconds_bucket{job="apiserver"}[5m])))'
    )
    result = rewrite(q, RuleIndex(rules(text)))
    assert result.query is None and result.code == "static-label" and "may overwrite" in result.reason


def test_static_labels_that_a_vector_match_would_compare_decline() -> None:
    index = RuleIndex(rules(API))
    ratio = rewrite(f"({p(0.99)}) / ({p(0.9)})", index)
    assert ratio.query is None and ratio.code == "extra-labels"
    assert "would compare label(s) quantile" in ratio.reason
    on = rewrite(f"({p(0.99)}) / on (service, endpoint) ({p(0.9)})", index)
    sides = [f'({QUANTILE}{{quantile="{q}",verb="read"}})' for q in ("0.99", "0.9")]
    assert on.query == " / on (service, endpoint) ".join(sides)
    # an aggregation that drops the static labels makes them harmless
    summed = rewrite(f"max by (service) ({p(0.99)})", index)
    assert summed.query == f'max by (service)({QUANTILE}{{quantile="0.99",verb="read"}})'


# -- defect 3: an opted-in macro outside the rewritten part ---------------------------------------------


def test_an_opted_in_macro_window_stays_a_macro_where_nothing_is_rewritten() -> None:
    q = (
        "sum by (region) (rate(tars_evaluations_total[$__rate_interval]))"
        ' / sum by (region) (rate(tars_evaluations_total{status="error"}[$__rate_interval]))'
    )
    new = rewrite_query(q, RuleIndex(build_rules()), {"$__rate_interval": "5m"})[0]
    assert new == (
        "region:tars_evaluations:rate5m"
        ' / sum by (region)(rate(tars_evaluations_total{status="error"}[$__rate_interval]))'
    )
    live = "rate(up[$__rate_interval]) and on () sum(rate(tars_evaluations_total[$__rate_interval]))"
    got = rewrite_query(live, RuleIndex(build_rules()), {"$__rate_interval": "5m"})[0]
    assert got == "rate(up[$__rate_interval]) and on () :tars_evaluations:rate5m"


# -- where a rewrite may not go ------------------------------------------------------------------------------


def test_the_samples_of_a_range_are_never_replaced_by_a_recorded_series() -> None:
    text = 'groups: [{name: g, rules: [{record: "job:up:raw", expr: "up{job=\\"node\\"}"}]}]'
    index = RuleIndex(rules(text))
    assert rewrite_query('up{job="node"}', index)[0] == 'job:up:raw{job="node"}'
    assert rewrite_query('avg_over_time(up{job="node"}[5m])', index)[0] is None


def test_absent_of_a_rewritten_selector_would_change_its_labels() -> None:
    result = rewrite(f"absent({PGMAJFAULT})", RuleIndex(rules(NODE_HOSTS)))
    assert result.query is None and result.code == "extra-labels" and "absent()" in result.reason


# -- reasons and the CLI ----------------------------------------------------------------------------------


def test_every_decline_has_a_known_code() -> None:
    dash = {
        "panels": [
            {"title": "t", "targets": [{"refId": r, "expr": e} for r, e in zip("ABCDEFG", QUERIES, strict=True)]},
            {"title": "lib", "libraryPanel": {"uid": "u"}},
        ]
    }
    _, changes = patch_dashboard(dash, rules(NODE_HOSTS, API))
    codes = {c.ref: c.code for c in changes}
    assert codes == {
        "A": "rewritten",
        "B": "no-rule",
        "C": "macro-window",
        "D": "recorded",
        "E": "unparsable",
        "F": "filter",
        "G": "subquery",
        "-": "library-panel",
    }
    assert all(c.code in DECLINE_CODES for c in changes if c.action == "skipped")
    rewritten = next(c for c in changes if c.action == "rewritten")
    assert rewritten.selectors == ('instance:node_vmstat_pgmajfault:rate5m{job="node"}',)
    assert rewritten.groups == ("group node-exporter.rules",)


QUERIES = (
    PGMAJFAULT,
    "up",
    'rate(node_vmstat_pgmajfault{job="node"}[$__rate_interval])',
    'instance:node_vmstat_pgmajfault:rate5m{job="node"}',
    "sum(rate(x[5m]) by",
    'sum without (device) (rate(node_network_receive_bytes_total{job="node", device!="lo", device="eth0"}[5m]))',
    f"max_over_time({PGMAJFAULT}[1h:1m])",
)


def test_cli_takes_every_rule_file_the_prometheus_loads(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text(NODE_HOSTS)
    (tmp_path / "k8s.yml").write_text(NODE_K8S)
    dash = tmp_path / "d.json"
    dash.write_text(json.dumps({"panels": [{"title": "faults", "targets": [{"refId": "A", "expr": PGMAJFAULT}]}]}))
    argv = [sys.executable, "-m", "tars_1002_grafana.patcher", str(dash), "--rules", str(tmp_path / "hosts.yml")]
    proc = subprocess.run([*argv, "--rules", str(tmp_path / "k8s.yml")], capture_output=True, text=True, check=True)
    assert '+   instance:node_vmstat_pgmajfault:rate5m{job="node"}' in proc.stdout
    (tmp_path / "bad.yml").write_text("groups:\n- name: g\n  rules:\n  - record: x\n    expr: sum(\n")
    bad = subprocess.run([*argv, "--rules", str(tmp_path / "bad.yml")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: a recording rule does not parse")


def test_reasons_name_the_files_of_both_rules() -> None:
    a = load_rule_file(NODE_HOSTS, "hosts.yml")
    b = load_rule_file(NODE_HOSTS.replace('job="node"', 'instance=~"10\\\\..+"'), "legacy.yml")
    reason = rewrite(PGMAJFAULT, RuleIndex([*a, *b])).reason
    assert "also recorded by group node-exporter.rules in legacy.yml" in reason
    assert "those of group node-exporter.rules in hosts.yml" in reason
