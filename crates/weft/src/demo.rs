//! `weft demo`: sample services behind a weft proxy on loopback, with live traffic and a summary line
//! per second. On a timer it shifts canary weight and makes one backend flaky, so the user sees
//! routing and retries react.
//!
//! Everything runs in this process on 127.0.0.1 with ephemeral ports; Ctrl-C stops it cleanly.

use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_proxy::{Server, ServerOptions};

#[derive(Args, Default, Clone)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 30s); default: run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second the traffic generator sends.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds between scripted events (canary shift, flaky backend, recovery).
    #[arg(long, default_value_t = 10)]
    pub step: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    weft_config::duration::parse(s)
}

/// A sample service: answers with its name; `fail_permille` of requests get a 503.
struct Sample {
    name: &'static str,
    fail_permille: AtomicU32,
}

async fn serve_sample(sample: Arc<Sample>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sample = sample.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: hyper::Request<Incoming>| {
                    let sample = sample.clone();
                    async move {
                        let fail = fastrand::u32(0..1000) < sample.fail_permille.load(Ordering::Relaxed);
                        let (status, body) = if fail {
                            (503, format!("{} is having a bad moment\n", sample.name))
                        } else {
                            (200, format!("hello from {}\n", sample.name))
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("x-served-by", sample.name)
                                .body(Full::new(Bytes::from(body)))
                                .expect("valid response"),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn config_yaml(
    proxy: &str,
    admin: &str,
    v1: SocketAddr,
    v2: SocketAddr,
    catalog: SocketAddr,
    canary_weight: u32,
) -> String {
    format!(
        r#"
admin: {{ address: "{admin}" }}
listeners:
  - name: mesh
    address: "{proxy}"
    http:
      via: weft
      route_config:
        virtual_hosts:
          - name: demo
            domains: ["*"]
            routes:
              - name: greeter
                match: {{ prefix: /greeter }}
                route:
                  weighted_clusters:
                    - {{ name: greeter-v1, weight: {v1w} }}
                    - {{ name: greeter-v2, weight: {canary_weight} }}
              - name: catalog
                match: {{ prefix: /catalog }}
                route:
                  cluster: catalog
                  timeout: 2s
                  retry_policy: {{ retry_on: [5xx, connect-failure], num_retries: 3, per_try_timeout: 500ms }}
clusters:
  - {{ name: greeter-v1, endpoints: [{{ address: "{v1}" }}] }}
  - {{ name: greeter-v2, endpoints: [{{ address: "{v2}" }}] }}
  - {{ name: catalog, lb_policy: least_request, endpoints: [{{ address: "{catalog}" }}] }}
"#,
        v1w = 100 - canary_weight
    )
}

#[derive(Default)]
struct Window {
    latencies: BTreeMap<&'static str, Vec<u32>>,
    errors: BTreeMap<&'static str, u64>,
    by_backend: BTreeMap<String, u64>,
}

pub fn run(args: DemoArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft demo: {e}");
            return 1;
        }
    };
    rt.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> i32 {
    let v1 = Arc::new(Sample {
        name: "greeter-v1",
        fail_permille: AtomicU32::new(0),
    });
    let v2 = Arc::new(Sample {
        name: "greeter-v2",
        fail_permille: AtomicU32::new(0),
    });
    let catalog = Arc::new(Sample {
        name: "catalog",
        fail_permille: AtomicU32::new(0),
    });
    let (Ok(a1), Ok(a2), Ok(a3)) = (
        serve_sample(v1.clone()).await,
        serve_sample(v2.clone()).await,
        serve_sample(catalog.clone()).await,
    ) else {
        eprintln!("weft demo: cannot bind sample services on 127.0.0.1");
        return 1;
    };
    let cfg = |w| weft_config::from_yaml(&config_yaml("127.0.0.1:0", "127.0.0.1:0", a1, a2, a3, w));
    let server = match cfg(10)
        .map_err(|e| e.to_string())
        .and_then(|c| Server::start(c, ServerOptions { config_path: None }))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft demo: {e}");
            return 1;
        }
    };
    let proxy = server.listener_addr("mesh").expect("listener bound");
    let admin = server.admin_addr().expect("admin bound");
    println!("weft demo: three sample services behind a weft proxy, all on loopback.\n");
    println!("  proxy        http://{proxy}/greeter   http://{proxy}/catalog");
    println!("  admin        http://{admin}/   (try /clusters, /stats/prometheus, /config_dump)");
    println!("  services     greeter-v1 {a1}, greeter-v2 {a2}, catalog {a3}");
    println!(
        "  traffic      {} req/s, half to /greeter, half to /catalog\n",
        args.rate
    );
    println!("  Timeline: t={}s canary greeter-v2 goes 10% -> 50%; t={}s catalog starts failing 30% (retries hide it); t={}s it recovers.\n", args.step, args.step * 2, args.step * 3);
    println!("Press Ctrl-C to stop.\n");

    let window = Arc::new(Mutex::new(Window::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let gen = tokio::spawn(traffic(proxy, args.rate.max(1), window.clone(), sent.clone()));

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut stage = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = stop.notified() => break,
            _ = tick.tick() => {}
        }
        let t = started.elapsed().as_secs();
        if let Some(d) = args.duration {
            if started.elapsed() >= d {
                break;
            }
        }
        if stage == 0 && t >= args.step {
            stage = 1;
            match cfg(50).map_err(|e| e.to_string()).and_then(|c| server.apply(c)) {
                Ok(()) => println!(">>> t={t}s  canary: greeter-v2 weight 10% -> 50% (new config applied atomically)"),
                Err(e) => println!(">>> canary shift refused: {e}"),
            }
        } else if stage == 1 && t >= args.step * 2 {
            stage = 2;
            catalog.fail_permille.store(300, Ordering::Relaxed);
            println!(
                ">>> t={t}s  catalog now fails 30% of requests; weft retries (up to 3) keep the client error rate low"
            );
        } else if stage == 2 && t >= args.step * 3 {
            stage = 3;
            catalog.fail_permille.store(0, Ordering::Relaxed);
            println!(">>> t={t}s  catalog recovered");
        }
        let w = std::mem::take(&mut *window.lock().unwrap());
        let mut line = format!("t={t:>3}s");
        for svc in ["greeter", "catalog"] {
            let mut lat = w.latencies.get(svc).cloned().unwrap_or_default();
            lat.sort_unstable();
            let n = lat.len() as u64;
            let errs = w.errors.get(svc).copied().unwrap_or(0);
            let p99 = if lat.is_empty() {
                0
            } else {
                lat[((lat.len() - 1) as f64 * 0.99) as usize]
            };
            let total = n + errs;
            let err_pct = if total == 0 {
                0.0
            } else {
                errs as f64 * 100.0 / total as f64
            };
            line.push_str(&format!(
                "  | {svc}: {total:>4} req/s  err {err_pct:>5.1}%  p99 {:>6.2} ms",
                p99 as f64 / 1000.0
            ));
        }
        let v1n = w.by_backend.get("greeter-v1").copied().unwrap_or(0);
        let v2n = w.by_backend.get("greeter-v2").copied().unwrap_or(0);
        if v1n + v2n > 0 {
            line.push_str(&format!(
                "  | v2 share {:>3.0}%",
                v2n as f64 * 100.0 / (v1n + v2n) as f64
            ));
        }
        println!("{line}");
    }
    gen.abort();
    println!("\nstopping: draining the proxy...");
    let s = server.clone();
    let _ = tokio::task::spawn_blocking(move || s.shutdown(Duration::from_secs(2))).await;
    drop(server);
    println!("done: {} requests sent.", sent.load(Ordering::Relaxed));
    0
}

/// Open-loop-ish generator: a fixed schedule, each request on its own task over a small pool of
/// keep-alive connections.
async fn traffic(proxy: SocketAddr, rate: u32, window: Arc<Mutex<Window>>, sent: Arc<AtomicU64>) {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let conns: Vec<_> = (0..8).map(|_| Arc::new(tokio::sync::Mutex::new(None))).collect();
    let mut i = 0usize;
    loop {
        tick.tick().await;
        i += 1;
        let path = if i.is_multiple_of(2) { "/greeter" } else { "/catalog" };
        let svc: &'static str = if i.is_multiple_of(2) { "greeter" } else { "catalog" };
        let slot = conns[i % conns.len()].clone();
        let window = window.clone();
        sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let start = Instant::now();
            let result = send(proxy, path, &slot).await;
            let mut w = window.lock().unwrap();
            match result {
                Some((200, backend)) => {
                    w.latencies
                        .entry(svc)
                        .or_default()
                        .push(start.elapsed().as_micros() as u32);
                    if let Some(b) = backend {
                        *w.by_backend.entry(b).or_default() += 1;
                    }
                }
                _ => *w.errors.entry(svc).or_default() += 1,
            }
        });
    }
}

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn send(proxy: SocketAddr, path: &str, slot: &tokio::sync::Mutex<Option<Conn>>) -> Option<(u16, Option<String>)> {
    let mut guard = slot.lock().await;
    if guard.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = tokio::net::TcpStream::connect(proxy).await.ok()?;
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        *guard = Some(s);
    }
    let sender = guard.as_mut()?;
    sender.ready().await.ok()?;
    let req = hyper::Request::get(path)
        .header("host", "demo.local")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let backend = resp
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    use http_body_util::BodyExt;
    let _ = resp.into_body().collect().await;
    Some((status, backend))
}
