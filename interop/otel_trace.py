"""Peers for weft's tracing interop tests, built on the OpenTelemetry Python SDK and the official
`opentelemetry-proto` package (and, for sw8, Apache SkyWalking's Python agent).

  receiver --out FILE [--delay S]
      An OTLP trace receiver: gRPC TraceService/Export and OTLP/HTTP (POST /v1/traces, protobuf).
      Appends one JSON line per span to FILE. Prints "PORTS <grpc> <http>" once serving.
      --delay makes every export take that long (a slow collector).
  server --otlp ADDR --propagator P --name N
      An http.server app instrumented with the OpenTelemetry SDK: extracts the caller's context
      with propagator P (w3c | b3 | b3multi), records a SERVER span, answers 200 with the request
      headers it received as JSON. Prints "PORT <n>".
  client --otlp ADDR --propagator P --url URL --name N
      A urllib client instrumented with the SDK: a CLIENT span whose context is injected with P.
      Prints one JSON line {"trace_id", "span_id", "status", "body"} after flushing its spans.
  sw-client --url URL
      The SkyWalking Python agent (apache-skywalking) with its urllib plugin makes the call, so the
      request carries the agent's own sw8 header. Its collector is a refusing port: the agent runs
      without an OAP (its reports fail quietly). Prints {"status", "body", "sw8"}.

Binds 127.0.0.1 only.
"""
import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _propagator(name):
    if name == "w3c":
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        return TraceContextTextMapPropagator()
    if name == "b3":
        from opentelemetry.propagators.b3 import B3SingleFormat
        return B3SingleFormat()
    if name == "b3multi":
        from opentelemetry.propagators.b3 import B3MultiFormat
        return B3MultiFormat()
    raise SystemExit(f"unknown propagator {name}")


def _provider(name, otlp):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://{otlp}", insecure=True)))
    return provider


def _attr_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def receiver(args):
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    lock = threading.Lock()
    out = open(args.out, "a", buffering=1)

    def record(req):
        if args.delay:
            time.sleep(args.delay)
        with lock:
            for rs in req.resource_spans:
                res = {kv.key: _attr_value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.write(json.dumps({
                            "service": res.get("service.name"),
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "status": s.status.code,
                            "attributes": {kv.key: _attr_value(kv.value) for kv in s.attributes},
                        }) + "\n")

    class Svc(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            record(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Svc(), server)
    gport = server.add_insecure_port("127.0.0.1:0")
    server.start()

    class Http(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            record(req)
            resp = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(resp)))
            self.end_headers()
            self.wfile.write(resp)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"PORTS {gport} {httpd.server_address[1]}", flush=True)
    threading.Event().wait()


def server(args):
    from opentelemetry.trace import SpanKind

    provider = _provider(args.name, args.otlp)
    tracer = provider.get_tracer("weft-interop")
    prop = _propagator(args.propagator)

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            carrier = {k.lower(): v for k, v in self.headers.items()}
            ctx = prop.extract(carrier)
            with tracer.start_as_current_span(f"GET {self.path}", context=ctx, kind=SpanKind.SERVER) as span:
                span.set_attribute("http.request.method", "GET")
                span.set_attribute("url.path", self.path)
                span.set_attribute("http.response.status_code", 200)
                body = json.dumps(carrier).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(f"PORT {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


def client(args):
    from opentelemetry.trace import SpanKind

    provider = _provider(args.name, args.otlp)
    tracer = provider.get_tracer("weft-interop")
    prop = _propagator(args.propagator)
    with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as span:
        headers = {}
        prop.inject(headers)
        span.set_attribute("http.request.method", "GET")
        span.set_attribute("url.full", args.url)
        req = urllib.request.Request(args.url, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            status, body = r.status, r.read().decode()
        span.set_attribute("http.response.status_code", status)
        ctx = span.get_span_context()
    provider.force_flush()
    provider.shutdown()
    print(json.dumps({
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "status": status,
        "body": body,
    }), flush=True)


def sw_client(args):
    from skywalking import agent, config

    # A refusing collector port: the agent runs without an OAP, its reports fail.
    config.init(
        agent_collector_backend_services="127.0.0.1:9",
        agent_name="sw-client",
        agent_protocol="grpc",
        agent_logging_level="ERROR",
    )
    agent.start()
    from skywalking.trace.context import get_context

    with get_context().new_entry_span(op="/job") as entry:
        entry.component = 0
        req = urllib.request.Request(args.url)
        with urllib.request.urlopen(req, timeout=10) as r:
            status, body = r.status, r.read().decode()
        tid = str(get_context().segment.related_traces[0])
    print(json.dumps({"status": status, "body": body, "trace_id": tid}), flush=True)
    # The agent's reporter threads keep retrying the (absent) OAP: leave without waiting for them.
    os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("receiver")
    r.add_argument("--out", required=True)
    r.add_argument("--delay", type=float, default=0.0)
    for name in ("server", "client"):
        p = sub.add_parser(name)
        p.add_argument("--otlp", required=True)
        p.add_argument("--propagator", default="w3c")
        p.add_argument("--name", required=True)
        if name == "client":
            p.add_argument("--url", required=True)
    s = sub.add_parser("sw-client")
    s.add_argument("--url", required=True)
    args = ap.parse_args()
    {"receiver": receiver, "server": server, "client": client, "sw-client": sw_client}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
