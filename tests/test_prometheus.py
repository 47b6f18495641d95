"""tars_core.prometheus on a real Prometheus: rule files loaded healthy, a refused file put back, unloaded.

The contract TARS-1002 and the SLO monitor rely on: after ``load_rule_file`` returns, every named rule
evaluated; when Prometheus refuses the file the previous one (or none) is back and still served; after
``unload_rule_file`` the rules are gone (or the previous file is served again).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tars_core import Targets
from tars_core.errors import FixError, TargetError
from tars_core.processes import free_port
from tars_core.prometheus import PrometheusServer, connect, load_rule_file, rule_health, unload_rule_file

GOOD = "groups:\n- name: g\n  interval: 1s\n  rules:\n  - record: job:up:sum\n    expr: sum(up)\n"
NEWER = GOOD + "  - record: job:up:count\n    expr: count(up)\n"
BROKEN = "groups:\n- name: g\n  rules:\n  - record: job:up:sum\n    expr: sum(up\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prom"), scrape_interval="1s") as srv:
        yield srv


def test_a_file_is_loaded_healthy_replaced_and_removed(server: PrometheusServer) -> None:
    path = server.rules_dir / "core-test.yml"
    with connect(Targets(prometheus_url=server.url)) as prom:
        load_rule_file(prom, path, GOOD, ["job:up:sum"], timeout=30)
        assert rule_health(prom, ["job:up:sum", "job:up:count"]) == {"job:up:sum": "ok", "job:up:count": "missing"}
        load_rule_file(prom, path, NEWER, ["job:up:sum", "job:up:count"], timeout=30)
        unload_rule_file(prom, path, GOOD, ["job:up:count"], timeout=30)  # back to the previous version
        assert path.read_text() == GOOD
        unload_rule_file(prom, path, None, ["job:up:sum"], timeout=30)
        assert not path.exists()
        assert rule_health(prom, ["job:up:sum"]) == {"job:up:sum": "missing"}


def test_a_refused_file_is_replaced_by_the_previous_one(server: PrometheusServer) -> None:
    path = server.rules_dir / "core-refused.yml"
    with connect(Targets(prometheus_url=server.url)) as prom:
        load_rule_file(prom, path, GOOD, ["job:up:sum"], timeout=30)
        with pytest.raises(FixError, match="Prometheus did not take the rules, previous rule file restored"):
            load_rule_file(prom, path, BROKEN, ["job:up:sum"], timeout=30)
        assert path.read_text() == GOOD
        assert rule_health(prom, ["job:up:sum"]) == {"job:up:sum": "ok"}
        unload_rule_file(prom, path, None, ["job:up:sum"], timeout=30)


def test_a_folder_prometheus_does_not_read_is_named(server: PrometheusServer, tmp_path: Path) -> None:
    with connect(Targets(prometheus_url=server.url)) as prom:
        with pytest.raises(FixError, match=rf"add '{tmp_path}/\*\.yml' to rule_files"):
            load_rule_file(prom, tmp_path / "elsewhere.yml", GOOD, ["job:never:sum"], timeout=10)


def test_no_server_is_bad_input_naming_the_key() -> None:
    with pytest.raises(TargetError, match=r"unreachable .*: start it or fix targets.prometheus_url"):
        connect(Targets(prometheus_url=f"http://127.0.0.1:{free_port()}"))
