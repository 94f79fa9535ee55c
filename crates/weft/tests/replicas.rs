//! Several control-plane replicas: two `weft control` processes read the same registry; a real
//! `weft proxy` sidecar is given both addresses. The replica it uses is killed under traffic: the
//! sidecar moves to the other at once (no request fails meanwhile, it serves its configuration),
//! and follows registry changes through it.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_test_support::{eventually_blocking, TempDir};

mod blocking;
use blocking::{http, name_server, start_control, start_sidecar};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn registry(echo: &[SocketAddr]) -> String {
    let eps: Vec<String> = echo.iter().map(|a| format!("{{address: \"{a}\"}}")).collect();
    format!(
        "services:\n  - name: client\n    endpoints: []\n  - name: echo\n    endpoints: [{}]\n",
        eps.join(", ")
    )
}

#[test]
fn a_sidecar_fails_over_to_another_control_plane_replica_under_traffic() {
    let reg = TempDir::new("replicas-reg");
    let dir = TempDir::new("replicas");
    let (alpha, beta) = (name_server("alpha"), name_server("beta"));
    reg.write("services.yaml", &registry(&[alpha]));
    let (a, a_xds, _) = start_control(&reg, &[]);
    let (_b, b_xds, _) = start_control(&reg, &[]);

    let (_proxy, admin, outbound) = start_sidecar(
        &dir,
        "client-1",
        "client",
        &format!("  address: \"{a_xds}\"\n  addresses: [\"{b_xds}\"]\n  mode: ads_delta\n"),
    );
    let xds_address = || -> String {
        let (_, body) = http(admin, "x", "/xds").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["address"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(xds_address(), a_xds.to_string());
    assert_eq!(http(outbound, "echo", "/"), Some((200, "alpha".to_string())));

    // Traffic through the sidecar for the rest of the test, from 4 clients at once (a new
    // connection per request): every failure counted.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    match http(outbound, "echo", "/") {
                        Some((200, _)) => ok.fetch_add(1, Ordering::SeqCst),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();

    // Traffic for a second before and after the kill (the load's duration, not a synchronisation).
    std::thread::sleep(Duration::from_secs(1));
    // The replica in use dies.
    let killed = Instant::now();
    drop(a);
    eventually_blocking("the sidecar to move to replica B", Duration::from_secs(10), || {
        (xds_address() == b_xds.to_string()).then_some(())
    });
    eventually_blocking("the stream to replica B to be up", Duration::from_secs(10), || {
        let (_, body) = http(admin, "x", "/xds")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["connected"] == true).then_some(())
    });
    let failover = killed.elapsed();

    // A registry change reaches the sidecar through replica B.
    reg.write("services.yaml", &registry(&[beta]));
    let changed = Instant::now();
    eventually_blocking(
        "the sidecar to follow the registry through B",
        Duration::from_secs(10),
        || (http(outbound, "echo", "/")? == (200, "beta".to_string())).then_some(()),
    );
    let followed = changed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.join().unwrap();
    }
    eprintln!(
        "failover to replica B connected after {failover:?}; change followed after {followed:?}; {} requests ok, {} failed",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");
    assert!(ok.load(Ordering::SeqCst) > 200, "too little traffic to prove anything");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during the failover");
}

#[test]
fn duplicate_or_bad_replica_addresses_are_refused_naming_the_field() {
    let dir = TempDir::new("replicas-bad");
    let path = dir.join("p.yaml");
    std::fs::write(
        &path,
        "admin: {address: \"127.0.0.1:0\"}\nxds:\n  address: \"127.0.0.1:18000\"\n  addresses: [\"127.0.0.1:18000\", \"nope\"]\n",
    )
    .unwrap();
    let out = Command::new(WEFT)
        .args(["proxy", "--check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("xds.addresses[0]") && err.contains("listed twice"),
        "{err}"
    );
    assert!(
        err.contains("xds.addresses[1]") && err.contains("not a host:port"),
        "{err}"
    );
}

/// Two `weft control` processes started at once over one empty etcd with `--ca-store`: one creates
/// the CA there, the other reads it; a token minted with `weft control token --ca-store` gets a
/// certificate from both (`weft identity fetch`) under the same root, and each certificate verifies
/// against the root the other replica served (`openssl verify`). A wrong or missing key file stops
/// a replica with exit 1 and the message.
#[test]
fn replicas_share_the_mesh_ca_through_etcd() {
    use std::process::Stdio;
    use weft_test_support::etcd::Etcd;
    use weft_test_support::free_addr;
    use weft_test_support::peers::ChildGuard;
    let dir = TempDir::new("replicas-ca");
    let Some(etcd) = Etcd::start(&dir.join("etcd-data")) else {
        return;
    };
    let reg = TempDir::new("replicas-ca-reg");
    reg.write("services.yaml", &registry(&[]));
    let key = dir.join("ca-store.key");
    // `head -c 32 /dev/urandom | base64`, as docs/control.md says.
    std::fs::write(&key, "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n").unwrap();
    let store = format!("etcd://{}/weft-ca/", etcd.client);
    let ca_flags = |k: &std::path::Path| -> Vec<String> {
        vec![
            "--ca-store".into(),
            store.clone(),
            "--ca-store-key".into(),
            k.display().to_string(),
        ]
    };
    let spawn = |k: &std::path::Path, stderr: Stdio| {
        let (xds, admin) = (free_addr(), free_addr());
        let child = Command::new(WEFT)
            .arg("control")
            .args(ca_flags(k))
            .arg("--registry")
            .arg(reg.path())
            .args(["--xds", &xds.to_string(), "--admin", &admin.to_string()])
            .env("WEFT_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start weft control");
        (ChildGuard(child), xds, admin)
    };
    // Both at once.
    let started = Instant::now();
    let (a, a_xds, a_admin) = spawn(&key, Stdio::inherit());
    let (b, b_xds, b_admin) = spawn(&key, Stdio::inherit());
    for admin in [a_admin, b_admin] {
        eventually_blocking("weft control /ready", Duration::from_secs(20), || {
            (http(admin, "x", "/ready")?.0 == 200).then_some(())
        });
    }
    eprintln!("two replicas over an empty etcd ready in {:?}", started.elapsed());
    let record = etcd.ctl(&["get", "/weft-ca/ca", "--print-value-only"]).unwrap();
    assert!(
        record.contains("BEGIN CERTIFICATE") && !record.contains("PRIVATE KEY"),
        "{record}"
    );

    let out = Command::new(WEFT)
        .args(["control", "token"])
        .args(ca_flags(&key))
        .args(["--identity", "default/reviews", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = dir.join("reviews.token");
    std::fs::write(&token, &out.stdout).unwrap();
    let fetch = |xds: SocketAddr, name: &str| {
        let out = Command::new(WEFT)
            .args(["identity", "fetch", "--ca-address", &xds.to_string(), "--token-file"])
            .arg(&token)
            .arg("--out-dir")
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.join(name).join("root-cert.pem")).unwrap()
    };
    let (root_a, root_b) = (fetch(a_xds, "from-a"), fetch(b_xds, "from-b"));
    assert_eq!(root_a, root_b);
    if weft_test_support::peers::tool("openssl").is_some() {
        for (leaf, root) in [("from-a", "from-b"), ("from-b", "from-a")] {
            let out = Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(dir.join(root).join("root-cert.pem"))
                .arg(dir.join(leaf).join("cert-chain.pem"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{leaf} against {root}'s root: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    // A wrong key file, then a missing one: exit 1 with the message, before serving.
    let wrong = dir.join("wrong.key");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    let refused = |k: &std::path::Path| {
        use std::io::Read;
        let (mut c, _, _) = spawn(k, Stdio::piped());
        let status = eventually_blocking("weft control to exit", Duration::from_secs(20), || {
            c.0.try_wait().unwrap()
        });
        let mut err = String::new();
        c.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status.code(), err)
    };
    let (code, err) = refused(&wrong);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("weft control: CA: cannot decrypt the CA in etcd: wrong key file? (--ca-store-key")
            && err.contains("wrong.key"),
        "{err}"
    );
    let missing = dir.join("missing.key");
    let (code, err) = refused(&missing);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("weft control: CA: --ca-store-key {}: ", missing.display())),
        "{err}"
    );
    drop((a, b));
}
