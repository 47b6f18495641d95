"""The core renders numbers, verdicts and tables one way for every plugin."""

from __future__ import annotations

import statistics

import pytest

from tars_core.model import Metric
from tars_core.report import MISSED, format_number, markdown_table, metric_line, metrics_table, percentile


def test_markdown_table_escapes_what_would_break_it() -> None:
    table = markdown_table(["name", "value"], [["a|b", "line1\nline2"], [None, 3]])
    assert table.splitlines() == ["| name | value |", "|---|---|", "| a\\|b | line1 line2 |", "|  | 3 |"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        *[(None, "n/a"), (0, "0"), (1234567.0, "1,234,567"), (152.3456, "152.3"), (1.23456, "1.235")],
        *[(0.0123, "0.0123"), (4.7, "4.7"), (0.2, "0.2"), (1.2e-05, "1.2e-05"), (float("inf"), "inf")],
    ],
)
def test_one_number_format(value: float | None, text: str) -> None:
    assert format_number(value) == text


def test_a_missed_target_has_one_spelling_everywhere() -> None:
    missed = Metric("p95", 152.3, 14.0, "ms", "< 10 ms", met=False)
    met = Metric("speed-up", None, 40.0, "x", ">= 33x", met=True)
    table = metrics_table([missed, met, {"name": "rss", "before": 1.0, "after": 2.0, "unit": "MB"}])
    assert f"| p95 | 152.3 | 14 | ms | < 10 ms | **{MISSED}** |" in table
    assert "| speed-up | n/a | 40 | x | >= 33x | met |" in table
    assert "| rss | 1 | 2 | MB |  |  |" in table
    assert metric_line(missed) == f"p95: 152.3 -> 14 ms; target < 10 ms (target {MISSED})"


def test_percentile_matches_the_linear_definition() -> None:
    data = [float(x) for x in range(1, 201)]
    assert percentile(data, 50) == statistics.median(data)
    assert percentile(data, 95) == pytest.approx(190.05)
    assert percentile([7.0], 99) == 7.0
    assert percentile(data, 0) == 1.0 and percentile(data, 100) == 200.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
