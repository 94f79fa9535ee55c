//! The `weft` binary: `weft proxy`, `weft control`, `weft bench`, `weft demo`.

mod demo;
mod explain;
mod identity;
mod init;
mod intercept;
mod lifecycle;
mod mesh_identity;
mod sd_notify;
mod startup_pages;
mod xds;

// A proxy allocates and frees many small, short-lived buffers per request, across threads;
// mimalloc's per-thread free lists cost measurably less CPU per request than glibc malloc.
#[global_allocator]
static GLOBAL: Alloc = Alloc;

/// mimalloc, asked for a plain `mi_malloc` when the alignment wanted is one it gives every block.
///
/// The `mimalloc` crate always calls `mi_malloc_aligned`, whose fast path only covers blocks up to
/// 1 KiB: every larger one (hyper's read and write buffers, a request's state) went through its
/// generic aligned path, ~500 instructions per proxied HTTP/1.1 request (callgrind). Written here
/// because the crate has no option for it; the same test as std's `System` allocator.
struct Alloc;

/// The alignment of every `mi_malloc` block (mimalloc's `MI_MAX_ALIGN_SIZE`, that of
/// `max_align_t`): blocks of up to 64 bytes come in multiples of 16, larger ones of 16 too.
const MI_MIN_ALIGN: usize = 16;

extern "C" {
    fn mi_malloc(size: usize) -> *mut std::ffi::c_void;
    fn mi_zalloc(size: usize) -> *mut std::ffi::c_void;
    fn mi_realloc(p: *mut std::ffi::c_void, newsize: usize) -> *mut std::ffi::c_void;
}

unsafe impl std::alloc::GlobalAlloc for Alloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= MI_MIN_ALIGN && layout.align() <= layout.size() {
            mi_malloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= MI_MIN_ALIGN && layout.align() <= layout.size() {
            mi_zalloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MI_MIN_ALIGN && layout.align() <= new_size {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mimalloc::MiMalloc.realloc(ptr, layout, new_size)
        }
    }
}

/// Memory settings for the long-running proxy process.
///
/// mimalloc returns freed pages to the OS only after a purge delay (1 s), and performs a delayed
/// purge only when some thread calls into it again: a proxy that had just closed thousands of
/// connections (or parked them, see `weft_proxy::idle`) and then sat idle kept all of that memory
/// resident. Purging at once (`MIMALLOC_PURGE_DELAY=0`) returns it but costs a madvise call per
/// freed page under load, so instead a background thread asks mimalloc once a second to carry
/// out the purges that are due.
///
/// mimalloc also asks for transparent huge pages on its arenas, so touching one byte of a fresh
/// 2 MiB region makes all of it resident: with thousands of mostly idle connections spread over
/// the heap that more than doubled RSS (an idle h2c connection: 47 KiB with, 28 KiB without).
/// THP are turned off for `weft proxy` unless `MIMALLOC_ALLOW_THP` says otherwise; that is done
/// before `main` ([`THP_OFF_FOR_PROXY`]), because the first allocations (argument parsing) fault in
/// mimalloc's first arena: done in `main`, it left 4 MiB of huge pages resident in every idle proxy
/// (idle anonymous memory 6.6 MiB → 1.8 MiB).
fn proxy_memory_settings() {
    // libmimalloc-sys declares it only behind its `extended` feature, which would add a crate
    // for this one function.
    extern "C" {
        fn mi_collect(force: bool);
    }
    let _ = std::thread::Builder::new()
        .name("weft-mem-purge".into())
        .stack_size(64 * 1024)
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            // SAFETY: `mi_collect` may be called from any thread at any time.
            unsafe { mi_collect(false) };
        });
}

/// Runs before `main` (and before any allocation of the Rust runtime's): glibc calls
/// `.init_array` entries with `argc`, `argv` and `envp`, so `weft proxy` can be recognised without
/// allocating. Only `proxy` is changed; the control plane keeps the system's THP policy.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[link_section = ".init_array"]
static THP_OFF_FOR_PROXY: extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char) = {
    extern "C" fn thp_off_for_proxy(
        argc: libc::c_int,
        argv: *const *const libc::c_char,
        _envp: *const *const libc::c_char,
    ) {
        // SAFETY: glibc passes the process's argc/argv (NUL-terminated strings) to `.init_array`
        // functions; `getenv` is safe before any thread exists; PR_SET_THP_DISABLE takes one
        // integer argument (the rest must be zero) and only changes this process's THP policy
        // for later page faults.
        unsafe {
            if argc < 2 || argv.is_null() || (*argv.add(1)).is_null() {
                return;
            }
            if std::ffi::CStr::from_ptr(*argv.add(1)).to_bytes() != b"proxy" {
                return;
            }
            if !libc::getenv(c"MIMALLOC_ALLOW_THP".as_ptr()).is_null() {
                return;
            }
            libc::prctl(
                libc::PR_SET_THP_DISABLE,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            );
        }
    }
    thp_off_for_proxy
};

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weft_proxy::{Server, ServerOptions};

/// `weft --version`: the version, and "(profile-guided)" for a build made by `scripts/build-release`
/// (set by build.rs from the build's rustflags), so that a report says which build it measured.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("WEFT_BUILD_NOTE"));

#[derive(Parser)]
#[command(name = "weft", version = VERSION, about = "weft: a fast, small service mesh")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the data plane (sidecar or edge proxy).
    Proxy(ProxyArgs),
    /// Load generator with open-loop (coordinated-omission corrected) latency measurement.
    Bench(weft_bench::BenchArgs),
    /// A whole mesh on loopback with live traffic: the quickest way to see weft work.
    Demo(demo::DemoArgs),
    /// Run the control plane: watch a registry directory, serve xDS (ADS) to proxies.
    Control(weft_control::cli::ControlArgs),
    /// Wait until a proxy is ready (its admin /ready answers 200): for an app's entrypoint or a
    /// postStart hook, so the app makes no call before its sidecar can route it.
    WaitReady(lifecycle::WaitReadyArgs),
    /// Workload certificates from weft control's CA, written to files.
    Identity(identity::IdentityArgs),
    /// Transparent interception: install (or --remove) the iptables rules that send the app's
    /// TCP to its sidecar, in the current network namespace (istio-init's job).
    Init(init::InitArgs),
    /// Switch interception on or off for one instance without losing a request: drain it at weft
    /// control, wait for every proxy's ACK and for the sidecar's inbound connections to end, run
    /// `weft init` (or `--remove`), put it back.
    Intercept(intercept::InterceptArgs),
    /// Serve a workload certificate to an Envoy sidecar over SDS (key generated here, renewed at half-life).
    SdsAgent(identity::SdsAgentArgs),
    /// Ask a running proxy what it would do with a request: listener, route (and why others did
    /// not match), cluster, endpoints, load-balancer pick and policies. No side effects.
    Explain(explain::ExplainArgs),
}

#[derive(Args)]
struct ProxyArgs {
    /// YAML configuration file (see docs/config.md). Reloaded on SIGHUP and POST /reload.
    #[arg(short = 'c', long = "config", conflicts_with_all = ["from", "to"])]
    config: Option<PathBuf>,
    /// Quick start: listen here...
    #[arg(long, requires = "to")]
    from: Option<SocketAddr>,
    /// ...and proxy to this address (IP:port or host:port).
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Quick start: proxy TCP (L4) instead of HTTP.
    #[arg(long)]
    tcp: bool,
    /// Quick start: speak HTTP/2 (h2c) to the upstream.
    #[arg(long)]
    upstream_h2: bool,
    /// Quick start: write a JSON access log to stdout.
    #[arg(long)]
    access_log: bool,
    /// Quick start: the route timeout, e.g. "30s" (default 15s; "0s" disables it).
    #[arg(long, value_parser = weft_config::duration::parse, requires = "from")]
    timeout: Option<std::time::Duration>,
    /// Admin API address (overrides the file's admin.address). Loopback only, unless
    /// --admin-allow-non-loopback is given too.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Allow a non-loopback --admin address (the admin API has no authentication; see docs/security.md).
    #[arg(long, requires = "admin")]
    admin_allow_non_loopback: bool,
    /// Worker threads (default: the cores available to the process).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log filter, e.g. "info" or "weft_proxy=debug".
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
    /// Serve hot restarts: a later `weft proxy --hot-restart` with the same base id takes this
    /// proxy's listening sockets over (socket in $WEFT_RUNTIME_DIR, $XDG_RUNTIME_DIR or /tmp).
    #[arg(long, env = "WEFT_BASE_ID")]
    base_id: Option<u32>,
    /// Take over from the running proxy with the same --base-id (default 0): receive its
    /// listening sockets, start serving, then make it drain and exit. If this process fails to
    /// start, the old one keeps serving.
    #[arg(long)]
    hot_restart: bool,
    /// The workload identity for mesh mTLS (listener/cluster `tls` blocks without certificates).
    #[command(flatten)]
    identity: mesh_identity::IdentityFlags,
}

fn init_logging(filter: &str) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(use_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false)
        .init();
}

/// Colour (ANSI escapes) in the log only on a terminal, and never when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org/>): a log redirected to a file or a pipe stays plain text.
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Some(Cmd::Proxy(args)) => run_proxy(args),
        Some(Cmd::Bench(args)) => weft_bench::run(args),
        Some(Cmd::Demo(args)) => demo::run(args),
        Some(Cmd::WaitReady(args)) => lifecycle::wait_ready(args),
        Some(Cmd::Explain(args)) => explain::run(args),
        Some(Cmd::Init(args)) => init::run_init(args),
        Some(Cmd::Intercept(args)) => intercept::run(args),
        Some(Cmd::Control(args)) => {
            init_logging(&args.log);
            weft_control::cli::run(args)
        }
        Some(Cmd::Identity(args)) => {
            init_logging("warn");
            identity::run_identity(args)
        }
        Some(Cmd::SdsAgent(args)) => {
            init_logging(&args.log);
            identity::run_sds_agent(args)
        }
        None => demo::run(demo::DemoArgs::default()),
    };
    std::process::exit(code);
}

fn run_proxy(args: ProxyArgs) -> i32 {
    init_logging(&args.log);
    proxy_memory_settings();
    let loaded = match (&args.config, &args.from, &args.to) {
        (Some(path), _, _) => weft_config::from_file(path),
        (None, Some(from), Some(to)) => weft_config::QuickStart {
            from: *from,
            to: to.clone(),
            tcp: args.tcp,
            upstream_http2: args.upstream_h2,
            admin: None,
            concurrency: None,
            access_log: args.access_log,
            route_timeout: args.timeout,
        }
        .to_config(),
        _ => {
            eprintln!("weft proxy: give a config file (-c FILE) or --from ADDR --to ADDR");
            return 2;
        }
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft proxy: invalid configuration:\n{e}");
            return 2;
        }
    };
    if let Some(a) = args.admin {
        let admin = weft_config::Admin {
            address: a,
            allow_non_loopback: args.admin_allow_non_loopback,
        };
        if let Some(why) =
            weft_config::admin::loopback_refusal(a, admin.allow_non_loopback, "--admin-allow-non-loopback")
        {
            eprintln!("weft proxy: invalid configuration:\n--admin: {why}");
            return 2;
        }
        config.admin = Some(admin);
    }
    if let Some(n) = args.concurrency {
        config.runtime.concurrency = Some(n.max(1));
    }
    if args.check {
        if let Some(a) = config
            .admin
            .as_ref()
            .filter(|a| !weft_config::admin::is_loopback(a.address.ip()))
        {
            eprintln!(
                "warning: the admin API ({}) is exposed beyond loopback (explicitly allowed); it has no authentication",
                a.address
            );
        }
        println!(
            "configuration OK: {} listeners, {} clusters",
            config.listeners.len(),
            config.clusters.len()
        );
        return 0;
    }
    let drain_timeout = config.runtime.drain_timeout;
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft proxy: cannot install signal handlers: {e}");
            return 1;
        }
    };
    let bootstrap = config.xds.is_some().then(|| config.clone());
    let handover_path = (args.base_id.is_some() || args.hot_restart)
        .then(|| weft_proxy::hot_restart::socket_path(args.base_id.unwrap_or(0)));
    // Hot restart: the old process's sockets, received before anything is bound.
    let takeover = match (&handover_path, args.hot_restart) {
        (Some(path), true) => match weft_proxy::hot_restart::take_over(path) {
            Ok(mut t) => {
                // Counter totals go on from the old process's.
                weft_proxy::carry::set(std::mem::take(&mut t.counters));
                tracing::info!(old_pid = t.peer_pid, old_version = %t.peer_version,
                    old_build = %t.peer_build.as_deref().unwrap_or("(not sent: a build before build ids)"),
                    build = %weft_proxy::hot_restart::build_id(),
                    listeners = ?t.inherited.names(), "hot restart: received the listening sockets");
                Some(t)
            }
            Err(e) => {
                eprintln!("weft proxy: hot restart: {e}");
                return 1;
            }
        },
        _ => None,
    };
    // Without --hot-restart, claim the hand-over socket before binding anything: a second proxy with
    // the same base id must not join the running one's listeners (SO_REUSEPORT) and then fail.
    let mut handover_socket = match (&handover_path, args.hot_restart) {
        (Some(path), false) => match weft_proxy::hot_restart::bind(path, false) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("weft proxy: hot restart: {e}");
                return 1;
            }
        },
        _ => None,
    };
    let (inherited, takeover) = match takeover {
        Some(mut t) => (std::mem::take(&mut t.inherited), Some(t)),
        None => (Default::default(), None),
    };
    mesh_identity::declare(&args.identity);
    let server = match Server::start_with(
        config,
        ServerOptions {
            config_path: args.config.clone(),
        },
        inherited,
    ) {
        Ok(s) => s,
        Err(e) => {
            // The old process (if any) never hears "drain": it keeps serving.
            eprintln!("weft proxy: {e}");
            return 1;
        }
    };
    if let Some(t) = takeover {
        let old_build = t
            .peer_build
            .clone()
            .unwrap_or_else(|| "(not sent: a build before build ids)".into());
        match t.finish() {
            Ok(pid) => {
                tracing::info!(old_pid = pid, %old_build, build = %weft_proxy::hot_restart::build_id(), "hot restart: the old process is draining");
                // Under systemd (NotifyAccess=all), this process is the service's main one now.
                sd_notify::report(&format!("MAINPID={}", std::process::id()));
            }
            Err(e) => tracing::warn!(error = %e, "hot restart: could not tell the old process to drain"),
        }
    }
    if let Err(e) = mesh_identity::attach(&server, &args.identity) {
        eprintln!("weft proxy: {e}");
        return 2;
    }
    server.set_quit_hook(std::sync::Arc::new(lifecycle::terminate_self));
    if let Some(path) = &handover_path {
        // A hand-over asks this process to drain as SIGTERM would.
        let on_drain = std::sync::Arc::new(|| {
            HANDED_OVER.store(true, std::sync::atomic::Ordering::SeqCst);
            lifecycle::terminate_self();
        });
        let socket = match handover_socket.take() {
            Some(l) => Ok(l),
            // After a take-over: replace the old process's socket, which now drains.
            None => weft_proxy::hot_restart::bind(path, true),
        };
        if let Err(e) =
            socket.and_then(|l| weft_proxy::hot_restart::serve(l, std::sync::Arc::downgrade(&server), on_drain))
        {
            eprintln!("weft proxy: hot restart: {e}");
            return 1;
        }
        tracing::info!(path = %path.display(), "serving hot restarts");
    }
    // Kept alive until shutdown; the proxy serves its last applied config if the client stops.
    let td_hint = mesh_identity::trust_domain_hint(&args.identity);
    let _xds = match bootstrap.map(|b| xds::attach(&server, b, td_hint)).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft proxy: xds: {e}");
            return 1;
        }
    };
    for (name, addr) in server.listener_addrs() {
        tracing::info!(listener = %name, %addr, "listening");
    }
    if let Some(a) = server.admin_addr() {
        tracing::info!(admin = %a, "admin API");
    }
    report_ready(&server);
    release_startup_pages(&server);
    wait_for_signals(&server, signals);
    if !HANDED_OVER.load(std::sync::atomic::Ordering::SeqCst) {
        // Not after a hand-over: the service goes on in the new process.
        sd_notify::report("STOPPING=1");
    }
    tracing::info!(timeout = ?drain_timeout, "draining");
    weft_proxy::hot_restart::trace_drain(server.clone());
    server.shutdown(drain_timeout);
    weft_proxy::hot_restart::send_final_totals(&server);
    tracing::info!("stopped");
    0
}

/// Set when a hot restart handed this process's listeners over: its drain is not the service's.
static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `READY=1` to systemd once the listeners serve and the configuration is loaded (for an xDS
/// configuration, its first complete one).
fn report_ready(server: &Arc<Server>) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        once_configured(server, "weft-sd-ready", || sd_notify::report("READY=1"));
    }
}

/// Once the proxy is ready, the code and constants only starting it needed leave its resident
/// memory ([`startup_pages`]). `WEFT_KEEP_STARTUP_PAGES` set keeps them.
fn release_startup_pages(server: &Arc<Server>) {
    if std::env::var_os("WEFT_KEEP_STARTUP_PAGES").is_none() {
        once_configured(server, "weft-startup-pages", || {
            let kib = startup_pages::release();
            tracing::debug!(kib, "released the startup pages of read-only segments");
        });
    }
}

/// Runs `f` on a thread of its own once the proxy serves its configuration (for an xDS
/// configuration, its first complete one); not at all if the server goes away first.
fn once_configured(server: &Arc<Server>, name: &str, f: impl FnOnce() + Send + 'static) {
    let server = Arc::downgrade(server);
    let _ = std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(move || loop {
            let Some(s) = server.upgrade() else { return };
            if !s.shared.xds_initializing.load(std::sync::atomic::Ordering::SeqCst) {
                drop(s);
                f();
                return;
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(50));
        });
}

/// SIGTERM, SIGINT and SIGHUP handlers, installed before anything listens: a signal that arrives
/// while the proxy starts is then handled (drain, or reload) instead of killing the process.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let _enter = rt.enter();
        let (term, int, hup) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        );
        drop(_enter);
        Ok(Signals { rt, term, int, hup })
    }
}

/// Blocks until SIGTERM/SIGINT; reloads on SIGHUP.
fn wait_for_signals(server: &Arc<Server>, signals: Signals) {
    let Signals {
        rt,
        mut term,
        mut int,
        mut hup,
    } = signals;
    rt.block_on(async {
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    sd_notify::report(&sd_notify::reloading());
                    let s = server.clone();
                    let outcome = tokio::task::spawn_blocking(move || s.reload()).await;
                    match outcome {
                        Ok(Err(e)) => sd_notify::report(&format!("READY=1\nSTATUS=reload refused: {e}")),
                        _ => sd_notify::report("READY=1"),
                    }
                }
            }
        }
    });
    // Give the signal runtime no chance to hold the process.
    rt.shutdown_timeout(Duration::from_millis(10));
}

#[cfg(test)]
mod tests {
    use super::use_colour;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR does not count"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(
            !use_colour(true, Some(OsStr::new("false"))),
            "any non-empty value disables colour"
        );
        assert!(!use_colour(false, None), "a file or pipe gets no escapes");
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }
}
