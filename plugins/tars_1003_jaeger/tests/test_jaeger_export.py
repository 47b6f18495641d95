"""OTLP export to a real in-process OTLP/HTTP receiver, and the services' flush on graceful stop."""

from __future__ import annotations

import gzip
import json
import urllib.request
from typing import Any

import pytest
import redis
from opentelemetry.exporter.otlp.proto.http import Compression
from tars_1003_jaeger import StreamTracing, configure_tracing, otlp_exporter
from tars_1003_jaeger.otlp_receiver import OTLPReceiver

from tars_core.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def test_spans_reach_an_otlp_receiver_with_continuity(tars_redis_url: str, prefix: str, sync_client: Any) -> None:
    stream = f"{prefix}:otlp"
    sync_client.xgroup_create(stream, "g", id="0", mkstream=True)
    with OTLPReceiver() as receiver:
        producer = configure_tracing("eval-api", endpoint=receiver.endpoint, set_global=False)
        consumer = configure_tracing("eval-worker", endpoint=receiver.endpoint + "/v1/traces", set_global=False)
        for i in range(3):
            StreamTracing(producer).xadd(sync_client, stream, {"n": str(i)})
        for msg in StreamTracing(consumer).xreadgroup(sync_client, "g", "c", {stream: ">"}):
            with msg.process():
                pass
        # nothing forced: shutdown (graceful stop) is what flushes the batch processors
        producer.shutdown()
        consumer.shutdown()
        spans = receiver.wait_for(7, timeout=10)
    assert len(spans) == 7  # 3 send + 1 receive + 3 process
    sends = {s["attributes"]["messaging.message.id"]: s for s in spans if s["kind"] == "PRODUCER"}
    processes = [s for s in spans if s["kind"] == "CONSUMER"]
    assert {s["service"] for s in sends.values()} == {"eval-api"}
    assert {s["service"] for s in processes} == {"eval-worker"}
    for span in processes:
        send = sends[span["attributes"]["messaging.message.id"]]
        assert span["trace_id"] == send["trace_id"] and span["parent_span_id"] == send["span_id"]
        assert span["attributes"]["messaging.system"] == "redis"
        assert span["attributes"]["messaging.destination.name"] == stream
    [receive] = [s for s in spans if s["kind"] == "CLIENT"]
    assert receive["attributes"]["messaging.batch.message_count"] == 3
    assert len(receive["links"]) == 3


def test_receiver_decodes_gzip_and_rejects_garbage() -> None:
    with OTLPReceiver() as receiver:
        provider = configure_tracing("gz", exporter=otlp_exporter(receiver.endpoint), set_global=False)  # plain first
        provider.get_tracer("t").start_span("plain").end()
        provider.shutdown()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        gz = OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces", compression=Compression.Gzip)
        provider = configure_tracing("gz", exporter=gz, set_global=False)
        provider.get_tracer("t").start_span("compressed").end()
        provider.shutdown()
        assert [s["name"] for s in receiver.wait_for(2)] == ["plain", "compressed"]
        bad = urllib.request.Request(
            receiver.endpoint + "/v1/traces", data=gzip.compress(b"\xff\xffnot protobuf"), method="POST"
        )
        bad.add_header("Content-Encoding", "gzip")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=5)
        assert err.value.code == 400


def test_grpc_export_reaches_a_real_grpc_trace_service(tars_redis_url: str, prefix: str, sync_client: Any) -> None:
    """Jaeger's other OTLP port (4317): a real grpc server running the generated TraceService."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[bytes] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.append(request.SerializeToString())
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        stream = f"{prefix}:grpc"
        sync_client.xgroup_create(stream, "g", id="0", mkstream=True)
        provider = configure_tracing(
            "eval-grpc", endpoint=f"http://127.0.0.1:{port}", protocol="grpc", set_global=False
        )
        tracing = StreamTracing(provider)
        tracing.xadd(sync_client, stream, {"n": "1"})
        for msg in tracing.xreadgroup(sync_client, "g", "c", {stream: ">"}):
            with msg.process():
                pass
        provider.shutdown()
    finally:
        server.stop(grace=None)
    from tars_1003_jaeger.otlp_receiver import decode_spans

    spans = [span for body in received for span in decode_spans(body)]
    send = next(s for s in spans if s["kind"] == "PRODUCER")
    process = next(s for s in spans if s["kind"] == "CONSUMER")
    assert process["trace_id"] == send["trace_id"] and process["parent_span_id"] == send["span_id"]
    assert send["service"] == "eval-grpc"


def test_unknown_protocol_and_bad_ratio_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown OTLP protocol"):
        otlp_exporter("http://x", "thrift")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample_ratio"):
        configure_tracing("x", sample_ratio=2.0, set_global=False)


def test_services_propagate_export_and_flush_on_sigterm(services: Any, tars_redis_url: str) -> None:
    """The sandbox producer and consumer with the flag on, exporting to the receiver; SIGTERM flushes."""
    k = services.keys
    client = redis.Redis.from_url(tars_redis_url, decode_responses=True)
    client.hset(k["flags_key"], "tars-1003-trace-propagation", "on")
    with OTLPReceiver() as receiver:
        otlp = ("--otlp-endpoint", receiver.endpoint)
        hold = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}  # the batch processor exports only when stopped
        producer = services.start("producer", "eval-producer", *otlp, env=hold)
        consumer = services.start("consumer", "eval-consumer", *otlp, env=hold)

        def results_read() -> int:
            groups = {g["name"]: g for g in client.xinfo_groups(k["result_stream"])}
            return int(groups.get("tars-dashboard", {}).get("entries-read") or 0)

        # the producer sends 5 jobs/s: wait for a few of them through both hops
        wait_until(lambda: results_read() >= 3, timeout=20, interval=0.2, what="3 results read by the dashboard")
        assert receiver.spans == [], "nothing exported while running: what arrives next is the flush"
        assert producer.stop() and consumer.stop()  # SIGTERM, as a deployment stops them
        spans = receiver.wait_for(1, timeout=5)
    assert client.hgetall(k["registry_key"]) == {}, "services deregister on graceful stop"
    client.close()
    sends = {
        (s["attributes"]["messaging.destination.name"], s["attributes"]["messaging.message.id"]): s
        for s in spans
        if s["kind"] == "PRODUCER"
    }
    processes = [s for s in spans if s["kind"] == "CONSUMER"]
    hop2 = [s for s in processes if s["attributes"]["messaging.destination.name"] == k["result_stream"]]
    assert len(hop2) >= 3
    for span in processes:
        send = sends.get((span["attributes"]["messaging.destination.name"], span["attributes"]["messaging.message.id"]))
        if send is None:  # produced before the consumer started exporting, e.g. a previous run's entry
            continue
        assert (span["trace_id"], span["parent_span_id"]) == (send["trace_id"], send["span_id"])
    roots = {s["trace_id"] for s in spans if s["name"] == "submit evaluation"}
    assert {s["trace_id"] for s in hop2} <= roots, "hop 2 continues the trace the producer started"
    assert "eval-producer stopped" in services.log("eval-producer")
    assert "eval-consumer stopped" in services.log("eval-consumer")
    assert json.dumps(spans)  # decoded into plain JSON-able values
