//! `weft bench`: an open-loop (and closed-loop) load generator for HTTP/1.1,
//! h2c, gRPC unary, raw TCP echo, Dubbo2 and SOFARPC Bolt targets, and for
//! HTTP/1.1, HTTP/2 and gRPC over TLS (`https://`), with latency measured
//! from each request's scheduled send time (coordinated-omission correction).
//!
//! RPC targets (`dubbo://host:port/<interface>/<method>`,
//! `bolt://host:port/<interface>/<method>`): two-way calls with one hessian2
//! string argument of `--body-size` bytes, `--streams` calls in flight per
//! connection, multiplexed by request id, framed with weft-rpc's codecs. A
//! response whose status is not success counts as an `rpc` error.
//!
//! TLS targets: the protocol is chosen by ALPN — `h2` and `http/1.1` are
//! offered (only `h2` with `--h2` or `--grpc-method`, only `http/1.1` with
//! `--http1`) — and the report's `protocol` is what the server selected.
//! The server is verified against the roots of `--cacert FILE`; there are no
//! built-in roots, so without `--cacert` the run needs `--insecure` (no
//! verification at all; for benchmarks against test servers only). `--sni
//! NAME` replaces the URL host as the server name sent and verified. A
//! failing handshake (bad certificate, wrong name, no common ALPN protocol)
//! stops the run before it starts, like an unreachable target; handshakes
//! that fail later, on reconnects, count as connect errors. The report's
//! `tls` field has the TLS version, the selected ALPN protocol and the
//! handshake times of the run's new connections.
//!
//! Entry points: [`run`] for the CLI, [`run_bench`] / [`run_blocking`] for
//! programmatic use.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, TE};
use http::{HeaderMap, Method};

mod client;
pub mod grpc;
mod output;
pub mod parse;
pub mod provider;
mod rpc;
pub mod schedule;
mod stats;
mod tls;

pub use parse::{parse_duration, parse_header, parse_target, BoltVersion, HeaderArg, Protocol, RpcTarget, Target};
pub use schedule::Schedule;
pub use stats::{ErrorCounts, LatencySummary, Report, StatusClasses};

use client::{Client, H2Shared, RequestTemplate};
use rpc::RpcShared;
pub use stats::TlsReport;
use stats::{ConnStats, ErrorKind};
use tls::{Negotiated, TlsClient, Trust, ALPN_H2, ALPN_HTTP1};

/// Default run length when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Default payload for TCP echo mode when `--body-size` is 0.
const DEFAULT_TCP_PAYLOAD: usize = 64;
/// Tokio's timer has millisecond granularity and rounds deadlines up, so an
/// open-loop worker wakes up to this much before a slot instead of up to this
/// much after it. A request sent early is measured from its actual send time,
/// so the early wake-up never hides latency.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Arguments of `weft bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Target: http://host:port/path, https://host:port/path,
    /// h2c://host:port/path, tcp://host:port,
    /// dubbo://host:port/<interface>/<method>[?version=V&group=G] or
    /// bolt://host:port/<interface>/<method>[?version=V&group=G&bolt=v1|v2|v2crc].
    /// https:// uses HTTP/1.1 or HTTP/2 as chosen by ALPN, and needs
    /// --cacert or --insecure.
    pub url: String,

    /// Number of connections to keep open.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: usize,

    /// Concurrent requests per connection (HTTP/2, gRPC, Dubbo and Bolt only).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,

    /// Measured run length (e.g. 10s, 500ms, 1m). Default 10s unless
    /// --requests is given.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after this many measured requests.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,

    /// Total request rate in requests/s (open-loop). Without it, every
    /// connection/stream sends as fast as responses come (closed-loop).
    #[arg(long)]
    pub rate: Option<f64>,

    /// HTTP method.
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,

    /// Extra request header "name: value" (repeatable). Dubbo: an attachment;
    /// Bolt: a header.
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<HeaderArg>,

    /// Request body size in bytes (TCP mode: bytes written and echoed, default
    /// 64; Dubbo and Bolt: the length of the string argument).
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,

    /// Per-request timeout.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,

    /// Warm-up period before the measured run, excluded from the statistics.
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Print the report as JSON on stdout (and nothing else on stdout).
    #[arg(long)]
    pub json: bool,

    /// Runtime worker threads (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Use HTTP/2 with prior knowledge (h2c) for http:// targets; offer
    /// only h2 by ALPN for https:// targets.
    #[arg(long)]
    pub h2: bool,

    /// Offer only http/1.1 by ALPN for https:// targets (HTTP/1.1 is already
    /// the default for http:// targets).
    #[arg(long)]
    pub http1: bool,

    /// https:// only: PEM file of root certificates to verify the server
    /// against (there are no built-in roots).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,

    /// https:// only: do not verify the server's certificate at all
    /// (benchmarks against test servers only: the connection is encrypted
    /// but not authenticated).
    #[arg(long)]
    pub insecure: bool,

    /// https:// only: server name to send (SNI) and verify, instead of the
    /// URL host.
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,

    /// gRPC unary mode: full method path, e.g. /pkg.Service/Method. Over
    /// TLS (offering only h2 by ALPN) with an https:// target.
    #[arg(long)]
    pub grpc_method: Option<String>,

    /// gRPC request message size in bytes.
    #[arg(long, default_value_t = 0)]
    pub grpc_payload: usize,

    /// Disable the live progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

impl BenchArgs {
    /// Parse from an argument list (without the program/subcommand name),
    /// e.g. `BenchArgs::try_parse_from(["http://127.0.0.1:8080/", "-c", "4"])`.
    pub fn try_parse_from<I, T>(args: I) -> Result<BenchArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        #[derive(clap::Parser)]
        #[command(name = "bench", no_binary_name = true)]
        struct Wrapper {
            #[command(flatten)]
            args: BenchArgs,
        }
        Wrapper::try_parse_from(args).map(|w| w.args)
    }

    /// Defaults for `url` (as the CLI would give with no flags).
    pub fn new(url: impl Into<String>) -> BenchArgs {
        let url: String = url.into();
        BenchArgs::try_parse_from([url.as_str()]).expect("defaults parse")
    }
}

/// Run `weft bench` as a command: builds its own runtime, prints the report
/// and returns the exit code (0 when the run completed, 2 on bad arguments,
/// an unreachable target or a failed TLS handshake).
pub fn run(args: BenchArgs) -> i32 {
    match run_blocking(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("weft bench: cannot encode report: {e}");
                        return 2;
                    }
                }
            } else {
                print!("{}", output::human(&report));
            }
            0
        }
        Err(e) => {
            eprintln!("weft bench: {e}");
            2
        }
    }
}

/// Build a runtime with `--threads` workers and run the benchmark on it.
pub fn run_blocking(args: &BenchArgs) -> Result<Report, String> {
    let threads = match args.threads {
        Some(0) => return Err("--threads must be at least 1".to_string()),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(run_bench(args))
}

/// Everything the workers share.
struct Shared {
    tpl: RequestTemplate,
    timeout: Duration,
    /// Start of the measured window (end of warm-up).
    measure_start: Instant,
    /// No request is started (closed-loop) or scheduled (open-loop) at or after this.
    end: Instant,
    /// Open-loop: owed requests are not sent after this.
    hard_end: Instant,
    limit: Option<u64>,
    tickets: AtomicU64,
    stop: AtomicBool,
    progress: bool,
    live_requests: AtomicU64,
    live_errors: AtomicU64,
}

struct Plan {
    target: Target,
    addr: SocketAddr,
    tls: Option<TlsPlan>,
    streams: usize,
    warmup: Duration,
    duration: Option<Duration>,
    rate: Option<f64>,
}

/// TLS settings of an `https://` run.
struct TlsPlan {
    trust: Trust,
    server_name: String,
    /// ALPN protocols to offer, most preferred first.
    alpn: Vec<&'static [u8]>,
}

/// Streams per connection for `protocol`.
fn streams_for(protocol: Protocol, streams: usize, tls: bool) -> Result<usize, String> {
    match protocol {
        Protocol::Http2 | Protocol::Grpc | Protocol::Dubbo | Protocol::Bolt => Ok(streams),
        Protocol::Http1 | Protocol::Tcp if streams > 1 => Err(if tls {
            "--streams > 1 needs HTTP/2 or gRPC, but HTTP/1.1 is used over TLS (the server chose it by ALPN, or --http1)"
                .to_string()
        } else {
            "--streams > 1 needs HTTP/2, gRPC, Dubbo or Bolt (use --h2)".to_string()
        }),
        Protocol::Http1 | Protocol::Tcp => Ok(1),
    }
}

fn validate_tls(cfg: &BenchArgs, target: &Target) -> Result<Option<TlsPlan>, String> {
    if cfg.h2 && cfg.http1 {
        return Err("--h2 and --http1 cannot be used together".to_string());
    }
    if cfg.http1 && target.protocol != Protocol::Http1 {
        return Err(match target.protocol {
            Protocol::Grpc => "--http1 cannot be used with gRPC, which needs HTTP/2".to_string(),
            Protocol::Tcp => "--http1 cannot be used with a tcp:// target".to_string(),
            Protocol::Dubbo | Protocol::Bolt => "--http1 cannot be used with a dubbo:// or bolt:// target".to_string(),
            _ => "--http1 cannot be used with an h2c:// target".to_string(),
        });
    }
    if !target.tls {
        if cfg.insecure || cfg.cacert.is_some() || cfg.sni.is_some() {
            return Err("--cacert, --insecure and --sni need an https:// target".to_string());
        }
        return Ok(None);
    }
    let trust = match (&cfg.cacert, cfg.insecure) {
        (Some(_), true) => return Err("--cacert and --insecure cannot be used together".to_string()),
        (Some(path), false) => Trust::CaFile(path.clone()),
        (None, true) => Trust::Insecure,
        (None, false) => {
            return Err(format!(
                "{} is a TLS target and weft bench has no built-in trusted roots: \
                 give --cacert FILE (PEM certificates to verify the server against) \
                 or --insecure (skip certificate verification; benchmarks only)",
                cfg.url
            ))
        }
    };
    let alpn: Vec<&'static [u8]> = if target.protocol == Protocol::Grpc || cfg.h2 {
        vec![ALPN_H2]
    } else if cfg.http1 {
        vec![ALPN_HTTP1]
    } else {
        vec![ALPN_H2, ALPN_HTTP1]
    };
    Ok(Some(TlsPlan {
        trust,
        server_name: cfg.sni.clone().unwrap_or_else(|| target.host.clone()),
        alpn,
    }))
}

/// The protocol of a TLS run, from the ALPN outcome of the probe handshake.
fn negotiated_protocol(plan: &TlsPlan, target: &Target, n: &Negotiated) -> Result<Protocol, String> {
    let alpn = n.alpn.as_deref();
    let offered = |p: &[u8]| plan.alpn.contains(&p);
    match alpn {
        Some(p) if p == ALPN_H2 && offered(p) => Ok(if target.protocol == Protocol::Grpc {
            Protocol::Grpc
        } else {
            Protocol::Http2
        }),
        Some(p) if p == ALPN_HTTP1 && offered(p) => Ok(Protocol::Http1),
        // A server without ALPN support speaks HTTP/1.1 over TLS.
        None if offered(ALPN_HTTP1) => Ok(Protocol::Http1),
        None => Err(format!(
            "{} selected no ALPN protocol, but {} needs h2",
            target.authority,
            if target.protocol == Protocol::Grpc {
                "gRPC"
            } else {
                "--h2"
            }
        )),
        Some(p) => Err(format!(
            "{} selected ALPN protocol {:?}, which was not offered",
            target.authority,
            String::from_utf8_lossy(p)
        )),
    }
}

fn validate(cfg: &BenchArgs) -> Result<Plan, String> {
    let target = parse_target(&cfg.url, cfg.h2, cfg.grpc_method.as_deref())?;
    let tls = validate_tls(cfg, &target)?;
    if cfg.connections == 0 {
        return Err("--connections must be at least 1".to_string());
    }
    if cfg.streams == 0 {
        return Err("--streams must be at least 1".to_string());
    }
    // Over TLS without --h2, ALPN decides: checked again after the probe.
    let known = !target.tls || target.protocol != Protocol::Http1 || cfg.http1;
    let streams = if known {
        streams_for(target.protocol, cfg.streams, target.tls)?
    } else {
        cfg.streams
    };
    if let Some(r) = cfg.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err("--rate must be a positive number".to_string());
        }
    }
    if cfg.requests == Some(0) {
        return Err("--requests must be at least 1".to_string());
    }
    if cfg.duration == Some(Duration::ZERO) {
        return Err("--duration must be positive".to_string());
    }
    if cfg.timeout.is_zero() {
        return Err("--timeout must be positive".to_string());
    }
    let duration = match (cfg.duration, cfg.requests) {
        (None, None) => Some(DEFAULT_DURATION),
        (d, _) => d,
    };
    let addr = resolve(&target)?;
    Ok(Plan {
        target,
        addr,
        tls,
        streams,
        warmup: cfg.warmup.unwrap_or(Duration::ZERO),
        duration,
        rate: cfg.rate,
    })
}

fn resolve(target: &Target) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("cannot resolve {}", target.host))
}

fn build_template(cfg: &BenchArgs, plan: &Plan, tls: Option<Arc<TlsClient>>) -> Result<RequestTemplate, String> {
    let protocol = plan.target.protocol;
    let method = if protocol == Protocol::Grpc {
        Method::POST
    } else {
        Method::from_bytes(cfg.method.as_bytes()).map_err(|_| format!("invalid method {:?}", cfg.method))?
    };
    let mut headers = HeaderMap::new();
    let body = match protocol {
        Protocol::Grpc => {
            let payload: Vec<u8> = (0..cfg.grpc_payload).map(|i| (i % 251) as u8).collect();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(TE, HeaderValue::from_static("trailers"));
            grpc::encode_frame(&payload)
        }
        Protocol::Tcp => {
            let n = if cfg.body_size == 0 {
                DEFAULT_TCP_PAYLOAD
            } else {
                cfg.body_size
            };
            Bytes::from(vec![b'x'; n])
        }
        Protocol::Http1 | Protocol::Http2 => Bytes::from(vec![b'x'; cfg.body_size]),
        Protocol::Dubbo | Protocol::Bolt => Bytes::new(),
    };
    let rpc = match &plan.target.rpc {
        Some(t) if protocol.is_rpc() => {
            let atts: Vec<(String, String)> = cfg
                .headers
                .iter()
                .map(|h| {
                    h.value
                        .to_str()
                        .map(|v| (h.name.as_str().to_string(), v.to_string()))
                        .map_err(|_| format!("attachment {} is not text", h.name.as_str()))
                })
                .collect::<Result<_, _>>()?;
            if cfg.method != "GET" {
                return Err("-m/--method cannot be used with a dubbo:// or bolt:// target".to_string());
            }
            Some(rpc::RpcTemplate::new(protocol, t, cfg.body_size, &atts, cfg.timeout))
        }
        _ => None,
    };
    if rpc.is_some() {
        return Ok(RequestTemplate {
            protocol,
            addr: plan.addr,
            method,
            uri: http::Uri::from_static("/"),
            headers,
            body,
            tls,
            rpc,
        });
    }
    if protocol == Protocol::Http1 {
        let host = HeaderValue::from_str(&plan.target.authority)
            .map_err(|_| format!("invalid host {:?}", plan.target.authority))?;
        headers.insert(HOST, host);
    }
    for h in &cfg.headers {
        if h.name == HOST && protocol != Protocol::Http1 {
            continue; // :authority comes from the URL for HTTP/2
        }
        if is_hop_header(&h.name) && protocol != Protocol::Http1 {
            return Err(format!("header {} is not allowed with HTTP/2", h.name.as_str()));
        }
        headers.insert(h.name.clone(), h.value.clone());
    }
    let uri = plan.target.request_uri()?;
    Ok(RequestTemplate {
        protocol,
        addr: plan.addr,
        method,
        uri,
        headers,
        body,
        tls,
        rpc: None,
    })
}

fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// Run one benchmark inside the current tokio runtime.
pub async fn run_bench(cfg: &BenchArgs) -> Result<Report, String> {
    let mut plan = validate(cfg)?;
    let tls = match &plan.tls {
        Some(t) => Some(Arc::new(TlsClient::new(&t.trust, &t.server_name, &t.alpn)?)),
        None => None,
    };
    let negotiated = tokio::time::timeout(
        cfg.timeout,
        client::probe(plan.addr, plan.target.protocol, tls.as_deref()),
    )
    .await
    .map_err(|_| format!("cannot connect to {}: timed out", plan.addr))??;
    if let (Some(t), Some(n)) = (&plan.tls, &negotiated) {
        plan.target.protocol = negotiated_protocol(t, &plan.target, n)?;
        plan.streams = streams_for(plan.target.protocol, cfg.streams, true)?;
    }
    let tpl = build_template(cfg, &plan, tls.clone())?;

    let conns = cfg.connections;
    let streams = plan.streams;
    let workers = conns * streams;
    let tcp_len = tpl.body.len();

    // Open every connection before the clock starts.
    let mut h1_clients = Vec::new();
    let mut h2_shared = Vec::new();
    let mut rpc_shared = Vec::new();
    match tpl.protocol {
        Protocol::Http1 => {
            h1_clients = futures_util::future::join_all((0..conns).map(|_| Client::new_h1(&tpl, cfg.timeout)))
                .await
                .into_iter()
                .map(Some)
                .collect();
        }
        Protocol::Tcp => {
            h1_clients = futures_util::future::join_all((0..conns).map(|_| Client::new_tcp(plan.addr, tcp_len)))
                .await
                .into_iter()
                .map(Some)
                .collect();
        }
        Protocol::Http2 | Protocol::Grpc => {
            h2_shared = futures_util::future::join_all((0..conns).map(|_| H2Shared::connect(&tpl, cfg.timeout)))
                .await
                .into_iter()
                .map(Arc::new)
                .collect();
        }
        Protocol::Dubbo | Protocol::Bolt => {
            let p = tpl.protocol;
            rpc_shared =
                futures_util::future::join_all((0..conns).map(|_| RpcShared::connect(plan.addr, p, cfg.timeout)))
                    .await
                    .into_iter()
                    .map(Arc::new)
                    .collect();
        }
    }

    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let end = match plan.duration {
        Some(d) => measure_start + d,
        None => start + far,
    };
    let grace = cfg.timeout.min(Duration::from_secs(5));
    let shared = Arc::new(Shared {
        tpl,
        timeout: cfg.timeout,
        measure_start,
        end,
        hard_end: end.checked_add(grace).unwrap_or(end),
        limit: cfg.requests,
        tickets: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        progress: !cfg.json && !cfg.no_progress && std::io::stderr().is_terminal(),
        live_requests: AtomicU64::new(0),
        live_errors: AtomicU64::new(0),
    });

    let progress = if shared.progress {
        let s = shared.clone();
        Some(tokio::spawn(progress_loop(s, start)))
    } else {
        None
    };

    let mut handles = Vec::with_capacity(conns);
    for c in 0..conns {
        let shared = shared.clone();
        let rate = plan.rate;
        match shared.tpl.protocol {
            Protocol::Http1 | Protocol::Tcp => {
                let mut client = h1_clients[c].take().expect("client");
                handles.push(tokio::spawn(async move {
                    let stats = Mutex::new(ConnStats::new());
                    let sched = rate.map(|r| Schedule::new(start, r, workers, c));
                    worker(&shared, &mut client, sched, &stats).await;
                    stats.into_inner()
                }));
            }
            Protocol::Http2 | Protocol::Grpc => {
                let conn = h2_shared[c].clone();
                handles.push(tokio::spawn(async move {
                    let stats = Mutex::new(ConnStats::new());
                    let futs = (0..streams).map(|s| {
                        let shared = &shared;
                        let stats = &stats;
                        let conn = &conn;
                        async move {
                            let mut client = Client::new_h2(conn);
                            let index = c * streams + s;
                            let sched = rate.map(|r| Schedule::new(start, r, workers, index));
                            worker(shared, &mut client, sched, stats).await;
                        }
                    });
                    futures_util::future::join_all(futs).await;
                    stats.into_inner()
                }));
            }
            Protocol::Dubbo | Protocol::Bolt => {
                let conn = rpc_shared[c].clone();
                handles.push(tokio::spawn(async move {
                    let stats = Mutex::new(ConnStats::new());
                    let futs = (0..streams).map(|s| {
                        let shared = &shared;
                        let stats = &stats;
                        let conn = &conn;
                        async move {
                            let mut client = Client::new_rpc(conn);
                            let index = c * streams + s;
                            let sched = rate.map(|r| Schedule::new(start, r, workers, index));
                            worker(shared, &mut client, sched, stats).await;
                        }
                    });
                    futures_util::future::join_all(futs).await;
                    stats.into_inner()
                }));
            }
        }
    }

    let mut total = ConnStats::new();
    let mut panicked = None;
    for h in handles {
        match h.await {
            Ok(s) => total.merge(&s),
            Err(e) => panicked = Some(e.to_string()),
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    if let Some(p) = panicked {
        return Err(format!("a connection task failed: {p}"));
    }

    let window = match (total.first_start, total.last_done) {
        (_, Some(last)) => last.saturating_duration_since(measure_start),
        _ => Duration::ZERO,
    };
    let window = match plan.duration {
        // Closed-loop or open-loop with a duration: the window is the
        // configured one unless stragglers ran past it.
        Some(d) => window.max(d),
        None => window,
    };
    let secs = window.as_secs_f64();
    let tls_report = match (&plan.tls, &negotiated, &tls) {
        (Some(t), Some(n), Some(client)) => {
            let (handshake, handshake_failures) = client.handshake_stats();
            Some(TlsReport {
                version: n.version.clone(),
                alpn: n.alpn.as_deref().map(|p| String::from_utf8_lossy(p).into_owned()),
                alpn_offered: t.alpn.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect(),
                server_name: t.server_name.clone(),
                verified: matches!(t.trust, Trust::CaFile(_)),
                handshake,
                handshake_failures,
            })
        }
        _ => None,
    };
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Ok(Report {
        target: cfg.url.clone(),
        protocol: plan.target.protocol,
        tls: tls_report,
        mode: if plan.rate.is_some() {
            "open-loop".to_string()
        } else {
            "closed-loop".to_string()
        },
        rate: plan.rate,
        connections: conns,
        streams,
        warmup_secs: plan.warmup.as_secs_f64(),
        duration_secs: secs,
        requests: total.requests,
        responses: total.responses,
        successes: total.successes,
        unsent: total.unsent,
        throughput_rps: per_sec(total.responses),
        bytes_received: total.bytes,
        bytes_per_sec: per_sec(total.bytes),
        errors_total: total.errors.total(),
        errors: total.errors.clone(),
        status_classes: total.status.clone(),
        rpc_statuses: total.rpc_statuses.clone(),
        latency: LatencySummary::from_histogram(&total.corrected),
        service_time: LatencySummary::from_histogram(&total.service),
    })
}

/// One request loop (a connection for HTTP/1.1 and TCP, a stream for HTTP/2).
async fn worker(shared: &Shared, client: &mut Client<'_>, sched: Option<Schedule>, stats: &Mutex<ConnStats>) {
    let mut k: u64 = 0;
    let mut timer = std::pin::pin!(tokio::time::sleep(shared.timeout));
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        let scheduled = match &sched {
            Some(s) => {
                let t = s.at(k);
                if t >= shared.end {
                    break;
                }
                if now >= shared.hard_end {
                    // Cut off while still behind: count what is owed.
                    let owed = s
                        .slots_before(shared.end.saturating_duration_since(s.at(0)))
                        .saturating_sub(k);
                    lock(stats).unsent += owed;
                    break;
                }
                k += 1;
                if t > now + TIMER_SLACK {
                    tokio::time::sleep_until((t - TIMER_SLACK).into()).await;
                }
                Some(t)
            }
            None => {
                if now >= shared.end {
                    break;
                }
                None
            }
        };
        let sent = Instant::now();
        let measured = scheduled.unwrap_or(sent) >= shared.measure_start;
        if measured {
            if let Some(limit) = shared.limit {
                if shared.tickets.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
            }
        }
        // One timer per worker, pushed forward only when needed: a request
        // times out after between `timeout` and 1.1 × `timeout`, and the
        // timer wheel is not touched on every request.
        let want = tokio::time::Instant::from_std(sent + shared.timeout);
        if timer.deadline() < want {
            timer.as_mut().reset(want + shared.timeout / 10);
        }
        let result = tokio::select! {
            biased;
            r = client.exec(&shared.tpl) => r,
            _ = timer.as_mut() => {
                client.on_timeout();
                Err(ErrorKind::Timeout)
            }
        };
        let done = Instant::now();
        // Latency counts from the scheduled time, or from the actual send
        // time if the request went out (slightly) early.
        let start = scheduled.map_or(sent, |t| t.min(sent));
        let failed = match result {
            Ok(r) => {
                if measured {
                    lock(stats).record_response(start, sent, done, r.status, r.grpc_ok, r.rpc, r.bytes);
                }
                r.status.is_some_and(|s| s >= 400) || r.grpc_ok == Some(false) || r.rpc.is_some_and(|(_, ok)| !ok)
            }
            Err(kind) => {
                if measured {
                    lock(stats).record_error(start, done, kind);
                }
                if kind == ErrorKind::Connect && sched.is_none() {
                    // Closed-loop against a refusing target: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                true
            }
        };
        if shared.progress {
            shared.live_requests.fetch_add(1, Ordering::Relaxed);
            if failed {
                shared.live_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn lock(m: &Mutex<ConnStats>) -> parking_lot::MutexGuard<'_, ConnStats> {
    m.lock()
}

async fn progress_loop(shared: Arc<Shared>, start: Instant) {
    use std::io::Write;
    let mut last_n = 0u64;
    let mut last_t = start;
    let mut tick = tokio::time::interval_at((start + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let mut printed = false;
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        }
        let now = Instant::now();
        let n = shared.live_requests.load(Ordering::Relaxed);
        let e = shared.live_errors.load(Ordering::Relaxed);
        let dt = now.duration_since(last_t).as_secs_f64();
        let rate = if dt > 0.0 { (n - last_n) as f64 / dt } else { 0.0 };
        last_n = n;
        last_t = now;
        let phase = if now < shared.measure_start { " (warmup)" } else { "" };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K[{:>6.1}s] requests: {n}  rate: {rate:.0}/s  errors: {e}{phase}",
            now.duration_since(start).as_secs_f64()
        );
        let _ = err.flush();
        printed = true;
    }
    if printed {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
}
