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
