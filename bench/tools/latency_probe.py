#!/usr/bin/env python3
"""Open-loop HTTP/1.1 latency probe (stdlib only), part of weft's bench suite.

Requests are issued on a fixed schedule (request i is due at t0 + i/rate,
kept by a dedicated timer thread),
independently of how fast responses come back.  Each latency is measured from
the request's *scheduled* time, so time spent waiting for a free connection
or for a late scheduler wake-up is counted (coordinated-omission corrected).

Prints one JSON object: count, errors, achieved rate and percentiles in us.
"""
import argparse
import asyncio
import gc
import json
import sys
import threading
import time


async def open_conn(host, port):
    return await asyncio.open_connection(host, port)


async def one_request(reader, writer, req):
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status_ok = head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        raise RuntimeError("response without length")
    return status_ok


async def run(args):
    req = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "User-Agent: weft-bench-probe\r\n\r\n"
    ).encode()
    queue: asyncio.Queue = asyncio.Queue()
    latencies = []
    errors = 0
    stop = object()

    conns = []
    for _ in range(args.conns):
        conns.append(await open_conn(args.host, args.port))

    measure_from = None  # scheduled times before this are warm-up

    async def worker(conn):
        nonlocal errors
        reader, writer = conn
        while True:
            due = await queue.get()
            if due is stop:
                return
            try:
                ok = await asyncio.wait_for(one_request(reader, writer, req), args.timeout)
            except Exception:
                ok = False
                try:
                    writer.close()
                except Exception:
                    pass
                try:
                    reader, writer = await open_conn(args.host, args.port)
                except Exception:
                    await asyncio.sleep(0.01)
            done = time.perf_counter()
            if due >= measure_from:
                if ok:
                    latencies.append(done - due)
                else:
                    errors += 1

    workers = [asyncio.create_task(worker(c)) for c in conns]
    interval = 1.0 / args.rate
    warm = int(args.warmup * args.rate)
    total = warm + int(args.duration * args.rate)
    t0 = time.perf_counter() + 0.05
    measure_from = t0 + warm * interval
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def scheduler():
        # A dedicated thread keeps the schedule with time.sleep (sub-100us
        # wake-ups on Linux) instead of the event loop's millisecond timer
        # resolution; due requests are handed to the loop thread-safely.
        for i in range(total):
            due = t0 + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(queue.put_nowait, due)
        loop.call_soon_threadsafe(finished.set_result, None)

    threading.Thread(target=scheduler, daemon=True).start()
    await finished
    for _ in workers:
        queue.put_nowait(stop)
    try:
        await asyncio.wait_for(asyncio.gather(*workers), args.duration + 30)
    except asyncio.TimeoutError:
        pass
    elapsed = time.perf_counter() - measure_from

    latencies.sort()

    def pct(p):
        if not latencies:
            return None
        k = min(len(latencies) - 1, max(0, int(round(p / 100.0 * len(latencies) + 0.5)) - 1))
        return round(latencies[k] * 1e6, 1)

    return {
        "tool": "bench/tools/latency_probe.py",
        "count": len(latencies),
        "errors": errors,
        "rate_target": args.rate,
        "rate_achieved": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "p999_us": pct(99.9),
        "max_us": round(latencies[-1] * 1e6, 1) if latencies else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/1k")
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("latency_probe: loopback targets only")
    gc.disable()  # no collector pauses inside the measurement
    sys.setswitchinterval(0.0002)  # hand the GIL over quickly between the two threads
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
