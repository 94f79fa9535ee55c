//! The real `weft` binary driven as a user would: quick start (HTTP and TCP), `--check`, SIGHUP
//! reload, SIGTERM drain, `weft demo` and `weft bench`. Everything on 127.0.0.1; every child process
//! is killed by a guard if a test fails.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use weft_test_support::{free_addr, free_port, req, send_once, text, TempDir, Upstream};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A running `weft` child process, killed (and reaped) on drop. Its stdout and stderr go to files.
struct Weft {
    child: Child,
    dir: TempDir,
}

impl Weft {
    fn spawn(args: &[&str]) -> Weft {
        Weft::spawn_with(args, |_| {})
    }

    /// [`Weft::spawn`] with the command adjusted first (environment, process group).
    fn spawn_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Weft {
        let dir = TempDir::new("proc");
        let out = std::fs::File::create(dir.join("stdout")).unwrap();
        let err = std::fs::File::create(dir.join("stderr")).unwrap();
        let mut cmd = Command::new(WEFT);
        cmd.args(args)
            .env_remove("WEFT_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        adjust(&mut cmd);
        let child = cmd.spawn().expect("weft binary starts");
        Weft { child, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} {}", self.pid());
    }

    /// Waits (polling, at most `wait`) for the process to exit.
    async fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_running(&mut self) {
        if let Some(s) = self.child.try_wait().expect("try_wait") {
            panic!("weft exited ({s}); stderr:\n{}", self.stderr());
        }
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a short weft command to completion (at most `wait`), returning (status, stdout, stderr).
async fn run_weft(args: &[&str], wait: Duration) -> (ExitStatus, String, String) {
    let mut w = Weft::spawn(args);
    let status = w
        .wait_exit(wait)
        .await
        .unwrap_or_else(|| panic!("weft {args:?} did not exit within {wait:?}; stdout:\n{}", w.stdout()));
    (status, w.stdout(), w.stderr())
}

/// Waits until something accepts TCP connections on `addr` (bounded), checking `w` is alive.
async fn wait_port(w: &mut Weft, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        w.assert_running();
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} never answered; stderr:\n{}",
            w.stderr()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An upstream answering "hello from NAME" with `x-upstream: NAME` (`/slow` waits 1 s first);
/// `hits` counts requests.
async fn upstream(name: &'static str) -> Upstream {
    weft_test_support::upstream(move |seen| async move {
        let body = if seen.uri.path() == "/slow" {
            // A scenario sleep: the slow request a drain must let finish.
            tokio::time::sleep(Duration::from_secs(1)).await;
            format!("slow {name}")
        } else {
            format!("hello from {name}")
        };
        let mut r = text(200, &body);
        r.headers_mut().insert("x-upstream", name.parse().unwrap());
        r
    })
    .await
}

/// One GET on a fresh connection (bounded to 10 s): (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    http_send(addr, "GET", path, "test.local", &[]).await
}

/// One request with the given method, Host and headers on a fresh connection: (status, body).
async fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let got = send_once(addr, req(method, path, host, headers, "")).await?;
    Ok((got.status.as_u16(), got.text()))
}

/// Polls `GET path` (bounded) until the body equals `want`.
async fn eventually_body(addr: SocketAddr, path: &str, want: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        let got = match http_get(addr, path).await {
            Ok((_, b)) => b,
            Err(e) => format!("error: {e}"),
        };
        if got == want || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config_file(listen: SocketAddr, admin: SocketAddr, route_to: &str, clusters: &[(&str, SocketAddr)]) -> String {
    let clusters: String = clusters
        .iter()
        .map(|(n, a)| format!("  - {{ name: {n}, endpoints: [{{ address: \"{a}\" }}] }}\n"))
        .collect();
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
              - {{ match: {{ prefix: / }}, route: {{ cluster: {route_to} }} }}
clusters:
{clusters}"#
    )
}

async fn config_dump(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/config_dump").await.expect("admin answers");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("config_dump is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_http_proxies_to_upstream() {
    let up = upstream("up").await;
    let (from, admin) = (free_addr(), free_addr());
    let mut w = Weft::spawn(&[
        "proxy",
        "--from",
        &from.to_string(),
        "--to",
        &up.addr.to_string(),
        "--admin",
        &admin.to_string(),
        "--concurrency",
        "1",
    ]);
    wait_port(&mut w, from).await;
    for i in 0..3 {
        let (status, body) = http_get(from, &format!("/q/{i}")).await.expect("proxied request");
        assert_eq!((status, body.as_str()), (200, "hello from up"));
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);
    // Transparent huge pages are off from the proxy's first allocation: no 2 MiB page of the
    // allocator's arena is resident (each would add 2 MiB to an idle sidecar's memory).
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
        assert!(status.contains("THP_enabled:\t0"), "{status}");
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", w.pid())).unwrap();
        let huge = rollup.lines().find(|l| l.starts_with("AnonHugePages:")).unwrap();
        assert_eq!(huge.split_whitespace().nth(1), Some("0"), "{rollup}");
    }
    wait_port(&mut w, admin).await;
    assert_eq!(http_get(admin, "/ready").await.unwrap(), (200, "LIVE\n".to_string()));
    // A quick-start proxy has no file to reload.
    let dump = config_dump(admin).await;
    assert!(dump["config_path"].is_null(), "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_tcp_proxies_bytes_with_half_close() {
    // Reads to EOF, answers the bytes reversed, closes.
    let echo_addr = weft_test_support::tcp_server(|mut s| async move {
        let mut buf = Vec::new();
        if s.read_to_end(&mut buf).await.is_ok() {
            buf.reverse();
            let _ = s.write_all(&buf).await;
        }
    })
    .await;
    let from = free_addr();
    let mut w = Weft::spawn(&[
        "proxy",
        "--from",
        &from.to_string(),
        "--to",
        &echo_addr.to_string(),
        "--tcp",
        "--concurrency",
        "1",
    ]);
    wait_port(&mut w, from).await;
    let mut s = TcpStream::connect(from).await.unwrap();
    s.write_all(b"not http at all").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(got, b"lla ta ptth ton");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_good_and_rejects_bad_config() {
    let dir = TempDir::new("check");
    let good = dir.join("good.yaml");
    let bad = dir.join("bad.yaml");
    let text = config_file(free_addr(), free_addr(), "a", &[("a", free_addr())]);
    std::fs::write(&good, &text).unwrap();
    std::fs::write(&bad, text.replace("{ name: a,", "{ name: a, lb_policy: rr,")).unwrap();

    let (status, out, err) = run_weft(&["proxy", "-c", path(&good), "--check"], Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("configuration OK: 1 listeners, 1 clusters"), "{out}");

    let (status, out, err) = run_weft(&["proxy", "-c", path(&bad), "--check"], Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("clusters[0].lb_policy"),
        "stderr names the field path: {err}"
    );
    assert!(err.contains("\"rr\""), "{err}");
    assert!(!out.contains("configuration OK"), "{out}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_keeps_serving_on_a_bad_one() {
    let dir = TempDir::new("hup");
    let file = dir.join("weft.yaml");
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (listen, admin) = (free_addr(), free_addr());
    let clusters = [("a", a.addr), ("b", b.addr)];
    std::fs::write(&file, config_file(listen, admin, "a", &clusters)).unwrap();
    let mut w = Weft::spawn(&["proxy", "-c", path(&file)]);
    wait_port(&mut w, listen).await;
    wait_port(&mut w, admin).await;
    assert_eq!(http_get(listen, "/").await.unwrap().1, "hello from a");
    let g1 = config_dump(admin).await["generation"].as_u64().unwrap();

    std::fs::write(&file, config_file(listen, admin, "b", &clusters)).unwrap();
    w.signal("-HUP");
    assert_eq!(
        eventually_body(listen, "/", "hello from b", Duration::from_secs(5)).await,
        "hello from b",
        "new route after SIGHUP; stderr:\n{}",
        w.stderr()
    );
    let g2 = config_dump(admin).await["generation"].as_u64().unwrap();
    assert_eq!(g2, g1 + 1);

    // A broken file: the reload is refused, the previous config keeps serving.
    std::fs::write(&file, "listeners: [ { name: web, address: nope }\n").unwrap();
    w.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    let dump = loop {
        let d = config_dump(admin).await;
        if !d["last_reload_error"].is_null() || Instant::now() >= deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!dump["last_reload_error"].is_null(), "refusal recorded: {dump}");
    assert_eq!(dump["generation"].as_u64(), Some(g2), "still the previous generation");
    w.assert_running();
    for _ in 0..3 {
        assert_eq!(http_get(listen, "/").await.unwrap().1, "hello from b");
    }
    let (_, metrics) = http_get(admin, "/stats/prometheus").await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "weft_config_reload_failures_total 1"),
        "one refused reload counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_request_then_exits_zero() {
    let up = upstream("a").await;
    let dir = TempDir::new("term");
    let file = dir.join("weft.yaml");
    let (listen, admin) = (free_addr(), free_addr());
    std::fs::write(&file, config_file(listen, admin, "a", &[("a", up.addr)])).unwrap();
    let mut w = Weft::spawn(&["proxy", "-c", path(&file)]);
    wait_port(&mut w, listen).await;

    let request = tokio::spawn(async move { http_get(listen, "/slow").await });
    weft_test_support::within(Duration::from_secs(5), || async { up.hits() > 0 }).await;
    assert_eq!(up.hits.load(Ordering::SeqCst), 1, "slow request reached the upstream");
    let signalled = Instant::now();
    w.signal("-TERM");

    let got = tokio::time::timeout(Duration::from_secs(6), request)
        .await
        .expect("request finished")
        .unwrap();
    assert_eq!(got, Ok((200, "slow a".to_string())), "in-flight request completes");
    let status = w
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("weft exits within the drain timeout");
    assert_eq!(status.code(), Some(0), "clean exit; stderr:\n{}", w.stderr());
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?}: it should follow the last connection, not the 5 s drain timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_prints_rates() {
    let (status, out, err) = run_weft(&["demo", "--duration", "4s", "--step", "1"], Duration::from_secs(40)).await;
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let per_second = out.lines().filter(|l| l.contains("req/s") && l.contains("p99")).count();
    assert!(per_second >= 2, "summary lines with req/s:\n{out}");
    assert!(out.contains("done:"), "{out}");
    // The RPC hop: the frontend's Dubbo calls to details ("details N E% P99ms"), answered.
    let details = |l: &str| -> Option<(u64, f64)> {
        let mut w = l.split_once("| details ")?.1.split_whitespace();
        Some((w.next()?.parse().ok()?, w.next()?.trim_end_matches('%').parse().ok()?))
    };
    let calls: Vec<(u64, f64)> = out.lines().filter_map(details).collect();
    assert!(
        calls.iter().any(|(n, e)| *n > 0 && *e == 0.0),
        "no Dubbo calls answered by details:\n{out}"
    );
    // mTLS by default: the sidecars accepted mTLS connections from each other.
    let accepted: u64 = out
        .lines()
        .find_map(|l| l.split_once("the sidecars accepted ").map(|(_, r)| r))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(accepted >= 1, "{out}");
}

/// The timeline's authorization step: ratings refuses reviews by its mTLS identity (reviews-v2,
/// at 100% by then, fails), then the policy is lifted and the errors stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_authorization_step_denies_then_lifts() {
    let (status, out, err) = run_weft(&["demo", "--duration", "10s", "--step", "1"], Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    let deny = lines
        .iter()
        .position(|l| l.contains("authorization: ratings refuses reviews (by its mTLS identity)"))
        .unwrap_or_else(|| panic!("no authorization step:\n{out}"));
    let lift = lines
        .iter()
        .position(|l| l.contains("authorization lifted"))
        .unwrap_or_else(|| panic!("no lift:\n{out}"));
    // reviews-v2's error rate in a per-second line ("reviews-v2  N  E% P99ms").
    let v2_err = |l: &str| -> Option<f64> {
        let rest = l.split_once("reviews-v2")?.1;
        rest.split_whitespace().nth(1)?.trim_end_matches('%').parse().ok()
    };
    // (Each second prints the stage change first, then the past second's figures: the window
    // with the policy in force is the line after the lift.)
    let denied = lines[deny..(lift + 2).min(lines.len())]
        .iter()
        .filter_map(|l| v2_err(l))
        .any(|e| e > 0.0);
    assert!(denied, "reviews-v2 failed while ratings refused it:\n{out}");
    let last = lines.iter().rev().find_map(|l| v2_err(l)).unwrap();
    assert_eq!(last, 0.0, "no errors once lifted:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_json_reports_requests() {
    let up = upstream("a").await;
    let url = format!("http://{}/", up.addr);
    let (status, out, err) = run_weft(
        &["bench", &url, "-n", "200", "-c", "2", "--json"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stdout is JSON ({e}):\n{out}"));
    let requests = report["requests"].as_u64().expect("requests field");
    assert!(requests >= 200, "{report}");
    assert!(report["successes"].as_u64().unwrap_or(0) >= 200, "{report}");
    assert!(up.hits.load(Ordering::SeqCst) >= 200, "upstream saw the load");
}

/// A bootstrap with an `xds` section whose control plane is not there: the static part serves at
/// once, `/ready` holds at INITIALIZING, the admin API shows the xDS state, and SIGHUP reloads the
/// static part through the xDS client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_bootstrap_serves_static_part_and_stays_initializing() {
    let dir = TempDir::new("xds");
    let file = dir.join("bootstrap.yaml");
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (listen, admin, cp) = (free_addr(), free_addr(), free_addr());
    let clusters = [("a", a.addr), ("b", b.addr)];
    let xds = format!(
        "node: {{ id: side-1, cluster: app, metadata: {{ weft.role: sidecar }} }}\nxds: {{ address: \"{cp}\", mode: ads_sotw, backoff_base: 50ms, backoff_max: 100ms }}\n"
    );
    std::fs::write(&file, config_file(listen, admin, "a", &clusters) + &xds).unwrap();
    let mut w = Weft::spawn(&["proxy", "-c", path(&file)]);
    wait_port(&mut w, listen).await;
    wait_port(&mut w, admin).await;
    assert_eq!(http_get(listen, "/").await.unwrap().1, "hello from a");
    assert_eq!(
        http_get(admin, "/ready").await.unwrap(),
        (503, "INITIALIZING\n".to_string())
    );
    let (status, body) = http_get(admin, "/xds").await.unwrap();
    assert_eq!(status, 200);
    let x: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(x["connected"], false);
    assert_eq!(x["mode"], "ads_sotw");
    assert!(x["types"]["lds"]["version"].is_string(), "{x}");
    assert_eq!(config_dump(admin).await["xds"]["initialized"], false);
    let (_, metrics) = http_get(admin, "/stats/prometheus").await.unwrap();
    assert!(metrics.lines().any(|l| l == "weft_xds_connected 0"), "{metrics}");
    assert!(metrics.contains("weft_xds_updates_total{type=\"cds\",result=\"rejected\"} 0"));
    assert!(metrics.trim_end().ends_with("# EOF"));

    std::fs::write(&file, config_file(listen, admin, "b", &clusters) + &xds).unwrap();
    w.signal("-HUP");
    assert_eq!(
        eventually_body(listen, "/", "hello from b", Duration::from_secs(5)).await,
        "hello from b",
        "static part reloaded; stderr:\n{}",
        w.stderr()
    );
    w.assert_running();
}

/// `weft` with no subcommand is the demo; Ctrl-C (SIGINT) stops it and its children cleanly, without
/// a burst of warnings. The demo runs in its own process group and the SIGINT goes to the whole
/// group, as a terminal's Ctrl-C does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_weft_runs_the_demo_until_ctrl_c() {
    use std::os::unix::process::CommandExt;
    // At INFO the log also shows whether a child ran its own shutdown (it must not: the demo stops
    // the sidecars, then the control plane).
    let mut weft = Weft::spawn_with(&[], |c| {
        c.process_group(0).env("WEFT_LOG", "info");
    });
    let start = Instant::now();
    while !weft.stdout().lines().any(|l| l.contains("req/s") && l.contains("p99")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no summary line:\n{}\n{}",
            weft.stdout(),
            weft.stderr()
        );
        if let Some(s) = weft.child.try_wait().unwrap() {
            panic!("demo exited early ({s}):\n{}\n{}", weft.stdout(), weft.stderr());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Like Ctrl-C in a terminal: SIGINT to every process of the foreground group.
    let group = format!("-{}", weft.pid());
    let ok = Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT -- {group}");
    let status = weft
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("demo stops after SIGINT");
    assert_eq!(status.code(), Some(0), "{}", weft.stderr());
    assert!(weft.stdout().contains("done:"), "{}", weft.stdout());
    let err = weft.stderr();
    let noisy: Vec<_> = err
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(noisy.is_empty(), "warnings on Ctrl-C:\n{}", noisy.join("\n"));
    // "draining" (a sidecar) and "stopping" (weft control) are logged on a signal of their own.
    let own_shutdown: Vec<_> = err
        .lines()
        .filter(|l| l.contains(" draining") || l.contains(" stopping"))
        .collect();
    assert!(
        own_shutdown.is_empty(),
        "the children got the terminal's SIGINT:\n{}",
        own_shutdown.join("\n")
    );
}

/// Runs a quick-start proxy with `env` and stderr to a file until SIGTERM; returns its stderr.
async fn proxy_log_to_file(env: &[(&str, &str)]) -> String {
    let up = upstream("up").await;
    let from = free_addr();
    let mut w = Weft::spawn_with(
        &[
            "proxy",
            "--from",
            &from.to_string(),
            "--to",
            &up.addr.to_string(),
            "--concurrency",
            "1",
        ],
        |c| {
            c.envs(env.iter().copied());
        },
    );
    wait_port(&mut w, from).await;
    w.signal("-TERM");
    let status = w
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("weft exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", w.stderr());
    let err = std::fs::read(w.dir.join("stderr")).unwrap();
    let text = String::from_utf8_lossy(&err).into_owned();
    assert!(
        text.contains("listening") && text.contains("stopped"),
        "the log was written:\n{text}"
    );
    assert!(
        !err.contains(&0x1b),
        "no ANSI escape (ESC byte) in a log written to a file:\n{text:?}"
    );
    text
}

/// stderr redirected to a file is not a terminal: the log has no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_to_a_file_has_no_ansi_escapes() {
    proxy_log_to_file(&[]).await;
}

/// `NO_COLOR` (any non-empty value) never breaks plain output either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_with_no_color_has_no_ansi_escapes() {
    proxy_log_to_file(&[("NO_COLOR", "1")]).await;
}

/// A non-loopback admin address needs the explicit opt-in: without it the configuration is refused
/// (and `--check` fails) with an error naming the field; with it `--check` passes with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_non_loopback_admin_without_opt_in() {
    let dir = TempDir::new("admin-check");
    let file = dir.join("weft.yaml");
    let up = free_addr();
    let port = free_port();
    let text = config_file(free_addr(), "127.0.0.1:1".parse().unwrap(), "a", &[("a", up)]).replace(
        "admin: { address: \"127.0.0.1:1\" }",
        &format!("admin: {{ address: \"0.0.0.0:{port}\" }}"),
    );
    assert!(text.contains("0.0.0.0"), "{text}");
    std::fs::write(&file, &text).unwrap();
    let (status, out, err) = run_weft(&["proxy", "-c", path(&file), "--check"], Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("admin.address: 0.0.0.0:"), "{err}");
    assert!(
        err.contains("admin.allow_non_loopback: true"),
        "the error names the opt-in: {err}"
    );
    assert!(!out.contains("configuration OK"), "{out}");
    // Running it is refused the same way, before anything binds.
    let (status, _, err) = run_weft(&["proxy", "-c", path(&file)], Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("admin.allow_non_loopback"), "{err}");

    let opted_in = text.replace(
        &format!("0.0.0.0:{port}\" }}"),
        &format!("0.0.0.0:{port}\", allow_non_loopback: true }}"),
    );
    assert!(opted_in.contains("allow_non_loopback"), "{opted_in}");
    std::fs::write(&file, opted_in).unwrap();
    let (status, out, err) = run_weft(&["proxy", "-c", path(&file), "--check"], Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        err.contains("warning") && err.contains("no authentication"),
        "a loud warning: {err}"
    );

    // The command-line admin address has its own opt-in flag.
    let any = format!("0.0.0.0:{port}");
    let quick = [
        "proxy",
        "--from",
        "127.0.0.1:1",
        "--to",
        "127.0.0.1:2",
        "--admin",
        &any,
        "--check",
    ];
    let (status, out, err) = run_weft(&quick, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("--admin-allow-non-loopback"), "{err}");
    let mut opted_in = quick.to_vec();
    opted_in.push("--admin-allow-non-loopback");
    let (status, out, err) = run_weft(&opted_in, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
}

/// `weft control`: the same opt-in, as a flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_refuses_non_loopback_admin_without_opt_in() {
    let dir = TempDir::new("control-admin");
    let any = format!("0.0.0.0:{}", free_port());
    let args = ["control", "--registry", path(&dir.0), "--admin", &any];
    let mut check = args.to_vec();
    check.push("--check");
    let (status, out, err) = run_weft(&check, Duration::from_secs(20)).await;
    assert_ne!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("--admin-allow-non-loopback"),
        "the error names the flag: {err}"
    );
    assert!(!out.contains("registry OK"), "{out}");
    let (status, _, err) = run_weft(&args, Duration::from_secs(20)).await;
    assert_ne!(status.code(), Some(0), "{err}");
    assert!(err.contains("--admin-allow-non-loopback"), "{err}");
    check.push("--admin-allow-non-loopback");
    let (status, out, err) = run_weft(&check, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("registry OK"), "{out}");
    assert!(err.contains("warning"), "{err}");
}

/// Every mutating admin call is logged with its caller (peer, Origin, User-Agent) and result; a
/// cross-site one is refused with 403 and logged at WARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutating_calls_are_logged_with_their_caller() {
    let up = upstream("a").await;
    let dir = TempDir::new("admin-log");
    let file = dir.join("weft.yaml");
    let (listen, admin) = (free_addr(), free_addr());
    std::fs::write(&file, config_file(listen, admin, "a", &[("a", up.addr)])).unwrap();
    let mut w = Weft::spawn(&["proxy", "-c", path(&file)]);
    wait_port(&mut w, admin).await;
    let evil = [("origin", "https://evil.example"), ("user-agent", "evil-agent/1")];
    let (status, body) = http_send(admin, "POST", "/drain", "evil.example", &evil).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(http_get(admin, "/ready").await.unwrap(), (200, "LIVE\n".to_string()));
    let ops = [("user-agent", "ops-script/2")];
    let (status, body) = http_send(admin, "POST", "/reload", &admin.to_string(), &ops)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_send(admin, "POST", "/drain", &admin.to_string(), &ops)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "draining\n"));

    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = w.stderr();
        if log.matches("admin: mutating call").count() >= 2 || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = log
        .lines()
        .find(|l| l.contains("admin: refused"))
        .unwrap_or_else(|| panic!("the refused call is logged:\n{log}"));
    assert!(refused.contains(" WARN "), "{refused}");
    for want in [
        "POST",
        "/drain",
        "peer=127.0.0.1:",
        "https://evil.example",
        "evil-agent/1",
        "evil.example",
        "status=403",
    ] {
        assert!(refused.contains(want), "{want:?} in {refused}");
    }
    let done: Vec<_> = log.lines().filter(|l| l.contains("admin: mutating call")).collect();
    assert_eq!(done.len(), 2, "{log}");
    for (line, path, result) in [(done[0], "/reload", "reloaded"), (done[1], "/drain", "draining")] {
        for want in ["POST", path, "peer=127.0.0.1:", "ops-script/2", "status=200", result] {
            assert!(line.contains(want), "{want:?} in {line}");
        }
    }
}

/// `weft control`'s admin API is read-only: a mutating request gets 405, or 403 when it looks
/// cross-site; both are logged with the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_admin_refuses_cross_site_post_and_logs_it() {
    let dir = TempDir::new("control-admin-log");
    let (xds, admin) = (free_addr(), free_addr());
    let mut w = Weft::spawn(&[
        "control",
        "--registry",
        path(&dir.0),
        "--xds",
        &xds.to_string(),
        "--admin",
        &admin.to_string(),
    ]);
    wait_port(&mut w, admin).await;
    let evil = [
        ("origin", "http://evil.example"),
        ("content-type", "text/plain"),
        ("user-agent", "evil-agent/1"),
    ];
    let (status, body) = http_send(admin, "POST", "/debug/proxies", &admin.to_string(), &evil)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.starts_with("403 refused: "), "{body}");
    let (status, body) = http_send(admin, "POST", "/ready", "localhost", &[("user-agent", "ops/1")])
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (405, "use GET\n"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = w.stderr();
        if log.contains("admin: mutating call") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = log
        .lines()
        .find(|l| l.contains("admin: refused"))
        .unwrap_or_else(|| panic!("{log}"));
    for want in [
        " WARN ",
        "/debug/proxies",
        "peer=127.0.0.1:",
        "http://evil.example",
        "evil-agent/1",
        "status=403",
    ] {
        assert!(refused.contains(want), "{want:?} in {refused}");
    }
    let other = log
        .lines()
        .find(|l| l.contains("admin: mutating call"))
        .unwrap_or_else(|| panic!("{log}"));
    for want in ["/ready", "peer=127.0.0.1:", "ops/1", "status=405"] {
        assert!(other.contains(want), "{want:?} in {other}");
    }
}
