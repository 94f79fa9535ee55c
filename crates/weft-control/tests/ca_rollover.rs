//! Root rollover of the mesh CA over real sockets: the three steps (prepare, activate, retire)
//! taken on the CA directory while weft control runs, each applied without a restart; what every
//! answer carries (the trust bundle), who signs, which renewals are accepted, the TLS port's own
//! certificate and client verification; the unsafe steps refused with their reasons; and the
//! phase kept across restarts.

mod common;

use common::TempDir;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weft_control::ca::rollover::{self, Phase, Step};
use weft_control::ca::{Ca, CaOptions};
use weft_control::{ControlOptions, ControlPlane};
use weft_identity::client::{fetch, fetch_tls, parse_pem_certs, Auth, FetchError, Svid};
use weft_identity::SpiffeId;
use x509_parser::prelude::*;

const WAIT: Duration = Duration::from_secs(10);

fn opts(dir: &Path) -> CaOptions {
    let mut o = CaOptions::new(dir.join("ca"));
    o.svid_ttl = Duration::from_secs(10);
    o.svid_max_ttl = Duration::from_secs(10);
    o
}

async fn start_cp(reg: &TempDir, ca: Arc<Ca>) -> ControlPlane {
    let mut o = ControlOptions::new(reg.path());
    o.ca = Some(ca);
    o.admin = None;
    o.xds = "127.0.0.1:0".parse().unwrap();
    o.ca_tls = Some("127.0.0.1:0".parse().unwrap());
    ControlPlane::start(o).await.unwrap()
}

fn roots_of(svid: &Svid) -> Vec<Vec<u8>> {
    parse_pem_certs(std::slice::from_ref(&svid.roots_pem)).unwrap()
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    parse_pem_certs(&[std::fs::read_to_string(pem_file).unwrap()])
        .unwrap()
        .remove(0)
}

/// True when `root` signed the leaf of `svid`.
fn signed_by(svid: &Svid, root: &[u8]) -> bool {
    let (_, leaf) = X509Certificate::from_der(&svid.leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(root).unwrap();
    leaf.issuer().as_raw() == root.subject().as_raw() && leaf.verify_signature(Some(root.public_key())).is_ok()
}

fn metric(cp: &ControlPlane, line_prefix: &str) -> i64 {
    cp.shared
        .metrics
        .encode()
        .lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .map(|v| v.trim().parse::<f64>().unwrap() as i64)
        })
        .unwrap_or(-1)
}

async fn wait_for_file(p: &Path, timeout: Duration) {
    weft_test_support::eventually(&format!("{}", p.display()), timeout, || async {
        p.exists().then_some(())
    })
    .await;
}

/// Fetches until an answer satisfies `ok` (each rollover step reaches weft control within a
/// second or so: this waits on what it answers, not on time).
async fn eventually_svid<F, Fut>(what: &str, mut get: F, ok: impl Fn(&Svid) -> bool) -> Svid
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Svid>>,
{
    weft_test_support::eventually(what, WAIT, || {
        let f = get();
        let ok = &ok;
        async move { f.await.filter(|s| ok(s)) }
    })
    .await
}

async fn wait_phase(cp: &ControlPlane, n: i64) {
    weft_test_support::eventually(&format!("weft_control_ca_rollover_phase {n}"), WAIT, || async {
        (metric(cp, "weft_control_ca_rollover_phase ") == n).then_some(())
    })
    .await;
}

fn refused(r: Result<String, weft_control::ca::CaError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(m) => panic!("expected a refusal, got: {m}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rollover_applies_each_step_live_refuses_unsafe_steps_and_survives_restarts() {
    let dir = TempDir::new("roll");
    let reg = TempDir::new("roll");
    let o = opts(dir.path());
    let ca_dir = o.dir.clone();
    let ca = Arc::new(Ca::load(&o).unwrap());
    let cp = start_cp(&reg, ca.clone()).await;
    let (xds, tls) = (cp.xds_addr().to_string(), cp.ca_tls_addr().unwrap().to_string());
    let who = SpiffeId::new("cluster.local", "default", "reviews").unwrap();
    let token = ca.tokens.mint("default/reviews", Duration::from_secs(600)).unwrap();
    let root1 = der_of(&ca_dir.join("root-cert.pem"));
    let root1_pem = std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap();
    // weft control wrote the bundle to hand out, and its --svid-max-ttl for the timing rule.
    wait_for_file(&ca_dir.join(rollover::BUNDLE_FILE), WAIT).await;
    assert_eq!(
        std::fs::read_to_string(ca_dir.join(rollover::MAX_TTL_FILE))
            .unwrap()
            .trim(),
        "10"
    );
    let old = fetch(&xds, &who, Auth::Token(&token), None).await.unwrap();
    assert_eq!(roots_of(&old), vec![root1.clone()]);
    assert!(signed_by(&old, &root1));
    wait_phase(&cp, 0).await;

    // Nothing to activate or retire yet.
    let t0 = weft_identity::unix_now();
    let e = refused(rollover::step(&ca_dir, Step::Activate, None, false, t0));
    assert!(e.contains("activate refused: no rollover is prepared"), "{e}");
    let e = refused(rollover::step(&ca_dir, Step::Retire, None, true, t0));
    assert!(e.contains("retire refused: no rollover is in progress"), "{e}");

    // prepare: the next root joins every answer's bundle; the current root still signs.
    let msg = rollover::step(&ca_dir, Step::Prepare, None, false, t0).unwrap();
    assert!(msg.starts_with("prepared:"), "{msg}");
    let root2 = der_of(&ca_dir.join("ca-2-cert.pem"));
    let prepared = eventually_svid(
        "the bundle with both roots",
        || {
            let (xds, who, token) = (xds.clone(), who.clone(), token.clone());
            async move { fetch(&xds, &who, Auth::Token(&token), None).await.ok() }
        },
        |s| roots_of(s).len() == 2,
    )
    .await;
    assert_eq!(roots_of(&prepared), vec![root1.clone(), root2.clone()]);
    assert!(
        signed_by(&prepared, &root1),
        "the current root still signs while prepared"
    );
    wait_phase(&cp, 1).await;
    let bundle = std::fs::read_to_string(ca_dir.join(rollover::BUNDLE_FILE)).unwrap();
    assert_eq!(parse_pem_certs(&[bundle]).unwrap(), vec![root1.clone(), root2.clone()]);
    // The TLS port verifies clients against both roots now, and still serves a root1 certificate.
    fetch_tls(&tls, &root1_pem, &who, Auth::Svid(&prepared), None)
        .await
        .unwrap();

    // Unsafe steps, refused with why and until when.
    let e = refused(rollover::step(&ca_dir, Step::Prepare, None, false, t0 + 1));
    assert!(e.contains("prepare refused: a rollover is already prepared"), "{e}");
    let e = refused(rollover::step(&ca_dir, Step::Retire, None, false, t0 + 1));
    assert!(e.contains("retire refused: the rollover is only prepared"), "{e}");
    let e = refused(rollover::step(&ca_dir, Step::Activate, None, false, t0 + 1));
    assert!(
        e.contains("activate refused: certificates issued before `prepare`") && e.contains("--force"),
        "{e}"
    );
    // The phase survives a restart (another CA loaded from the same directory).
    {
        let again = Ca::load(&o).unwrap();
        assert_eq!(again.phase().0, Phase::Prepared);
        assert_eq!(again.roots().len(), 2);
    }

    // activate, at the time the rule allows (every pre-prepare certificate has expired then).
    let allowed = t0 + 10 + rollover::SLACK.as_secs();
    let e = refused(rollover::step(&ca_dir, Step::Activate, None, false, allowed - 1));
    assert!(e.contains("wait 1s"), "{e}");
    let msg = rollover::step(&ca_dir, Step::Activate, None, false, allowed).unwrap();
    assert!(msg.starts_with("activated:"), "{msg}");
    let active = eventually_svid(
        "a certificate from the next root",
        || {
            let (xds, who, token) = (xds.clone(), who.clone(), token.clone());
            async move { fetch(&xds, &who, Auth::Token(&token), None).await.ok() }
        },
        |s| signed_by(s, &root2),
    )
    .await;
    assert_eq!(roots_of(&active), vec![root2.clone(), root1.clone()]);
    wait_phase(&cp, 2).await;
    // A certificate of the previous root still renews (into a next-root one), on both ports.
    let renewed = fetch(&xds, &who, Auth::Svid(&prepared), None).await.unwrap();
    assert!(signed_by(&renewed, &root2));
    // The TLS port's certificate moved to the next root: a client that trusts only the previous
    // root refuses it; one with the bundle (what every answer carries now) accepts it.
    match fetch_tls(&tls, &root1_pem, &who, Auth::Token(&token), None).await {
        Err(FetchError::Connect(m)) => assert!(m.contains("UnknownIssuer") || m.contains("certificate"), "{m}"),
        other => panic!("expected a TLS failure with the previous root only, got {other:?}"),
    }
    let over_tls = fetch_tls(&tls, &active.roots_pem, &who, Auth::Svid(&prepared), None)
        .await
        .unwrap();
    assert!(signed_by(&over_tls, &root2));
    let e = refused(rollover::step(&ca_dir, Step::Retire, None, false, allowed + 1));
    assert!(
        e.contains("retire refused: certificates signed by the previous root before `activate`"),
        "{e}"
    );

    // A restart while active: the next root signs, both are trusted.
    cp.stop().await;
    let ca = Arc::new(Ca::load(&o).unwrap());
    assert_eq!(ca.phase().0, Phase::Active);
    let cp = start_cp(&reg, ca.clone()).await;
    let (xds, tls) = (cp.xds_addr().to_string(), cp.ca_tls_addr().unwrap().to_string());
    wait_phase(&cp, 2).await;
    let s = fetch(&xds, &who, Auth::Svid(&prepared), None).await.unwrap();
    assert!(signed_by(&s, &root2) && roots_of(&s).len() == 2);

    // retire: the previous root leaves the bundle; its certificates no longer renew.
    let msg = rollover::step(
        &ca_dir,
        Step::Retire,
        None,
        false,
        allowed + 10 + rollover::SLACK.as_secs(),
    )
    .unwrap();
    assert!(msg.starts_with("retired:"), "{msg}");
    let retired = eventually_svid(
        "the bundle without the previous root",
        || {
            let (xds, who, token) = (xds.clone(), who.clone(), token.clone());
            async move { fetch(&xds, &who, Auth::Token(&token), None).await.ok() }
        },
        |s| roots_of(s).len() == 1,
    )
    .await;
    assert_eq!(roots_of(&retired), vec![root2.clone()]);
    wait_phase(&cp, 0).await;
    match fetch(&xds, &who, Auth::Svid(&prepared), None).await {
        Err(FetchError::Status { code, message }) => {
            assert_eq!(code, tonic::Code::Unauthenticated);
            assert!(message.contains("not issued by this CA"), "{message}");
        }
        other => panic!("a previous-root certificate renewed after retire: {other:?}"),
    }
    fetch_tls(&tls, &retired.roots_pem, &who, Auth::Svid(&retired), None)
        .await
        .unwrap();
    assert!(ca_dir
        .read_dir()
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with("-root-key.pem")
            && e.file_name().to_string_lossy().starts_with("retired-")));
    cp.stop().await;

    // After a restart: idle, one root (the new one).
    let ca = Ca::load(&o).unwrap();
    assert_eq!(ca.phase().0, Phase::Idle);
    let roots = ca.roots();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].sha256, weft_control::ca::sha256_hex(&root2));
    // --ca-cert naming another CA is refused now that rollover.json names the CA in use.
    let mut flagged = o.clone();
    flagged.cert = Some(ca_dir.join("ca-2-cert.pem"));
    flagged.key = Some(ca_dir.join("ca-2-key.pem"));
    let e = Ca::load(&flagged).err().unwrap().to_string();
    assert!(e.contains("names the CA in use since a root rollover"), "{e}");
    // Losing rollover.json does not make weft control generate a root over the rolled one.
    std::fs::rename(ca_dir.join("rollover.json"), dir.path().join("rollover.json.bak")).unwrap();
    let e = Ca::load(&o).err().unwrap().to_string();
    assert!(
        e.contains("rollover.json: missing, but ca-2-cert.pem from a root rollover is here"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_provided_next_ca_is_checked_and_copied_in() {
    let dir = TempDir::new("roll");
    let o = opts(dir.path());
    let ca_dir = o.dir.clone();
    Ca::load(&o).unwrap();
    let now = weft_identity::unix_now();
    // Not a CA directory.
    let e = refused(rollover::step(
        &dir.path().join("nope"),
        Step::Prepare,
        None,
        false,
        now,
    ));
    assert!(e.contains("not a CA directory"), "{e}");
    // A next "CA" that is no CA: refused, naming the file; nothing changes.
    let other = TempDir::new("roll");
    let other_ca = Ca::load(&CaOptions::new(other.path().join("ca"))).unwrap();
    drop(other_ca);
    std::fs::write(other.path().join("leaf.pem"), "not pem").unwrap();
    let bad = rollover::NextCa {
        cert: other.path().join("leaf.pem"),
        key: other.path().join("ca/root-key.pem"),
        chain: None,
    };
    let e = refused(rollover::step(&ca_dir, Step::Prepare, Some(&bad), false, now));
    assert!(e.contains("leaf.pem"), "{e}");
    assert_eq!(Ca::load(&o).unwrap().phase().0, Phase::Idle);
    // The CA in use again: refused.
    let same = rollover::NextCa {
        cert: ca_dir.join("root-cert.pem"),
        key: ca_dir.join("root-key.pem"),
        chain: None,
    };
    let e = refused(rollover::step(&ca_dir, Step::Prepare, Some(&same), false, now));
    assert!(e.contains("the one in use already"), "{e}");
    // Another root: copied in (its key 0600), trusted next to the current one.
    let good = rollover::NextCa {
        cert: other.path().join("ca/root-cert.pem"),
        key: other.path().join("ca/root-key.pem"),
        chain: None,
    };
    rollover::step(&ca_dir, Step::Prepare, Some(&good), false, now).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca_dir.join("ca-2-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // No weft control has loaded the prepared CA yet: activate is refused however late it is.
    let e = refused(rollover::step(&ca_dir, Step::Activate, None, false, now + 1_000_000));
    assert!(
        e.contains("activate refused: weft control has not applied `prepare` yet"),
        "{e}"
    );
    let ca = Ca::load(&o).unwrap();
    assert_eq!(ca.phase().0, Phase::Prepared);
    assert_eq!(ca.roots().len(), 2);
    // --force takes activate early.
    let msg = rollover::step(&ca_dir, Step::Activate, None, true, now + 1).unwrap();
    assert!(msg.starts_with("activated (forced)"), "{msg}");
    let ca = Ca::load(&o).unwrap();
    assert_eq!(ca.phase().0, Phase::Active);
    assert!(ca.roots()[0].signing);
    assert_eq!(
        ca.roots()[0].sha256,
        weft_control::ca::sha256_hex(&der_of(&other.path().join("ca/root-cert.pem")))
    );
}

#[tokio::test]
async fn a_lowered_svid_max_ttl_keeps_the_larger_one_in_the_timing_rule_until_it_has_run_out() {
    let dir = TempDir::new("roll");
    let mut o = opts(dir.path());
    o.svid_max_ttl = Duration::from_secs(100);
    Ca::load(&o).unwrap();
    // Restarted with a lower --svid-max-ttl: certificates issued under 100 s may still be valid.
    let o = opts(dir.path());
    Ca::load(&o).unwrap();
    let ca_dir = o.dir.clone();
    let recorded = std::fs::read_to_string(ca_dir.join(rollover::MAX_TTL_FILE)).unwrap();
    assert!(recorded.starts_with("10\nlowered-from 100 until "), "{recorded}");
    let now = weft_identity::unix_now();
    rollover::step(&ca_dir, Step::Prepare, None, false, now).unwrap();
    Ca::load(&o).unwrap(); // weft control applies the step
    let e = refused(rollover::step(&ca_dir, Step::Activate, None, false, now + 20));
    assert!(e.contains("(--svid-max-ttl 100s)"), "{e}");
    let msg = rollover::step(
        &ca_dir,
        Step::Activate,
        None,
        false,
        now + 100 + rollover::SLACK.as_secs(),
    )
    .unwrap();
    assert!(msg.starts_with("activated:"), "{msg}");
}
