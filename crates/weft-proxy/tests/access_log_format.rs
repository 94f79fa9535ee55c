//! Access logs in Envoy's format-string language, observed in the file a real proxy writes: Istio's
//! default text format, JSON formats, response flags for failures, TCP sessions, and bad formats
//! refused at load with the field named.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use weft_test_support::*;

mod common;
use common::{doubling_upstream, tcp_session};

const ISTIO: &str = r#"[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"#;

/// A listener `web` with two routes (`/ok` to `app`, `/dead` to `dead`) and the given access log.
fn yaml(app: SocketAddr, dead: SocketAddr, log: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      access_log: {log}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["svc.local"]
            routes:
              - name: ok-route
                match: {{ prefix: /ok }}
                route: {{ cluster: app }}
              - name: dead-route
                match: {{ prefix: /dead }}
                route: {{ cluster: dead, retry_policy: {{ retry_on: [connect-failure], num_retries: 1 }} }}
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
  - name: dead
    connect_timeout: 1s
    endpoints: [{{ address: "{dead}" }}]
"#
    )
}

/// Waits (at most 3 s) for `n` complete lines in a text log.
async fn text_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(str::to_string)
            .collect();
        if lines.len() >= n || std::time::Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn app() -> Upstream {
    upstream(|_seen| async {
        let mut r = text(200, "hello back");
        r.headers_mut()
            .insert("x-envoy-upstream-service-time", "7".parse().unwrap());
        r
    })
    .await
}

/// Sends one HTTP/1.1 request from a known local address; returns (status, client address).
async fn send(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, SocketAddr) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        tx.send_request(req("POST", path, "svc.local", headers, body)),
    )
    .await
    .expect("response in time")
    .unwrap();
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    (status, me)
}

#[tokio::test]
async fn istio_default_text_format_success_and_failure() {
    let dir = TempDir::new("alog-istio");
    let log = dir.join("access.log");
    let app = app().await;
    let dead = dead_addr();
    let access_log = format!("{{ path: \"{}\", format: \"{ISTIO}\" }}", log.display());
    let proxy = start_proxy(&yaml(app.addr, dead, &access_log));
    let addr = proxy.listener_addr("web").unwrap();

    let (s1, me1) = send(
        addr,
        "/ok/a?x=1",
        &[
            ("user-agent", "curl/8.1"),
            ("x-request-id", "rid-1"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
        "12345",
    )
    .await;
    assert_eq!(s1, 200);
    let (s2, me2) = send(addr, "/dead", &[("x-request-id", "rid-2")], "").await;
    assert_eq!(s2, 503);

    let lines = text_lines(&log, 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Everything but the start time and the duration is known exactly.
    let rest = masked(&lines[0]);
    assert_eq!(
        rest,
        format!(
            " \"POST /ok/a?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 5 10 D 7 \"10.1.2.3\" \"curl/8.1\" \"rid-1\" \"svc.local\" \"{}\" app - {addr} {me1} - ok-route\n",
            app.addr
        ),
        "{}",
        lines[0]
    );
    // Connect failure, then the one retry failed too: UF plus URX, and the endpoint tried.
    assert_eq!(
        masked(&lines[1]),
        format!(
            " \"POST /dead HTTP/1.1\" 503 UF,URX upstream_reset_before_response_started{{connection_failure}} - \"-\" 0 {} D - \"-\" \"-\" \"rid-2\" \"svc.local\" \"{dead}\" dead - {addr} {me2} - dead-route\n",
            "upstream connect error (UF)\n".len(),
        ),
        "{}",
        lines[1]
    );
}

/// The line after its `[START_TIME]`, checked, with the duration (milliseconds) replaced by `D`.
fn masked(line: &str) -> String {
    let (ts, rest) = line.split_once(']').unwrap();
    assert!(ts.starts_with("[20") && ts.ends_with('Z') && ts.len() == 25, "{ts}");
    let mut tokens: Vec<&str> = rest.split(' ').collect();
    assert!(tokens[11].parse::<u64>().is_ok(), "duration in ms: {line}");
    tokens[11] = "D";
    tokens.join(" ")
}

#[tokio::test]
async fn json_format_types_and_no_route() {
    let dir = TempDir::new("alog-json");
    let log = dir.join("access.log");
    let app = app().await;
    let access_log = format!(
        "{{ path: \"{}\", json_format: {{ code: \"%RESPONSE_CODE%\", flags: \"%RESPONSE_FLAGS%\", \
         route: \"%ROUTE_NAME%\", line: \"%REQ(:METHOD)% %REQ(:PATH)%\", ua: \"%REQ(USER-AGENT):4%\", \
         missing: \"%REQ(X-NOPE)%\", attempts: \"%UPSTREAM_REQUEST_ATTEMPT_COUNT%\", up: \"%UPSTREAM_HOST%\" }} }}",
        log.display()
    );
    let proxy = start_proxy(&yaml(app.addr, dead_addr(), &access_log));
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(send(addr, "/ok", &[("user-agent", "agent\"quoted")], "").await.0, 200);
    assert_eq!(send(addr, "/nowhere", &[], "").await.0, 404);
    let lines = json_lines(&log, 2, Duration::from_secs(3)).await;
    assert_eq!(
        lines[0],
        serde_json::json!({"attempts": 1, "code": 200, "flags": "-", "line": "POST /ok", "missing": null,
            "route": "ok-route", "ua": "agen", "up": app.addr.to_string()}),
    );
    assert_eq!(
        lines[1],
        serde_json::json!({"attempts": 0, "code": 404, "flags": "NR", "line": "POST /nowhere", "missing": null,
            "route": null, "ua": null, "up": null}),
    );
}

#[tokio::test]
async fn tcp_sessions_log_with_the_tcp_operators() {
    let dir = TempDir::new("alog-tcp");
    let log = dir.join("access.log");
    let up_addr = doubling_upstream().await;
    let dead = dead_addr();
    let fmt = "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% %PROTOCOL% %REQ(:PATH)% %RESPONSE_CODE%";
    let proxy = start_proxy(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: l4
    address: 127.0.0.1:0
    tcp_proxy: {{ cluster: backend, access_log: {{ path: "{log}", format: "{fmt}" }} }}
  - name: l4dead
    address: 127.0.0.1:0
    tcp_proxy: {{ cluster: gone, access_log: {{ path: "{log}", format: "{fmt}" }} }}
clusters:
  - name: backend
    endpoints: [{{ address: "{up_addr}" }}]
  - name: gone
    connect_timeout: 1s
    endpoints: [{{ address: "{dead}" }}]
"#,
        log = log.display()
    ));
    let l4 = proxy.listener_addr("l4").unwrap();
    let (me, reply) = tcp_session(l4, 1000).await;
    assert_eq!(reply.unwrap(), 2000);
    let lines = text_lines(&log, 1).await;
    assert_eq!(lines, [format!("{me} {l4} {up_addr} backend 1000 2000 - - - 0\n")]);

    let l4dead = proxy.listener_addr("l4dead").unwrap();
    let mut c = TcpStream::connect(l4dead).await.unwrap();
    let me = c.local_addr().unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    let lines = text_lines(&log, 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    // One endpoint, tried up to three times: connect failure, retry limit exceeded.
    assert_eq!(lines[1], format!("{me} {l4dead} {dead} gone 0 0 UF,URX - - 0\n"));
}

#[test]
fn bad_formats_are_refused_with_the_field_named() {
    let base = |log: &str| yaml("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), log);
    for (log, path, want) in [
        (
            "{ path: stdout, format: \"%START_TIME% %BOGUS%\" }",
            "listeners[0].http.access_log.format",
            "unknown operator %BOGUS%",
        ),
        (
            "{ path: stdout, json_format: { a: \"%DURATION%\", b: \"%REQ(X):abc%\" } }",
            "listeners[0].http.access_log.json_format.b",
            "positive integer",
        ),
        (
            "{ path: stdout, format: \"x\", json_format: { a: \"%DURATION%\" } }",
            "listeners[0].http.access_log.json_format",
            "not both",
        ),
        (
            "{ path: stdout, format: \"%REQ(USER-AGENT)\" }",
            "listeners[0].http.access_log.format",
            "unterminated",
        ),
    ] {
        let err = weft_config::from_yaml(&base(log)).expect_err(log);
        let e = err
            .errors
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{log}: no error at {path}: {err}"));
        assert!(e.message.contains(want), "{log}: {e}");
    }
}

#[test]
fn rpc_listeners_refuse_a_format_rather_than_ignore_it() {
    let yaml = r#"
listeners:
  - name: dubbo
    address: 127.0.0.1:0
    rpc:
      protocol: dubbo
      access_log: { path: stdout, format: "%RESPONSE_CODE%" }
      routes:
        - { match: { interface: a.B }, cluster: c }
clusters:
  - name: c
    endpoints: [{ address: "127.0.0.1:1" }]
"#;
    let err = weft_config::from_yaml(yaml).expect_err("refused");
    assert!(
        err.errors
            .iter()
            .any(|e| e.path == "listeners[0].rpc.access_log.format" && e.message.contains("not supported")),
        "{err}"
    );
}
