"""Proxyless gRPC (Python grpcio) against weft control.

usage: grpc_python.py XDS_ADDR BACKEND_PORT TARGET BOOTSTRAP_PATH
Starts a generic gRPC backend on 127.0.0.1:BACKEND_PORT (the registry must list it as the endpoint of
the target's service), then calls it five times through an xds:/// channel. Prints OK on success.
"""
import json
import os
import sys
from concurrent import futures

import grpc

xds, backend_port, target, bootstrap = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers([
    grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"hello " + req)})
])
server.add_insecure_port(f"127.0.0.1:{backend_port}")
server.start()

with open(bootstrap, "w") as f:
    json.dump({"xds_servers": [{"server_uri": xds, "channel_creds": [{"type": "insecure"}],
                                "server_features": ["xds_v3"]}],
               "node": {"id": "grpc-python-1", "locality": {"zone": "z"}}}, f)
os.environ["GRPC_XDS_BOOTSTRAP"] = bootstrap

channel = grpc.insecure_channel(target)
call = channel.unary_unary("/test.Echo/Say")
ok = 0
for i in range(5):
    try:
        reply = call(b"x%d" % i, timeout=5, wait_for_ready=True)
        ok += reply == b"hello x%d" % i
    except grpc.RpcError as e:
        print("error:", e.code(), e.details())
server.stop(0)
print("OK" if ok == 5 else "FAIL")
