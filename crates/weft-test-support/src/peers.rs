//! Third-party peers (nginx, Envoy, curl, wrk, the interop virtualenvs).
//!
//! The rule: when a peer is missing, a test prints `SKIPPED: ...` and passes, except when the
//! environment variable `CI` is `true`, where a missing peer is a failure (CI installs every
//! peer with `scripts/install-peers` and `interop/install`).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// Whether missing peers fail the test (`CI=true`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports a missing peer: under `CI=true` panics with `what` and `hint` (how to install it);
/// otherwise prints a skip note. The caller then returns early.
pub fn missing(what: &str, hint: &str) {
    if ci() {
        panic!("{what} is missing ({hint}); CI=true, so this is a failure");
    }
    eprintln!("SKIPPED: {what} is missing ({hint}); set CI=true to make this a failure");
}

/// `bin` on PATH, or in the sbin directories where nginx often lives (not always on a user's
/// PATH). None if absent; does not apply the CI rule (see [`tool`]).
pub fn on_path(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

/// [`on_path`] with the CI rule: None (after a skip note) outside CI, a panic under `CI=true`.
pub fn tool(bin: &str) -> Option<PathBuf> {
    let found = on_path(bin);
    if found.is_none() {
        missing(&format!("`{bin}`"), "not on PATH; scripts/install-peers installs it");
    }
    found
}

/// Whether `tool --version_arg` runs and succeeds, with the CI rule.
pub fn runs(tool: &str, version_arg: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing(
            &format!("`{tool}` (could not run `{tool} {version_arg}`)"),
            "is it installed and on PATH? scripts/install-peers installs it",
        );
    }
    ok
}

/// The repository's `interop/` directory (virtualenvs and node modules of interop peers).
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// `interop/REL` if it exists, with the CI rule.
pub fn interop_peer(rel: &str) -> Option<PathBuf> {
    let p = interop_dir().join(rel);
    if p.exists() {
        return Some(p);
    }
    missing(&p.display().to_string(), "run interop/install");
    None
}

/// The Envoy binary of the `interop/.venv-envoy` virtualenv, with the CI rule.
pub fn envoy_binary() -> Option<PathBuf> {
    let venv = interop_peer(".venv-envoy")?;
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let p = entry.path().join("site-packages/envoy/_bin/envoy");
        if p.exists() {
            return Some(p);
        }
    }
    missing(
        &format!("an envoy binary under {}", lib.display()),
        "run interop/install",
    );
    None
}

/// A child process killed (and reaped) when the test ends, pass or fail.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `node SCRIPT provider NAME` peer (interop/rpc-node: sofa-rpc-node providers answering with
/// their own name) and the 127.0.0.1 address it printed (`PORT <n>`).
pub fn node_provider(script: &Path, name: &str) -> (ChildGuard, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("node")
        .arg(script)
        .args(["provider", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the provider prints its port");
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("provider said {line:?}"));
    (ChildGuard(child), std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// An Envoy bootstrap that takes its clusters and listeners over ADS from a control plane on
/// 127.0.0.1:`xds_port` (the static cluster `weft_control`, HTTP/2): `node` (YAML lines, indented
/// by two spaces, under `node:`), the admin on `admin_port`, and `extra_clusters` (YAML list items
/// at the clusters' indentation) appended to the static clusters.
pub fn envoy_ads_bootstrap(node: &str, admin_port: u16, xds_port: u16, extra_clusters: &str) -> String {
    format!(
        r#"node:
{node}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: weft_control }} }}]
    set_node_on_first_message_only: true
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: weft_control
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: weft_control
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {xds_port} }} }} }} }}] }}]
{extra_clusters}"#
    )
}
