"""Dubbo3 Triple peers built on apache-dubbo (Python), for weft's Triple interop tests.

  triple_peer.py provider NAME PORT [SERVICE]
      Serves SERVICE (default org.apache.dubbo.samples.Greeter) over Triple on 127.0.0.1:PORT and
      prints "ready" once listening. Methods (payloads are raw bytes):
        sayHello   unary: answers b"NAME: hello " + payload
        whoami     unary: answers NAME
        slow       unary: sleeps int(payload) ms, then answers NAME
        boom       unary: raises, so the provider answers an error status of its own
        count      server stream: int(payload) messages b"NAME i" (i = 1..n)
        sum        client stream: answers b"NAME " + the sum of the ints sent
        chat       bidirectional stream: answers each message m with b"NAME " + m

  triple_peer.py consumer PORT CALLS_JSON
      Calls through a Triple client pointed at 127.0.0.1:PORT. CALLS_JSON is a list of
      {"service", "method", "kind" (unary|server_stream|client_stream|bi_stream), "payload" (str) or
      "payloads" (list of str)}; prints one JSON line per call: {"ok": true, "value": str} (a stream:
      "values": [str]) or {"ok": false, "code": "<GRpcCode name>", "message": str, "error": str}.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
import threading
import time

import dubbo
from dubbo.configs import ReferenceConfig, ServiceConfig
from dubbo.proxy.handlers import RpcMethodHandler, RpcServiceHandler

GREETER = "org.apache.dubbo.samples.Greeter"


def provider(name, port, service):
    tag = name.encode()

    def say_hello(payload):
        return tag + b": hello " + payload

    def whoami(_payload):
        return tag

    def slow(payload):
        time.sleep(int(payload) / 1000.0)
        return tag

    def boom(_payload):
        raise ValueError("boom from " + name)

    def count(stream):
        # a server-streaming handler is given the request stream; its one message is the count
        for i in range(1, int(stream.read()) + 1):
            yield tag + b" " + str(i).encode()

    def total(stream):
        return tag + b" " + str(sum(int(m) for m in stream)).encode()

    def chat(stream):
        for m in stream:
            yield tag + b" " + m

    handler = RpcServiceHandler(
        service_name=service,
        method_handlers=[
            RpcMethodHandler.unary(say_hello, method_name="sayHello"),
            RpcMethodHandler.unary(whoami, method_name="whoami"),
            RpcMethodHandler.unary(slow, method_name="slow"),
            RpcMethodHandler.unary(boom, method_name="boom"),
            RpcMethodHandler.server_stream(count, method_name="count"),
            RpcMethodHandler.client_stream(total, method_name="sum"),
            RpcMethodHandler.bi_stream(chat, method_name="chat"),
        ],
    )
    server = dubbo.Server(ServiceConfig(handler, host="127.0.0.1", port=port))
    server.start()
    print("ready", flush=True)
    threading.Event().wait()


def consumer(port, calls):
    clients = {}
    lock = threading.Lock()

    def client_for(service):
        with lock:
            client = clients.get(service)
            if client is None:
                ref = ReferenceConfig.from_url(f"tri://127.0.0.1:{port}/{service}")
                client = clients[service] = dubbo.Client(ref)
            return client

    for c in calls:
        if c.get("kind") == "concurrent":
            # All of c["calls"] at once from their own threads, on the client's one connection
            # (HTTP/2 streams in flight together); the results in the order of the calls.
            with ThreadPoolExecutor(max_workers=len(c["calls"])) as pool:
                results = list(pool.map(lambda one: call(client_for(one.get("service", GREETER)), one), c["calls"]))
            print(json.dumps({"ok": True, "results": results}), flush=True)
        else:
            print(json.dumps(call(client_for(c.get("service", GREETER)), c)), flush=True)


def call(client, c):
    kind = c.get("kind", "unary")
    method = c["method"]
    try:
        if kind == "unary":
            value = client.unary(method)(c.get("payload", "").encode())
            return {"ok": True, "value": value.decode()}
        if kind == "server_stream":
            stream = client.server_stream(method)(c.get("payload", "").encode())
            return {"ok": True, "values": [m.decode() for m in stream]}
        if kind == "client_stream":
            # the call returns a stream whose one message is the answer
            stream = client.client_stream(method)(iter([p.encode() for p in c["payloads"]]))
            return {"ok": True, "value": stream.read().decode()}
        if kind == "bi_stream":
            stream = client.bi_stream(method)(iter([p.encode() for p in c["payloads"]]))
            return {"ok": True, "values": [m.decode() for m in stream]}
        raise SystemExit(f"unknown kind {kind}")
    except Exception as e:  # noqa: BLE001 -- reported to the test as data
        status = getattr(e, "status", None)
        return {
            "ok": False,
            "code": status.code.name if status is not None else None,
            "message": (status.description or "") if status is not None else "",
            "error": f"{type(e).__name__}: {e}",
        }


def main():
    if sys.argv[1] == "provider":
        service = sys.argv[4] if len(sys.argv) > 4 else GREETER
        provider(sys.argv[2], int(sys.argv[3]), service)
    elif sys.argv[1] == "consumer":
        consumer(int(sys.argv[2]), json.loads(sys.argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
