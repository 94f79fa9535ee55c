"""gRPC traffic for weft's hot-restart test, with grpcio on both ends (raw-bytes handlers: no
generated code).

  server: python hot_restart_grpc.py server
          prints "PORT <n>"; /weft.Echo/Call echoes its request, /weft.Echo/Stream answers a
          request with 5 messages 20 ms apart (server streaming).
  client: python hot_restart_grpc.py client --target 127.0.0.1:PORT --stop-file F --max-seconds S
          2 threads of unary calls and 2 threads of streaming calls through the proxy until F
          exists (or S seconds pass); prints one JSON line of counts: every call must succeed
          with the right answer.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

STREAM_MESSAGES = 5


def serve():
    def call(request, context):
        return request

    def stream(request, context):
        for i in range(STREAM_MESSAGES):
            yield request + b"/" + str(i).encode()
            time.sleep(0.02)

    handler = grpc.method_handlers_generic_handler(
        "weft.Echo",
        {
            "Call": grpc.unary_unary_rpc_method_handler(call),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(0.5).wait()


def client(target, stop_file, max_seconds):
    counts = {"unary_ok": 0, "unary_failed": 0, "stream_ok": 0, "stream_failed": 0, "errors": []}
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def running():
        return time.monotonic() < deadline and not os.path.exists(stop_file)

    def fail(kind, what):
        with lock:
            counts[kind] += 1
            if len(counts["errors"]) < 10:
                counts["errors"].append(what)

    def unary(n):
        with grpc.insecure_channel(target) as ch:
            call = ch.unary_unary("/weft.Echo/Call")
            i = 0
            while running():
                msg = f"u{n}-{i}".encode()
                i += 1
                try:
                    got = call(msg, timeout=10)
                    if got == msg:
                        with lock:
                            counts["unary_ok"] += 1
                    else:
                        fail("unary_failed", f"unary answer {got!r} for {msg!r}")
                except grpc.RpcError as e:
                    fail("unary_failed", f"unary {e.code()}: {e.details()}")

    def streaming(n):
        with grpc.insecure_channel(target) as ch:
            call = ch.unary_stream("/weft.Echo/Stream")
            i = 0
            while running():
                msg = f"s{n}-{i}".encode()
                i += 1
                try:
                    got = list(call(msg, timeout=10))
                    want = [msg + b"/" + str(k).encode() for k in range(STREAM_MESSAGES)]
                    if got == want:
                        with lock:
                            counts["stream_ok"] += 1
                    else:
                        fail("stream_failed", f"stream answers {got!r}")
                except grpc.RpcError as e:
                    fail("stream_failed", f"stream {e.code()}: {e.details()}")

    threads = [threading.Thread(target=unary, args=(n,)) for n in range(2)]
    threads += [threading.Thread(target=streaming, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(counts), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--target")
    ap.add_argument("--stop-file")
    ap.add_argument("--max-seconds", type=float, default=120)
    args = ap.parse_args()
    if args.role == "server":
        serve()
    else:
        client(args.target, args.stop_file, args.max_seconds)


if __name__ == "__main__":
    sys.exit(main())
