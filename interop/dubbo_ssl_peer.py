"""A Dubbo2 consumer built on dubbo-ssl-python (software nobody here wrote), for weft's RPC
interop tests. Runs in interop/.venv-dubbo2 (interop/install).

    python dubbo_ssl_peer.py HOST:PORT [INTERFACE [GROUP]] [--heartbeat-idle SECONDS] [--ca FILE]

Connects straight to HOST:PORT (DubboClient(host=...), no registry), service INTERFACE (default
org.example.Greeter) version 1.0.0 and group GROUP (default HSF; "-" for none). Reads commands on
stdin, one JSON object per line:
    {"id": n, "method": "echo", "args": ["x"], "props": {"k": "v"}, "timeout": s, "delay": s}
runs each in its own thread, after its "delay" (seconds, default 0), so that they are in flight at
once on the library's one connection per host, and prints one JSON line per result:
{"id": n, "ok": value} or {"id": n, "err": "ExceptionType: message"}. Arguments go to the library
as they are (a str is a String, an int an int, or a long beyond 32 bits, a float a double, a list a
typed array), except {"long": n} (n, which must be beyond 32 bits), {"list": [...]} (the list) and
{"object": CLASS, "fields": {...}} (dubbo_ssl's Object: a class definition and an instance). "props" are the call's
attachments (the library's `context`); "timeout" is the library's (seconds, default 5).

--ca FILE: over TLS, the server's chain verified against the CA certificate(s) in FILE (the
library's `verify=FILE`; it checks no host name).

--heartbeat-idle: the library sends a heartbeat on a connection idle for 60s (its TIMEOUT_IDLE);
this sets that idle time, so that a test sees its heartbeats answered within seconds. (0.9.6 never
creates its per-host count of unanswered heartbeats, so its heartbeat thread fails with a KeyError
each round and sends none; with this option the script creates the count, at 0.) After the last
command the script prints {"heartbeat_misses": n}: that count (heartbeats sent and not answered
yet; the library reconnects at 3).
"""

import json
import logging
import sys
import threading
import time

from dubbo_ssl.client import DubboClient
from dubbo_ssl.codec.encoder import Object
from dubbo_ssl.connection import connections


# The library logs each error reply with its traceback; the answers printed here say enough.
logging.getLogger("dubbo_ssl").addHandler(logging.NullHandler())
logging.getLogger("dubbo_ssl").propagate = False


def arg(v):
    if isinstance(v, dict):
        if "long" in v:
            return v["long"]
        if "list" in v:
            return [arg(x) for x in v["list"]]
        if "object" in v:
            return Object(v["object"], {k: arg(f) for k, f in v.get("fields", {}).items()})
    return v


def main():
    argv = sys.argv[1:]
    idle = None
    if "--heartbeat-idle" in argv:
        i = argv.index("--heartbeat-idle")
        idle = float(argv[i + 1])
        del argv[i : i + 2]
        connections.TIMEOUT_IDLE = idle
    ca = None
    if "--ca" in argv:
        i = argv.index("--ca")
        ca = argv[i + 1]
        del argv[i : i + 2]
    target = argv[0]
    if idle is not None:
        connections.connection_pool.client_heartbeats[target] = 0
    iface = argv[1] if len(argv) > 1 else "org.example.Greeter"
    group = argv[2] if len(argv) > 2 else "HSF"
    client = DubboClient(
        interface=iface,
        group=None if group == "-" else group,
        version="1.0.0",
        dubbo_version="2.0.2",
        host=target,
        verify=ca,
    )
    out = threading.Lock()

    def say(obj):
        with out:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def run(cmd):
        try:
            time.sleep(cmd.get("delay", 0))
            v = client.call(
                method=cmd["method"],
                args=[arg(a) for a in cmd.get("args", [])],
                context=cmd.get("props"),
                timeout=cmd.get("timeout", 5),
            )
            say({"id": cmd["id"], "ok": v})
        except Exception as e:  # the client's own exception types, reported as their message
            say({"id": cmd["id"], "err": "%s: %s" % (type(e).__name__, e)})

    threads = []
    for line in sys.stdin:
        if not line.strip():
            continue
        t = threading.Thread(target=run, args=(json.loads(line),))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    if idle is not None:
        say({"heartbeat_misses": connections.connection_pool.client_heartbeats.get(target)})


if __name__ == "__main__":
    main()
