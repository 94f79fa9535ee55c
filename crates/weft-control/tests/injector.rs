//! The sidecar injector over real HTTPS on 127.0.0.1: recorded AdmissionReview v1 requests (in
//! the shape the API server sends, under weft-test-support's `fixtures/kubernetes/`) are POSTed to
//! `/inject`; the JSON patch in each response is applied to the request's pod with the `json-patch`
//! crate and the result compared with the expected pod (`pod-reviews-v1-injected.json`; after a
//! deliberate change to the injected pod, regenerate it with `WEFT_BLESS=1`).
#![cfg(feature = "kubernetes")]

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_control::injector::{self, InjectorConfig};
use weft_test_support::kube_api::{fixture, fixture_text};

struct Tls {
    client: tokio_rustls::TlsConnector,
}

fn cert() -> (String, String, Tls) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["weft-control.weft-system.svc".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        cert.pem(),
        key.serialize_pem(),
        Tls {
            client: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        },
    )
}

/// One HTTPS POST; (status, body).
async fn post(tls: &Tls, addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("weft-control.weft-system.svc").unwrap();
    let mut s = tls
        .client
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the injector");
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: weft-control.weft-system.svc\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The patch of a response applied to the request's pod (None when the response has no patch).
fn patched(review: &Value, resp: &Value) -> Option<Value> {
    let r = &resp["response"];
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(
        r["uid"], review["request"]["uid"],
        "the response names the request's uid"
    );
    assert_eq!(r["allowed"], true);
    let b64 = r["patch"].as_str()?;
    assert_eq!(r["patchType"], "JSONPatch");
    let bytes = weft_test_support::base64_decode(b64);
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("the patch is a JSON patch");
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
    Some(pod)
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

#[tokio::test]
async fn injects_once_honours_opt_out_and_answers_recorded_reviews() {
    let (cert, key, tls) = cert();
    let cfg = InjectorConfig {
        image: "registry.example/weft:0.1.0".into(),
        ..Default::default()
    };
    let inj = injector::start("127.0.0.1:0".parse().unwrap(), cert.as_bytes(), key.as_bytes(), cfg)
        .await
        .unwrap();

    // A ReplicaSet's pod: the recorded request, byte for byte.
    let text = fixture_text("admissionreview-create-pod.json");
    let review: Value = serde_json::from_str(&text).unwrap();
    let (status, resp) = post(&tls, inj.addr, "/inject", &text).await;
    assert_eq!(status, 200, "{resp}");
    let pod = patched(&review, &resp).unwrap_or_else(|| panic!("no patch: {resp}"));

    // The expected pod, in full.
    let expected_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../weft-test-support/fixtures/kubernetes/pod-reviews-v1-injected.json");
    if std::env::var("WEFT_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&expected_path, serde_json::to_string_pretty(&pod).unwrap() + "\n").unwrap();
    }
    let expected = fixture("pod-reviews-v1-injected.json");
    assert_eq!(
        pod, expected,
        "the injected pod differs from pod-reviews-v1-injected.json"
    );

    // What matters in it, spelled out.
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weft-proxy", "reviews"], "the sidecar starts first");
    let proxy = container(&pod, "containers", "weft-proxy");
    assert_eq!(proxy["args"], json!(["proxy", "-c", "/etc/weft/bootstrap.yaml"]));
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["lifecycle"]["postStart"]["exec"]["command"][1], "wait-ready");
    assert!(proxy["lifecycle"]["preStop"].is_object());
    let init = container(&pod, "initContainers", "weft-init");
    assert_eq!(init["args"][0], "init");
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["sidecar.weft.dev/status"], "injected");
    let bootstrap = ann["sidecar.weft.dev/bootstrap"].as_str().unwrap();
    assert!(bootstrap.contains("cluster: \"reviews.bookinfo\""), "{bootstrap}");
    assert!(bootstrap.contains("weft.app: \"127.0.0.1:9080\""), "{bootstrap}");
    assert!(
        bootstrap.contains("address: \"weft-control.weft-system.svc:18000\""),
        "{bootstrap}"
    );
    // The bootstrap parses as a weft proxy configuration would need: YAML with node and xds.
    let parsed: serde_json::Value = serde_saphyr::from_str(bootstrap).expect("bootstrap is YAML");
    assert_eq!(parsed["xds"]["mode"], "ads_delta");
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "the pod's own volume is kept");
    assert_eq!(volumes[1]["name"], "weft-bootstrap");

    // Idempotent: the injected pod sent again (reinvocation) is left alone.
    let mut again = review.clone();
    again["request"]["object"] = pod.clone();
    let (status, resp) = post(&tls, inj.addr, "/inject", &again.to_string()).await;
    assert_eq!(status, 200);
    assert!(
        patched(&again, &resp).is_none(),
        "an injected pod must not be patched again: {resp}"
    );

    // Opted out by annotation.
    let text = fixture_text("admissionreview-create-pod-optout.json");
    let review: Value = serde_json::from_str(&text).unwrap();
    let (status, resp) = post(&tls, inj.addr, "/inject", &text).await;
    assert_eq!(status, 200);
    assert!(patched(&review, &resp).is_none(), "opted out: {resp}");

    // Existing init containers and annotations: ours goes first, theirs stay.
    let text = fixture_text("admissionreview-create-pod-initcontainers.json");
    let review: Value = serde_json::from_str(&text).unwrap();
    let (_, resp) = post(&tls, inj.addr, "/inject", &text).await;
    let pod = patched(&review, &resp).unwrap_or_else(|| panic!("no patch: {resp}"));
    let inits: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["weft-init", "migrate"]);
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(pod["metadata"]["annotations"]["sidecar.weft.dev/status"], "injected");

    // Not an AdmissionReview: a clear 400, and the injector keeps serving.
    let (status, resp) = post(&tls, inj.addr, "/inject", "{\"kind\": \"Pod\"}").await;
    assert_eq!(status, 400);
    let err = resp["error"].as_str().unwrap();
    assert!(err.contains("AdmissionReview"), "{err}");
    let (status, _) = post(&tls, inj.addr, "/other", "{}").await;
    assert_eq!(status, 404);
    inj.stop();
}

#[test]
fn a_hostnetwork_pod_is_admitted_unchanged_with_a_warning() {
    let mut review = fixture("admissionreview-create-pod.json");
    review["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    let resp = injector::review(review.to_string().as_bytes(), &InjectorConfig::default()).unwrap();
    assert_eq!(resp["response"]["allowed"], true);
    assert!(resp["response"]["patch"].is_null());
    let w = resp["response"]["warnings"][0].as_str().unwrap();
    assert!(w.contains("hostNetwork"), "{w}");
}
