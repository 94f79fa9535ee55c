#!/usr/bin/env python3
"""A collector that accepts and discards what a proxy exports, for the observability-cost
benchmarks (`bench/run --scenarios obs`, `bench/instructions --obs`). One grpcio server
(gRPC's own HTTP/2 and framing; nobody here wrote it) on 127.0.0.1 serves both

  opentelemetry.proto.collector.trace.v1.TraceService/Export         (OTLP/gRPC traces)
  envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs       (Envoy's gRPC access-log service)

Messages arrive as raw bytes and are counted, not decoded, so that the sink stays cheap next to
the load generator it shares a CPU with. The first message of each kind, and every 100th after
it, is decoded with the official protos (opentelemetry-proto as shipped in `xds-protos`, and
Envoy's ALS protos) when they are importable, to check that what the proxy sends is valid; the
spans and log entries found in those messages are counted too.

Protocol on stdin/stdout: prints "PORT <n>" once serving; a line "stats" on stdin prints one JSON
object with the counters; "quit" or EOF stops the server.
"""
import argparse
import json
import sys
import threading
from concurrent import futures

import grpc

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
ALS_SERVICE = "envoy.service.accesslog.v3.AccessLogService"

try:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as _otlp
except ImportError:  # counted only
    _otlp = None
try:
    from envoy.service.accesslog.v3 import als_pb2 as _als
except ImportError:
    _als = None


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.v = {"otlp_exports": 0, "otlp_bytes": 0, "otlp_decoded": 0, "otlp_decoded_spans": 0,
                  "als_streams": 0, "als_messages": 0, "als_bytes": 0, "als_decoded": 0,
                  "als_decoded_entries": 0, "invalid": 0}

    def add(self, **kw):
        with self.lock:
            for k, n in kw.items():
                self.v[k] += n
            return dict(self.v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    c = Counters()

    def export(req, _ctx):
        v = c.add(otlp_exports=1, otlp_bytes=len(req))
        if _otlp and (v["otlp_exports"] - 1) % 100 == 0:
            try:
                m = _otlp.ExportTraceServiceRequest.FromString(req)
                # xds-protos ships an older OTLP revision, where field 2 of ResourceSpans (the
                # same bytes on the wire) is named instrumentation_library_spans.
                spans = sum(len(ss.spans) for rs in m.resource_spans
                            for ss in (rs.scope_spans if hasattr(rs, "scope_spans")
                                       else rs.instrumentation_library_spans))
                c.add(otlp_decoded=1, otlp_decoded_spans=spans)
            except Exception:  # noqa: BLE001 -- a malformed message is what we count
                c.add(invalid=1)
        return b""  # an empty ExportTraceServiceResponse: full success

    def stream_logs(it, _ctx):
        c.add(als_streams=1)
        for msg in it:
            v = c.add(als_messages=1, als_bytes=len(msg))
            if _als and (v["als_messages"] - 1) % 100 == 0:
                try:
                    m = _als.StreamAccessLogsMessage.FromString(msg)
                    c.add(als_decoded=1,
                          als_decoded_entries=len(m.http_logs.log_entry) + len(m.tcp_logs.log_entry))
                except Exception:  # noqa: BLE001
                    c.add(invalid=1)
        return b""  # StreamAccessLogsResponse is empty

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(TRACE_SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(export)}),
        grpc.method_handlers_generic_handler(ALS_SERVICE, {
            "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(stream_logs)}),
    ))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"PORT {port}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            print(json.dumps(c.add()), flush=True)
        elif cmd == "quit":
            break
    server.stop(1)


if __name__ == "__main__":
    main()
