"""Fixtures: real Redis (127.0.0.1:6379) under a key prefix owned by the run, real OpenTelemetry SDK.

Every key a test creates starts with the run's prefix; the session fixture deletes them all at the end,
and nothing else on the server is read or written.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tars_1003_jaeger.scenarios import memory_provider


@pytest.fixture(scope="session")
def redis_url(tars_redis_url: str) -> str:
    """The real Redis (checked once by tars_core.testing)."""
    return tars_redis_url


@pytest.fixture(scope="session")
def run_prefix(tars_redis_prefix: str) -> str:
    """This run's key prefix; tars_core.testing deletes every key under it at the end."""
    return tars_redis_prefix


@pytest.fixture
def prefix(run_prefix: str) -> str:
    """A fresh namespace per test inside the run's prefix."""
    return f"{run_prefix}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider, exporter = memory_provider()
    yield provider, exporter
    provider.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


class Services:
    """The sandbox producer and consumer as real subprocesses on the test's keys."""

    def __init__(self, redis_url: str, prefix: str, logdir: Path) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def keys(self) -> dict[str, str]:
        p = self.prefix
        return {
            "stream": f"{p}:jobs",
            "result_stream": f"{p}:results",
            "registry_key": f"{p}:registry",
            "probe_key": f"{p}:probes",
            "flags_key": f"{p}:flags",
        }

    def argv(self, role: str, name: str, port: int, *extra: str) -> list[str]:
        k = self.keys
        return [
            sys.executable, "-m", "tars_1003_jaeger.services", role, "--redis", self.redis_url,
            "--name", name, "--metrics-port", str(port), "--stream", k["stream"],
            "--result-stream", k["result_stream"], "--registry-key", k["registry_key"],
            "--probe-key", k["probe_key"], "--flags-key", k["flags_key"], "--flag-poll", "0.2",
            "--rate", "5", *extra,
        ]  # fmt: skip

    def start(self, role: str, name: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        port = free_port()
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            self.argv(role, name, port, *extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.procs[name] = proc
        wait_port(port, proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def services(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Services]:
    svc = Services(redis_url, prefix, tmp_path)
    yield svc
    svc.stop()
