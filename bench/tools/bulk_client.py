#!/usr/bin/env python3
"""Bulk download client for the TCP throughput scenario (stdlib only).

Fetches PATH COUNT times over fresh connections (HTTP/1.1, Connection: close),
draining the body with recv_into into one reusable buffer, and prints JSON
with total body bytes and wall seconds spent transferring.
"""
import argparse
import json
import socket
import sys
import time


def fetch(host, port, path, buf, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed before headers")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode(errors="replace"))
    length = None
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    got = len(rest)
    view = memoryview(buf)
    while got < length:
        n = s.recv_into(view)
        if n == 0:
            break
        got += n
    s.close()
    if got != length:
        raise RuntimeError(f"short body {got}/{length}")
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/big")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost"):
        sys.exit("bulk_client: loopback targets only")
    buf = bytearray(4 << 20)
    total = 0
    errors = 0
    t0 = time.perf_counter()
    for _ in range(args.count):
        try:
            total += fetch(args.host, args.port, args.path, buf, args.timeout)
        except Exception as e:  # report, keep going
            errors += 1
            print(f"bulk_client: {e}", file=sys.stderr)
    secs = time.perf_counter() - t0
    print(json.dumps({"bytes": total, "seconds": round(secs, 4), "errors": errors}))


if __name__ == "__main__":
    main()
