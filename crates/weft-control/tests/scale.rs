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
    std::fs::read_to_string("/proc/self/status")
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
    let dir = TempDir::new();
    for i in 0..services {
        dir.write(&format!("svc-{i}.yaml"), &service_file(i, endpoints, 0));
    }
    let t0 = Instant::now();
    let cp = start(&dir).await;
    for _ in 0..6000 {
        if cp.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cp.is_ready());
    println!("first snapshot after {:?}, rss {} MiB", t0.elapsed(), rss_mib());

    let names: Vec<String> = (0..services).map(|i| format!("svc-{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let t1 = Instant::now();
    let mut clients = Vec::with_capacity(proxies);
    for p in 0..proxies {
        let mut d = Delta::connect(cp.xds_addr(), sidecar(&format!("p-{p}"), "svc-0")).await;
        d.subscribe(CLUSTER, &[], &[]).await;
        let cds = d.expect().await;
        d.ack(&cds).await;
        d.subscribe(ENDPOINT, &name_refs, &[]).await;
        let eds = d.expect().await;
        assert_eq!(eds.resources.len(), services);
        d.ack(&eds).await;
        clients.push(d);
    }
    println!(
        "{proxies} proxies synced in {:?}, rss {} MiB (clients included)",
        t1.elapsed(),
        rss_mib()
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
    assert!(last < Duration::from_secs(2), "{last:?}");
    drop(clients);
    cp.stop().await;
}
