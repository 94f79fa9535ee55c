//! Chaos run: steady load through weft to three backends while one is killed, one turns slow
//! (2 s), one returns 50% 503s, then all recover. With retries and outlier detection configured,
//! the client-visible success rate must stay above 99.9% while a healthy backend remains.
//!
//! Bounded: 5 phases of `PHASE` each, at most `RATE` requests/s. Prints a table per phase.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_test_support::*;

const PHASE: Duration = Duration::from_secs(3);
const RATE: u32 = 300;
const CLIENTS: usize = 16;

#[derive(Default)]
struct Behaviour {
    slow: AtomicBool,
    flaky: AtomicBool,
    counter: AtomicU32,
}

async fn backend(name: &'static str, b: Arc<Behaviour>, addr: std::net::SocketAddr) -> Upstream {
    upstream_on(addr, move |_| {
        let b = b.clone();
        async move {
            if b.slow.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            if b.flaky.load(Ordering::Relaxed) && b.counter.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                return text(503, "flaky");
            }
            let mut r = text(200, name);
            r.headers_mut().insert("x-upstream", name.parse().unwrap());
            r
        }
    })
    .await
}

#[derive(Default)]
struct PhaseStats {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_keeps_success_above_999() {
    let behaviours: Vec<Arc<Behaviour>> = (0..3).map(|_| Arc::new(Behaviour::default())).collect();
    let mut ups = Vec::new();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        ups.push(backend(name, behaviours[i].clone(), "127.0.0.1:0".parse().unwrap()).await);
    }
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route:
                  cluster: app
                  timeout: 3s
                  retry_policy:
                    retry_on: [5xx, connect-failure, reset, per-try-timeout]
                    num_retries: 3
                    per_try_timeout: 250ms
                    retry_back_off: {{ base_interval: 5ms, max_interval: 50ms }}
clusters:
  - name: app
    lb_policy: least_request
    connect_timeout: 250ms
    retry_budget: {{ budget_percent: 50, min_retry_concurrency: 20 }}
    outlier_detection:
      consecutive_5xx: 5
      consecutive_local_origin_failure: 3
      interval: 500ms
      base_ejection_time: 2s
      max_ejection_percent: 34
      failure_percentage_threshold: 30
      failure_percentage_minimum_hosts: 3
      failure_percentage_request_volume: 20
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}, {{ address: "{}" }}]
"#,
        addrs[0], addrs[1], addrs[2]
    );
    let proxy = start_proxy(&yaml);
    let proxy_addr = proxy.listener_addr("web").unwrap();

    let phases = ["baseline", "a killed", "b slow (2s)", "c 50% 503", "all restored"];
    let stats: Arc<Mutex<Vec<PhaseStats>>> =
        Arc::new(Mutex::new((0..phases.len()).map(|_| PhaseStats::default()).collect()));
    let phase = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    // Open-loop-ish load: each client sends at RATE/CLIENTS on its own keep-alive connection.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stats, phase, stop) = (stats.clone(), phase.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let interval = Duration::from_secs_f64(CLIENTS as f64 / RATE as f64);
            let mut tick = tokio::time::interval(interval);
            let mut c = H1Client::connect(proxy_addr).await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let p = phase.load(Ordering::Relaxed) as usize;
                let t = Instant::now();
                let r = c.try_send(req("GET", "/", "x", &[], "")).await;
                let us = t.elapsed().as_micros() as u64;
                let ok = matches!(&r, Ok(g) if g.status == 200);
                if r.is_err() {
                    c = H1Client::connect(proxy_addr).await;
                }
                let mut s = stats.lock();
                let ps = &mut s[p];
                if ok {
                    ps.ok += 1;
                } else {
                    ps.failed += 1;
                }
                ps.latencies_us.push(us);
            }
        }));
    }

    for (i, _) in phases.iter().enumerate() {
        match i {
            1 => ups[0].stop(),
            2 => {
                ups[0] = backend("a", behaviours[0].clone(), addrs[0]).await;
                behaviours[1].slow.store(true, Ordering::Relaxed);
            }
            3 => {
                behaviours[1].slow.store(false, Ordering::Relaxed);
                behaviours[2].flaky.store(true, Ordering::Relaxed);
            }
            4 => behaviours[2].flaky.store(false, Ordering::Relaxed),
            _ => {}
        }
        phase.store(i as u32, Ordering::Relaxed);
        tokio::time::sleep(PHASE).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }

    let mut stats = std::mem::take(&mut *stats.lock());
    println!("\nphase              requests   success     p50 ms    p99 ms");
    let mut worst: f64 = 100.0;
    for (name, s) in phases.iter().zip(stats.iter_mut()) {
        s.latencies_us.sort_unstable();
        let n = s.ok + s.failed;
        let pct = |q: f64| {
            s.latencies_us
                .get(((s.latencies_us.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        let success = if n == 0 { 0.0 } else { s.ok as f64 * 100.0 / n as f64 };
        println!(
            "{name:<18} {n:>8}   {success:>7.3}%  {:>8.2}  {:>8.2}",
            pct(0.5),
            pct(0.99)
        );
        assert!(
            n > (RATE as u64 * PHASE.as_secs()) / 3,
            "{name}: load generator fell far behind ({n})"
        );
        worst = worst.min(success);
    }
    let clusters = admin(&proxy, "/clusters").await.text();
    println!("{clusters}");
    assert!(worst >= 99.9, "client success fell to {worst:.3}% in some phase");
}
