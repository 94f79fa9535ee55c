//! weft control: the control plane.
//!
//! It watches a service registry (a directory of YAML files; the [`registry::Registry`] trait lets
//! Kubernetes, etcd or ZooKeeper slot in), validates services and policies ([`model`]), translates
//! them into Envoy v3 resources per the contract in `docs/xds-contract.md` ([`translate`]), and
//! serves them over ADS, State-of-the-World and Delta ([`server`]), with an admin API ([`admin`]).
//!
//! In-process use (tests, demos):
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! let cp = weft_control::ControlPlane::start(weft_control::ControlOptions::new("/etc/weft/registry")).await?;
//! println!("xDS on {}, admin on {:?}", cp.xds_addr(), cp.admin_addr());
//! cp.stop().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz_xds;
pub mod ca;
pub mod cli;
#[cfg(feature = "kubernetes")]
pub mod crd;
pub mod drain;
mod files;
pub mod graph;
#[cfg(feature = "kubernetes")]
pub mod injector;
#[cfg(feature = "kubernetes")]
pub mod istio;
pub mod mesh_tls;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod server;
pub mod translate;
pub mod wire;

use registry::{Catalog, FileRegistry, MultiRegistry, Registry, RegistryStatus};
use server::{Ads, Shared};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub struct ControlOptions {
    pub registry: Box<dyn Registry>,
    /// ADS (gRPC, h2c) address; port 0 picks a free port.
    pub xds: SocketAddr,
    /// Admin HTTP address; None disables the admin API.
    pub admin: Option<SocketAddr>,
    /// How long registry changes are collected before one push.
    pub debounce: Duration,
    /// The mesh CA, served next to ADS (`istio.v1.auth.IstioCertificateService`); None: no CA.
    pub ca: Option<Arc<ca::Ca>>,
    /// Also serve the CA API over TLS here (`--ca-tls`); needs `ca`.
    pub ca_tls: Option<SocketAddr>,
    /// Which proxies are sent only part of the mesh (`--scoping`).
    pub scoping: server::Scoping,
    /// The live service graph's scraping (`--graph-interval`).
    pub graph: graph::GraphOptions,
    /// Where state that outlives a restart is kept (`--state-dir`): the endpoint drains
    /// (`drains.json`, [`drain::Drains::load`]). None: drains live in memory only.
    pub state_dir: Option<PathBuf>,
    /// Mesh mTLS in the resources sent (transport sockets with Istio's SDS names); set with the CA.
    pub mesh_tls: Option<model::MeshTls>,
}

impl ControlOptions {
    /// A file registry on `dir`, xDS and admin on loopback with ephemeral ports.
    pub fn new(dir: impl Into<PathBuf>) -> ControlOptions {
        ControlOptions {
            registry: Box::new(FileRegistry::new(dir)),
            xds: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            debounce: Duration::from_millis(100),
            ca: None,
            ca_tls: None,
            scoping: server::Scoping::default(),
            graph: graph::GraphOptions::default(),
            state_dir: None,
            mesh_tls: None,
        }
    }
}

/// A running control plane. Dropping it without [`ControlPlane::stop`] leaves its tasks running
/// until the runtime ends.
pub struct ControlPlane {
    xds_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub shared: Arc<Shared>,
    pub registry_status: Arc<Mutex<RegistryStatus>>,
    /// Endpoints taken out of rotation (`POST /endpoints/drain` on the admin API).
    pub drains: Arc<drain::Drains>,
    /// The live service graph (`GET /graph`, `/graph.json` on the admin API).
    pub graph: Arc<graph::Graph>,
    ca_tls_addr: Option<SocketAddr>,
}

/// Listen backlog of the xDS and admin sockets. Thousands of proxies reconnect at once when the
/// control plane restarts; tokio's default (1024) overflows into SYN cookies and resets under that
/// (the kernel caps it at net.core.somaxconn).
pub const LISTEN_BACKLOG: i32 = 4096;

/// How often weft control logs a summary at INFO of what it logged per event at debug: streams
/// opened and closed, snapshots published, NACKs.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

async fn log_summary(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let (opened, closed, snapshots, nacks) = shared.metrics.activity.take();
        if opened + closed + snapshots + nacks == 0 {
            continue;
        }
        let connected = shared.proxies.lock().unwrap_or_else(|p| p.into_inner()).len();
        let generation = shared.snapshots.borrow().as_ref().map_or(0, |s| s.generation);
        tracing::info!(
            streams_opened = opened,
            streams_closed = closed,
            connected,
            snapshots_published = snapshots,
            generation,
            nacks,
            "in the last {}s",
            every.as_secs()
        );
    }
}

/// Accepted connections waiting for the gRPC server to pick them up.
const ACCEPT_QUEUE: usize = 4096;

/// A listening socket with [`LISTEN_BACKLOG`] and SO_REUSEADDR (a restarted control plane binds its
/// port again while the previous one's connections linger in TIME_WAIT).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// Accepts connections and hands them to the gRPC server (which serves each in its own task).
/// Errors such as EMFILE pause accepting briefly instead of ending it.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    out: mpsc::Sender<std::io::Result<tokio::net::TcpStream>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                if out.send(Ok(stream)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting an xDS connection failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl ControlPlane {
    /// Binds the ports and starts the registry, catalog, ADS server and admin API on the current
    /// tokio runtime. Nothing is served to proxies until the registry's first sync completes.
    pub async fn start(opts: ControlOptions) -> std::io::Result<ControlPlane> {
        let xds_listener = listen(opts.xds)?;
        let xds_addr = xds_listener.local_addr()?;
        let admin_listener = match opts.admin {
            Some(a) => Some(listen(a)?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (snap_tx, snap_rx) = watch::channel(None);
        let metrics = Arc::new(metrics::Metrics::new());
        let status = Arc::new(Mutex::new(RegistryStatus::default()));
        let shared = Arc::new(Shared {
            snapshots: snap_rx,
            metrics: metrics.clone(),
            proxies: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: shutdown_rx.clone(),
            scoping: opts.scoping,
        });
        let mut tasks = Vec::new();
        let (ev_tx, ev_rx) = mpsc::channel(64);
        tracing::info!(registry = %opts.registry.describe(), %xds_addr, "weft control starting");
        // Always a MultiRegistry (of one, or of several when given one): it names the registries
        // on /debug/registry and in metrics.
        let registry = Box::new(MultiRegistry {
            members: vec![opts.registry],
        });
        tasks.push(tokio::spawn(registry.run(ev_tx, shutdown_rx.clone())));
        let mut catalog = Catalog::new(status.clone(), snap_tx, metrics, opts.debounce);
        catalog.mesh_tls = opts.mesh_tls.clone();
        if let Some(dir) = &opts.state_dir {
            catalog.drains = drain::Drains::load(dir).map_err(std::io::Error::other)?;
        }
        let drains = catalog.drains.clone();
        tasks.push(tokio::spawn(catalog.run(ev_rx)));
        let svc = Ads { shared: shared.clone() };
        let ca_svc = opts
            .ca
            .clone()
            .map(|ca| ca::service::CaService::new(ca, shared.metrics.clone()));
        if let Some(ca) = &opts.ca {
            shared.metrics.ca.set_roots(ca);
            tasks.push(tokio::spawn(ca::rollover::watch(
                ca.clone(),
                shared.metrics.clone(),
                shutdown_rx.clone(),
            )));
        }
        let admin_ca = opts.ca.clone();
        let mut ca_tls_addr = None;
        if let (Some(addr), Some(ca)) = (opts.ca_tls, opts.ca) {
            let l = listen(addr)?;
            ca_tls_addr = Some(l.local_addr()?);
            let sd = shutdown_rx.clone();
            let both = ca::service::WithCa {
                inner: svc.clone(),
                ca: ca_svc.clone(),
            };
            tasks.push(tokio::spawn(async move {
                if let Err(e) = ca::tls::serve(l, ca, both, sd).await {
                    tracing::error!(error = %e, "the secure xDS/CA port failed");
                }
            }));
        }
        let mut sd = shutdown_rx.clone();
        // Accepting is its own task, so that a burst of connections (a reconnect storm after a
        // restart) is taken off the listen queue as fast as they come, whatever else the server does.
        let (conn_tx, conn_rx) = mpsc::channel(ACCEPT_QUEUE);
        tasks.push(tokio::spawn(accept_loop(xds_listener, conn_tx, shutdown_rx.clone())));
        tasks.push(tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(conn_rx);
            let res = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                // No router: unknown paths get UNIMPLEMENTED from the ADS service (wire.rs); the CA's
                // path goes to the CA (ca::service::WithCa).
                .serve_with_incoming_shutdown(ca::service::WithCa { inner: svc, ca: ca_svc }, incoming, async move {
                    let _ = sd.wait_for(|v| *v).await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "ADS server failed");
            }
        }));
        tasks.push(tokio::spawn(log_summary(
            shared.clone(),
            shutdown_rx.clone(),
            SUMMARY_INTERVAL,
        )));
        let graph = Arc::new(graph::Graph::new(&opts.graph));
        // The graph is served on the admin API: no admin API, no scraping.
        if admin_listener.is_some() {
            tasks.push(tokio::spawn(graph::run(
                graph.clone(),
                shared.clone(),
                shutdown_rx.clone(),
            )));
        }
        if let Some(l) = admin_listener {
            let st = admin::AdminState {
                shared: shared.clone(),
                registry: status.clone(),
                drains: drains.clone(),
                graph: graph.clone(),
                ca: admin_ca,
            };
            tasks.push(tokio::spawn(admin::serve(l, st, shutdown_rx)));
        }
        Ok(ControlPlane {
            xds_addr,
            admin_addr,
            shutdown,
            tasks,
            shared,
            registry_status: status,
            drains,
            graph,
            ca_tls_addr,
        })
    }

    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The CA's TLS port (`ControlOptions::ca_tls`), if any.
    pub fn ca_tls_addr(&self) -> Option<SocketAddr> {
        self.ca_tls_addr
    }

    /// True once the registry's first sync is complete and a snapshot is being served.
    pub fn is_ready(&self) -> bool {
        self.shared.snapshots.borrow().is_some()
    }

    /// Closes all ADS streams and stops every task (bounded: tasks still running after 5 s are
    /// aborted).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
                abort.abort();
            }
        }
    }
}
