"""The cross-cutting helpers every plugin uses: processes, waiting, URL scrubbing, the state store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil
import pytest

from tars_core.errors import FixError, ServiceError
from tars_core.processes import (
    ProcessId,
    Service,
    free_ports,
    http_ready,
    marked_processes,
    port_free,
    redis_ready,
    run_once,
    running,
    tcp_ready,
    terminate,
)
from tars_core.redact import Redactor, host_port, safe_url
from tars_core.state import PluginStateStore
from tars_core.testing import create_database, drop_database
from tars_core.waiting import STOP, WaitTimeout, await_until, rounds, wait_until

PY = sys.executable


def test_service_starts_answers_and_stops_its_whole_session(tmp_path: Path) -> None:
    """A server that forks a child: stop() leaves neither behind, and the port is free again."""
    (port,) = free_ports(1)
    script = (
        "import http.server, subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()"
    )
    svc = Service("web", [PY, "-c", script], log=tmp_path / "web.log", ready=http_ready(f"http://127.0.0.1:{port}/"))
    with svc:
        assert svc.check() is None
        assert svc.ident is not None
        ident = svc.ident
        children = psutil.Process(ident.pid).children(recursive=True)
        assert children, "the test server should have forked a child"
    assert not ident.alive()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert port_free(port)
    assert svc.stop() is False  # idempotent


def test_service_that_exits_while_starting_names_its_log(tmp_path: Path) -> None:
    svc = Service(
        "broken",
        [PY, "-c", "import sys; print('config error: no such file'); sys.exit(3)"],
        log=tmp_path / "broken.log",
        ready=tcp_ready(free_ports(1)[0]),
    )
    with pytest.raises(ServiceError, match=r"broken exited while starting \(config error: no such file\)"):
        svc.start()
    assert svc.ident is None


def test_service_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    token = f"mute-{os.getpid()}-{time.monotonic_ns()}"  # other tests (and runs) sleep too: find only ours
    argv = [PY, "-c", "import time; time.sleep(600)", token]
    svc = Service("mute", argv, log=tmp_path / "m.log", ready=tcp_ready(free_ports(1)[0]))
    svc.start_timeout = 0.5
    with pytest.raises(ServiceError, match=r"mute not ready after 0\.5s: not answering"):
        svc.start()
    assert not any(token in (p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is installed by .ci/run")
def test_real_redis_server_with_redis_readiness(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    with running(Service("redis", argv, log=tmp_path / "redis.log", ready=redis_ready(port))) as (svc,):
        out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "PONG"
    assert svc.check() == "not running"
    assert port_free(port)


def test_a_recycled_pid_is_not_our_process() -> None:
    me = ProcessId.of(os.getpid())
    assert me is not None and me.alive()
    assert not ProcessId(me.pid, me.create_time - 100).alive()


def test_terminate_escalates_to_sigkill(tmp_path: Path) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    )
    svc = Service("stubborn", [PY, "-c", script], log=tmp_path / "s.log", stop_timeout=0.5)
    svc.start()
    wait_until(lambda: "up" in svc.tail(), timeout=10, what="stubborn started")
    ident = svc.ident
    assert ident is not None and svc.stop() is True
    assert not ident.alive()
    assert signal.SIGTERM == svc.stop_signal


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20


def test_wait_until_returns_the_value_and_names_what_it_waited_for() -> None:
    seen = iter([0, 0, 7])
    assert wait_until(lambda: next(seen), timeout=5, interval=0.01) == 7
    with pytest.raises(WaitTimeout, match=r"flag propagation: not done after 0.1s; last error: ConnectionError"):

        def refuse() -> bool:
            raise ConnectionError("refused")

        wait_until(refuse, timeout=0.1, interval=0.02, what="flag propagation", retry_on=(ConnectionError,))


def test_await_until_accepts_sync_and_async_predicates() -> None:
    anyio.run(_await_until_cases)


async def _await_until_cases() -> None:
    calls: list[int] = []

    async def later() -> int:
        calls.append(1)
        return len(calls) >= 3 and 42

    assert await await_until(later, timeout=5, interval=0.01) == 42
    assert await await_until(lambda: "yes", timeout=1) == "yes"
    with pytest.raises(WaitTimeout):
        await await_until(lambda: None, timeout=0.05, interval=0.01)


def test_retries_back_off_and_are_announced() -> None:
    """backoff grows the pause up to max_interval; on_retry hears each pause and the error that caused it;
    an error at the deadline is named by WaitTimeout, which is the one class in tars_core.errors."""
    from tars_core import errors

    assert WaitTimeout is errors.WaitTimeout
    heard: list[tuple[float, str]] = []
    failures = iter([ConnectionError("a"), ConnectionError("b"), None, ConnectionError("c"), ConnectionError("d")])

    def connect() -> str | None:
        exc = next(failures, "up")
        if isinstance(exc, Exception):
            raise exc
        return exc

    def on_retry(pause: float, error: BaseException | None) -> None:
        heard.append((pause, str(error)))

    got = wait_until(
        connect, timeout=60, interval=0.01, backoff=2, max_interval=0.04, retry_on=(ConnectionError,), on_retry=on_retry
    )
    assert got == "up"
    assert heard == [(0.01, "a"), (0.02, "b"), (0.04, "None"), (0.04, "c"), (0.04, "d")]

    async def lost() -> None:
        raise ConnectionError("gone")

    heard.clear()
    with pytest.raises(WaitTimeout, match=r"reconnect: not done after 0\.05s; last error: ConnectionError: gone"):
        anyio.run(
            lambda: await_until(
                lost,
                timeout=0.05,
                interval=0.01,
                backoff=1.5,
                retry_on=(ConnectionError,),
                what="reconnect",
                on_retry=on_retry,
            )
        )
    assert heard and all(error == "gone" for _, error in heard)


def test_rounds_run_until_the_deadline_then_end() -> None:
    """rounds: one round at once, one at the deadline itself, counted from 0; first=False with
    interval=timeout is a single round at the end (a fixed-sample judgement after a bake)."""
    span = rounds(0.1, 0.02)
    seen = [(n, time.monotonic()) for n in span]
    assert [n for n, _ in seen] == list(range(len(seen))) and len(seen) >= 2
    assert seen[-1][1] >= span.deadline
    end = rounds(0.05, 0.05, first=False)
    once = [(n, time.monotonic()) for n in end]
    assert len(once) == 1 and once[0][1] >= end.deadline
    late = rounds(0.01, 0.01, first=False)
    time.sleep(0.05)  # the span ended before the loop began (a connect slower than the bake)
    assert list(late) == [0]  # its round at the deadline still runs, at once

    async def gather() -> list[int]:
        return [n async for n in rounds(0.05, 0.01)]

    assert anyio.run(gather)[:2] == [0, 1]


def test_rounds_stop_for_the_runner_and_for_cancellation() -> None:
    """A sync hook's rounds end with HookStopped as soon as the runner sets its stop event, mid-pause;
    async rounds end when the caller's scope is cancelled (Ctrl-C, the hook's timeout)."""
    import threading

    from tars_core.errors import HookStopped

    stop = threading.Event()
    token = STOP.set(stop)
    done: list[int] = []
    try:
        with pytest.raises(HookStopped):
            for n in rounds(600, 300):
                done.append(n)
                threading.Timer(0.05, stop.set).start()
    finally:
        STOP.reset(token)
    assert done == [0]

    async def cancelled() -> list[int]:
        seen: list[int] = []
        with anyio.move_on_after(0.05) as scope:
            async for n in rounds(600, 300):
                seen.append(n)
        assert scope.cancelled_caught
        return seen

    assert anyio.run(cancelled) == [0]


@pytest.mark.parametrize(
    ("url", "safe", "where"),
    [
        ("redis://:s3cret@h:6380/0", "redis://:***@h:6380/0", "h:6380"),
        ("postgresql://u:p%40ss@db/x?sslmode=require", "postgresql://u:***@db/x?sslmode=require", "db:5432"),
        ("redis://tok3n@h", "redis://***@h", "h:5432"),
        ("http://prom:9090/api/v1", "http://prom:9090/api/v1", "prom:9090"),
        ("redis://[::1]:6379", "redis://[::1]:6379", "[::1]:6379"),
        (
            "postgresql://db/x?user=u&password=s3cret&sslmode=require",
            "postgresql://db/x?user=u&password=***&sslmode=require",
            "db:5432",
        ),
        ("postgresql://db/x?sslpassword=s3cret", "postgresql://db/x?sslpassword=***", "db:5432"),
    ],
)
def test_safe_url_and_host_port_never_show_credentials(url: str, safe: str, where: str) -> None:
    assert safe_url(url) == safe
    assert host_port(url, 5432) == where
    assert "s3cret" not in Redactor()(f"cannot reach {url}")


def test_safe_url_scrubs_libpq_keyword_strings() -> None:
    assert safe_url("host=db port=5432 password=s3cret dbname=x") == "host=db port=5432 password=*** dbname=x"
    assert safe_url("host=db password='s3 cret' user=u") == "host=db password=*** user=u"


def test_state_store_is_atomic_and_reports_a_corrupt_file(tmp_path: Path) -> None:
    store = PluginStateStore(tmp_path / "p" / "state.json")
    assert dict(store) == {}
    store["flag_before"] = None
    store.update(created=["a", "b"], n=2)
    assert json.loads(store.path.read_text()) == {"created": ["a", "b"], "flag_before": None, "n": 2}
    del store["n"]
    assert set(store) == {"created", "flag_before"}
    assert list(store.path.parent.iterdir()) == [store.path], "no temporary file is left behind"
    store.path.write_text("{half")
    with pytest.raises(FixError, match=r"state.json is not valid JSON; restore it or delete it"):
        store.load()
    store.clear()
    assert len(store) == 0


def test_state_store_survives_sigkill_mid_write(tmp_path: Path) -> None:
    """A writer killed at random moments leaves the old or the new document, never a torn one."""
    path = tmp_path / "state.json"
    writer = (
        "import sys; from pathlib import Path; from tars_core.state import PluginStateStore;"
        f"s = PluginStateStore(Path({str(path)!r}));"
        "i = 0\n"
        "while True:\n"
        "    s.save({'i': i, 'pad': 'x' * 200000}); i += 1\n"
    )
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2):
        proc = subprocess.Popen([PY, "-c", writer])
        wait_until(path.exists, timeout=30, what="the first complete write")  # a kill before it proves nothing
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = PluginStateStore(path).load()
        assert len(data["pad"]) == 200000


def test_marked_processes_are_found_by_their_mark_or_by_executable_and_folder(tmp_path: Path) -> None:
    """What a lost record leaves behind is found; a process of the same executable elsewhere is not."""
    mark = f"test-{os.getpid()}-{time.monotonic_ns()}"
    ours, other = tmp_path / "ours", tmp_path / "other"
    ours.mkdir()
    other.mkdir()
    sleep = [PY, "-c", "import time; time.sleep(600)"]
    marked = Service("marked", sleep, log=tmp_path / "a.log", env={"TEST_MARK": mark})
    in_folder = Service("in-folder", sleep, log=tmp_path / "b.log", cwd=ours)
    elsewhere = Service("elsewhere", sleep, log=tmp_path / "c.log", cwd=other)
    exe = os.path.basename(psutil.Process().exe())
    with running(marked, in_folder, elsewhere):
        found = {p.pid for p in marked_processes(("TEST_MARK", mark), exes={exe}, cwd_under=[ours])}
        assert found == {marked.pid, in_folder.pid}
        assert {p.pid for p in marked_processes(("TEST_MARK", mark))} == {marked.pid}
    assert marked_processes(("TEST_MARK", mark), exes={exe}, cwd_under=[ours]) == []


def test_run_once_returns_the_exit_code_and_names_what_went_wrong(tmp_path: Path) -> None:
    log = tmp_path / "once.log"
    assert run_once([PY, "-c", "print('initialised'); raise SystemExit(3)"], log=log) == 3
    assert "initialised" in log.read_text()
    with pytest.raises(ServiceError, match=r"cannot start /nonexistent/initdb: .*; is it installed\?"):
        run_once(["/nonexistent/initdb"], log=log)
    with pytest.raises(ServiceError, match=r"did not finish in 0\.2s; see .*once\.log"):
        run_once([PY, "-c", "import time; time.sleep(30)"], log=log, timeout=0.2)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a command as another account")
def test_run_once_runs_as_the_given_account(tmp_path: Path) -> None:
    log = tmp_path / "id.log"
    assert run_once(["id", "-un"], log=log, user="nobody") == 0
    assert log.read_text().split() == ["nobody"]


@pytest.mark.timeout(120)
def test_terminate_returns_when_the_process_is_a_zombie_its_parent_has_not_reaped() -> None:
    """A server started by a process that lives on (a test, a long-running tool) and stopped by another
    ``tars-run`` stays a zombie until its parent reaps it: it is stopped, terminate must not wait it out."""
    code = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        "print(p.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        ident = ProcessId.of(int(parent.stdout.readline()))
        assert ident is not None
        assert terminate(ident, timeout=600) is True
        assert psutil.Process(ident.pid).status() == psutil.STATUS_ZOMBIE
        assert not ident.alive()
    finally:
        parent.kill()
        parent.wait()


def test_postgres_databases_are_created_from_templates_and_dropped(
    tars_postgres_url: str, tars_postgres_db: Callable[..., str]
) -> None:
    """The core's database fixtures: a fresh database per call, template copies, nothing left behind."""
    import asyncpg

    async def run(url: str, sql: str) -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    template = create_database(tars_postgres_url, prefix="tars_test_tpl")
    try:
        anyio.run(run, template, "CREATE TABLE seeded AS SELECT 42 AS answer")
        copy = tars_postgres_db(template=template.rsplit("/", 1)[1])
        by_url = tars_postgres_db(template=template)
        empty = tars_postgres_db()
        assert anyio.run(run, copy, "SELECT answer FROM seeded") == 42
        assert anyio.run(run, by_url, "SELECT answer FROM seeded") == 42
        assert anyio.run(run, empty, "SELECT count(*) FROM pg_tables WHERE tablename = 'seeded'") == 0
    finally:
        drop_database(template)
    names = anyio.run(run, tars_postgres_url, "SELECT string_agg(datname, ',') FROM pg_database")
    assert template.rsplit("/", 1)[1] not in str(names)


def test_promtool_checks_rules_and_reports_its_own_words() -> None:
    """The one promtool runner: a good rule file passes, a bad one raises with promtool's message."""
    from tars_core.errors import PromtoolError
    from tars_core.promtool import check_rules_text

    good = "groups:\n- name: g\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n"
    assert "SUCCESS" in check_rules_text(good)
    with pytest.raises(PromtoolError, match=r"parse error|unclosed|unexpected"):
        check_rules_text(good.replace("sum by (job) (up)", "sum by (job (up)"))


def test_exit_code_of_our_own_children(tmp_path: Path) -> None:
    """The supervisor reports how a process it started ended; a soak that crashed is not a result."""
    from tars_core.processes import exit_code, spawn

    ok = spawn([PY, "-c", "pass"], log=tmp_path / "ok.log")
    crashed = spawn([PY, "-c", "raise SystemExit(3)"], log=tmp_path / "crash.log")
    wait_until(lambda: not ok.alive() and not crashed.alive(), timeout=30, what="both exited")
    assert (exit_code(ok), exit_code(crashed)) == (0, 3)
    me = ProcessId.of(os.getpid())
    assert me is not None and exit_code(me) is None  # running, and not our child


def test_an_unknown_account_is_a_clear_service_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("switching accounts needs root; CI runs as root")
    with pytest.raises(ServiceError, match="no account named 'tars-nosuch-user'"):
        Service("x", [PY, "-c", "pass"], log=tmp_path / "x.log", user="tars-nosuch-user").start()
