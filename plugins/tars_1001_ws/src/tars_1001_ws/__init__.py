"""TARS-1001: a WebSocket client that survives every kind of disconnect and loses no message, and its hub.

The names below are imported lazily (PEP 562) so that importing the plugin entry point
``tars_1001_ws.plugin`` (which imports this package first) does not pull in ``websockets``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tars_1001_ws.client import (
        ClientClosed,
        ClientError,
        ConnectError,
        ConnectionState,
        Message,
        OutboxFull,
        Publication,
        ReconnectingWebSocketClient,
        ResyncRequired,
        StateEvent,
        SyncReconnectingWebSocketClient,
    )
    from tars_1001_ws.hub import Hub, HubServer, serve
    from tars_1001_ws.proxy import FaultProxy

#: Where each exported name lives that is not in ``tars_1001_ws.client``.
_ELSEWHERE = {"Hub": "hub", "HubServer": "hub", "serve": "hub", "FaultProxy": "proxy"}

__all__ = [
    "ClientClosed",
    "ClientError",
    "ConnectError",
    "ConnectionState",
    "FaultProxy",
    "Hub",
    "HubServer",
    "Message",
    "OutboxFull",
    "Publication",
    "ReconnectingWebSocketClient",
    "ResyncRequired",
    "StateEvent",
    "SyncReconnectingWebSocketClient",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'tars_1001_ws' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"tars_1001_ws.{_ELSEWHERE.get(name, 'client')}"), name)
