"""The weft configurations compared by the observability-cost benchmarks (`bench/run --scenarios obs`
and `bench/instructions --obs`): the same proxy (bench/peers/weft-obs.yaml) in every row, each row
adding one observability feature to `plain`. Standard library only."""
import json
import re
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "peers" / "weft-obs.yaml"

# Istio's default access-log format (what an Istio sidecar writes to its file/stdout log).
ISTIO_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% '
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    '%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% '
    '%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n')

# Issue #14's targets: CPU per request over `plain`, as a fraction.
TARGETS = {"istio-metrics": 0.05, "trace-1%": 0.05, "trace-100%": 0.25, "trace-1%-w3c": 0.05,
           "trace-100%-w3c": 0.25}

# Counters read from the admin API around each measured run (sums over all label sets).
METRICS = ("weft_tracing_sampled_total", "weft_tracing_dropped_total", "weft_tracing_exported_spans_total",
           "weft_tracing_export_failed_spans_total", "weft_access_log_grpc_sent_total",
           "weft_access_log_grpc_dropped_total", "istio_requests_total")


def rows(logfile, only=None):
    """[(row name, Istio metrics on?, `http` keys as YAML lines)]. Every row but `plain` adds one
    feature to plain (Istio-standard metrics off); the last is what an Istio sidecar typically runs.
    only: a comma list of row names to keep (BENCH_OBS_ROWS)."""
    def tracing(ratio, propagators=None):
        t = {"endpoint": "collector", "protocol": "grpc", "sampling_ratio": ratio, "service_name": "bench"}
        if propagators:
            t["propagators"] = propagators
        return "tracing: " + json.dumps(t)
    als = "access_log: " + json.dumps({"grpc": {"cluster": "collector", "log_name": "bench"}})
    all_rows = [
        ("plain", False, []),
        ("istio-metrics", True, []),
        ("trace-1%", False, [tracing(0.01)]),  # default propagators: w3c, b3, b3multi
        ("trace-100%", False, [tracing(1.0)]),
        ("trace-1%-w3c", False, [tracing(0.01, ["w3c"])]),  # only traceparent written upstream
        ("trace-100%-w3c", False, [tracing(1.0, ["w3c"])]),
        ("access-log-file", False, ["access_log: " + json.dumps({"path": str(logfile), "format": ISTIO_LOG_FORMAT})]),
        ("access-log-grpc", False, [als]),
        ("istio+trace-1%+als", True, [tracing(0.01), als]),
    ]
    if only:
        keep = set(only.split(","))
        return [r for r in all_rows if r[0] in keep]
    return all_rows


def render(dest, port, admin, upstream, collector, istio, lines):
    """Writes the configuration of one row to dest (a Path) and returns dest."""
    text = TEMPLATE.read_text()
    for k, v in {"PORT": port, "ADMIN": admin, "UPSTREAM": upstream, "COLLECTOR": collector,
                 "ISTIO_METRICS": "true" if istio else "false",
                 "OBS": "\n      ".join(lines) if lines else "# no observability feature"}.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{[A-Z0-9_]+\}\}", text)
    if left:
        raise SystemExit(f"{TEMPLATE.name}: unfilled placeholders {left}")
    dest.write_text(text)
    return dest


def parse_metrics(text, names=METRICS):
    """Sums of the named counters in a Prometheus text exposition."""
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            try:
                out[name] += float(line.rsplit(" ", 1)[1])
            except (ValueError, IndexError):
                pass
    return out
