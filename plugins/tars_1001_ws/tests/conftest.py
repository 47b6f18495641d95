"""Fixtures: a real hub on a loopback port, a fault-injecting proxy in front of it, real Redis keys
(``tars_redis_url`` and ``tars_redis_prefix`` come from tars_core.testing).

Intervals are small (heartbeat 0.2 s) so fault tests run in seconds; tests assert behaviour (what was
delivered, which states were seen), never how fast something happened.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from tars_1001_ws.check import Recorder
from tars_1001_ws.hub import HubServer, serve
from tars_1001_ws.proxy import FaultProxy


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[HubServer]:
    async with serve(port=0, ping_interval=1.0, ping_timeout=1.0) as server:
        yield server


@pytest_asyncio.fixture
async def proxy(hub: HubServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", hub.port) as p:
        yield p


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def flags_key(tars_redis_prefix: str) -> str:
    """A Redis hash of our own for feature flags (never the real tars:feature_flags). It and the
    ``:previous`` hash the flags remember into lie under the run's prefix, deleted when the run ends."""
    return f"{tars_redis_prefix}:1001:{uuid.uuid4().hex[:12]}:flags"
