"""A minimal OTLP/HTTP trace receiver: a stand-in for Jaeger's port 4318 in tests and in the sandbox.

It decodes the protobuf ``ExportTraceServiceRequest`` the real exporter sends (gzip or not) with the
classes from ``opentelemetry-proto``, so a test of the export path exercises the exporter's actual wire
format instead of a mock. Run it as ``python -m tars_1003_jaeger.otlp_receiver --port 4318 --out
spans.jsonl`` to collect the sandbox's spans in a file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def decode_spans(body: bytes) -> list[dict[str, Any]]:
    """Flatten an ExportTraceServiceRequest into one dict per span (ids as lowercase hex)."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "service": resource.get("service.name"),
                        "scope": scope_spans.scope.name,
                        "name": span.name,
                        "kind": _KINDS.get(span.kind, str(span.kind)),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "links": [{"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex()} for ln in span.links],
                        "attributes": {kv.key: _value(kv.value) for kv in span.attributes},
                        "status": span.status.code,
                    }
                )
    return spans


class OTLPReceiver:
    """OTLP/HTTP receiver on a loopback port, serving ``POST /v1/traces`` from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, out: Path | None = None) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self._out = out
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/traces":
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    spans = decode_spans(body)
                except Exception as exc:
                    self.send_error(400, f"cannot decode ExportTraceServiceRequest: {exc}")
                    return
                receiver._add(spans)
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _add(self, spans: list[dict[str, Any]]) -> None:
        with self._cond:
            self.requests += 1
            self.spans.extend(spans)
            if self._out is not None:
                with self._out.open("a") as fh:
                    for span in spans:
                        fh.write(json.dumps(span) + "\n")
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` spans arrived (or ``timeout``); returns what arrived."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.spans) >= count, timeout)
            return list(self.spans)

    def start(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OTLP/HTTP trace receiver writing spans as JSON lines")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append spans to")
    args = parser.parse_args(argv)
    receiver = OTLPReceiver(args.host, args.port, args.out)
    try:
        receiver._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver._server.server_close()


if __name__ == "__main__":
    main()
