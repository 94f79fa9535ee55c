//! The live service graph of `weft control` (`GET /graph`, `GET /graph.json` on its admin API),
//! end to end with real processes on 127.0.0.1:
//!
//! - `graph_json_rates_errors_and_stale_sidecars`: weft control and two real `weft proxy` sidecars
//!   (`web` calls `api`); the app behind `api` answers 503 to one request in eight and web's
//!   sidecar aborts another one in eight (fault injection). `/graph.json` shows the web → api
//!   call with a live rate, its error rate and a p99, with both failures on it: the app's (reason
//!   `503`) and the aborted calls (reason `FI`: never forwarded, but drawn to the service they
//!   were for, as Istio labels them), the
//!   drill-down details of each workload, and, when a sidecar is killed, its workload as stale
//!   (still drawn, "stale since"), not dropped; a sidecar that comes back is live again.
//! - `graph_json_service_of_two_workloads`: a service served by two workloads is drawn as
//!   caller → service node → each workload.
//! - `graph_page_in_chromium`: `weft demo`, then Debian's chromium, driven over CDP by
//!   playwright-core (`interop/browser/graph_check.js`; it downloads no browser), opens the page
//!   the demo prints and checks that the demo's nodes and edges are drawn with non-zero numbers
//!   that change between two polls, that a drill-down opens, and saves a screenshot under
//!   `target/test-output/service-graph.png`.
//! - `graph_page_shows_a_stale_sidecar_in_chromium`: the page open while a sidecar is stopped:
//!   its workload stays drawn, greyed, "stale since", and the page keeps polling
//!   (`target/test-output/service-graph-sidecar-gone{,-stale}.png`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_test_support::peers::{self, ChildGuard};
use weft_test_support::{eventually_blocking, free_addr, TempDir};

mod blocking;
use blocking::{http, start_control, start_proxy};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// An app answering `503` on `/fail` and `200 ok` otherwise (one request per connection).
fn status_server() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) if first.is_empty() => first = line.clone(),
                        Ok(_) => {}
                    }
                }
                let (status, body) = if first.contains("/fail") {
                    ("503 Service Unavailable", "down")
                } else {
                    ("200 OK", "ok")
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// A ready `weft proxy` sidecar of `service`, workload `workload`, with its inbound listener at
/// `inbound` in front of `app`: (process, admin, outbound).
fn sidecar(
    dir: &TempDir,
    id: &str,
    workload: &str,
    service: &str,
    inbound: SocketAddr,
    app: SocketAddr,
    xds: SocketAddr,
) -> (ChildGuard, SocketAddr, SocketAddr) {
    let (admin, outbound) = (free_addr(), free_addr());
    let cfg = format!(
        "node:\n  id: {id}\n  cluster: {service}\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{outbound}\"\n    weft.inbound: \"{inbound}\"\n    weft.app: \"{app}\"\n    WORKLOAD_NAME: {workload}\nadmin:\n  address: \"{admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n  mode: ads_delta\n"
    );
    let path = dir.join(&format!("{id}.yaml"));
    std::fs::write(&path, cfg).unwrap();
    let child = start_proxy(&path, &[], admin).unwrap_or_else(|| panic!("sidecar {id} never became ready"));
    (child, admin, outbound)
}

fn graph(admin: SocketAddr) -> Value {
    let (code, body) = http(admin, "x", "/graph.json").expect("/graph.json");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn node<'a>(g: &'a Value, id: &str) -> Option<&'a Value> {
    g["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

fn edge<'a>(g: &'a Value, from: &str, to: &str) -> Option<&'a Value> {
    g["edges"]
        .as_array()?
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

#[test]
fn graph_json_rates_errors_and_stale_sidecars() {
    let reg = TempDir::new("graph-reg");
    let dir = TempDir::new("graph");
    let api_app = status_server();
    let web_app = status_server();
    let (web_in, api_in) = (free_addr(), free_addr());
    reg.write(
        "services.yaml",
        &format!(
            "services:\n  - name: web\n    endpoints: [{{address: \"{web_in}\"}}]\n  - name: api\n    endpoints: [{{address: \"{api_in}\"}}]\n"
        ),
    );
    // Requests for /fault are aborted by the calling sidecar (fault injection, reason FI).
    reg.write(
        "routes.yaml",
        "routes:\n  - service: api\n    http:\n      - match: [{prefix: /fault}]\n        route: [{destination: api}]\n        fault: {abort: {http_status: 503, percent: 100}}\n      - route: [{destination: api}]\n",
    );
    let (_control, xds, control_admin) = start_control(&reg, &["--graph-interval", "300ms"]);
    let (web, web_admin, web_out) = sidecar(&dir, "web-1", "web", "web", web_in, web_app, xds);
    let (api, api_admin, _) = sidecar(&dir, "api-1", "api", "api", api_in, api_app, xds);

    // Traffic: web's app calls api through its sidecar; one request in eight fails in the app
    // (503), one in eight is aborted by web's sidecar (fault injection, 503 FI).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 0u64;
            // Bounded: 90 s at most.
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(90) {
                let path = match i % 8 {
                    6 => "/fail",
                    7 => "/fault",
                    _ => "/ok",
                };
                let _ = http(web_out, "api", path);
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };

    // The call web -> api, live, with the injected 503s as its error rate.
    let g = eventually_blocking("the web -> api edge with traffic", Duration::from_secs(30), || {
        let g = graph(control_admin);
        let e = edge(&g, "wl:web", "wl:api")?;
        // Both sidecars scraped a few times: the caller's report (the edge) and the called
        // workload's own.
        let api = node(&g, "wl:api")?;
        // The aborted requests were never forwarded, but their route was for api: weft's Istio
        // metrics say destination_service "api", as Istio's do, so they are on the same edge.
        let live = f(&e["rps"]) > 5.0
            && !e["p99_ms"].is_null()
            && f(&e["errors_by_reason"]["503"]) > 0.0
            && f(&e["errors_by_reason"]["FI"]) > 0.0;
        let api_live = f(&api["inbound"]["rps"]) > 5.0 && !api["recent_errors"].as_array()?.is_empty();
        (live && api_live && g["scrapes"].as_u64()? >= 8).then_some(g)
    });
    let e = edge(&g, "wl:web", "wl:api").unwrap();
    eprintln!("edge web -> api: {e}");
    // The only call there is (the test calls web's outbound listener directly): no `unknown`
    // ("not forwarded") node, since every request matched a route.
    assert_eq!(g["edges"].as_array().unwrap().len(), 1, "{}", g["edges"]);
    assert!(node(&g, "unknown").is_none(), "{}", g["nodes"]);
    // Two in eight failed: one in the app (503), one aborted by web's own sidecar (FI).
    let er = f(&e["error_rate"]);
    assert!((0.15..=0.4).contains(&er), "error rate {er}, expected about 0.25: {e}");
    assert!(f(&e["p99_ms"]) > 0.0, "{e}");
    assert_eq!(e["stale"], false, "{e}");
    let reasons: Vec<&String> = e["errors_by_reason"].as_object().unwrap().keys().collect();
    assert_eq!(reasons, ["503", "FI"], "{e}");
    // The aborted ones, about an eighth of web's calls.
    let share = f(&e["errors_by_reason"]["FI"]) / f(&e["rps"]);
    assert!((0.06..=0.25).contains(&share), "aborted share {share}: {e}");
    // The called workload's own (inbound, destination-reported) numbers agree: it never saw the
    // aborted requests.
    let api_node = node(&g, "wl:api").expect("api node");
    let inb = &api_node["inbound"];
    assert!(f(&inb["rps"]) > 5.0, "{api_node}");
    assert!((0.06..=0.25).contains(&f(&inb["error_rate"])), "{api_node}");
    assert!(inb["errors_by_reason"].get("FI").is_none(), "{api_node}");
    // Drill-down: its instance, the admin address scraped, the config versions it ACKed.
    let inst = &api_node["instances"][0];
    assert_eq!(inst["node_id"], "api-1", "{api_node}");
    assert_eq!(inst["connected"], true);
    assert_eq!(inst["stale"], false);
    assert_eq!(inst["admin"], api_admin.to_string());
    assert_eq!(inst["inbound"], api_in.to_string());
    for t in ["cds", "eds", "lds", "rds"] {
        let v = inst["config"][t]["acked_version"].as_str().unwrap_or("");
        assert!(!v.is_empty(), "{t} not ACKed: {inst}");
    }
    let recent = api_node["recent_errors"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|r| r["reason"] == "503" && r["side"] == "inbound" && r["count"].as_u64() > Some(0)),
        "{api_node}"
    );
    let web_node = node(&g, "wl:web").expect("web node");
    assert!(
        web_node["recent_errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"] == "503" && r["side"] == "outbound"),
        "{web_node}"
    );
    assert!(
        web_node["recent_errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"] == "FI" && r["side"] == "outbound"),
        "{web_node}"
    );
    assert_eq!(web_node["instances"][0]["admin"], web_admin.to_string());

    // Live: the next scrapes move the numbers.
    let scrapes = g["scrapes"].as_u64().unwrap();
    let g2 = eventually_blocking("newer scrapes", Duration::from_secs(10), || {
        let g2 = graph(control_admin);
        (g2["scrapes"].as_u64().unwrap() >= scrapes + 4).then_some(g2)
    });
    let e2 = edge(&g2, "wl:web", "wl:api").unwrap();
    assert!(f(&e2["rps"]) > 5.0, "{e2}");
    eprintln!("edge web -> api a few scrapes later: {e2}");

    // The api sidecar goes away: its workload turns stale (kept, with its last numbers and
    // "stale since"), and web's calls to it now fail in web's own report.
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    drop(api);
    let g = eventually_blocking("api stale", Duration::from_secs(20), || {
        let g = graph(control_admin);
        let n = node(&g, "wl:api")?;
        (n["stale"] == true).then_some(g)
    });
    let n = node(&g, "wl:api").unwrap();
    eprintln!(
        "api after its sidecar stopped: stale_since {} {}",
        n["stale_since_unix"], n["instances"][0]["last_error"]
    );
    let since = n["stale_since_unix"].as_u64().expect("stale_since_unix");
    assert!(since + 1 >= killed_at, "{n}");
    assert_eq!(n["instances"][0]["stale"], true, "{n}");
    assert!(n["instances"][0]["last_error"].is_string(), "{n}");
    assert!(n["inbound"].is_object(), "the last numbers are kept: {n}");
    eventually_blocking("web -> api failing", Duration::from_secs(20), || {
        let g = graph(control_admin);
        let e = edge(&g, "wl:web", "wl:api")?;
        (f(&e["error_rate"]) > 0.6 && e["stale"] == false).then_some(())
    });

    // The caller goes too: the edge is stale, still drawn.
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    drop(web);
    let g = eventually_blocking("web -> api stale", Duration::from_secs(20), || {
        let g = graph(control_admin);
        let e = edge(&g, "wl:web", "wl:api")?;
        (e["stale"] == true).then_some(g)
    });
    let e = edge(&g, "wl:web", "wl:api").unwrap();
    assert!(e["stale_since_unix"].as_u64().is_some(), "{e}");
    assert_eq!(node(&g, "wl:web").unwrap()["stale"], true);
    eprintln!("{} requests sent; final edge {e}", sent.load(Ordering::Relaxed));

    // A sidecar coming back (same node id, same inbound address) is live again.
    let (_api_again, api_admin2, _) = sidecar(&dir, "api-1", "api", "api", api_in, api_app, xds);
    let g = eventually_blocking("api live again", Duration::from_secs(20), || {
        let g = graph(control_admin);
        (node(&g, "wl:api")?["stale"] == false).then_some(g)
    });
    let n = node(&g, "wl:api").unwrap();
    assert_eq!(n["instances"].as_array().unwrap().len(), 1, "{n}");
    assert_eq!(n["instances"][0]["admin"], api_admin2.to_string(), "{n}");
    assert_eq!(n["instances"][0]["connected"], true, "{n}");
    assert_eq!(node(&g, "wl:web").unwrap()["stale"], true, "web is still gone");

    // The page itself is served, self-contained (no external script or style).
    let (code, page) = http(control_admin, "x", "/graph").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("graph.json") && page.contains("<svg"), "{page}");
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "the page loads nothing from elsewhere"
    );
}

/// A service served by two workloads: the caller's edge goes to the service node, and from there
/// to each workload with that workload's own inbound numbers.
#[test]
fn graph_json_service_of_two_workloads() {
    let reg = TempDir::new("graph2-reg");
    let dir = TempDir::new("graph2");
    let (web_in, v1_in, v2_in) = (free_addr(), free_addr(), free_addr());
    reg.write(
        "services.yaml",
        &format!(
            "services:\n  - name: web\n    endpoints: [{{address: \"{web_in}\"}}]\n  - name: api\n    endpoints: [{{address: \"{v1_in}\"}}, {{address: \"{v2_in}\"}}]\n"
        ),
    );
    let (_control, xds, control_admin) = start_control(&reg, &["--graph-interval", "300ms"]);
    let (_web, _, web_out) = sidecar(&dir, "web-1", "web", "web", web_in, status_server(), xds);
    let _v1 = sidecar(&dir, "api-v1-1", "api-v1", "api", v1_in, status_server(), xds);
    let _v2 = sidecar(&dir, "api-v2-1", "api-v2", "api", v2_in, status_server(), xds);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                let _ = http(web_out, "api", "/ok");
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let g = eventually_blocking("web -> api -> (api-v1, api-v2)", Duration::from_secs(30), || {
        let g = graph(control_admin);
        let live = |from: &str, to: &str| edge(&g, from, to).is_some_and(|e| f(&e["rps"]) > 2.0);
        // Every sidecar with a full rate window (6 scrapes each), so the rates cover the same time.
        let full = g["scrapes"].as_u64()? >= 3 * 8;
        (full && live("wl:web", "svc:api") && live("svc:api", "wl:api-v1") && live("svc:api", "wl:api-v2")).then_some(g)
    });
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert_eq!(node(&g, "svc:api").unwrap()["kind"], "service", "{g}");
    assert_eq!(g["edges"].as_array().unwrap().len(), 3, "{}", g["edges"]);
    let total = f(&edge(&g, "wl:web", "svc:api").unwrap()["rps"]);
    let split =
        f(&edge(&g, "svc:api", "wl:api-v1").unwrap()["rps"]) + f(&edge(&g, "svc:api", "wl:api-v2").unwrap()["rps"]);
    eprintln!("web -> api {total} req/s; api-v1 + api-v2 {split} req/s");
    assert!((split - total).abs() <= total * 0.5 + 2.0, "{}", g["edges"]);
}

/// A TCP echo server (echoes until the client closes).
fn echo_server() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                use std::io::Read;
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// TCP proxy traffic (`istio_tcp_*`) is drawn as its own edges (`tcp_edges`), labelled with
/// sessions/s and bytes/s: web's sidecar, configured by weft control, also has a static outbound
/// `tcp_proxy` listener to a database; the edge web -> db carries the sessions the test opens.
#[test]
fn graph_json_tcp_edges() {
    use std::io::Read;
    let reg = TempDir::new("graph-tcp-reg");
    let dir = TempDir::new("graph-tcp");
    let web_in = free_addr();
    reg.write(
        "services.yaml",
        &format!("services:\n  - name: web\n    endpoints: [{{address: \"{web_in}\"}}]\n"),
    );
    let (_control, xds, control_admin) = start_control(&reg, &["--graph-interval", "300ms"]);
    let (admin, db_out) = (free_addr(), free_addr());
    let cfg = format!(
        "node:\n  id: web-1\n  cluster: web\n  metadata:\n    weft.role: sidecar\n    weft.inbound: \"{web_in}\"\n    weft.app: \"{app}\"\n    WORKLOAD_NAME: web\nadmin:\n  address: \"{admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n  mode: ads_delta\nlisteners:\n  - name: db-out\n    address: \"{db_out}\"\n    direction: outbound\n    tcp_proxy: {{ cluster: db }}\nclusters:\n  - name: db\n    endpoints: [{{ address: \"{db}\" }}]\n",
        app = status_server(),
        db = echo_server(),
    );
    std::fs::write(dir.join("web.yaml"), cfg).unwrap();
    let _web = ChildGuard(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(dir.join("web.yaml"))
            .env("WEFT_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft proxy"),
    );
    eventually_blocking("sidecar /ready", Duration::from_secs(20), || {
        (http(admin, "x", "/ready")?.0 == 200).then_some(())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                if let Ok(mut s) = std::net::TcpStream::connect(db_out) {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = s.write_all(&[b'q'; 500]);
                    let mut got = [0u8; 500];
                    let _ = s.read_exact(&mut got);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let g = eventually_blocking("the web -> db TCP edge", Duration::from_secs(30), || {
        let g = graph(control_admin);
        let e = g["tcp_edges"]
            .as_array()?
            .iter()
            .find(|e| e["from"] == "wl:web" && e["to"] == "svc:db")?
            .clone();
        (f(&e["connections_per_s"]) > 5.0 && g["scrapes"].as_u64()? >= 8).then_some(g)
    });
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let e = g["tcp_edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == "wl:web" && e["to"] == "svc:db")
        .unwrap();
    eprintln!("TCP edge web -> db: {e}");
    assert_eq!(e["protocol"], "tcp");
    assert_eq!(e["stale"], false);
    assert_eq!(f(&e["failed_per_s"]), 0.0, "{e}");
    // 1000 bytes a session (500 each way).
    let per = f(&e["bytes_per_s"]) / f(&e["connections_per_s"]);
    assert!((500.0..=1500.0).contains(&per), "{per} bytes a session: {e}");
    assert_eq!(node(&g, "svc:db").unwrap()["kind"], "service", "{g}");
    // Not an HTTP edge.
    assert!(edge(&g, "wl:web", "svc:db").is_none(), "{}", g["edges"]);
}

/// `target/test-output` (next to the `weft` binary's `target/debug`).
fn output_dir() -> PathBuf {
    let exe = Path::new(WEFT);
    let target = exe.parent().and_then(Path::parent).expect("target dir");
    let d = target.join("test-output");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// SIGTERM, then wait (the demo stops its own children on SIGTERM; SIGKILL would orphan them).
fn terminate(child: &mut std::process::Child, wait: Duration) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let start = Instant::now();
    while start.elapsed() < wait {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn graph_page_in_chromium() {
    let Some(chromium) = peers::tool("chromium") else {
        return;
    };
    let Some(node_bin) = peers::tool("node") else {
        return;
    };
    let Some(browser_dir) = peers::interop_peer("browser/node_modules/playwright-core") else {
        return;
    };
    let script = browser_dir.join("../../graph_check.js");

    // The demo, with a slow timeline: every call of its mesh is live from t=15 s (reviews-v2 at
    // 10%) until t=60 s (v2 promoted to 100%: reviews-v1's edge fades).
    let mut demo = Command::new(WEFT)
        .args(["demo", "--step", "15", "--rate", "50", "--duration", "120s"])
        .env("WEFT_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start weft demo");
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut url = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while url.is_none() && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        eprintln!("demo: {line}");
        if let Some(rest) = line.trim().strip_prefix("service graph") {
            url = rest.split_whitespace().next().map(str::to_string);
        }
    }
    let Some(url) = url else {
        terminate(&mut demo, Duration::from_secs(10));
        let _ = demo.kill();
        panic!("weft demo printed no service graph URL");
    };
    let demo = ChildGuardTerm(demo);
    eprintln!("graph page: {url}");
    let admin: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix("/graph"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a graph URL: {url}"));
    // frontend calls the service reviews (its v1 and v2 subsets both report
    // destination_service="reviews", as Istio's metrics do): drawn as frontend -> the service node
    // -> each version's workload, with that workload's own inbound numbers.
    let expected = [
        "outside->wl:frontend",
        "wl:frontend->svc:reviews",
        "svc:reviews->wl:reviews-v1",
        "svc:reviews->wl:reviews-v2",
        "wl:reviews-v2->wl:ratings",
        // The demo's Dubbo hop (frontend's outbound Dubbo listener to the details provider).
        "wl:frontend->wl:details",
    ];
    // Wait (in JSON) until every call of the demo has traffic, then look with the browser.
    eventually_blocking("every demo edge live in /graph.json", Duration::from_secs(60), || {
        while let Ok(line) = rx.try_recv() {
            eprintln!("demo: {line}");
        }
        let g = graph(admin);
        expected
            .iter()
            .all(|e| {
                let (from, to) = e.split_once("->").unwrap();
                edge(&g, from, to).is_some_and(|e| f(&e["rps"]) > 0.0)
            })
            .then_some(())
    });
    let shot = output_dir().join("service-graph.png");
    let _ = std::fs::remove_file(&shot);
    let mut check = Command::new(&node_bin)
        .arg(&script)
        .arg(&url)
        .arg(&shot)
        .arg(serde_json::to_string(&expected).unwrap())
        .arg("wl:reviews-v2")
        .env("WEFT_CHROMIUM", &chromium)
        .current_dir(browser_dir.join("../.."))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node graph_check.js");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = check.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = check.kill();
            let _ = check.wait();
            panic!("the browser check did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut check.stdout.take().unwrap(), &mut out).unwrap();
    eprintln!("browser: {out}");
    drop(demo);
    assert!(status.success(), "the browser check failed: {out}");
    let seen: Value = serde_json::from_str(out.trim()).expect("graph_check.js output");
    assert_eq!(seen["ok"], true, "{seen}");
    for e in expected {
        assert!(f(&seen["first"][e]["rps"]) > 0.0, "{e}: {seen}");
        assert!(f(&seen["second"][e]["rps"]) > 0.0, "{e}: {seen}");
    }
    assert!(!seen["changed"].as_array().unwrap().is_empty(), "{seen}");
    // Exactly the demo's calls are drawn (no phantom edge from a label set that counted nothing).
    let mut drawn: Vec<&String> = seen["first"].as_object().unwrap().keys().collect();
    drawn.sort();
    let mut want = expected.to_vec();
    want.sort();
    assert_eq!(drawn, want, "{seen}");
    let dubbo = seen["first"]["wl:frontend->wl:details"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(dubbo.starts_with("dubbo · "), "the Dubbo edge is labelled: {seen}");
    assert_eq!(seen["drill_instances"], serde_json::json!(["reviews-v2"]), "{seen}");
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    println!("service graph screenshot: {}", shot.display());
    eprintln!("service graph screenshot: {}", shot.display());
}

/// The page in chromium while a sidecar goes away: its workload stays drawn, greyed, with "stale
/// since", and the page keeps polling.
#[test]
fn graph_page_shows_a_stale_sidecar_in_chromium() {
    let Some(chromium) = peers::tool("chromium") else {
        return;
    };
    let Some(node_bin) = peers::tool("node") else {
        return;
    };
    let Some(browser_dir) = peers::interop_peer("browser/node_modules/playwright-core") else {
        return;
    };
    let reg = TempDir::new("graph3-reg");
    let dir = TempDir::new("graph3");
    let (web_in, api_in) = (free_addr(), free_addr());
    reg.write(
        "services.yaml",
        &format!(
            "services:\n  - name: web\n    endpoints: [{{address: \"{web_in}\"}}]\n  - name: api\n    endpoints: [{{address: \"{api_in}\"}}]\n"
        ),
    );
    let (_control, xds, control_admin) = start_control(&reg, &["--graph-interval", "500ms"]);
    let (_web, _, web_out) = sidecar(&dir, "web-1", "web", "web", web_in, status_server(), xds);
    let (api, _, _) = sidecar(&dir, "api-1", "api", "api", api_in, status_server(), xds);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                let _ = http(web_out, "api", if i % 5 == 4 { "/fail" } else { "/ok" });
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    eventually_blocking("web -> api live", Duration::from_secs(30), || {
        let g = graph(control_admin);
        (edge(&g, "wl:web", "wl:api").is_some_and(|e| f(&e["rps"]) > 2.0)
            && node(&g, "wl:api").is_some_and(|n| f(&n["inbound"]["rps"]) > 2.0))
        .then_some(())
    });
    let url = format!("http://{control_admin}/graph");
    let shot = output_dir().join("service-graph-sidecar-gone.png");
    let mut check = Command::new(&node_bin)
        .arg(browser_dir.join("../../graph_check.js"))
        .arg(&url)
        .arg(&shot)
        .arg(r#"["wl:web->wl:api"]"#)
        .arg("wl:api")
        .env("WEFT_CHROMIUM", &chromium)
        .env("STALE_NODE", "wl:api")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node graph_check.js");
    let stdout = check.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut api = Some(api);
    let mut last = String::new();
    let start = Instant::now();
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            if line.contains("ready_for_stale") {
                drop(api.take());
            } else {
                last = line;
            }
        }
        if let Some(s) = check.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(100));
            while let Ok(line) = rx.try_recv() {
                last = line;
            }
            break s;
        }
        if start.elapsed() > Duration::from_secs(150) {
            let _ = check.kill();
            let _ = check.wait();
            panic!("the browser check did not finish within 150 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    eprintln!("browser: {last}");
    assert!(api.is_none(), "the browser check never asked for the sidecar to stop");
    assert!(status.success(), "the browser check failed: {last}");
    let seen: Value = serde_json::from_str(last.trim()).expect("graph_check.js output");
    assert_eq!(seen["ok"], true, "{seen}");
    assert!(seen["stale_text"].as_str().unwrap().contains("stale since"), "{seen}");
    let stale_shot = PathBuf::from(seen["stale_screenshot"].as_str().unwrap());
    assert!(std::fs::read(&stale_shot).unwrap().starts_with(b"\x89PNG"));
    println!("service graph screenshots: {} {}", shot.display(), stale_shot.display());
}

/// The demo process, stopped with SIGTERM (so that it stops its sidecars and control plane) when
/// the test ends, pass or fail.
struct ChildGuardTerm(std::process::Child);

impl Drop for ChildGuardTerm {
    fn drop(&mut self) {
        terminate(&mut self.0, Duration::from_secs(15));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
