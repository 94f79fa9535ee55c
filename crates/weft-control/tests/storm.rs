//! A reconnect storm: the control plane restarts under many connected xDS clients (real weft xDS
//! clients, SotW and Delta, with their jittered exponential backoff), and every one of them
//! converges on the new registry content. Also: the xDS socket's listen backlog.

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_control::{ControlOptions, ControlPlane};

const CLIENTS: usize = 200;

async fn start_at(dir: &TempDir, xds: std::net::SocketAddr) -> ControlPlane {
    let mut opts = ControlOptions::new(dir.path());
    opts.xds = xds;
    opts.admin = None;
    opts.debounce = Duration::from_millis(50);
    opts.registry = Box::new(weft_control::registry::FileRegistry {
        dir: dir.path().to_path_buf(),
        interval: Duration::from_millis(50),
    });
    ControlPlane::start(opts).await.unwrap()
}

struct Client {
    xds: weft_xds_client::XdsClient,
    applied: Arc<Mutex<Option<weft_config::Config>>>,
}

impl Client {
    fn start(i: usize, xds: std::net::SocketAddr) -> Client {
        let mode = if i.is_multiple_of(2) { "ads_delta" } else { "ads_sotw" };
        // Listener ports 0: nothing is bound for them, so hundreds of clients fit in one process.
        let yaml = format!(
            "node: {{ id: storm-{i}, cluster: a, metadata: {{ weft.role: sidecar, weft.outbound: \"127.0.0.1:0\", weft.inbound: \"127.0.0.1:0\", weft.app: \"127.0.0.1:1\" }} }}\nxds:\n  address: \"{xds}\"\n  mode: {mode}\n  backoff_base: 100ms\n  backoff_max: 2s\n"
        );
        let bootstrap = weft_config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let applied = Arc::new(Mutex::new(None));
        let a = applied.clone();
        let apply: weft_xds_client::ApplyFn = Arc::new(move |cfg| {
            *a.lock().unwrap() = Some(cfg);
            Ok(())
        });
        let xds =
            weft_xds_client::XdsClient::start(bootstrap, apply, Arc::new(|| {}), &tokio::runtime::Handle::current())
                .unwrap();
        Client { xds, applied }
    }

    /// The applied configuration has cluster `name` with endpoints.
    fn has(&self, name: &str) -> bool {
        self.applied
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|c| c.clusters.iter().any(|c| c.name == name && !c.endpoints.is_empty()))
    }
}

async fn converge(clients: &[Client], what: &str, cluster: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let done = clients.iter().filter(|c| c.xds.initialized() && c.has(cluster)).count();
        if done == clients.len() {
            return t.elapsed();
        }
        if t.elapsed() >= timeout {
            for (i, c) in clients
                .iter()
                .enumerate()
                .filter(|(_, c)| !(c.xds.initialized() && c.has(cluster)))
                .take(2)
            {
                eprintln!(
                    "client {i}: {}",
                    serde_json::to_string_pretty(&c.xds.status_json()).unwrap()
                );
            }
        }
        assert!(
            t.elapsed() < timeout,
            "{what}: {done}/{} clients converged after {timeout:?}",
            clients.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_converges_after_a_control_plane_restart() {
    let dir = TempDir::new("control");
    dir.write(
        "s.yaml",
        "services:\n - {name: a, endpoints: [{address: 10.0.0.1:80}]}\n - {name: b, endpoints: [{address: 10.0.0.2:80}]}\n",
    );
    // The port must be free again after the stop: drawn below the ephemeral range, where no
    // reconnecting client's own source port can take it (or connect to itself on it).
    let cp = start_at(&dir, weft_test_support::free_addr()).await;
    let xds = cp.xds_addr();
    wait_ready(&cp).await;
    let clients: Vec<Client> = (0..CLIENTS).map(|i| Client::start(i, xds)).collect();
    let first = converge(&clients, "initial sync", "b", Duration::from_secs(60)).await;

    // Down: every stream fails and backs off. The registry changes meanwhile, so every client
    // has something to receive from the new process.
    cp.stop().await;
    dir.write(
        "late.yaml",
        "services: [{name: late, endpoints: [{address: 10.0.0.3:80}]}]\n",
    );
    let all_down = weft_test_support::within(Duration::from_secs(5), || async {
        clients.iter().all(|c| !c.xds.connected())
    })
    .await;
    assert!(all_down, "streams survived the stop");

    let cp = start_at(&dir, xds).await;
    let again = converge(&clients, "after the restart", "late", Duration::from_secs(15)).await;
    assert!(clients.iter().all(|c| c.xds.connected()));
    eprintln!("{CLIENTS} clients: initial sync {first:?}, reconverged {again:?} after the restart");
    cp.stop().await;
}

/// The xDS socket listens with a backlog of 4096 (tokio's default is 1024): a thousand proxies
/// reconnecting at once must not overflow it into SYN cookies and resets.
#[tokio::test]
async fn xds_listen_backlog_is_4096() {
    let dir = TempDir::new("control");
    dir.write("s.yaml", "services: []\n");
    let cp = start_at(&dir, "127.0.0.1:0".parse().unwrap()).await;
    let port = cp.xds_addr().port();
    let somaxconn: i64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output();
    let Ok(out) = out else {
        // scripts/install-peers installs iproute2; under CI a missing peer is a failure.
        assert!(std::env::var("CI").is_err(), "ss (iproute2) is missing");
        eprintln!("ss not available; skipping");
        cp.stop().await;
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // State Recv-Q Send-Q Local Peer: for a listening socket Send-Q is the backlog.
    let backlog: i64 = text
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected ss output: {text}"));
    assert_eq!(backlog, somaxconn.min(4096), "{text}");
    cp.stop().await;
}
