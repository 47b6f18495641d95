"""The wire protocol shared by the hub and the client (documented for other clients in README.md).

Frames are JSON text frames with a ``type``. Version 1.0.1 is negotiated as the WebSocket subprotocol
:data:`SUBPROTOCOL`; a client that does not offer it (or a hub whose feature flag is off) gets the v1.0.0
behaviour: the same frames without epoch, sequence numbers, replay or deduplication. Negotiating in the
handshake, rather than in a first frame, lets an old hub or an old client fall back without a round trip
and lets the flag switch the behaviour for new connections only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

SUBPROTOCOL = "tars.ws.v1.0.1"
"""The subprotocol name of the fixed protocol (sequence numbers, epochs, replay, idempotent publish)."""

SUBPROTOCOL_V100 = "tars.ws.v1.0.0"
"""The v1.0.0 frames under a name of their own. A browser that offers subprotocols fails the handshake
unless the hub selects one of them, so clients offer both and the hub always selects one: v1.0.1 while
its flag is on, v1.0.0 while it is off (and after every rollback)."""

SUBPROTOCOLS = (SUBPROTOCOL, SUBPROTOCOL_V100)
"""What clients offer, in the hub's order of preference."""

CLIENT_JS_PATH = "/tars-ws/tars-ws.js"
"""Plain HTTP GET on the hub's port: the browser client (an ES module), served with CORS so a dashboard on
another origin can import it."""

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects in a frame. Far below every parser's own limit (Python's json
gives up near 1 000 levels), so whatever the hub relays, every client can parse."""

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


class FrameError(ValueError):
    """A frame the protocol does not allow; ``req_id`` is its ``id`` when that much could be trusted, and
    ``code`` the error frame's code (``bad_frame``: not a standard JSON object with a type;
    ``bad_request``: a well-formed frame whose content is refused)."""

    def __init__(self, message: str, req_id: Any = None, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.req_id = req_id
        self.code = code


def encode(frame: dict[str, Any]) -> str:
    """Compact standard JSON (never NaN or Infinity, which no browser parses); fan-out serialises each
    frame once, so skip the whitespace."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _constant(name: str) -> Any:
    raise FrameError(f"{name} is not standard JSON (a browser's JSON.parse refuses it)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FrameError(f"{text} is out of range for a JSON number (it would be Infinity, not standard JSON)")
    return value


# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a parsed frame, since the text itself
# arrived as valid UTF-8. A match is only a hint (it may be half of a valid pair); the walk decides.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode(text: str | bytes) -> dict[str, Any]:
    """Parse one frame strictly: standard JSON, an object with a string ``type``, nesting at most
    :data:`MAX_DEPTH`, no lone UTF-16 surrogate anywhere. Raises :class:`FrameError` otherwise.

    Every string in an accepted frame can be encoded as UTF-8 and every number is finite, so whatever the
    hub stores and relays from it can be sent to, and parsed by, any client.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("binary frame that is not UTF-8: send JSON text frames") from None
    try:
        frame = json.loads(text, parse_constant=_constant, parse_float=_finite)
    except FrameError:
        raise
    except RecursionError:
        raise FrameError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise FrameError(f"not JSON: {exc}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise FrameError("frame is not a JSON object with a string 'type'")
    check_surrogates = _SURROGATE_ESCAPE.search(text) is not None
    if check_surrogates or text.count("[") + text.count("{") > MAX_DEPTH:
        _walk(frame, check_surrogates)
    return frame


def _walk(frame: dict[str, Any], surrogates: bool) -> None:
    """Depth (and, when hinted, lone surrogates) without recursion: the frame may be hostile."""
    stack: list[tuple[Any, int]] = [(frame, 1)]
    bad: str | None = None
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FrameError(f"nested deeper than {MAX_DEPTH} levels", _trusted_id(frame))
        items = list(node.items()) if isinstance(node, dict) else [(None, v) for v in node]
        for key, value in items:
            if surrogates and bad is None:
                for s in (key, value):
                    if isinstance(s, str) and not _utf8(s):
                        bad = s
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
    if bad is not None:
        raise FrameError(
            "a string holds a lone UTF-16 surrogate (e.g. an emoji cut in half), which is not valid "
            "Unicode: fix the string before sending",
            _trusted_id(frame),
            code="bad_request" if _trusted_id(frame) is not None else "bad_frame",
        )


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _trusted_id(frame: dict[str, Any]) -> Any:
    """The frame's ``id`` when it can be echoed safely (a clean string, a number, or null)."""
    req_id = frame.get("id")
    if isinstance(req_id, str):
        return req_id if _utf8(req_id) else None
    return req_id if isinstance(req_id, (int, float)) and not isinstance(req_id, bool) else None


def retry_after_hint(reason: str) -> float | None:
    """``retry-after=N`` in a 1012/1013 close reason: the hub's own estimate of when to come back."""
    for part in reason.replace(";", " ").split():
        if part.lower().startswith("retry-after="):
            try:
                return max(0.0, float(part.split("=", 1)[1]))
            except ValueError:
                return None
    return None
