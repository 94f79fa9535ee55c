//! A real Envoy 1.40 gets its workload identity over SDS from `weft sds-agent`, which gets it from
//! `weft control`'s CA: Envoy terminates mTLS with it, `openssl s_client` verifies the chain
//! against the mesh root and reads the SPIFFE ID, and a short TTL rotates the certificate under
//! the running Envoy. Also: `weft control` refuses to start on a bad CA file, naming it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn envoy_binary() -> Option<PathBuf> {
    let lib = interop_dir().join(".venv-envoy/lib");
    for entry in std::fs::read_dir(&lib).into_iter().flatten().flatten() {
        let p = entry.path().join("site-packages/envoy/_bin/envoy");
        if p.exists() {
            return Some(p);
        }
    }
    if ci() {
        panic!(
            "no envoy binary under {} under CI=true: run interop/install",
            lib.display()
        );
    }
    eprintln!("skipping: no envoy under {} (run interop/install)", lib.display());
    None
}

fn have_openssl() -> bool {
    if Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    if ci() {
        panic!("openssl is missing under CI=true: run scripts/install-peers");
    }
    eprintln!("skipping: no openssl CLI");
    false
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("weft-sds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its pid, through `Child::kill`) when the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ports for the children to bind: the suite's allocator (never the same port twice in one
/// process, and outside the kernel's ephemeral range).
fn free_addr() -> SocketAddr {
    weft_test_support::net::free_addr()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

fn start_control(dir: &TempDir, extra: &[&str]) -> (Proc, SocketAddr) {
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let xds = free_addr();
    let mut cmd = Command::new(WEFT);
    cmd.args(["control", "--registry"])
        .arg(dir.join("reg"))
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .args(["--xds", &xds.to_string(), "--admin", &free_addr().to_string()])
        .args(extra);
    let p = spawn(&mut cmd, &dir.join("control.log"));
    wait_until("weft control's xDS port", Duration::from_secs(10), || {
        TcpStream::connect(xds).ok()
    });
    (p, xds)
}

fn token(dir: &TempDir, identity: &str, file: &str) -> PathBuf {
    let out = Command::new(WEFT)
        .args(["control", "token", "--ca-dir"])
        .arg(dir.join("ca"))
        .args(["--identity", identity, "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = dir.join(file);
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

const ENVOY_CONFIG: &str = r#"
node: {id: sds-test, cluster: reviews}
static_resources:
  listeners:
  - name: inbound_mtls
    address: {socket_address: {address: 127.0.0.1, port_value: {{PORT}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {uri: true}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "hello from envoy\n"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: &sds
                resource_api_version: V3
                api_config_source:
                  api_type: GRPC
                  transport_api_version: V3
                  grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]
            validation_context_sds_secret_config:
              name: ROOTCA
              sds_config: *sds
  clusters:
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {pipe: {path: "{{SOCK}}"}}}}]}]
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
"#;

/// One TLS handshake (and an HTTP request) with `openssl s_client`, verifying the server's chain
/// against `root`. Returns (s_client's output, the server's leaf certificate PEM).
fn handshake(addr: SocketAddr, root: &Path, client: Option<(&Path, &Path)>) -> (Output, String) {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "10",
        "openssl",
        "s_client",
        "-connect",
        &addr.to_string(),
        "-verify_return_error",
        "-showcerts",
        "-ign_eof",
    ])
    .arg("-CAfile")
    .arg(root);
    if let Some((c, k)) = client {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n");
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let leaf = text
        .find("-----BEGIN CERTIFICATE-----")
        .and_then(|s| {
            text[s..]
                .find("-----END CERTIFICATE-----")
                .map(|e| text[s..s + e + 25].to_string() + "\n")
        })
        .unwrap_or_default();
    (out, leaf)
}

/// (serial, subjectAltName text) of a PEM certificate, by `openssl x509`.
fn cert_facts(dir: &TempDir, pem: &str) -> (String, String) {
    let p = dir.join("peer.pem");
    std::fs::write(&p, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-ext", "subjectAltName", "-in"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let serial = text
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap_or_default()
        .to_string();
    (serial, text)
}

fn envoy_stat(admin: SocketAddr, name: &str) -> u64 {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            &format!("http://{admin}/stats?filter=^{name}$"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[test]
fn envoy_gets_its_identity_over_sds_serves_mtls_with_it_and_rotates_without_restart() {
    let Some(envoy) = envoy_binary() else { return };
    if !have_openssl() {
        return;
    }
    let dir = TempDir::new("envoy");
    // A 20 s certificate lifetime: the agent renews every ~10 s.
    let (_control, xds) = start_control(&dir, &["--svid-ttl", "20s"]);
    let tok = token(&dir, "default/reviews", "reviews.token");
    let sock = dir.join("sds.sock");
    let agent_metrics = free_addr();
    let _agent = spawn(
        Command::new(WEFT)
            .args(["sds-agent", "--metrics", &agent_metrics.to_string(), "--listen"])
            .arg(format!("unix:{}", sock.display()))
            .args(["--ca-address", &xds.to_string(), "--token-file"])
            .arg(&tok),
        &dir.join("agent.log"),
    );
    wait_until("the agent's socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    // A client identity for the mTLS handshake, written to files by `weft identity fetch`.
    let client_tok = token(&dir, "default/productpage", "client.token");
    let out = Command::new(WEFT)
        .args(["identity", "fetch", "--ca-address", &xds.to_string(), "--token-file"])
        .arg(&client_tok)
        .arg("--out-dir")
        .arg(dir.join("client"))
        .args(["--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("spiffe://cluster.local/ns/default/sa/productpage"));
    let (cc, ck) = (dir.join("client/cert-chain.pem"), dir.join("client/key.pem"));

    let port = free_addr();
    let cfg = ENVOY_CONFIG
        .replace("{{PORT}}", &port.port().to_string())
        .replace("{{SOCK}}", &sock.display().to_string());
    std::fs::write(dir.join("envoy.yaml"), cfg).unwrap();
    let admin_path = dir.join("envoy.admin");
    let mut envoy_proc = spawn(
        Command::new(&envoy)
            .arg("-c")
            .arg(dir.join("envoy.yaml"))
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warn",
                "--admin-address-path",
            ])
            .arg(&admin_path),
        &dir.join("envoy.log"),
    );
    let admin: SocketAddr = wait_until("envoy's admin address", Duration::from_secs(20), || {
        std::fs::read_to_string(&admin_path).ok()?.trim().parse().ok()
    });
    let root = dir.join("ca/root-cert.pem");

    // The listener warms once both secrets arrived; then a verified mTLS handshake and request.
    let (out, leaf) = wait_until("a verified mTLS handshake with Envoy", Duration::from_secs(30), || {
        let (o, leaf) = handshake(port, &root, Some((&cc, &ck)));
        let text = String::from_utf8_lossy(&o.stdout);
        (text.contains("Verify return code: 0 (ok)") && text.contains("hello from envoy")).then_some((o, leaf))
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    let (serial1, facts) = cert_facts(&dir, &leaf);
    assert!(
        facts.contains("URI:spiffe://cluster.local/ns/default/sa/reviews"),
        "{facts}"
    );
    assert!(!serial1.is_empty());

    // ROOTCA is enforced: no client certificate, no connection; a certificate from another CA,
    // neither. And a client that trusts another root refuses Envoy's chain.
    let (o, _) = handshake(port, &root, None);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("hello from envoy"),
        "served without a client certificate"
    );
    let other = TempDir::new("other-ca");
    let (_other_control, other_xds) = start_control(&other, &[]);
    let other_tok = token(&other, "default/productpage", "t");
    let ok = Command::new(WEFT)
        .args([
            "identity",
            "fetch",
            "--ca-address",
            &other_xds.to_string(),
            "--token-file",
        ])
        .arg(&other_tok)
        .arg("--out-dir")
        .arg(other.join("client"))
        .status()
        .unwrap();
    assert!(ok.success());
    let (o, _) = handshake(
        port,
        &root,
        Some((&other.join("client/cert-chain.pem"), &other.join("client/key.pem"))),
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("hello from envoy"),
        "served a client from another CA"
    );
    let (o, _) = handshake(port, &other.join("ca/root-cert.pem"), Some((&cc, &ck)));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        !t.contains("Verify return code: 0 (ok)") && !t.contains("hello from envoy"),
        "{t}"
    );

    // Rotation: a new handshake shows a new serial within ~10-12 s, same Envoy process.
    let started = Instant::now();
    let serial2 = wait_until("Envoy to serve a renewed certificate", Duration::from_secs(40), || {
        let (o, leaf) = handshake(port, &root, Some((&cc, &ck)));
        let t = String::from_utf8_lossy(&o.stdout);
        if !(t.contains("Verify return code: 0 (ok)") && t.contains("hello from envoy")) {
            panic!(
                "a handshake failed during rotation: {t}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let (s, facts) = cert_facts(&dir, &leaf);
        assert!(
            facts.contains("URI:spiffe://cluster.local/ns/default/sa/reviews"),
            "{facts}"
        );
        (s != serial1).then_some(s)
    });
    eprintln!("rotated {serial1} -> {serial2} after {:?}", started.elapsed());
    assert!(envoy_proc.0.try_wait().unwrap().is_none(), "Envoy exited");
    assert!(
        envoy_stat(admin, "sds.default.update_success") >= 2,
        "Envoy's SDS stats"
    );
    assert!(envoy_stat(admin, "sds.ROOTCA.update_success") >= 1);
    assert_eq!(envoy_stat(admin, "sds.default.update_rejected"), 0);
    // The agent's own view: ready, and at least two certificates obtained.
    let get = |path: &str| {
        let o = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &format!("http://{agent_metrics}{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let ready = get("/ready");
    assert!(
        ready.starts_with("spiffe://cluster.local/ns/default/sa/reviews") && ready.ends_with("\n200"),
        "{ready}"
    );
    let metrics = get("/metrics");
    let issued: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_identity_certificates_issued_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(issued >= 2, "{metrics}");
    assert!(metrics.contains("weft_identity_consecutive_failures 0"), "{metrics}");
    // The renewal was authenticated by the previous certificate, not the token.
    let log = std::fs::read_to_string(dir.join("control.log")).unwrap();
    assert!(
        log.contains("auth=\"svid\"") && log.contains("identity=spiffe://cluster.local/ns/default/sa/reviews"),
        "{log}"
    );
}

#[test]
fn weft_control_refuses_to_start_on_bad_ca_files_naming_them() {
    let dir = TempDir::new("badca");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let run = |extra: &[&str]| -> Output {
        Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .args(["--xds", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap()
    };
    // First a good start to create the root (stopped straight away by a bad flag afterwards).
    let out = Command::new(WEFT)
        .args(["control", "token", "--ca-dir"])
        .arg(dir.join("ca"))
        .args(["--identity", "a/b"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.join("ca/root-cert.pem"), "x").unwrap();
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("root-key.pem") && err.contains("missing"), "{err}");
    std::fs::write(dir.join("ca/root-key.pem"), "not a key").unwrap();
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("root-cert.pem"), "{err}");
    // A malformed identity or trust domain for a token: exit 2, the flag named.
    for (args, needle) in [
        (&["--identity", "no-slash"][..], "--identity"),
        (&["--identity", "a/b c"][..], "--identity"),
    ] {
        let out = Command::new(WEFT)
            .args(["control", "token", "--ca-dir"])
            .arg(dir.join("ca"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
    }
    let out = Command::new(WEFT)
        .args(["control", "token", "--ca-dir"])
        .arg(dir.join("new-ca"))
        .args(["--identity", "a/b", "--trust-domain", "Upper.Case"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-domain"));
    let out = run(&["--svid-ttl", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--svid-ttl"));
}

#[test]
fn weft_identity_fetch_over_the_cas_tls_port() {
    if !have_openssl() {
        return;
    }
    let dir = TempDir::new("catls");
    let tls = free_addr();
    let (_control, _xds) = start_control(&dir, &["--ca-tls", &tls.to_string()]);
    wait_until("the CA's TLS port", Duration::from_secs(10), || {
        TcpStream::connect(tls).ok()
    });
    let tok = token(&dir, "default/reviews", "t");
    let fetch = |extra: &[&str]| {
        Command::new(WEFT)
            .args(["identity", "fetch", "--ca-address", &tls.to_string(), "--token-file"])
            .arg(&tok)
            .arg("--out-dir")
            .arg(dir.join("out"))
            .args(extra)
            .output()
            .unwrap()
    };
    let root = dir.join("ca/root-cert.pem").display().to_string();
    let out = fetch(&["--ca-root", &root]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = Command::new("openssl")
        .args(["verify", "-CAfile", &root])
        .arg(dir.join("out/cert-chain.pem"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // Plaintext to the TLS port fails, and so does TLS with another root.
    assert!(!fetch(&[]).status.success());
    let other = TempDir::new("catls-other");
    token(&other, "a/b", "t");
    let _ = start_control(&other, &[]);
    let out = fetch(&["--ca-root", &other.join("ca/root-cert.pem").display().to_string()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the CA"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
