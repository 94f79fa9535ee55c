//! weft against software nobody here wrote: `curl` as the client, `nginx` as the upstream.
//!
//! When `curl` or `nginx` is missing these tests print a skip note and pass, except when the
//! environment variable `CI` is `true`, where a missing tool is a failure.

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;
use weft_proxy::Server;
use weft_test_support::*;

// ---------------------------------------------------------------------------------------------
// Tools (weft_test_support::peers), temp dirs, processes.

fn write_pattern_file(path: &Path, len: usize) {
    std::fs::write(path, pattern(0, len)).unwrap();
}

fn proxy(up: SocketAddr, cluster: &str) -> (Arc<Server>, SocketAddr) {
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      codec: auto
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: {cluster}, timeout: 60s }}
clusters:
  - name: {cluster}
    protocol: http1
    endpoints: [{{ address: "{up}" }}]
"#
    );
    let server = start_proxy(&yaml);
    let addr = server.listener_addr("web").unwrap();
    (server, addr)
}

struct CurlOut {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

impl CurlOut {
    fn body(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The response header lines of `curl -v` ("< name: value"), lowercased.
    fn response_lines(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("< "))
            .map(|l| l.trim_end().to_ascii_lowercase())
            .collect()
    }

    fn has_response_line(&self, line: &str) -> bool {
        self.response_lines().iter().any(|l| l == line)
    }
}

/// Runs curl (without blocking the runtime), optionally feeding `stdin`.
async fn curl(args: &[&str], stdin: Option<Bytes>) -> CurlOut {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["--max-time", "30"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("curl starts");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        tokio::spawn(async move {
            // Feed in pieces so that curl really streams from a pipe.
            for piece in data.chunks(64 * 1024) {
                if w.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        });
    }
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("curl finishes in time")
        .expect("curl output");
    CurlOut {
        ok: out.status.success(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// curl as the client.

async fn hello_upstream() -> Upstream {
    upstream(|s| async move {
        let mut r = text(200, &format!("hello {}", s.uri));
        r.headers_mut().insert("x-upstream", "peer".parse().unwrap());
        r
    })
    .await
}

#[tokio::test]
async fn curl_http1_through_weft() {
    if !peers::runs("curl", "--version") {
        return;
    }
    let up = hello_upstream().await;
    let (_server, addr) = proxy(up.addr, "up");
    let url = format!("http://{addr}/some/path?q=1");
    let out = curl(&["-sS", "-v", "-H", "X-Test: 1", &url], None).await;
    assert!(out.ok, "curl failed:\n{}", out.stderr);
    assert_eq!(out.body(), "hello /some/path?q=1");
    assert!(out.stderr.contains("> GET /some/path?q=1 HTTP/1.1"), "{}", out.stderr);
    assert!(out.has_response_line("http/1.1 200 ok"), "{}", out.stderr);
    assert!(out.has_response_line("x-upstream: peer"), "{}", out.stderr);
    assert!(out.has_response_line("content-type: text/plain"), "{}", out.stderr);
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["host"], addr.to_string().as_str());
    assert_eq!(seen.headers["x-test"], "1");
    assert!(seen.headers["user-agent"].to_str().unwrap().starts_with("curl/"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn curl_h2c_prior_knowledge_through_weft() {
    if !peers::runs("curl", "--version") {
        return;
    }
    let up = hello_upstream().await;
    let (_server, addr) = proxy(up.addr, "up");
    let url = format!("http://{addr}/h2/path");
    let out = curl(&["-sS", "-v", "--http2-prior-knowledge", &url], None).await;
    assert!(out.ok, "curl failed:\n{}", out.stderr);
    assert_eq!(out.body(), "hello /h2/path");
    assert!(out.has_response_line("http/2 200"), "{}", out.stderr);
    assert!(out.has_response_line("x-upstream: peer"), "{}", out.stderr);
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11, "cluster speaks HTTP/1.1 upstream");
    assert_eq!(
        seen.headers["host"],
        addr.to_string().as_str(),
        ":authority becomes Host"
    );
    assert!(seen.headers["user-agent"].to_str().unwrap().starts_with("curl/"));
}

/// An upstream that streams the request body, checks it against the test pattern and answers
/// "<bytes> <ok>"; records (method, content-length, transfer-encoding) per request.
async fn length_echo() -> (Upstream, Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>) {
    let heads: Arc<Mutex<Vec<_>>> = Arc::default();
    let h2 = heads.clone();
    let up = streaming_upstream(move |req: Request<hyper::body::Incoming>| {
        let heads = h2.clone();
        async move {
            let get = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_string());
            heads.lock().push((
                req.method().to_string(),
                get("content-length"),
                get("transfer-encoding"),
            ));
            let mut body = req.into_body();
            let (mut n, mut ok) = (0u64, true);
            while let Some(f) = body.frame().await {
                let Ok(f) = f else {
                    ok = false;
                    break;
                };
                if let Some(d) = f.data_ref() {
                    ok &= is_pattern(n, d);
                    n += d.len() as u64;
                }
            }
            Response::new(any_body(Full::new(Bytes::from(format!("{n} {ok}")))))
        }
    })
    .await;
    (up, heads)
}

const FIVE_MIB: usize = 5 * 1024 * 1024;

#[tokio::test]
async fn curl_upload_file_5mib() {
    if !peers::runs("curl", "--version") {
        return;
    }
    let dir = TempDir::new("curl");
    let file = dir.path().join("upload.bin");
    write_pattern_file(&file, FIVE_MIB);
    let (up, heads) = length_echo().await;
    let (_server, addr) = proxy(up.addr, "up");
    let url = format!("http://{addr}/upload");
    let out = curl(&["-sS", "-T", file.to_str().unwrap(), &url], None).await;
    assert!(out.ok, "curl failed:\n{}", out.stderr);
    assert_eq!(out.body(), format!("{FIVE_MIB} true"));
    let heads = heads.lock().clone();
    assert_eq!(
        heads,
        vec![("PUT".to_string(), Some(FIVE_MIB.to_string()), None)],
        "one PUT with its Content-Length kept"
    );
}

#[tokio::test]
async fn curl_upload_from_pipe_is_chunked() {
    if !peers::runs("curl", "--version") {
        return;
    }
    let (up, heads) = length_echo().await;
    let (_server, addr) = proxy(up.addr, "up");
    let url = format!("http://{addr}/upload");
    let out = curl(&["-sS", "-T", "-", &url], Some(pattern(0, FIVE_MIB))).await;
    assert!(out.ok, "curl failed:\n{}", out.stderr);
    assert_eq!(out.body(), format!("{FIVE_MIB} true"));
    let heads = heads.lock().clone();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].0, "PUT");
    assert_eq!(heads[0].1, None, "no Content-Length was known");
    assert_eq!(heads[0].2.as_deref(), Some("chunked"));
}

#[tokio::test]
async fn curl_upload_file_5mib_over_h2c() {
    if !peers::runs("curl", "--version") {
        return;
    }
    let dir = TempDir::new("curl-h2");
    let file = dir.path().join("upload.bin");
    write_pattern_file(&file, FIVE_MIB);
    let (up, heads) = length_echo().await;
    let (_server, addr) = proxy(up.addr, "up");
    let url = format!("http://{addr}/upload");
    let out = curl(
        &[
            "-sS",
            "-v",
            "--http2-prior-knowledge",
            "-T",
            file.to_str().unwrap(),
            &url,
        ],
        None,
    )
    .await;
    assert!(out.ok, "curl failed:\n{}", out.stderr);
    assert!(out.has_response_line("http/2 200"), "{}", out.stderr);
    assert_eq!(out.body(), format!("{FIVE_MIB} true"));
    assert_eq!(heads.lock().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// nginx as the upstream.

const BIG: usize = 10 * 1024 * 1024;

/// A running nginx, killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Starts nginx on a free loopback port serving `/small` ("small") and `/big` (10 MiB pattern).
async fn start_nginx() -> Nginx {
    let dir = TempDir::new("nginx");
    let d = dir.path().to_str().unwrap().to_string();
    write_pattern_file(&dir.path().join("big.bin"), BIG);
    for sub in ["cb", "p", "f", "u", "s"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let port = free_port();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {d}/cb;
    proxy_temp_path {d}/p;
    fastcgi_temp_path {d}/f;
    uwsgi_temp_path {d}/u;
    scgi_temp_path {d}/s;
    server {{
        listen 127.0.0.1:{port};
        location /small {{ return 200 "small"; }}
        location /big {{ alias {d}/big.bin; }}
    }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = std::process::Command::new("nginx")
        .arg("-p")
        .arg(&d)
        .arg("-e")
        .arg(format!("{d}/error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let mut nginx = Nginx {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
    };
    for _ in 0..200 {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            panic!("nginx exited early ({status}):\n{}", nginx.error_log());
        }
        if tokio::net::TcpStream::connect(nginx.addr).await.is_ok() {
            return nginx;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "nginx did not start listening on {}:\n{}",
        nginx.addr,
        nginx.error_log()
    );
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

fn assert_big(got: &Got) {
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some(BIG.to_string().as_str()));
    assert_eq!(got.body.len(), BIG, "10 MiB body length");
    assert!(is_pattern(0, &got.body), "10 MiB body differs from big.bin");
}

#[tokio::test]
async fn nginx_upstream_small_big_and_keepalive() {
    if !peers::runs("nginx", "-v") {
        return;
    }
    let nginx = start_nginx().await;
    let (server, addr) = proxy(nginx.addr, "nginx");
    let mut c = H1Client::connect(addr).await;

    let small = within("small", c.get("/small")).await;
    assert_eq!(small.status, 200, "{}", nginx.error_log());
    assert_eq!(small.text(), "small");
    assert!(
        small.header("server").is_some_and(|s| s.starts_with("nginx")),
        "{small:?}"
    );
    assert!(small.header("x-weft-reason").is_none());

    let big = within("big", c.get("/big")).await;
    assert_big(&big);

    // An nginx error page passes through as nginx's own answer.
    let missing = within("missing", c.get("/missing")).await;
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("nginx"));
    assert!(missing.header("x-weft-reason").is_none());

    // Ten more sequential requests on the same client connection.
    for i in 0..10 {
        let got = within(
            "keep-alive request",
            c.try_send(req(
                "GET",
                if i % 2 == 0 { "/small" } else { "/big" },
                "test.local",
                &[],
                "",
            )),
        )
        .await
        .unwrap_or_else(|e| panic!("request {i} on the kept-alive client connection failed: {e}"));
        if i % 2 == 0 {
            assert_eq!(got.status, 200);
            assert_eq!(got.text(), "small");
        } else {
            assert_big(&got);
        }
    }

    // Sequential requests reuse one upstream connection to nginx.
    let metrics = admin(&server, "/stats/prometheus").await.text();
    let opened = metric(&metrics, "weft_upstream_cx_total{cluster=\"nginx\"");
    assert_eq!(opened, Some(1.0), "upstream connections opened to nginx:\n{metrics}");
}

#[tokio::test]
async fn nginx_big_file_to_h2_client() {
    if !peers::runs("nginx", "-v") {
        return;
    }
    let nginx = start_nginx().await;
    let (_server, addr) = proxy(nginx.addr, "nginx");
    let mut sender = h2_connect(addr).await;
    for _ in 0..3 {
        let r = Request::get(format!("http://{addr}/big"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let resp = within("h2 big", sender.send_request(r)).await.expect("h2 response");
        assert_eq!(resp.status(), 200, "{}", nginx.error_log());
        assert_eq!(resp.version(), Version::HTTP_2);
        let (parts, body) = resp.into_parts();
        let body = within("h2 big body", body.collect()).await.unwrap().to_bytes();
        let got = Got {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        assert_big(&got);
    }
}

#[tokio::test]
async fn curl_through_weft_to_nginx() {
    if !peers::runs("curl", "--version") || !peers::runs("nginx", "-v") {
        return;
    }
    let nginx = start_nginx().await;
    let (_server, addr) = proxy(nginx.addr, "nginx");
    let dir = TempDir::new("curl-nginx");
    let out_file = dir.path().join("out.bin");
    let url = format!("http://{addr}/big");
    let out = curl(
        &[
            "-sS",
            "-o",
            out_file.to_str().unwrap(),
            "-w",
            "%{http_code} %{size_download}",
            &url,
        ],
        None,
    )
    .await;
    assert!(out.ok, "curl failed:\n{}", out.stderr);
    assert_eq!(out.body(), format!("200 {BIG}"));
    let data = std::fs::read(&out_file).unwrap();
    assert!(data.len() == BIG && is_pattern(0, &data), "downloaded file differs");
}
