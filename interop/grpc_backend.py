"""A gRPC backend for weft's interop tests: answers /weft.Echo/Call with its own name, and
/weft.Echo/Slow (request: milliseconds as ASCII digits) after sleeping that long, with
"NAME:<deadline>" where <deadline> is the deadline the call arrived with in whole milliseconds
(from its grpc-timeout header), or "none".

Raw-bytes handlers, so no generated code is needed. Binds 127.0.0.1 only and prints
"PORT <n>" once serving, so a test can use port 0.
"""
import argparse
import signal
import sys
import threading
import time
from concurrent import futures

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    name = args.name.encode()

    def call(request, context):
        return name

    def slow(request, context):
        left = context.time_remaining()
        ms = int(request.decode() or "0")
        time.sleep(ms / 1000)
        # No deadline: None, or (grpcio) a time far in the future.
        none = left is None or left > 86400
        deadline = "none" if none else str(int(round(left * 1000)))
        return name + b":" + deadline.encode()

    handler = grpc.method_handlers_generic_handler(
        "weft.Echo",
        {
            "Call": grpc.unary_unary_rpc_method_handler(call),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"PORT {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(0.5).wait()


if __name__ == "__main__":
    sys.exit(main())
