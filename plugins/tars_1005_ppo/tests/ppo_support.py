"""Helpers shared by this plugin's tests (a uniquely named module: several plugins have a conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis

# A trainer small enough that an iteration takes a fraction of a second on one thread.
SMALL = {"num_envs": 4, "n_steps": 16, "n_epochs": 2, "hidden": [16, 16], "anneal_steps": 200_000}


class Services:
    """Trainer service processes started by a test module; stopped (SIGTERM, then SIGKILL) at its end."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TARS_TF_INTRA_THREADS": "1"}
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def wait_reported(
    client: redis.Redis,
    prefix: str,
    trainer_ids: list[str],
    timeout: float = 90.0,
    procs: dict[str, subprocess.Popen[bytes]] | None = None,
) -> None:
    """Until each trainer has reported at least one iteration to Redis."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tid, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise RuntimeError(f"trainer service {tid} exited with {proc.returncode}")
        if all(client.hget(f"{prefix}:trainer:{t}", "iteration") for t in trainer_ids):
            return
        time.sleep(0.5)
    raise TimeoutError(f"trainers {trainer_ids} did not report within {timeout} s")
