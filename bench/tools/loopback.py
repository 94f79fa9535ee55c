"""Loopback helpers shared by the single-purpose benchmark scripts (bench/instructions,
bench/kernel-cost): free ports, waiting for a listener, the 1 KiB nginx origin, and HAProxy
configured as bench/run runs it. Everything binds 127.0.0.1."""
import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} never opened")


def start_origin(tmp, cpus=None):
    """nginx serving GET /1k (1,024 bytes of `x`) from `tmp`, pinned to `cpus` if given: (process,
    port). `tmp` is made readable by everyone: nginx's workers run as an unprivileged user when it
    is started as root, and would answer 403 from a private directory."""
    os.chmod(tmp, 0o755)
    port = free_port()
    root = os.path.join(tmp, "www")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "1k"), "wb") as f:
        f.write(b"x" * 1024)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    pin = ["taskset", "-c", cpus] if cpus is not None else []
    p = subprocess.Popen(pin + ["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
    except BaseException:
        p.kill()
        p.wait()
        raise
    return p, port


def haproxy_config(tmp, port, origin_port):
    """bench/peers/haproxy-http.cfg (one thread, keep-alive both sides) listening on `port` in
    front of `origin_port`, written into `tmp`: its path."""
    cfg = (ROOT / "bench" / "peers" / "haproxy-http.cfg").read_text()
    for key, value in (("PORT", port), ("H2PORT", free_port()), ("UPSTREAM", origin_port)):
        cfg = cfg.replace("{{" + key + "}}", str(value))
    path = os.path.join(tmp, f"haproxy-{port}.cfg")
    with open(path, "w") as f:
        f.write(cfg)
    return path
