//! Scale check (ignored by default; run with `cargo test -p weft-control --release --test scale --
//! --ignored --nocapture`). Sizes from env: WEFT_SCALE_PROXIES (default 100), WEFT_SCALE_SERVICES
//! (default 1000), WEFT_SCALE_ENDPOINTS (per service, default 100).
//!
//! Measures: time to the first snapshot, and the time from rewriting one service's file (one endpoint
//! changed) until every connected Delta client has received and ACKed its one ClusterLoadAssignment.

mod common;

use common::*;
use std::fmt::Write;
use std::time::{Duration, Instant};
use weft_xds_api::type_url::{CLUSTER, ENDPOINT};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn service_file(i: usize, endpoints: usize, bump: u16) -> String {
    let mut s = String::from("services:\n");
    let _ = writeln!(s, "  - name: svc-{i}\n    port: 8080\n    endpoints:");
    for j in 0..endpoints {
        let port = if j == 0 { 10_000 + bump } else { 10_000 + j as u16 };
        let _ = writeln!(
            s,
            "      - {{address: 10.{}.{}.{}:{port}, labels: {{version: v{}}}, locality: {{region: r, zone: z{}}}}}",
            i / 256,
            i % 256,
            j % 250 + 1,
            j % 2,
            j % 3
        );
    }
    s
}

fn rss_mib() -> u64 {
    rss_of("/proc/self/status")
}

fn rss_of(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .unwrap_or(0)
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn scale_one_endpoint_change_reaches_every_delta_client() {
    let proxies = env("WEFT_SCALE_PROXIES", 100);
    let services = env("WEFT_SCALE_SERVICES", 1000);
    let endpoints = env("WEFT_SCALE_ENDPOINTS", 100);
    let dir = TempDir::new("control");
    for i in 0..services {
        dir.write(&format!("svc-{i}.yaml"), &service_file(i, endpoints, 0));
    }
    let t0 = Instant::now();
    // WEFT_CONTROL_BIN (the `control` example or `weft`) runs the control plane in its own process,
    // so that its RSS is measured without the test clients'.
    let external = std::env::var("WEFT_CONTROL_BIN").ok().map(|bin| {
        let free = || weft_test_support::free_addr();
        let (xds, admin) = (free(), free());
        let mut cmd = std::process::Command::new(bin);
        if cmd.get_program().to_string_lossy().ends_with("weft") {
            cmd.arg("control");
        }
        let child = cmd
            .args(["--registry", &dir.path().display().to_string()])
            .args([
                "--xds",
                &xds.to_string(),
                "--admin",
                &admin.to_string(),
                "--log",
                "warn",
            ])
            .spawn()
            .unwrap();
        (child, xds, admin)
    });
    let cp = match external {
        None => Some(start(&dir).await),
        Some(_) => None,
    };
    let (xds_addr, admin_addr) = match (&cp, &external) {
        (Some(cp), _) => (cp.xds_addr(), cp.admin_addr().unwrap()),
        (None, Some((_, x, a))) => (*x, *a),
        _ => unreachable!(),
    };
    let child_pid = external.as_ref().map(|(c, _, _)| c.id());
    let server_rss = || match child_pid {
        Some(pid) => rss_of(&format!("/proc/{pid}/status")),
        None => rss_mib(),
    };
    let mut ready = false;
    for _ in 0..600 {
        if std::net::TcpStream::connect(admin_addr).is_ok() && http_get(admin_addr, "/ready").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready);
    println!(
        "first snapshot after {:?}, control plane rss {} MiB",
        t0.elapsed(),
        server_rss()
    );

    let names: Vec<String> = (0..services).map(|i| format!("svc-{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let t1 = Instant::now();
    let mut clients = Vec::with_capacity(proxies);
    for p in 0..proxies {
        let mut d = Delta::connect(xds_addr, sidecar(&format!("p-{p}"), "svc-0")).await;
        d.subscribe(CLUSTER, &[], &[]).await;
        let cds = d.expect().await;
        d.ack(&cds).await;
        d.subscribe(ENDPOINT, &name_refs, &[]).await;
        // Large EDS responses arrive split in several messages.
        let mut got = 0;
        while got < services {
            let eds = d.expect().await;
            assert_eq!(eds.type_url, ENDPOINT);
            got += eds.resources.len();
            d.ack(&eds).await;
        }
        assert_eq!(got, services);
        clients.push(d);
    }
    println!(
        "{proxies} proxies synced in {:?}, control plane rss {} MiB{}",
        t1.elapsed(),
        server_rss(),
        if child_pid.is_some() {
            ""
        } else {
            " (test clients included)"
        }
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    dir.write("svc-7.yaml", &service_file(7, endpoints, 1));
    let mut tasks = Vec::new();
    for mut d in clients {
        tasks.push(tokio::spawn(async move {
            let r = d.expect().await;
            assert_eq!(r.type_url, ENDPOINT);
            assert_eq!(r.resources.len(), 1);
            assert_eq!(r.resources[0].name, "svc-7");
            d.ack(&r).await;
            let at = started.elapsed();
            (d, at)
        }));
    }
    let mut last = Duration::ZERO;
    let mut clients = Vec::new();
    for t in tasks {
        let (d, at) = tokio::time::timeout(T, t).await.unwrap().unwrap();
        last = last.max(at);
        clients.push(d);
    }
    println!(
        "one endpoint change: last of {proxies} clients had its single CLA after {last:?} (file poll + debounce included)"
    );
    println!("control plane rss {} MiB", server_rss());
    assert!(last < Duration::from_secs(2), "{last:?}");
    drop(clients);
    if let Some(cp) = cp {
        cp.stop().await;
    }
    if let Some((mut child, _, _)) = external {
        let _ = child.kill();
        let _ = child.wait();
    }
}
