#!/usr/bin/env python3
"""Open N idle TCP connections to a loopback port and hold them (send nothing).

Protocol on stdin/stdout, driven by bench/run:
  prints  "ready <opened> <failed>"  once every connect attempt finished;
  on a line "check" on stdin, prints "alive <n>" (connections not yet closed
  by the peer); on "quit" or EOF closes everything and exits.
"""
import argparse
import errno
import resource
import select
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost"):
        sys.exit("hold_conns: loopback targets only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))

    socks = []
    failed = 0
    deadline = time.monotonic() + args.timeout
    remaining = args.n
    poller = select.epoll()
    while remaining > 0 and time.monotonic() < deadline:
        batch = []
        for _ in range(min(args.batch, remaining)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((args.host, args.port))
            if rc not in (0, errno.EINPROGRESS):
                failed += 1
                s.close()
                continue
            batch.append(s)
        remaining -= min(args.batch, remaining)
        pending = {s.fileno(): s for s in batch}
        for fd in pending:
            poller.register(fd, select.EPOLLOUT)
        while pending and time.monotonic() < deadline:
            for fd, _ev in poller.poll(1.0):
                s = pending.pop(fd)
                poller.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    socks.append(s)
                else:
                    failed += 1
                    s.close()
        for fd, s in pending.items():
            poller.unregister(fd)
            s.close()
            failed += 1
    failed += remaining
    print(f"ready {len(socks)} {failed}", flush=True)

    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "check":
            alive = 0
            for s in socks:
                try:
                    data = s.recv(1, socket.MSG_PEEK)
                    if data:
                        alive += 1  # peer sent something but kept it open
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
            print(f"alive {alive}", flush=True)
        elif cmd == "quit":
            break
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
