"""TARS-1003: trace context carried through Redis Streams, exported over OTLP.

The library API (``traced_xadd``, ``traced_xreadgroup``, ``traced_xautoclaim``, ``StreamTracing``,
``configure_tracing``) is re-exported lazily: the ``tars.plugins`` entry point imports
``tars_1003_jaeger.plugin`` and with it this package, and ``tars-run list`` must not pay for importing
OpenTelemetry and redis.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "1.0.1"

_EXPORTS = {
    "traced_xadd": "streams",
    "traced_xreadgroup": "streams",
    "traced_xautoclaim": "streams",
    "StreamTracing": "streams",
    "StreamMessage": "streams",
    "ClaimResult": "streams",
    "PropagationStats": "streams",
    "stats": "streams",
    "CONTEXT_FIELDS": "streams",
    "configure_tracing": "export",
    "otlp_exporter": "export",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tars_1003_jaeger' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tars_1003_jaeger.{module}"), name)
