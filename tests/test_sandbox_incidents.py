"""Sandbox incidents: the model, the file the command and the simulated services share, and
``tars-run sandbox incident`` (exit codes and messages) through the real command line.

The command needs a sandbox whose services read the file; the tests record a real process as such a
service (its argv carries ``--incidents PATH``, as the sandbox's exporter does) instead of building a whole
sandbox, and a real Prometheus for the label check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tars_core import SandboxSite, Targets
from tars_core.errors import UsageError
from tars_core.processes import ProcessId, Service, free_port, http_ready
from tars_core.sandbox import incidents as inc
from tars_core.sandbox.state import Paths, ServiceRecord, State, save_state

pytestmark = pytest.mark.timeout(120)

NOW = 1_800_000_000.0


def make(kind: str = "errors", value: float = 0.02, start: float = NOW + 10, length: float = 60, **kw: Any) -> Any:
    return inc.Incident(kind=kind, value=value, start=start, end=start + length, **kw)  # type: ignore[arg-type]


# -- the model ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"kind": "errors", "value": 0}, ["(0, 1]", "--errors 0.02"]),
        ({"kind": "errors", "value": 1.5}, ["(0, 1]", "got 1.5"]),
        ({"kind": "latency", "value": 0}, ["factor > 0", "--latency 3"]),
        ({"kind": "traffic", "value": -1}, [">= 0", "--traffic 0.01"]),
        ({"kind": "errors", "value": float("nan")}, ["finite"]),
        ({"kind": "outage", "value": 1}, ["unknown incident kind 'outage'", "errors, latency, traffic"]),
        ({"length": 0}, ["must end after it starts", "--for 2m"]),
        ({"match": {"bad-label": "x"}}, ["not a label name", "region=us-east-1"]),
        ({"match": {"__name__": "x"}}, ["not a label name"]),
        ({"families": ["tars http"]}, ["not a metric family name", "--families tars_http_requests_total"]),
    ],
)
def test_bad_incidents_are_one_line_naming_problem_and_fix(kw: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(UsageError) as err:
        make(**kw)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_an_incident_round_trips_and_knows_where_it_stands() -> None:
    one = make("latency", 3, match={"service": "eval-api", "region": "us-east-1"}, families=["a_b", "a_b", "c"])
    assert one.match == (("region", "us-east-1"), ("service", "eval-api"))
    assert one.families == ("a_b", "c")
    assert inc.Incident.from_json(json.loads(json.dumps(one.to_json()))) == one
    assert [one.status(t) for t in (NOW, NOW + 10, NOW + 69.9, NOW + 70)] == ["pending", "active", "active", "ended"]
    assert one.selects({"service": "eval-api", "region": "us-east-1", "code": "500"})
    assert not one.selects({"service": "eval-api"})  # a label the series lacks never matches
    assert make(match={}).selects({})
    line = one.describe(NOW + 20)
    assert line.startswith("#0 latency ×3 on region=us-east-1,service=eval-api in a_b,c, ")
    assert line.endswith("(active, 50s left)")
    assert "pending, starts in 10s" in one.describe(NOW)
    assert "ended 1m ago" in one.describe(NOW + 130)
    assert "errors +2%" in make().describe(NOW)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5), ("1.5m", 90), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert inc.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2 minutes", "m", "1x", "-5s", "5s2", "inf"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(UsageError, match=r"--in takes a duration like 90s, 2m or 1h30m"):
        inc.parse_duration(text, "--in")


def test_match_arguments() -> None:
    assert inc.parse_match(["service=eval-api", "region=us-east-1, method=GET"]) == {
        "service": "eval-api",
        "region": "us-east-1",
        "method": "GET",
    }
    for bad, words in (("service", "LABEL=VALUE"), ("=x", "LABEL=VALUE"), ("a=1,a=2", "gives a twice")):
        with pytest.raises(UsageError, match=words):
            inc.parse_match([bad])


# -- the file -------------------------------------------------------------------------------------------


def test_add_list_clear_keep_ids_and_history(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    assert inc.load(path) == []
    first = inc.add(path, make(start=NOW + 5, length=100), now=NOW)
    second = inc.add(path, make("latency", 3, start=NOW + 30, length=10), now=NOW)
    third = inc.add(path, make("traffic", 0.01, start=NOW + 500, length=10), now=NOW)
    assert [i.id for i in (first, second, third)] == [1, 2, 3] and first.created == NOW
    assert inc.load(path) == [first, second, third]
    # at NOW + 50: #1 active, #2 ended, #3 pending
    done = inc.clear(path, now=NOW + 50)
    assert done == {"ended": [1], "dropped": [3]}
    kept = inc.load(path)
    assert [(i.id, i.end) for i in kept] == [(1, NOW + 50 + inc.EFFECT_DELAY), (2, NOW + 40)]
    assert inc.clear(path, now=NOW + 60) == {"ended": [], "dropped": []}
    assert inc.add(path, make(start=NOW + 100), now=NOW + 60).id == 4  # ids are never reused
    doc = json.loads(path.read_text())
    assert doc["version"] == inc.FILE_VERSION and doc["next_id"] == 5
    assert not list(tmp_path.glob("*.tmp"))  # written through a temp file and a rename


def test_an_incident_cannot_change_what_was_already_reported(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    with pytest.raises(UsageError, match=r"cannot start before 1s from now .* --in 10s"):
        inc.add(path, make(start=NOW + 0.5), now=NOW)
    assert not path.exists()
    moved = inc.add(path, make(start=NOW - 30, length=60), now=NOW, shift=True)
    assert (moved.start, moved.end) == (NOW + inc.EFFECT_DELAY, NOW + inc.EFFECT_DELAY + 60)


def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                inc.add(path, make(start=time.time() + 60))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i.id for i in inc.load(path)) == list(range(1, 41))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "is unreadable"),
        ('{"version": 9, "incidents": []}', "not a version 1 incidents file"),
        ('{"version": 1, "incidents": [{"kind": "errors"}]}', "malformed incident"),
        ('{"version": 1, "incidents": [{"kind": "errors", "value": 3, "start": 1, "end": 2}]}', "(0, 1]"),
    ],
)
def test_a_broken_file_is_one_line(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "incidents.json"
    path.write_text(content)
    with pytest.raises(UsageError) as err:
        inc.load(path)
    assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_consumer_rereads_on_change_and_keeps_the_last_good_incidents(tmp_path: Path) -> None:
    path = tmp_path / "incidents.json"
    reported: list[str] = []
    reader = inc.IncidentFile(path, on_error=reported.append)
    assert reader.current() == ()
    one = inc.add(path, make(start=NOW + 10), now=NOW)
    assert reader.current() == (one,)
    assert reader.current() is reader.current()  # unchanged file: the same tuple, no re-read
    path.write_text("{broken")
    assert reader.current() == (one,) and reader.current() == (one,)
    assert len(reported) == 1 and "keeping the 1 incident(s) read before" in reported[0]
    path.unlink()
    two = inc.add(path, make("latency", 2, start=NOW + 10), now=NOW)
    assert reader.current() == (two,) and reader.error is None


def test_a_plugin_service_finds_the_file_of_its_sandbox(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    site = SandboxSite(dir=paths.plugin_dir("tars-1002-grafana"), targets=Targets(), python=sys.executable)
    assert inc.site_incidents_path(site) == paths.dir / "incidents.json" == inc.incidents_path(paths.dir)


# -- tars-run sandbox incident ----------------------------------------------------------------------------


def tars_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tars_core.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


class FakeSandbox:
    """A recorded sandbox whose one service that reads incidents is a real process (the core servers are
    recorded as stopped: the command does not need them)."""

    def __init__(self, root: Path) -> None:
        self.paths = Paths(root)
        self.file = inc.incidents_path(self.paths.dir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.prometheus_url: str | None = None

    def record(self, *, stopped: bool = False, reads: bool = True, running: bool = True) -> None:
        argv = [sys.executable, "-c", "import time; time.sleep(300)"]
        if reads:
            argv += ["--incidents", str(self.file)]
        pid = create = None
        if running:
            if self.proc is None:
                self.proc = subprocess.Popen(argv, start_new_session=True)
            ident = ProcessId.of(self.proc.pid)
            assert ident is not None
            pid, create = ident.pid, ident.create_time
        log = str(self.paths.logs / "x.log")
        core = [ServiceRecord(name=n, argv=["true"], port=None, ready=None, log=log) for n in ("postgres", "redis")]
        sim = ServiceRecord(
            name="sim", argv=argv, port=None, ready=None, log=log, owner="sbx-sim", pid=pid, create_time=create
        )
        targets = {"prometheus_url": self.prometheus_url} if self.prometheus_url else {}
        state = State("now", "pg", "/usr/bin", None, targets, [*core, sim], stopped=stopped)
        self.paths.dir.mkdir(parents=True, exist_ok=True)
        save_state(self.paths, state)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[FakeSandbox]:
    sandbox = FakeSandbox(tmp_path)
    try:
        yield sandbox
    finally:
        sandbox.close()


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_without_a_sandbox_every_form_exits_2_with_the_way_out(tmp_path: Path) -> None:
    for args in (["--errors", "0.02", "--for", "2m"], ["--list"], ["--clear"]):
        line = error_line(tars_run(tmp_path, "sandbox", "incident", *args))
        assert (
            line == "tars-run: error: no sandbox at .tars/sandbox: `tars-run sandbox up` starts one, then add incidents"
        )
    assert not (tmp_path / ".tars").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--errors", "1.5", "--for", "2m"], "--errors takes the share of matching events that fail, in (0, 1]"),
        (["--latency", "0", "--for", "2m"], "--latency takes a factor > 0"),
        (["--traffic", "-1", "--for", "2m"], "--traffic takes a factor >= 0"),
        (["--errors", "0.02"], "an incident needs --for DURATION"),
        (["--errors", "0.02", "--for", "soon"], "--for takes a duration like 90s"),
        (["--errors", "0.02", "--for", "0s"], "--for must be longer than 0s"),
        (["--errors", "0.02", "--for", "1m", "--in", "-3"], "--in takes a duration"),
        (["--errors", "0.02", "--for", "1m", "--match", "eval-api"], "--match takes LABEL=VALUE"),
        (["--list", "--match", "a=b"], "go with --errors, --latency or --traffic"),
        (["--errors", "0.1", "--latency", "2", "--for", "1m"], "not allowed with argument"),
        ([], "one of the arguments --errors --latency --traffic --list --clear is required"),
        (["--errors", "lots", "--for", "1m"], "invalid float value"),
    ],
)
def test_bad_input_exits_2_with_one_line(box: FakeSandbox, args: list[str], words: str) -> None:
    box.record()
    done = tars_run(box.paths.root, "sandbox", "incident", *args)
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert not box.file.exists()


def test_a_sandbox_that_cannot_apply_the_incident_exits_2(box: FakeSandbox) -> None:
    add = ("sandbox", "incident", "--errors", "0.02", "--for", "2m")
    box.record(stopped=True)
    assert "is stopped: `tars-run sandbox up`, then add the incident" in error_line(tars_run(box.paths.root, *add))
    box.record(reads=False)
    line = error_line(tars_run(box.paths.root, *add))
    assert "no service of the sandbox at .tars/sandbox reads incidents" in line and "sandbox reset" in line
    box.record(running=False)
    line = error_line(tars_run(box.paths.root, *add))
    assert "the sandbox service that applies incidents is not running (sim: not running)" in line
    assert "`tars-run sandbox up`" in line
    assert not box.file.exists()
    # listing and clearing need the sandbox to exist, not to run
    assert tars_run(box.paths.root, "sandbox", "incident", "--list").returncode == 0


def test_add_list_clear_through_tars_run(box: FakeSandbox) -> None:
    box.record()
    root = box.paths.root
    done = tars_run(root, "sandbox", "incident", "--errors", "0.02", "--match", "service=eval-api", "--for", "2m")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("tars: added #1 errors +2% (of the events that would succeed) on service=eval-api, ")
    assert done.stderr.rstrip().endswith("(pending, starts in 1s)")
    (stored,) = inc.load(box.file)
    assert 119.9 < stored.end - stored.start < 120.1 and stored.created <= stored.start - inc.EFFECT_DELAY

    done = tars_run(root, "sandbox", "incident", "--latency", "3", "--match", "region=us-east-1", "--for", "90s",
                    "--in", "1h", "--families", "tars_http_request_duration_seconds", "--format", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["action"] == "incident" and doc["file"] == str(box.file) and doc["warning"] is None
    added = doc["added"]
    assert added["id"] == 2 and added["kind"] == "latency" and added["value"] == 3
    assert added["match"] == {"region": "us-east-1"} and added["families"] == ["tars_http_request_duration_seconds"]
    assert added["status"] == "pending" and 3599 < added["start"] - time.time() <= 3601
    assert [i["id"] for i in doc["incidents"]] == [1, 2]

    listed = tars_run(root, "sandbox", "incident", "--list")
    assert listed.returncode == 0
    lines = listed.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("#1 errors")
    # listed a moment after it was added: an hour away, or a second less on a busy machine
    assert re.search(r"starts in (1h|59m5\ds)\)$", lines[1]), lines[1]

    time.sleep(inc.EFFECT_DELAY + 0.2)  # #1 is active now
    cleared = tars_run(root, "sandbox", "incident", "--clear", "--format", "json")
    assert cleared.returncode == 0
    doc = json.loads(cleared.stdout)
    assert doc["cleared"] == {"ended": [1], "dropped": [2]}
    assert [(i["id"], i["status"]) for i in doc["incidents"]] == [(1, "active")]  # ends EFFECT_DELAY from now
    text = tars_run(root, "sandbox", "incident", "--clear").stderr
    assert text.startswith("tars: incidents ended in 1s: none; pending ones dropped: none\n#1 errors")


def test_the_other_sandbox_actions_still_parse(tmp_path: Path) -> None:
    done = tars_run(tmp_path, "sandbox", "status", "--format", "json")
    assert done.returncode == 1 and json.loads(done.stdout)["state"] == "absent"
    assert tars_run(tmp_path, "--format", "json", "sandbox", "status").returncode == 1
    done = tars_run(tmp_path, "sandbox", "start")
    assert done.returncode == 2 and "invalid choice: 'start'" in done.stderr


def test_labels_no_series_has_are_warned_about_with_the_values_seen(box: FakeSandbox, tmp_path: Path) -> None:
    """The brief's own example, service=tars-api, names the SLO's service, which no series carries."""
    from tars_core.prometheus import PrometheusServer

    www = tmp_path / "www"
    www.mkdir()
    (www / "metrics").write_text(
        "# TYPE tars_http_requests counter\n"
        + "".join(f'tars_http_requests_total{{service="{s}",code="200"}} 1\n' for s in ("eval-api", "orchestrator"))
    )
    port = free_port()
    web = Service(
        "web",
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(www), str(port)],
        log=tmp_path / "web.log",
        ready=http_ready(f"http://127.0.0.1:{port}/metrics"),
    )
    with web, PrometheusServer(tmp_path / "prom", scrape_targets=[f"127.0.0.1:{port}"], scrape_interval="1s") as prom:
        from tars_core.waiting import wait_until

        wait_until(lambda: _scraped(prom.url), timeout=30, interval=0.3, what="the first scrape")
        box.prometheus_url = prom.url
        box.record()
        root = box.paths.root
        done = tars_run(root, "sandbox", "incident", "--errors", "0.02", "--match", "service=tars-api", "--for", "1m")
        assert done.returncode == 0, done.stderr
        assert (
            'tars: warning: no series in the sandbox\'s Prometheus has {service="tars-api"} yet '
            "(service: eval-api, orchestrator); the incident changes nothing unless such series appear"
        ) in done.stderr
        done = tars_run(root, "sandbox", "incident", "--errors", "0.02", "--match", "service=eval-api", "--for", "1m")
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    # Prometheus gone: the incident is still added, the check says it could not look
    done = tars_run(root, "sandbox", "incident", "--traffic", "0", "--match", "service=eval-api", "--for", "1m")
    assert done.returncode == 0 and "could not check the labels" in done.stderr
    assert [i.id for i in inc.load(box.file)] == [1, 2, 3]


def _scraped(url: str) -> bool:
    import httpx

    body = httpx.get(f"{url}/api/v1/query", params={"query": "tars_http_requests_total"}, timeout=5).json()
    return bool(body["data"]["result"])
