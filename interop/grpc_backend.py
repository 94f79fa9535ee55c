"""A gRPC backend for weft's interop tests: answers /weft.Echo/Call with its own name.

Raw-bytes handlers, so no generated code is needed. Binds 127.0.0.1 only and prints
"PORT <n>" once serving, so a test can use port 0.
"""
import argparse
import signal
import sys
import threading
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

    handler = grpc.method_handlers_generic_handler(
        "weft.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
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
