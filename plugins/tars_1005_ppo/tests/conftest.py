"""Fixtures: real Redis (127.0.0.1:6379) under keys owned by the run, real trainer service processes.

Every Redis key a test creates starts with the run's prefix (flags hash included); the session fixture
deletes them at the end and nothing else on the server is read or written. TensorFlow runs on CPU with
one inter-op and one intra-op thread so the suite stays frugal on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ppo_support import SMALL, Services

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TARS_TF_INTER_THREADS", "1")
os.environ.setdefault("TARS_TF_INTRA_THREADS", "1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url(tars_redis_url: str) -> str:
    """The real Redis (checked once by tars_core.testing)."""
    return tars_redis_url


@pytest.fixture(scope="session")
def run_prefix(tars_redis_prefix: str) -> str:
    """This run's key prefix; tars_core.testing deletes every key under it at the end."""
    return tars_redis_prefix


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
