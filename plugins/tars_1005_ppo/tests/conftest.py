"""Fixtures: real Redis (127.0.0.1:6379) under keys owned by the run, real trainer service processes.

Every Redis key a test creates starts with ``tars_redis_prefix`` (flags hash included), whose keys
tars_core.testing deletes at the end; nothing else on the server is read or written. TensorFlow runs on
CPU with one inter-op and one intra-op thread so the suite stays frugal on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ppo_support import SMALL

from tars_core.processes import Service

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TARS_TF_INTER_THREADS", "1")
os.environ.setdefault("TARS_TF_INTRA_THREADS", "1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def small_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, Service]]:
    """Trainer services a test module starts, by trainer id; each is stopped (its whole session) at the end."""
    started: dict[str, Service] = {}
    yield started
    for svc in started.values():
        svc.stop()
