"""Helpers shared by this plugin's tests (a uniquely named module: conftest is not importable by name
when several plugins' tests run in one pytest session)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tars_1001_ws.hub import HubServer

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 0.2,
    "backoff_initial": 0.1,
    "backoff_max": 0.5,
    "connect_timeout": 10.0,
}
REDIS_URL = "redis://127.0.0.1:6379/0"


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
