"""Fixtures: real Redis (127.0.0.1:6379) under keys owned by the run, real trainer service processes.

Every Redis key a test creates starts with the run's prefix (flags hash included); the session fixture
deletes them at the end and nothing else on the server is read or written. TensorFlow runs on CPU with
one inter-op and one intra-op thread so the suite stays frugal on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TARS_TF_INTER_THREADS", "1")
os.environ.setdefault("TARS_TF_INTRA_THREADS", "1")

REDIS_URL = os.environ.get("TARS_TEST_REDIS", "redis://127.0.0.1:6379/0")

# A trainer small enough that an iteration takes a fraction of a second on one thread.
SMALL = {"num_envs": 4, "n_steps": 16, "n_epochs": 2, "hidden": [16, 16], "anneal_steps": 200_000}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need a real Redis at {REDIS_URL} ({exc})")
    return REDIS_URL


@pytest.fixture(scope="session")
def run_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"test:tars1005:{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def small_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


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


def wait_reported(client: redis.Redis, prefix: str, trainer_ids: list[str], timeout: float = 90.0,
                  procs: dict[str, subprocess.Popen[bytes]] | None = None) -> None:
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


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    svc = Services()
    yield svc
    svc.stop_all()

