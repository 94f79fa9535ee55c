"""An Envoy gRPC access-log service (envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs)
built on grpcio and the `xds-protos` package (grpc's own compiled Envoy protos): a collector nobody
here wrote the protocol code of, for weft's (and Envoy's) `envoy.access_loggers.http_grpc` /
`tcp_grpc` clients.

  als_receiver.py --out FILE [--port N]
      Appends one JSON line per StreamAccessLogsMessage received to FILE:
        {"stream": N, "seq": I, "identifier": {...} | null, "http": [entry, ...], "tcp": [entry, ...]}
      where N numbers the streams in the order they opened, I the message within its stream, and
      each entry is the protobuf JSON mapping with the .proto field names (64-bit integers are
      strings, durations "0.001s", timestamps RFC 3339, enums by name).
      Prints "PORT <n>" once serving. Binds 127.0.0.1 only.
"""
import argparse
import itertools
import json
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import json_format
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc


def _dict(m):
    return json_format.MessageToDict(m, preserving_proto_field_name=True)


class Receiver(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()
        self.streams = itertools.count(1)

    def StreamAccessLogs(self, request_iterator, context):
        n = next(self.streams)
        for seq, msg in enumerate(request_iterator):
            line = {
                "stream": n,
                "seq": seq,
                "identifier": _dict(msg.identifier) if msg.HasField("identifier") else None,
                "http": [_dict(e) for e in msg.http_logs.log_entry],
                "tcp": [_dict(e) for e in msg.tcp_logs.log_entry],
            }
            with self.lock:
                self.out.write(json.dumps(line) + "\n")
                self.out.flush()
        return als_pb2.StreamAccessLogsResponse()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    out = open(args.out, "a", buffering=1)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(Receiver(out), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"PORT {port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
