"""A SQLite ledger locked by another process must not freeze tars-run: it says it is waiting, and Ctrl-C works.

SQLite waits for a write lock inside its C busy handler; run on the event loop, that wait used to block
signal handling and every progress line for up to the 30 s busy timeout.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import Project

pytestmark = pytest.mark.timeout(180)

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE tars_meta SET value=value")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


class Lines:
    """A process's stderr, read line by line in the background so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 25) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines if text in line]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"no {text!r} in {self.lines}"
                self._cond.wait(min(left, 0.2))


def test_a_locked_ledger_is_reported_and_ctrl_c_still_works(three: Project) -> None:
    three.config(release={"progress_every": 0.2})
    assert three.run("status").returncode == 0  # creates the ledger
    db_path = three.work / ".tars" / "state.db"
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        # the lock is held before tars-run starts, or tars-run could take the ledger first and never wait
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        with three.start("--format", "json", "apply") as run:
            lines = Lines(run.proc)
            waiting = lines.wait_for("waiting for the ledger")
            assert str(db_path) in waiting and "another process holds its write lock" in waiting
            run.proc.send_signal(signal.SIGINT)
            lines.wait_for("tars: interrupted")
            assert locker.poll() is None  # answered while the other process still held the lock
            assert locker.stdin is not None
            locker.stdin.write("\n")
            locker.stdin.close()
            assert locker.wait(timeout=30) == 0
            assert run.proc.wait(timeout=60) == 130, lines.lines
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
    assert three.calls() == []  # interrupted before anything ran: nothing applied, nothing to roll back
    assert "interrupted before fix-a started" in lines.lines[-1]
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("SELECT count(*) FROM tars_phases").fetchone() == (0,)
        assert db.execute("SELECT outcome FROM tars_runs").fetchall() == [("interrupted",)]
    finally:
        db.close()
    _, status = three.json("status")
    assert status["lock"] is None
