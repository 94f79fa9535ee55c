//! The running proxy: worker threads, listener sockets, the current snapshot, reload and drain.
//!
//! Threading model: `concurrency` worker threads, each with its own single-threaded tokio runtime and
//! its own `SO_REUSEPORT` socket per listener, so the kernel spreads connections and a connection's
//! whole life (accept, parse, upstream pool, response) stays on one thread with no shared locks.
//! A control thread runs the admin API, DNS refresh, access-log flushing and signal handling.

use crate::access_log::{AccessLogger, AccessLogs};
use crate::cluster::{self, ClusterRt};
use crate::stats::{ListenerStats, Metrics};
use crate::{http, tcp};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_config::{Config, FilterChainMatch, Listener, NetworkFilter};
use weft_core::shard::Counter;

mod sniff;

/// Everything the request path needs from the process, shared by all workers.
pub struct Shared {
    pub metrics: Metrics,
    pub access_logs: Arc<AccessLogs>,
    /// Remote JWKS caches, kept across configurations.
    pub jwks: weft_jwt::JwksCache,
    pub snapshot: ArcSwap<Snapshot>,
    pub draining: AtomicBool,
    pub workers: usize,
    pub config_path: Option<PathBuf>,
    pub last_reload: Mutex<ReloadStatus>,
    /// True while an xDS-configured proxy has not yet applied its first complete configuration:
    /// `/ready` answers 503 `INITIALIZING` so an orchestrator holds the app until it can route.
    pub xds_initializing: AtomicBool,
    /// Extra admin state (the xDS client's) for `/xds`, `/config_dump` and `/stats/prometheus`.
    pub admin_extensions: Mutex<Vec<Arc<dyn AdminExtension>>>,
    /// The workload's mesh identity and the TLS handshake counters (see `crate::tls`).
    pub tls: Arc<crate::tls::TlsState>,
    /// gRPC access loggers by configuration: filters (and reloads) with the same collector and
    /// settings share one logger and its stream; each ends when its last filter is gone.
    grpc_logs: GrpcLogs,
    generation: AtomicU64,
    /// On-demand discovery of services no route matches (set by the xDS client, see
    /// [`Shared::set_discover`]).
    discover: arc_swap::ArcSwapOption<DiscoverFn>,
    /// Sent when the drain timer runs out (see [`ListenerRt::stop`]).
    stop: watch::Sender<bool>,
}

type GrpcLogs = Mutex<
    HashMap<
        (weft_config::grpc_log::GrpcAccessLog, weft_telemetry::als::Kind),
        std::sync::Weak<weft_telemetry::als::GrpcLogger>,
    >,
>;

/// Asks the configuration source for a service on demand (see
/// [`weft_upstream::ClusterLookup::discover`]).
pub type DiscoverFn = Box<dyn Fn(&str) -> Option<weft_upstream::OnDemand> + Send + Sync>;

/// Receives a re-read configuration file instead of [`Server::apply`]: set by the configuration
/// source that owns the proxy's configuration (the xDS client, which merges the file's static part
/// with the dynamic resources it holds). Its error is the reason it refused the file.
pub type ReloadHook = Arc<dyn Fn(Config) -> Result<(), String> + Send + Sync>;

/// Why a configuration could not be put into effect. The running configuration stays as it was.
#[derive(Debug)]
pub enum ApplyError {
    /// A listener's socket could not be bound (in use, no permission, no such address).
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The admin API's address could not be bound.
    AdminBind {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// An access-log sink could not be opened.
    AccessLog { sink: String, source: std::io::Error },
    /// A worker thread could not be started.
    Runtime(std::io::Error),
    /// Reloading: the file could not be read or is invalid (the message names the field).
    Invalid(String),
    /// Reloading: the proxy was started from the command line, not from a file.
    NoConfigFile,
    /// Reloading: the configuration source ([`ReloadHook`]) refused the file.
    Refused(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Bind {
                listener,
                address,
                source,
            } => write!(f, "listener \"{listener}\": cannot bind {address}: {source}"),
            ApplyError::AdminBind { address, source } => write!(f, "admin.address: cannot bind {address}: {source}"),
            ApplyError::AccessLog { sink, source } => write!(f, "access_log {sink}: {source}"),
            ApplyError::Runtime(e) => write!(f, "cannot start a worker thread: {e}"),
            ApplyError::Invalid(e) | ApplyError::Refused(e) => f.write_str(e),
            ApplyError::NoConfigFile => f.write_str("no configuration file to reload (started from the command line)"),
        }
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApplyError::Bind { source, .. }
            | ApplyError::AdminBind { source, .. }
            | ApplyError::AccessLog { source, .. }
            | ApplyError::Runtime(source) => Some(source),
            _ => None,
        }
    }
}

/// A component outside this crate (the xDS client) that reports on the admin API.
pub trait AdminExtension: Send + Sync {
    /// Key in `/config_dump` and path segment (`/xds` for "xds").
    fn name(&self) -> &'static str;
    fn status_json(&self) -> serde_json::Value;
    /// Prometheus text exposition lines (`# TYPE`/samples), without `# EOF`.
    fn prometheus(&self) -> String;
}

impl weft_upstream::ClusterLookup for Shared {
    fn cluster(&self, name: &str) -> Option<Arc<ClusterRt>> {
        self.snapshot.load().clusters.get(name).cloned()
    }

    fn discover(&self, host: &str) -> Option<weft_upstream::OnDemand> {
        self.discover.load().as_ref().and_then(|f| f(host))
    }
}

impl Shared {
    /// Called once the first complete dynamic configuration has been applied.
    pub fn set_xds_initialized(&self) {
        self.xds_initializing.store(false, Ordering::SeqCst);
    }

    /// Requests ever sent to, or in flight on, service `name`'s clusters (`name` and its subsets
    /// `name|…`); None when the proxy has no such cluster. Changes when the service is used.
    pub fn cluster_activity(&self, name: &str) -> Option<u64> {
        let snap = self.snapshot.load();
        let mut found = false;
        let mut n = 0u64;
        for (cname, c) in &snap.clusters {
            if cname.split('|').next() == Some(name) {
                found = true;
                n += c.stats.rq.iter().map(|r| r.get()).sum::<u64>() + c.stats.rq_active.get().max(0) as u64;
            }
        }
        found.then_some(n)
    }

    /// Routes that miss ask `f` for the host's service and wait for it (on-demand scoping).
    pub fn set_discover(&self, f: DiscoverFn) {
        self.discover.store(Some(Arc::new(f)));
    }

    pub fn add_admin_extension(&self, ext: Arc<dyn AdminExtension>) {
        self.admin_extensions.lock().push(ext);
    }
}

#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// One immutable generation of running configuration.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub clusters: weft_core::FastMap<String, Arc<ClusterRt>>,
    pub listeners: HashMap<String, Arc<ListenerRt>>,
}

/// A listener's runtime form for one generation. Connections hold it for their whole life; when a
/// reload changes the listener, the old one is drained (connections close gracefully).
pub struct ListenerRt {
    pub config: Listener,
    pub chains: Vec<(FilterChainMatch, FilterRt)>,
    pub stats: Arc<ListenerStats>,
    /// TLS termination, when the listener has a `tls` block.
    pub tls: Option<Arc<crate::tls::ListenerTlsRt>>,
    /// Shared with the generation that replaced this one when only its routes changed.
    drain: Arc<watch::Sender<bool>>,
    /// Becomes true when the drain timer has run out: TCP sessions then close gracefully.
    pub stop: watch::Receiver<bool>,
}

impl ListenerRt {
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    fn start_drain(&self) {
        let _ = self.drain.send(true);
    }

    /// The filter chain for a connection: the most specific match wins.
    pub fn select_chain(&self, local: SocketAddr, peer: SocketAddr) -> Option<&FilterRt> {
        let mut best: Option<(u8, &FilterRt)> = None;
        for (m, f) in &self.chains {
            let mut score = 0;
            if let Some(p) = m.destination_port {
                if p != local.port() {
                    continue;
                }
                score += 2;
            }
            if !m.source_prefixes.is_empty() {
                if !m.source_prefixes.iter().any(|r| r.contains(peer.ip())) {
                    continue;
                }
                score += 1;
            }
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, f));
            }
        }
        best.map(|(_, f)| f)
    }
}

#[derive(Clone)]
pub enum FilterRt {
    Http(Arc<http::HttpRt>),
    Tcp(Arc<tcp::TcpRt>),
    Rpc(Arc<weft_rpc::RpcRt>),
    /// `rpc.protocol: auto`: the path is picked per connection (see `server/sniff.rs`).
    Auto(Arc<sniff::AutoRt>),
}

/// Per-listener-name state that outlives generations: its sockets and its connection count.
struct ListenerSlot {
    address: SocketAddr,
    bound: SocketAddr,
    current: Arc<ArcSwap<ListenerRt>>,
    accept_tasks: Vec<JoinHandle<()>>,
    /// Duplicates of the listening sockets, kept to hand them to a new process (hot restart).
    sockets: Vec<std::net::TcpListener>,
}

/// Counts a downstream connection against its listener while alive.
pub struct ConnectionGuard {
    count: Arc<AtomicU32>,
    stats: Arc<ListenerStats>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.stats.cx_active.dec();
    }
}

pub struct ServerOptions {
    pub config_path: Option<PathBuf>,
}

/// A running proxy. Dropping it stops the workers.
pub struct Server {
    pub shared: Arc<Shared>,
    workers: Vec<Handle>,
    worker_stops: Vec<tokio::sync::oneshot::Sender<()>>,
    control: Handle,
    control_stop: Option<tokio::sync::oneshot::Sender<()>>,
    slots: Mutex<HashMap<String, ListenerSlot>>,
    conn_counts: Mutex<HashMap<String, Arc<AtomicU32>>>,
    admin_addr: Mutex<Option<SocketAddr>>,
    /// A duplicate of the admin socket (handed over by a hot restart) and its accept task.
    admin_socket: Mutex<Option<(std::net::TcpListener, tokio::task::AbortHandle)>>,
    apply_lock: Mutex<()>,
    /// Listening sockets inherited from the process this one took over, used instead of binding.
    inherited: Mutex<crate::hot_restart::Inherited>,
    /// Makes the process exit after a drain (`POST /quitquitquit`); set by the binary.
    quit_hook: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// What `reload` hands a re-read file to, when not `apply` (see [`ReloadHook`]).
    reload_hook: Mutex<Option<ReloadHook>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

fn spawn_runtime(
    name: String,
    worker_index: Option<usize>,
) -> std::io::Result<(Handle, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = rt.handle().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::Builder::new().name(name).spawn(move || {
        if let Some(i) = worker_index {
            cluster::set_worker_index(i);
            // Its own slot in the request path's counters and histograms (no locked adds).
            weft_core::shard::register_thread();
        }
        rt.block_on(async move {
            let _ = rx.await;
        });
        // Dropping the runtime cancels its remaining tasks (connections).
        rt.shutdown_timeout(Duration::from_millis(100));
    })?;
    Ok((handle, tx, t))
}

impl Server {
    /// Validated config in, running proxy out: binds every listener before returning.
    pub fn start(config: Config, opts: ServerOptions) -> Result<Arc<Server>, ApplyError> {
        Self::start_with(config, opts, crate::hot_restart::Inherited::default())
    }

    /// Like [`Server::start`], serving on sockets inherited from a running proxy (hot restart)
    /// where a listener's name and address match, and binding the rest.
    pub fn start_with(
        config: Config,
        opts: ServerOptions,
        inherited: crate::hot_restart::Inherited,
    ) -> Result<Arc<Server>, ApplyError> {
        let workers = config
            .runtime
            .concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
            .max(1);
        // Before any metric is made: one slot per worker in each (weft_core::shard).
        weft_core::shard::configure(workers);
        let tls = Arc::new(crate::tls::TlsState::default());
        let shared = Arc::new(Shared {
            metrics: Metrics::new(),
            access_logs: Arc::new(AccessLogs::default()),
            jwks: weft_jwt::JwksCache::default(),
            grpc_logs: Mutex::default(),
            snapshot: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                config: Arc::new(Config {
                    node: config.node.clone(),
                    admin: None,
                    runtime: config.runtime.clone(),
                    listeners: vec![],
                    clusters: vec![],
                    xds: config.xds.clone(),
                    dns: None,
                }),
                clusters: weft_core::FastMap::default(),
                listeners: HashMap::new(),
            }),
            draining: AtomicBool::new(false),
            workers,
            config_path: opts.config_path,
            last_reload: Mutex::new(ReloadStatus::default()),
            xds_initializing: AtomicBool::new(config.xds.is_some()),
            admin_extensions: Mutex::new(vec![tls.clone() as Arc<dyn AdminExtension>]),
            tls,
            generation: AtomicU64::new(0),
            discover: arc_swap::ArcSwapOption::empty(),
            stop: watch::channel(false).0,
        });
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        let mut threads = Vec::new();
        for i in 0..workers {
            let (h, s, t) = spawn_runtime(format!("weft-worker-{i}"), Some(i)).map_err(ApplyError::Runtime)?;
            handles.push(h);
            stops.push(s);
            threads.push(t);
        }
        let (control, control_stop, t) = spawn_runtime("weft-control".into(), None).map_err(ApplyError::Runtime)?;
        threads.push(t);
        let server = Arc::new(Server {
            shared: shared.clone(),
            workers: handles,
            worker_stops: stops,
            control: control.clone(),
            control_stop: Some(control_stop),
            slots: Mutex::new(HashMap::new()),
            conn_counts: Mutex::new(HashMap::new()),
            admin_addr: Mutex::new(None),
            admin_socket: Mutex::new(None),
            apply_lock: Mutex::new(()),
            reload_hook: Mutex::new(None),
            quit_hook: Mutex::new(None),
            inherited: Mutex::new(inherited),
            threads: Mutex::new(threads),
        });
        let admin = config.admin.clone();
        let dns = config.dns.clone();
        server.apply(config)?;
        if let Some(d) = dns {
            crate::dns::start(&d, &control).map_err(|source| ApplyError::Bind {
                listener: "dns".into(),
                address: d.listen,
                source,
            })?;
        }
        control.spawn(shared.access_logs.clone().flush_periodically());
        if let Some(admin) = admin {
            // After a hot restart, the admin socket of the old process (both serve it until the
            // old one drains, so a scrape or probe is never refused).
            let inherited = server
                .inherited
                .lock()
                .take(crate::hot_restart::ADMIN_LISTENER, admin.address)
                .and_then(|(_, mut socks)| socks.pop());
            let std_listener = match inherited {
                Some(l) => l,
                None => bind_admin(admin.address).map_err(|source| ApplyError::AdminBind {
                    address: admin.address,
                    source,
                })?,
            };
            *server.admin_addr.lock() = std_listener.local_addr().ok();
            let dup = std_listener.try_clone().ok();
            let weak = Arc::downgrade(&server);
            let task = control.spawn(crate::admin::serve(std_listener, weak));
            *server.admin_socket.lock() = dup.map(|d| (d, task.abort_handle()));
        }
        Ok(server)
    }

    /// Duplicates of every listening socket, by listener, to hand to a new process.
    pub fn handover_sockets(&self) -> Vec<(String, SocketAddr, Vec<std::net::TcpListener>)> {
        let slots = self.slots.lock();
        let mut v: Vec<_> = slots
            .iter()
            .map(|(name, slot)| {
                let socks = slot.sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
                (name.clone(), slot.bound, socks)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((sock, _)) = &*self.admin_socket.lock() {
            if let (Ok(addr), Ok(dup)) = (sock.local_addr(), sock.try_clone()) {
                v.push((crate::hot_restart::ADMIN_LISTENER.to_string(), addr, vec![dup]));
            }
        }
        v
    }

    /// Stops accepting on the admin socket (a hot restart handed it to the new process, which
    /// answers from now on); admin requests already accepted are answered.
    pub fn stop_admin(&self) {
        if let Some((_, task)) = self.admin_socket.lock().take() {
            task.abort();
        }
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        *self.admin_addr.lock()
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.slots.lock().get(name).map(|s| s.bound)
    }

    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = self.slots.lock().iter().map(|(n, s)| (n.clone(), s.bound)).collect();
        v.sort();
        v
    }

    pub fn control_handle(&self) -> &Handle {
        &self.control
    }

    /// Re-reads the config file and applies it. On any error the running config stays.
    pub fn reload(&self) -> Result<String, ApplyError> {
        let Some(path) = &self.shared.config_path else {
            return Err(ApplyError::NoConfigFile);
        };
        let hook = self.reload_hook.lock().clone();
        let result = weft_config::from_file(path)
            .map_err(|e| ApplyError::Invalid(e.to_string()))
            .and_then(|c| match &hook {
                Some(h) => h(c).map_err(ApplyError::Refused),
                None => self.apply(c),
            });
        let mut status = self.shared.last_reload.lock();
        match &result {
            Ok(()) => {
                self.shared.metrics.config_reloads.inc();
                status.last_success = Some(SystemTime::now());
                status.last_error = None;
                tracing::info!(path = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                self.shared.metrics.config_reload_failures.inc();
                status.last_error = Some(e.to_string());
                tracing::error!(path = %path.display(), error = %e, "configuration reload refused; keeping the running configuration");
            }
        }
        result.map(|()| format!("generation {}", self.shared.snapshot.load().generation))
    }

    /// Builds the next snapshot from `config`, binds new listeners, then swaps atomically.
    /// Nothing changes if any step fails.
    /// What `POST /quitquitquit` runs after starting the drain: the binary makes the process exit
    /// as on SIGTERM.
    pub fn set_quit_hook(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        *self.quit_hook.lock() = Some(hook);
    }

    /// Runs the quit hook; false if there is none (an embedded server only drains).
    pub fn quit(&self) -> bool {
        let hook = self.quit_hook.lock().clone();
        hook.map(|h| h()).is_some()
    }

    /// Whether [`Server::quit`] would exit the process.
    pub fn has_quit_hook(&self) -> bool {
        self.quit_hook.lock().is_some()
    }

    pub fn set_reload_hook(&self, hook: ReloadHook) {
        *self.reload_hook.lock() = Some(hook);
    }

    pub fn apply(&self, config: Config) -> Result<(), ApplyError> {
        let _serial = self.apply_lock.lock();
        let shared = &self.shared;
        let old = shared.snapshot.load_full();
        let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let slots_n = shared.workers + 1;

        let mut clusters = weft_core::FastMap::default();
        let mut new_clusters = Vec::new();
        for (i, c) in config.clusters.iter().enumerate() {
            let prev = old.clusters.get(&c.name);
            let rt = match prev {
                Some(p) if p.config == *c && old.config.node == config.node => p.clone(),
                _ => {
                    let connector = |t: &Option<weft_config::tls::ClusterTls>, field: String| match t {
                        None => Ok(None),
                        Some(t) => crate::tls::cluster_connector(t, &shared.tls, &c.name, &field)
                            .map(|c| Some(Arc::new(c)))
                            .map_err(|e| ApplyError::Invalid(e.to_string())),
                    };
                    let tls = connector(&c.tls, format!("clusters[{i}].tls."))?;
                    let tls_matches = c
                        .tls_matches
                        .iter()
                        .enumerate()
                        .map(|(j, m)| connector(&m.tls, format!("clusters[{i}].tls_matches[{j}].tls.")))
                        .collect::<Result<Vec<_>, _>>()?;
                    let rt = Arc::new(
                        ClusterRt::new(
                            c.clone(),
                            shared.metrics.cluster(&c.name),
                            slots_n,
                            config.node.locality.clone(),
                            prev.map(|p| p.as_ref()),
                        )
                        .with_tls(tls)
                        .with_tls_matches(tls_matches),
                    );
                    new_clusters.push(Arc::downgrade(&rt));
                    rt
                }
            };
            clusters.insert(c.name.clone(), rt);
        }

        let mut listeners = HashMap::new();
        let mut changed = Vec::new();
        // Listeners whose route configurations alone changed (an RDS update): their connections
        // stay open and see the new route tables, stored at commit.
        let mut rerouted = Vec::new();
        let mut new_route_tables = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            match old.listeners.get(&l.name) {
                Some(p) if p.config == *l => {
                    listeners.insert(l.name.clone(), p.clone());
                }
                Some(p) if only_routes_changed(&p.config, l) => {
                    for ((_, f), fc) in p.chains.iter().zip(&l.filter_chains) {
                        if let (FilterRt::Http(h), NetworkFilter::Http(cfg)) = (f, &fc.filter) {
                            let table = crate::router::RouteTable::new(&cfg.route_config, &l.name, &shared.metrics);
                            new_route_tables.push((h.clone(), table));
                        }
                    }
                    let rt = Arc::new(ListenerRt {
                        config: l.clone(),
                        chains: p.chains.clone(),
                        stats: p.stats.clone(),
                        tls: p.tls.clone(),
                        drain: p.drain.clone(),
                        stop: p.stop.clone(),
                    });
                    rerouted.push(l.name.clone());
                    listeners.insert(l.name.clone(), rt);
                }
                _ => {
                    let rt = Arc::new(self.build_listener(l, i)?);
                    changed.push(l.name.clone());
                    listeners.insert(l.name.clone(), rt);
                }
            }
        }

        // Bind sockets for new or moved listeners before anything is swapped.
        let mut slots = self.slots.lock();
        let mut new_sockets: HashMap<String, (SocketAddr, Vec<std::net::TcpListener>)> = HashMap::new();
        for l in &config.listeners {
            let reuse = slots.get(&l.name).is_some_and(|s| s.address == l.address);
            if !reuse && l.bind_to_port {
                let inherited = self.inherited.lock().take(&l.name, l.address);
                // Moving a listener to an address another listener holds now is refused by the OS.
                let socks = match inherited {
                    Some((bound, socks)) => Ok((bound, socks)),
                    None => bind_reuseport(l.address, shared.workers, l.transparent)
                        .and_then(|socks| Ok((socks[0].local_addr()?, socks))),
                }
                .map_err(|source| ApplyError::Bind {
                    listener: l.name.clone(),
                    address: l.address,
                    source,
                });
                let (bound, socks) = socks?;
                new_sockets.insert(l.name.clone(), (bound, socks));
            }
        }

        // Commit.
        let snapshot = Arc::new(Snapshot {
            generation,
            config: Arc::new(config),
            clusters,
            listeners,
        });
        shared.snapshot.store(snapshot.clone());

        // Listeners removed or moved: stop accepting, drain their connections.
        let names: Vec<String> = slots.keys().cloned().collect();
        for name in names {
            let keep = snapshot
                .listeners
                .get(&name)
                .is_some_and(|l| !new_sockets.contains_key(&name) && slots[&name].address == l.config.address);
            if !keep {
                if let Some(slot) = slots.remove(&name) {
                    for t in &slot.accept_tasks {
                        t.abort();
                    }
                    slot.current.load().start_drain();
                }
            }
        }
        for (h, table) in new_route_tables {
            h.routes.store(Arc::new(table));
        }
        for name in &rerouted {
            if let Some(slot) = slots.get(name) {
                slot.current.store(snapshot.listeners[name].clone());
            }
        }
        // Listeners whose config changed in place: new connections use the new one, old drain.
        for name in &changed {
            if let Some(slot) = slots.get(name) {
                let old_rt = slot.current.swap(snapshot.listeners[name].clone());
                old_rt.start_drain();
            }
        }
        for (name, (bound, socks)) in new_sockets {
            let lrt = snapshot.listeners[&name].clone();
            let current = Arc::new(ArcSwap::new(lrt.clone()));
            let count = self
                .conn_counts
                .lock()
                .entry(name.clone())
                .or_insert_with(|| Arc::new(AtomicU32::new(0)))
                .clone();
            let mut tasks = Vec::new();
            let mut kept = Vec::new();
            // Inherited sockets may be more or fewer than this process's workers: spread them over
            // the workers, and bind more (same SO_REUSEPORT group) for workers without one.
            let mut socks = socks;
            if socks.len() < self.workers.len() {
                match bind_reuseport(bound, self.workers.len() - socks.len(), lrt.config.transparent) {
                    Ok(more) => socks.extend(more),
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e, "cannot bind extra sockets; some workers share")
                    }
                }
            }
            for (i, sock) in socks.into_iter().enumerate() {
                if let Ok(dup) = sock.try_clone() {
                    kept.push(dup);
                }
                let current = current.clone();
                let shared = self.shared.clone();
                let count = count.clone();
                let worker = &self.workers[i % self.workers.len()];
                tasks.push(worker.spawn(accept_loop(sock, current, shared, count)));
            }
            slots.insert(
                name,
                ListenerSlot {
                    address: lrt.config.address,
                    bound,
                    current,
                    accept_tasks: tasks,
                    sockets: kept,
                },
            );
        }
        drop(slots);
        // Background work for new clusters; each task ends when its cluster is dropped.
        for w in new_clusters {
            let Some(c) = w.upgrade() else { continue };
            if matches!(c.config.discovery, weft_config::Discovery::StrictDns { .. }) {
                self.control.spawn(cluster::refresh_dns(w.clone()));
            }
            if c.protocol() == weft_config::UpstreamProtocol::Http1 {
                self.control.spawn(cluster::sweep_idle(w.clone()));
            }
            if c.config.outlier_detection.is_some() {
                self.control.spawn(crate::outlier::run(w.clone()));
            }
            for i in 0..c.config.health_checks.len() {
                self.control.spawn(crate::health::run(w.clone(), i));
            }
        }
        tracing::debug!(generation, "configuration applied");
        Ok(())
    }

    fn build_listener(&self, l: &Listener, index: usize) -> Result<ListenerRt, ApplyError> {
        let shared = &self.shared;
        let stats = Arc::new(shared.metrics.listener(&l.name));
        let mut chains = Vec::new();
        for fc in &l.filter_chains {
            let f = match &fc.filter {
                NetworkFilter::Http(h) => {
                    let log = self.open_log(h.access_log.as_ref())?;
                    // gRPC / Triple calls are counted per method on the RPC metric families.
                    crate::rpc::ensure_admin(shared);
                    let rt = http::HttpRt::new(h, &l.name, stats.clone(), &shared.metrics, log, &shared.jwks);
                    let rt = rt.with_istio(self.istio(l)).with_stop(shared.stop.subscribe());
                    let rt =
                        rt.with_grpc_log(self.grpc_log(h.grpc_access_log.as_ref(), weft_telemetry::als::Kind::Http));
                    FilterRt::Http(Arc::new(rt.with_tracer(self.tracer_for(h.tracing.as_deref(), &l.name))))
                }
                NetworkFilter::TcpProxy(t) => {
                    let log = self.open_log(t.access_log.as_ref())?;
                    let rt = tcp::TcpRt::new(t, &l.name, stats.clone(), log)
                        .with_grpc_log(self.grpc_log(t.grpc_access_log.as_ref(), weft_telemetry::als::Kind::Tcp));
                    let rt = rt.with_tracer(self.tracer_for(t.tracing.as_deref(), &l.name));
                    let rt = rt.with_authz(&shared.metrics);
                    FilterRt::Tcp(Arc::new(rt.with_istio(self.istio_tcp(l, &t.cluster))))
                }
                NetworkFilter::Rpc(r) if r.sniff.is_some() => {
                    let sniff = r.sniff.as_ref().expect("checked");
                    FilterRt::Auto(Arc::new(self.build_auto(r, sniff, l, &stats)?))
                }
                NetworkFilter::Rpc(r) => {
                    let log = self.open_log(r.access_log.as_ref())?;
                    crate::rpc::ensure_admin(shared);
                    let tracer = self.tracer_for(r.tracing.as_deref(), &l.name);
                    let rt = weft_rpc::RpcRt::new(r, &l.name, log).with_tracer(tracer);
                    FilterRt::Rpc(Arc::new(rt.with_istio(self.istio_reporter(l))))
                }
            };
            chains.push((fc.match_.clone(), f));
        }
        let tls = match &l.tls {
            None => None,
            Some(t) => {
                let field = format!("listeners[{index}].tls.");
                let rt = crate::tls::ListenerTlsRt::new(t, &shared.tls, &l.name, &field)
                    .map_err(|e| ApplyError::Invalid(e.to_string()))?;
                if let Some(r) = &rt.resolver {
                    self.control.spawn(weft_tls::resolver::watch_files(
                        Arc::downgrade(r),
                        crate::tls::FILE_POLL,
                    ));
                }
                Some(Arc::new(rt))
            }
        };
        Ok(ListenerRt {
            config: l.clone(),
            chains,
            stats,
            tls,
            drain: Arc::new(watch::channel(false).0),
            stop: shared.stop.subscribe(),
        })
    }

    /// The Istio-standard metrics reporter of a listener's connection manager: reporter
    /// `source` on outbound listeners, `destination` otherwise; this proxy's workload from the node.
    fn istio(&self, l: &Listener) -> Option<Arc<weft_core::istio::IstioReporter>> {
        self.istio_reporter(l).map(Arc::new)
    }

    /// [`Self::istio`], unshared (an RPC listener sets its protocol on it first).
    pub(crate) fn istio_reporter(&self, l: &Listener) -> Option<weft_core::istio::IstioReporter> {
        let node = &self.shared.snapshot.load().config.node;
        if !weft_core::istio::enabled(&node.metadata) {
            return None;
        }
        let me = weft_core::istio::Workload::from_node(&node.id, &node.metadata);
        let inbound = l.direction != weft_config::Direction::Outbound;
        Some(weft_core::istio::IstioReporter::new(
            self.shared.metrics.istio.clone(),
            &me,
            inbound,
        ))
    }

    /// The Istio-standard TCP metrics reporter of a TCP proxy listener (reporter as in [`Self::istio`]).
    fn istio_tcp(&self, l: &Listener, cluster: &str) -> Option<Arc<weft_core::istio_tcp::IstioTcpReporter>> {
        let node = &self.shared.snapshot.load().config.node;
        if !weft_core::istio::enabled(&node.metadata) {
            return None;
        }
        let me = weft_core::istio::Workload::from_node(&node.id, &node.metadata);
        let inbound = l.direction != weft_config::Direction::Outbound;
        Some(Arc::new(weft_core::istio_tcp::IstioTcpReporter::new(
            self.shared.metrics.istio.clone(),
            &me,
            inbound,
            cluster,
        )))
    }

    /// The tracer of a connection manager or RPC listener with a `tracing` block, and its exporter task.
    pub(crate) fn tracer_for(
        &self,
        t: Option<&weft_config::Tracing>,
        listener: &str,
    ) -> Option<Arc<weft_core::trace::Tracer>> {
        let t = t?;
        let shared = Arc::downgrade(&self.shared);
        let resolve: weft_telemetry::ClusterResolver = Arc::new(move |name: &str| {
            let shared = shared.upgrade()?;
            let c = weft_upstream::ClusterLookup::cluster(&*shared, name)?;
            c.pick(None, None, None).map(|h| h.address)
        });
        let node = self.shared.snapshot.load().config.node.id.clone();
        let counters = self.shared.metrics.tracing.counters(listener);
        Some(weft_telemetry::start(&self.control, t, &node, counters, resolve))
    }

    /// The gRPC access logger a filter configures: the running one with the same settings, or a
    /// new one with its sender task.
    fn grpc_log(
        &self,
        g: Option<&weft_config::grpc_log::GrpcAccessLog>,
        kind: weft_telemetry::als::Kind,
    ) -> Option<Arc<weft_telemetry::als::GrpcLogger>> {
        let g = g?;
        let mut cache = self.shared.grpc_logs.lock();
        cache.retain(|_, w| w.strong_count() > 0);
        let key = (g.clone(), kind);
        if let Some(l) = cache.get(&key).and_then(std::sync::Weak::upgrade) {
            return Some(l);
        }
        let shared = Arc::downgrade(&self.shared);
        let resolve: weft_telemetry::ClusterResolver = Arc::new(move |name: &str| {
            let shared = shared.upgrade()?;
            let c = weft_upstream::ClusterLookup::cluster(&*shared, name)?;
            c.pick(None, None, None).map(|h| h.address)
        });
        let node = self.shared.snapshot.load().config.node.clone();
        let counters = self.shared.metrics.grpc_logs.counters(&g.log_name, kind.as_str());
        let l = weft_telemetry::als::start(&self.control, g, kind, &node, counters, resolve);
        cache.insert(key, Arc::downgrade(&l));
        Some(l)
    }

    fn open_log(&self, log: Option<&weft_config::AccessLog>) -> Result<Option<Arc<AccessLogger>>, ApplyError> {
        match log {
            None => Ok(None),
            Some(l) => self
                .shared
                .access_logs
                .get_for(l)
                .map(Some)
                .map_err(|source| ApplyError::AccessLog {
                    sink: format!("{:?}", l.sink),
                    source,
                }),
        }
    }

    /// Stops accepting everywhere and asks every connection to close gracefully.
    pub fn start_drain(&self) {
        self.drain_listeners(|_| true);
    }

    /// Stops accepting on the listeners `which` selects and drains their connections; `/ready`
    /// answers 503 from now on.
    fn drain_listeners(&self, which: impl Fn(&str) -> bool) {
        self.shared.draining.store(true, Ordering::SeqCst);
        let mut slots = self.slots.lock();
        for (_, slot) in slots.iter_mut().filter(|(name, _)| which(name)) {
            for t in &slot.accept_tasks {
                t.abort();
            }
            // The kept duplicates too, so the sockets close and new connections are refused
            // (after a hot restart the new process holds its own descriptors of them).
            slot.sockets.clear();
            slot.current.load().start_drain();
        }
        for (_, l) in self
            .shared
            .snapshot
            .load()
            .listeners
            .iter()
            .filter(|(name, _)| which(name))
        {
            l.start_drain();
        }
    }

    /// Open downstream connections across all listeners.
    pub fn active_connections(&self) -> u32 {
        self.conn_counts
            .lock()
            .values()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Drains, waits for connections to finish (up to `timeout`), then stops the workers.
    ///
    /// A sidecar's outbound listeners (`direction: outbound`) go last: while the inbound ones drain,
    /// they keep accepting and serving the app's own calls (an app finishing its work during its own
    /// shutdown still reaches its dependencies) until every connection has closed or the timeout
    /// passes.
    pub fn shutdown(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let outbound: Vec<String> = self
            .shared
            .snapshot
            .load()
            .listeners
            .values()
            .filter(|l| l.config.direction == weft_config::Direction::Outbound)
            .map(|l| l.config.name.clone())
            .collect();
        if !outbound.is_empty() {
            self.drain_listeners(|name| !outbound.iter().any(|o| o == name));
            while self.active_connections() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.start_drain();
        while self.active_connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.active_connections() > 0 {
            // The drain timer is over: TCP sessions end with a FIN both ways (never a reset of
            // data in flight), given a moment to do so.
            let _ = self.shared.stop.send(true);
            let grace = Instant::now() + STOP_GRACE;
            while self.active_connections() > 0 && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.shared.access_logs.flush_all();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for s in self.worker_stops.drain(..) {
            let _ = s.send(());
        }
        if let Some(s) = self.control_stop.take() {
            let _ = s.send(());
        }
        self.shared.access_logs.flush_all();
        let current = std::thread::current().id();
        for t in self.threads.lock().drain(..) {
            if t.thread().id() != current {
                let _ = t.join();
            }
        }
    }
}

/// How long sessions get to close after the drain timer (see [`crate::tcp`]).
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The admin socket: non-blocking, with a listen backlog of 1024 (std's 128 drops connections
/// when monitoring and probes arrive in bursts).
fn bind_admin(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

fn bind_reuseport(addr: SocketAddr, n: usize, transparent: bool) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut target = addr;
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if target.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if transparent {
            crate::interception::set_transparent(&s, target)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&target.into())?;
        s.listen(4096)?;
        let l: std::net::TcpListener = s.into();
        if target.port() == 0 {
            target = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}

async fn accept_loop(
    sock: std::net::TcpListener,
    current: Arc<ArcSwap<ListenerRt>>,
    shared: Arc<Shared>,
    count: Arc<AtomicU32>,
) {
    let listener = match tokio::net::TcpListener::from_std(sock) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register listener socket");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let lrt = current.load_full();
        // The hand-over pause of a hot restart is measured from these (bench/hot-restart); one
        // branch when the target is off.
        tracing::debug!(target: "weft::accept", listener = %lrt.config.name, "accepted");
        lrt.stats.cx_total.inc();
        if let Some(max) = lrt.config.max_connections {
            if count.load(Ordering::Relaxed) >= max {
                lrt.stats.cx_overflow.inc();
                drop(stream);
                continue;
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        lrt.stats.cx_active.inc();
        let guard = ConnectionGuard {
            count: count.clone(),
            stats: lrt.stats.clone(),
        };
        let shared = shared.clone();
        tokio::spawn(handle_connection(stream, peer, lrt, shared, guard));
    }
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    lrt: Arc<ListenerRt>,
    shared: Arc<Shared>,
    guard: ConnectionGuard,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(lrt.config.address);
    // Transparent interception: the filter chains (of a virtual listener, if one has the address)
    // match the original destination; the accepting listener still owns the drain.
    // (Borrowed, not cloned, when the listener does not dispatch: nothing more per connection.)
    let dispatched;
    let (chains, local) = if lrt.config.original_destination {
        dispatched = crate::interception::dispatch(&stream, &lrt, &shared, local);
        (&dispatched.0, dispatched.1)
    } else {
        (&lrt, local)
    };
    match chains.select_chain(local, peer) {
        Some(FilterRt::Http(h)) => match &chains.tls {
            None => http::serve_connection(stream, peer, local, h.clone(), lrt.clone(), shared).await,
            // Boxed: the TLS state machine is large, and an unboxed branch would make every
            // plaintext connection's task as large as a TLS one.
            Some(t) => {
                Box::pin(crate::tls::serve_http(
                    stream,
                    peer,
                    h.clone(),
                    lrt.clone(),
                    shared,
                    t.clone(),
                ))
                .await
            }
        },
        Some(FilterRt::Tcp(t)) => tcp::serve_connection(stream, peer, t.clone(), lrt.clone(), &*shared).await,
        Some(FilterRt::Rpc(r)) => match &chains.tls {
            None => weft_rpc::serve_connection(stream, peer, r.clone(), &*shared, lrt.drain_signal()).await,
            Some(t) => {
                Box::pin(crate::tls::serve_rpc(
                    stream,
                    peer,
                    r.clone(),
                    lrt.clone(),
                    shared,
                    t.clone(),
                ))
                .await
            }
        },
        Some(FilterRt::Auto(a)) => Box::pin(sniff::serve(stream, peer, local, a, lrt.clone(), shared)).await,
        None => {
            tracing::debug!(listener = %lrt.config.name, %peer, "no filter chain matched; closing");
        }
    }
    drop(guard);
}

/// A local-reply counter per reason, pre-resolved for a listener.
pub struct LocalReplyCounters {
    counters: Vec<(&'static str, Counter)>,
}

impl LocalReplyCounters {
    pub fn new(metrics: &Metrics, listener: &str) -> Self {
        use crate::flags::Reason::*;
        let counters = [
            NoRoute,
            NoHealthyUpstream,
            UpstreamConnectFailure,
            UpstreamReset,
            UpstreamTimeout,
            Overflow,
            UpstreamProtocolError,
            DownstreamProtocolError,
            DownstreamDisconnect,
            DirectResponse,
            FaultInjected,
            RateLimited,
            RateLimitServiceError,
            NoCluster,
            Rbac,
        ]
        .iter()
        .map(|r| (r.code(), metrics.local_reply(listener, r.code())))
        .collect();
        LocalReplyCounters { counters }
    }

    pub fn inc(&self, code: &str) {
        if let Some((_, c)) = self.counters.iter().find(|(c, _)| *c == code) {
            c.inc();
        }
    }
}

/// Whether `new` differs from `old` only in the route configurations of its HTTP connection
/// managers. Such a change (an RDS update, or a route edit in the file) swaps route tables in place:
/// Envoy does the same, and draining every connection on each route update would turn routine
/// canary shifts into connection churn and lost keep-alive requests.
fn only_routes_changed(old: &Listener, new: &Listener) -> bool {
    old.name == new.name
        && old.address == new.address
        && old.max_connections == new.max_connections
        && old.tls == new.tls
        && old.filter_chains.len() == new.filter_chains.len()
        && old.filter_chains.iter().zip(&new.filter_chains).all(|(a, b)| {
            a.name == b.name
                && a.match_ == b.match_
                && match (&a.filter, &b.filter) {
                    (NetworkFilter::Http(x), NetworkFilter::Http(y)) => {
                        let mut same = y.clone();
                        same.route_config = x.route_config.clone();
                        *x == same
                    }
                    (NetworkFilter::TcpProxy(x), NetworkFilter::TcpProxy(y)) => x == y,
                    _ => false,
                }
        })
}
