//! The mesh CA shared by replicas through a real etcd (`--ca-store etcd://...`): two control planes
//! started together over an empty etcd end up with one CA (same root, trust domain and token key);
//! what one issues the other renews; the private keys in etcd are sealed; a wrong key file, another
//! trust domain or another --ca-cert stop the start with a message naming both sides.

mod common;

use common::TempDir;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_control::ca::store::{load_shared, load_tokens, CaStore, Kek};
use weft_control::ca::{Ca, CaOptions};
use weft_control::{ControlOptions, ControlPlane};
use weft_identity::client::{fetch, parse_pem_certs, Auth};
use weft_identity::SpiffeId;
use weft_test_support::etcd::Etcd;

async fn start_cp(reg: &TempDir, ca: Arc<Ca>) -> ControlPlane {
    let mut o = ControlOptions::new(reg.path());
    o.ca = Some(ca);
    o.admin = None;
    ControlPlane::start(o).await.unwrap()
}

fn last_cert(chain_pem: &str) -> Vec<u8> {
    parse_pem_certs(&[chain_pem.to_string()]).unwrap().pop().unwrap()
}

fn opts() -> CaOptions {
    // The directory is not used with a store.
    CaOptions::new("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_started_together_over_an_empty_etcd_share_one_sealed_ca() {
    let dir = TempDir::new("ca-store");
    let Some(etcd) = Etcd::start(&dir.join("etcd-data")) else {
        return;
    };
    let reg = TempDir::new("ca-store-reg");
    // The key file: 32 raw random bytes (`head -c 32 /dev/urandom`).
    let mut kek_bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut kek_bytes).unwrap();
    let kek_file = dir.join("ca-store.key");
    std::fs::write(&kek_file, kek_bytes).unwrap();
    let store = CaStore::parse(&format!("etcd://{}/mesh/ca/", etcd.client)).unwrap();
    let (kek_a, kek_b) = (Kek::load(&kek_file).unwrap(), Kek::load(&kek_file).unwrap());

    // Both replicas start at once over the empty store: one creates the CA, the other reads it.
    let started = Instant::now();
    let (o_a, o_b) = (opts(), opts());
    let (a, b) = tokio::join!(load_shared(&o_a, &store, &kek_a), load_shared(&o_b, &store, &kek_b));
    let (a, b) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));
    eprintln!("two replicas loaded the shared CA in {:?}", started.elapsed());
    assert_eq!(a.root_pem(), b.root_pem());
    assert_eq!(a.trust_domain(), "cluster.local");
    assert_eq!(b.trust_domain(), "cluster.local");

    // The record in etcd: the certificate in clear, the keys sealed (no PEM key, no token key).
    let value = etcd.ctl(&["get", "/mesh/ca/ca", "--print-value-only"]).unwrap();
    let rec: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    assert!(!value.contains("PRIVATE KEY"), "{value}");
    assert!(rec["key"].as_str().unwrap().starts_with("v1:"), "{rec}");
    assert!(rec["token_key"].as_str().unwrap().starts_with("v1:"), "{rec}");
    assert_eq!(
        parse_pem_certs(&[rec["cert"].as_str().unwrap().to_string()]).unwrap()[0],
        last_cert(&a.root_pem())
    );
    // Only one record was written: one creation won.
    let keys = etcd.ctl(&["get", "/mesh/ca/", "--prefix", "--keys-only"]).unwrap();
    assert_eq!(keys.split_whitespace().collect::<Vec<_>>(), ["/mesh/ca/ca"]);

    let cp_a = start_cp(&reg, a.clone()).await;
    let cp_b = start_cp(&reg, b.clone()).await;
    let (addr_a, addr_b) = (cp_a.xds_addr().to_string(), cp_b.xds_addr().to_string());

    // A token minted against the shared state (what `weft control token --ca-store` does) is
    // accepted by both replicas; both serve the same root at the end of the chain.
    let tokens = load_tokens(&store, &Kek::load(&kek_file).unwrap()).await.unwrap();
    let token = tokens.mint("default/reviews", Duration::from_secs(600)).unwrap();
    let id = SpiffeId::new("cluster.local", "default", "reviews").unwrap();
    let from_a = fetch(&addr_a, &id, Auth::Token(&token), None).await.unwrap();
    let from_b = fetch(&addr_b, &id, Auth::Token(&token), None).await.unwrap();
    assert_eq!(last_cert(&from_a.roots_pem), last_cert(&from_b.roots_pem));
    assert_eq!(last_cert(&from_a.roots_pem), last_cert(&a.root_pem()));

    // A certificate issued by replica A is renewed by replica B (B checks it against its issuer),
    // and the other way round.
    let renewed_by_b = fetch(&addr_b, &id, Auth::Svid(&from_a), None).await.unwrap();
    assert_eq!(renewed_by_b.id, id);
    fetch(&addr_a, &id, Auth::Svid(&from_b), None).await.unwrap();
    b.check_svid(&from_a.leaf_der).unwrap();

    // A third replica, later, loads the same CA.
    let c = load_shared(&opts(), &store, &Kek::load(&kek_file).unwrap())
        .await
        .unwrap();
    assert_eq!(c.root_pem(), a.root_pem());

    // A wrong key file: refused, naming the file.
    let wrong = dir.join("wrong.key");
    std::fs::write(&wrong, [9u8; 32]).unwrap();
    let e = load_shared(&opts(), &store, &Kek::load(&wrong).unwrap())
        .await
        .err()
        .unwrap()
        .0;
    assert!(e.starts_with("cannot decrypt the CA in etcd: wrong key file?"), "{e}");
    assert!(e.contains(&wrong.display().to_string()), "{e}");
    let e = load_tokens(&store, &Kek::load(&wrong).unwrap()).await.err().unwrap().0;
    assert!(e.starts_with("cannot decrypt the CA in etcd: wrong key file?"), "{e}");

    // Another trust domain than the stored one: refused, naming both.
    let mut o = opts();
    o.trust_domain = Some("corp.example".into());
    let e = load_shared(&o, &store, &kek_a).await.err().unwrap().0;
    assert!(
        e.contains("\"corp.example\"") && e.contains("\"cluster.local\"") && e.contains("etcd key /mesh/ca/ca"),
        "{e}"
    );

    // Another --ca-cert than the stored CA: refused, naming both.
    let other = TempDir::new("ca-store-other");
    Ca::load(&CaOptions::new(other.join("ca"))).unwrap();
    let mut o = opts();
    o.cert = Some(other.join("ca/root-cert.pem"));
    o.key = Some(other.join("ca/root-key.pem"));
    let e = load_shared(&o, &store, &kek_a).await.err().unwrap().0;
    assert!(
        e.contains(&other.join("ca/root-cert.pem").display().to_string()) && e.contains("etcd key /mesh/ca/ca"),
        "{e}"
    );

    cp_a.stop().await;
    cp_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_provided_ca_is_stored_once_and_used_by_every_replica() {
    let dir = TempDir::new("ca-store-user");
    let Some(etcd) = Etcd::start(&dir.join("etcd-data")) else {
        return;
    };
    // A CA made elsewhere (a --ca-dir root): given with --ca-cert/--ca-key to the first replica.
    let src = TempDir::new("ca-store-src");
    let local = Ca::load(&CaOptions::new(src.join("ca"))).unwrap();
    let kek_file = dir.join("k.b64");
    std::fs::write(&kek_file, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    let kek = Kek::load(&kek_file).unwrap();
    let store = CaStore::parse(&format!("etcd://{}", etcd.client)).unwrap();
    let mut o = opts();
    o.cert = Some(src.join("ca/root-cert.pem"));
    o.key = Some(src.join("ca/root-key.pem"));
    o.trust_domain = Some("corp.example".into());
    o.sm2 = true;
    let first = load_shared(&o, &store, &kek).await.unwrap();
    assert_eq!(first.root_pem(), local.root_pem());
    assert_eq!(first.trust_domain(), "corp.example");
    // A second replica without the files gets the same CA, SM2 root included.
    let mut o2 = opts();
    o2.sm2 = true;
    let second = load_shared(&o2, &store, &kek).await.unwrap();
    assert_eq!(second.root_pem(), local.root_pem());
    assert_eq!(second.trust_domain(), "corp.example");
    assert_eq!(
        first.sm.as_ref().unwrap().root_pem(),
        second.sm.as_ref().unwrap().root_pem()
    );
    // Same token key: a token minted by one verifies with the other.
    let t = first.tokens.mint("default/a", Duration::from_secs(60)).unwrap();
    assert_eq!(
        second.tokens.verify(&t).unwrap().to_string(),
        "spiffe://corp.example/ns/default/sa/a"
    );
    let sm = etcd.ctl(&["get", "/weft-ca/ca-sm2", "--print-value-only"]).unwrap();
    assert!(!sm.contains("PRIVATE KEY") && sm.contains("\"key\":\"v1:"), "{sm}");
}

/// The same against the stand-in Kubernetes API server: the CA in a Secret, created once (the
/// second replica's create gets 409 AlreadyExists and reads the winner's), only `get` by name and
/// `create` used (what the documented RBAC grants).
#[cfg(feature = "kubernetes")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_ca_through_a_kubernetes_secret() {
    use weft_test_support::kube_api::KubeApi;
    let api = KubeApi::start();
    let dir = TempDir::new("ca-store-kube");
    let reg = TempDir::new("ca-store-kube-reg");
    let kek_file = dir.join("k");
    std::fs::write(&kek_file, [3u8; 32]).unwrap();
    let store = CaStore::parse(&format!("kubernetes?namespace=weft-system&api={}", api.url())).unwrap();
    let (ka, kb) = (Kek::load(&kek_file).unwrap(), Kek::load(&kek_file).unwrap());
    let (o_a, o_b) = (opts(), opts());
    // Two loads at once: both may find no Secret; one create wins, the other gets 409.
    let (a, b) = tokio::join!(load_shared(&o_a, &store, &ka), load_shared(&o_b, &store, &kb));
    let (a, b) = (Arc::new(a.unwrap()), Arc::new(b.unwrap()));
    assert_eq!(a.root_pem(), b.root_pem());
    let reqs = api.secret_requests();
    eprintln!("Secret requests: {reqs:?}");
    let creates = reqs.iter().filter(|r| r.starts_with("POST ")).count();
    assert!((1..=2).contains(&creates), "{reqs:?}");
    for r in &reqs {
        assert!(
            r == "GET /api/v1/namespaces/weft-system/secrets/weft-ca"
                || r == "POST /api/v1/namespaces/weft-system/secrets",
            "a request the documented RBAC does not grant: {r}"
        );
    }
    // The Secret: type Opaque, the record base64 in data, keys sealed.
    let secret = api.secret("weft-system", "weft-ca").unwrap();
    assert_eq!(secret["type"], "Opaque");
    let b64 = secret["data"]["ca.json"].as_str().unwrap();
    let json = weft_test_support::base64_decode(b64);
    let rec: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert!(!String::from_utf8_lossy(&json).contains("PRIVATE KEY"));
    assert!(rec["key"].as_str().unwrap().starts_with("v1:"));

    // Both replicas serve it: a token from the shared state works on both, A's certificate renews on B.
    let cp_a = start_cp(&reg, a.clone()).await;
    let cp_b = start_cp(&reg, b.clone()).await;
    let token = load_tokens(&store, &ka)
        .await
        .unwrap()
        .mint("default/reviews", Duration::from_secs(600))
        .unwrap();
    let id = SpiffeId::new("cluster.local", "default", "reviews").unwrap();
    let from_a = fetch(&cp_a.xds_addr().to_string(), &id, Auth::Token(&token), None)
        .await
        .unwrap();
    fetch(&cp_b.xds_addr().to_string(), &id, Auth::Token(&token), None)
        .await
        .unwrap();
    fetch(&cp_b.xds_addr().to_string(), &id, Auth::Svid(&from_a), None)
        .await
        .unwrap();

    // A wrong key file: refused with the message.
    let wrong = Kek::from_bytes(&[4u8; 32], "wrong.key").unwrap();
    let e = load_shared(&opts(), &store, &wrong).await.err().unwrap().0;
    assert!(
        e.starts_with("cannot decrypt the CA in Kubernetes Secret weft-system/weft-ca: wrong key file?"),
        "{e}"
    );
    cp_a.stop().await;
    cp_b.stop().await;
}

/// etcd with authentication on, set up as docs/security.md says: a `weft-control` user whose role
/// grants read-write on `/weft-ca/` only. That user creates and loads the CA; a user without the
/// role is refused by etcd, and the message says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_authentication_and_a_role_on_the_ca_prefix_only() {
    let dir = TempDir::new("ca-store-auth");
    let Some(etcd) = Etcd::start(&dir.join("etcd-data")) else {
        return;
    };
    let ctl = |args: &[&str]| etcd.ctl(args).unwrap_or_else(|| panic!("etcdctl {args:?} failed"));
    ctl(&["user", "add", "root", "--new-user-password=rootpw"]);
    ctl(&["user", "add", "weft-control", "--new-user-password=s3cret"]);
    ctl(&["user", "add", "other", "--new-user-password=otherpw"]);
    ctl(&["role", "add", "weft-ca"]);
    ctl(&[
        "role",
        "grant-permission",
        "weft-ca",
        "readwrite",
        "/weft-ca/",
        "--prefix=true",
    ]);
    ctl(&["user", "grant-role", "weft-control", "weft-ca"]);
    ctl(&["auth", "enable"]);
    let pass = dir.join("etcd.pass");
    std::fs::write(&pass, "s3cret\n").unwrap();
    let other_pass = dir.join("other.pass");
    std::fs::write(&other_pass, "otherpw\n").unwrap();
    let kek = Kek::from_bytes(&[5u8; 32], "k").unwrap();

    let spec = |user: &str, p: &std::path::Path| {
        CaStore::parse(&format!(
            "etcd://{}?user={user}&password-file={}",
            etcd.client,
            p.display()
        ))
        .unwrap()
    };
    // Without credentials: refused.
    let anon = CaStore::parse(&format!("etcd://{}", etcd.client)).unwrap();
    let e = load_shared(&opts(), &anon, &kek).await.err().unwrap().0;
    assert!(e.contains("etcd key /weft-ca/ca"), "{e}");
    // A user without the role: refused (permission denied), nothing created.
    let e = load_shared(&opts(), &spec("other", &other_pass), &kek)
        .await
        .err()
        .unwrap()
        .0;
    assert!(
        e.contains("permission denied") && e.contains("etcd key /weft-ca/ca"),
        "{e}"
    );
    // The control plane's user: creates, then loads the same CA.
    let first = load_shared(&opts(), &spec("weft-control", &pass), &kek).await.unwrap();
    let again = load_shared(&opts(), &spec("weft-control", &pass), &kek).await.unwrap();
    assert_eq!(first.root_pem(), again.root_pem());
    // A wrong password: refused, naming the store.
    std::fs::write(&other_pass, "nope\n").unwrap();
    let e = load_shared(&opts(), &spec("weft-control", &other_pass), &kek)
        .await
        .err()
        .unwrap()
        .0;
    assert!(e.starts_with("--ca-store: etcd "), "{e}");
}
