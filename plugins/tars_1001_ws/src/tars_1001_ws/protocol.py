"""The wire protocol shared by the hub and the client (documented for other clients in README.md).

Frames are JSON text frames with a ``type``. Version 1.0.1 is negotiated as the WebSocket subprotocol
:data:`SUBPROTOCOL`; a client that does not offer it (or a hub whose feature flag is off) gets the v1.0.0
behaviour: the same frames without epoch, sequence numbers, replay or deduplication. Negotiating in the
handshake, rather than in a first frame, lets an old hub or an old client fall back without a round trip
and lets the flag switch the behaviour for new connections only.
"""

from __future__ import annotations

import json
from typing import Any

SUBPROTOCOL = "tars.ws.v1.0.1"
"""The subprotocol name of the fixed protocol (sequence numbers, epochs, replay, idempotent publish)."""

INFO_PATH = "/tars-ws/info"
"""Plain HTTP GET on the hub's port: JSON describing the hub build and whether v1.0.1 is enabled."""

METRICS_PATH = "/metrics"
"""Prometheus exposition of the hub's counters on the hub's own port."""

DEFAULT_FLAG = "tars-1001-ws-reconnect"
"""The feature flag that enables v1.0.1 on the hub (and the reconnecting client in T.A.R.S. services)."""

MAX_CHANNEL_NAME = 200
"""Longest channel name the hub accepts (the client refuses longer ones before sending)."""

# Close codes the client treats specially (RFC 6455 / IANA registry).
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013


def encode(frame: dict[str, Any]) -> str:
    """Compact JSON: frames are small and fan-out serialises each once, so skip the whitespace."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def decode(text: str | bytes) -> dict[str, Any]:
    """Parse one frame; anything that is not a JSON object with a string ``type`` is a protocol error."""
    frame = json.loads(text)
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ValueError("frame is not a JSON object with a string 'type'")
    return frame


def retry_after_hint(reason: str) -> float | None:
    """``retry-after=N`` in a 1012/1013 close reason: the hub's own estimate of when to come back."""
    for part in reason.replace(";", " ").split():
        if part.lower().startswith("retry-after="):
            try:
                return max(0.0, float(part.split("=", 1)[1]))
            except ValueError:
                return None
    return None
