"""Span export over OTLP, the way Jaeger receives spans since the Jaeger exporter left opentelemetry-python.

Jaeger (1.35+) accepts OTLP natively: HTTP on 4318, gRPC on 4317. The sampler is ``ParentBased`` so a
consumer honours the decision the producer made and carried in ``traceparent``'s flags: a trace is kept
or dropped as a whole, never cut in half at the stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

Protocol = Literal["http/protobuf", "grpc"]


def otlp_exporter(
    endpoint: str, protocol: Protocol = "http/protobuf", headers: Mapping[str, str] | None = None
) -> SpanExporter:
    """An OTLP span exporter for ``endpoint``.

    ``endpoint`` is the collector's base URL (``http://jaeger:4318``) as in ``OTEL_EXPORTER_OTLP_ENDPOINT``;
    for HTTP the signal path ``/v1/traces`` is appended unless already there.
    """
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"), headers=dict(headers or {}))
    if protocol != "http/protobuf":
        raise ValueError(f"unknown OTLP protocol {protocol!r}: use 'http/protobuf' or 'grpc'")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return HttpExporter(endpoint=url, headers=dict(headers or {}))


def configure_tracing(
    service_name: str,
    *,
    endpoint: str | None = None,
    protocol: Protocol = "http/protobuf",
    sample_ratio: float = 1.0,
    headers: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> TracerProvider:
    """A tracer provider with ParentBased(TraceIdRatioBased) sampling exporting over OTLP.

    ``exporter`` (e.g. an in-memory one) replaces the OTLP exporter; with neither, spans are sampled
    and propagated but not exported. Call ``provider.shutdown()`` on graceful stop: it flushes the
    batch processor so the last spans before a deploy are not lost.
    """
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be within [0, 1], got {sample_ratio}")
    from tars_1003_jaeger import __version__

    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    if exporter is None and endpoint:
        exporter = otlp_exporter(endpoint, protocol, headers)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider
