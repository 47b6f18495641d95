"""Helpers shared by this plugin's tests (a uniquely named module: conftest is not importable by name
when several plugins' tests run in one pytest session)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tars_1001_ws.hub import HubServer

from tars_core.waiting import await_until

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 0.2,
    "backoff_initial": 0.1,
    "backoff_max": 0.5,
    "connect_timeout": 10.0,
}


async def eventually(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for a condition with a generous hang guard (a guard against hanging, not a timing assertion)."""
    await await_until(predicate, timeout=timeout, interval=0.02, what=what)


def metric(hub: HubServer, name: str, **labels: str) -> float:
    return hub.hub.registry.get_sample_value(name, labels or None) or 0.0
