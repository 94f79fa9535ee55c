//! Sidecar lifecycle with the real binary: `weft wait-ready` holds an app until its proxy is ready,
//! and `POST /quitquitquit` drains the proxy and makes it exit. Everything on 127.0.0.1.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_test_support::{free_addr, text, upstream, TempDir};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(c: &mut Child, wait: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn config(listen: SocketAddr, admin: SocketAddr, app: SocketAddr) -> String {
    format!(
        r#"admin: {{ address: "{admin}" }}
runtime: {{ concurrency: 1, drain_timeout: 5s }}
listeners:
  - name: web
    address: "{listen}"
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - {{ match: {{ prefix: / }}, route: {{ cluster: app }} }}
clusters:
  - {{ name: app, endpoints: [{{ address: "{app}" }}] }}
"#
    )
}

fn post(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn wait_ready_gives_up_with_the_last_answer() {
    let dead = weft_test_support::dead_addr();
    let started = Instant::now();
    let out = Command::new(WEFT)
        .args(["wait-ready", "--admin", &dead.to_string(), "--timeout", "500ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not ready after"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ready_holds_until_the_proxy_is_ready_and_quitquitquit_exits() {
    let app = upstream(|_| async { text(200, "app") }).await;
    let dir = TempDir::new("lifecycle");
    let (listen, admin) = (free_addr(), free_addr());
    dir.write("weft.yaml", &config(listen, admin, app.addr));

    // The app's entrypoint starts waiting before the sidecar exists.
    let mut waiter = Guard(
        Command::new(WEFT)
            .args(["wait-ready", "--admin", &admin.to_string(), "--timeout", "30s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.0.try_wait().unwrap().is_none(), "still waiting: no proxy yet");

    let mut proxy = Guard(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(dir.join("weft.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = wait_exit(&mut waiter.0, Duration::from_secs(20)).expect("wait-ready returns");
    assert!(status.success(), "wait-ready exit {status}");
    // Ready means routable: the app's first call goes through.
    assert_eq!(weft_test_support::get(listen, "/").await.status, 200);

    let answer = post(admin, "/quitquitquit");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("draining, then exiting"), "{answer}");
    let status = wait_exit(&mut proxy.0, Duration::from_secs(10)).expect("the proxy exits after /quitquitquit");
    assert!(status.success(), "proxy exit {status}");
}
