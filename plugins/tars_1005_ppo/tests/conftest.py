"""Fixtures: real Redis (127.0.0.1:6379) under keys owned by the run, real trainer service processes.

Every Redis key a test creates starts with the run's prefix (flags hash included); the session fixture
deletes them at the end and nothing else on the server is read or written. TensorFlow runs on CPU with
one inter-op and one intra-op thread so the suite stays frugal on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ppo_support import SMALL, Services

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TARS_TF_INTER_THREADS", "1")
os.environ.setdefault("TARS_TF_INTRA_THREADS", "1")

REDIS_URL = os.environ.get("TARS_TEST_REDIS", "redis://127.0.0.1:6379/0")


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


@pytest.fixture(scope="session")
def small_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    svc = Services()
    yield svc
    svc.stop_all()

