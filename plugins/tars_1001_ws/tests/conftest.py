"""Fixtures: a real hub on a loopback port, a fault-injecting proxy in front of it, real Redis keys.

Intervals are small (heartbeat 0.2 s) so fault tests run in seconds; tests assert behaviour (what was
delivered, which states were seen), never how fast something happened.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from tars_1001_ws.check import Recorder
from tars_1001_ws.hub import HubServer, serve
from tars_1001_ws.proxy import FaultProxy

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 0.2,
    "backoff_initial": 0.1,
    "backoff_max": 0.5,
    "connect_timeout": 10.0,
}
REDIS_URL = "redis://127.0.0.1:6379/0"


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


@pytest_asyncio.fixture
async def flags_key() -> AsyncIterator[str]:
    """A Redis hash of our own for feature flags, deleted afterwards (never the real tars:feature_flags)."""
    import redis.asyncio as aioredis

    key = f"tars-test-1001:{uuid.uuid4().hex}:flags"
    yield key
    client = aioredis.from_url(REDIS_URL)
    await client.delete(key)
    await client.aclose()


async def eventually(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for a condition with a generous hang guard (a guard against hanging, not a timing assertion)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what} never became true") from None


def metric(hub: HubServer, name: str, **labels: str) -> float:
    return hub.hub.registry.get_sample_value(name, labels or None) or 0.0
