"""Fixtures: real Redis (tars_core.testing's ``tars_redis_url``) under a key prefix owned by the run, real
OpenTelemetry SDK, and the sandbox producer/consumer as real processes under the core's supervisor.

Every key a test creates starts with the run's prefix (``tars_redis_prefix``), which tars_core.testing
deletes at the end; nothing else on the server is read or written.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tars_1003_jaeger.scenarios import memory_provider

from tars_core.processes import Service, free_port, tcp_ready


@pytest.fixture
def prefix(tars_redis_prefix: str) -> str:
    """A fresh namespace per test inside the run's prefix."""
    return f"{tars_redis_prefix}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sync_client(tars_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(tars_redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider, exporter = memory_provider()
    yield provider, exporter
    provider.shutdown()


class Services:
    """The sandbox producer and consumer as real processes on the test's keys (stopped by the fixture)."""

    def __init__(self, redis_url: str, prefix: str, logdir: Path) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.logdir = logdir
        self.running: dict[str, Service] = {}

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

    def start(self, role: str, name: str, *extra: str, env: dict[str, str] | None = None) -> Service:
        """Start ``name`` and wait until its metrics port answers."""
        port = free_port()
        argv = self.argv(role, name, port, *extra)
        svc = Service(name, argv, log=self.logdir / f"{name}.log", ready=tcp_ready(port), env=env or {})
        self.running[name] = svc.start()
        return svc

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text()

    def stop(self) -> None:
        for svc in reversed(self.running.values()):
            svc.stop()


@pytest.fixture
def services(tars_redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Services]:
    svc = Services(tars_redis_url, prefix, tmp_path)
    yield svc
    svc.stop()
