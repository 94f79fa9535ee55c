"""A proxyless gRPC client for weft's interop tests, using grpcio's built-in xDS resolver.

Calls /weft.Echo/Call on an xds:/// target (GRPC_XDS_BOOTSTRAP names the control plane) as fast as
one thread allows, for a bounded time, and prints one JSON line per interval with the replies per
backend name and the errors seen in that interval.
"""
import argparse
import json
import sys
import time

import grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.25)
    args = ap.parse_args()

    channel = grpc.insecure_channel(args.target)
    call = channel.unary_unary("/weft.Echo/Call", request_serializer=None, response_deserializer=None)
    end = time.monotonic() + args.duration
    next_report = time.monotonic() + args.interval
    counts, errors, last_error = {}, 0, None
    while time.monotonic() < end:
        try:
            reply = call(b"", timeout=1.0).decode()
            counts[reply] = counts.get(reply, 0) + 1
        except grpc.RpcError as e:
            errors += 1
            last_error = f"{e.code().name}: {e.details()}"
            time.sleep(0.05)
        now = time.monotonic()
        if now >= next_report:
            print(json.dumps({"counts": counts, "errors": errors, "last_error": last_error}), flush=True)
            counts, errors, last_error = {}, 0, None
            next_report = now + args.interval
    channel.close()


if __name__ == "__main__":
    sys.exit(main())
