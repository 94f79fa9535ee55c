//! The sidecar injector: a mutating admission webhook (`POST /inject`, AdmissionReview v1 over
//! HTTPS) that adds the weft sidecar and its init step to a pod, answering with a JSON patch.
//!
//! What a pod gets (nothing when it has the annotation `sidecar.weft.dev/inject: "false"`, or was
//! injected already — annotation `sidecar.weft.dev/status` or a container named `weft-proxy`):
//!
//! - annotation `sidecar.weft.dev/bootstrap`: the sidecar's bootstrap YAML (node, admin, xDS
//!   address), mounted into the sidecar as a file through a downward-API volume (`weft-bootstrap`);
//!   with a CA, also `sidecar.weft.dev/identity-token`, a bootstrap token for the pod's
//!   `namespace/serviceAccount` (mounted the same way); with the secure xDS port
//!   ([`SecureXds`]), also `sidecar.weft.dev/ca-root`, the mesh root the sidecar verifies weft
//!   control with (public), and the sidecar gets its certificate and its configuration over TLS;
//! - init container `weft-init` (first): `weft init` with `NET_ADMIN` and `NET_RAW`, installing
//!   the iptables redirection to the sidecar's ports;
//! - container `weft-proxy` (first, so the app starts after it): `weft proxy -c
//!   /etc/weft/bootstrap.yaml`, running as the proxy uid that `weft init` exempts, a `postStart`
//!   hook `weft wait-ready` (the app container starts only once the sidecar is ready), a readiness
//!   probe, and a `preStop` sleep so endpoints are withdrawn before SIGTERM starts the drain;
//! - annotation `sidecar.weft.dev/status: injected`.
//!
//! Opting in is per namespace (label `sidecar.weft.dev/inject: enabled`, the webhook
//! configuration's `namespaceSelector`).

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const INJECT_ANNOTATION: &str = "sidecar.weft.dev/inject";
pub const STATUS_ANNOTATION: &str = "sidecar.weft.dev/status";
pub const BOOTSTRAP_ANNOTATION: &str = "sidecar.weft.dev/bootstrap";
pub const TOKEN_ANNOTATION: &str = "sidecar.weft.dev/identity-token";
pub const ROOT_ANNOTATION: &str = "sidecar.weft.dev/ca-root";
/// Names the weft service a pod belongs to (default: its `app` label, `.`, its namespace).
pub const SERVICE_ANNOTATION: &str = "sidecar.weft.dev/service";
pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-init";

/// What the injected containers look like.
#[derive(Clone)]
pub struct InjectorConfig {
    /// The image holding the `weft` binary.
    pub image: String,
    /// Where sidecars reach weft control's xDS (`weft-control.weft-system.svc:18000`).
    pub xds_address: String,
    /// Where sidecars reach the CA (`--ca-address`), when identities are issued.
    pub ca_address: Option<String>,
    /// Mints the bootstrap tokens (the CA's token key), with their lifetime.
    pub tokens: Option<(Arc<crate::ca::TokenKey>, Duration)>,
    /// Sidecars use weft control's TLS port (`--xds-tls`) for both the CA and ADS, instead of
    /// `xds_address` and `ca_address`.
    pub secure_xds: Option<SecureXds>,
    pub proxy_uid: i64,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            image: "weft:latest".into(),
            xds_address: "weft-control.weft-system.svc:18000".into(),
            ca_address: None,
            tokens: None,
            secure_xds: None,
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            admin_port: 15000,
        }
    }
}

/// weft control's TLS port as injected sidecars reach it.
#[derive(Clone)]
pub struct SecureXds {
    /// `weft-control.weft-system.svc:15012`.
    pub address: String,
    /// The mesh root (PEM) the sidecars verify weft control's certificate with.
    pub root_pem: String,
    /// When set, its trust bundle at the time of each injection instead of `root_pem` (a root
    /// rollover changes it while weft control runs).
    pub ca: Option<std::sync::Arc<crate::ca::Ca>>,
}

/// Why a review could not be answered at all (a request that is answered — allowed or not —
/// is not an error).
#[derive(Debug)]
pub enum InjectError {
    /// The body is not an AdmissionReview v1 with a request.
    BadReview(String),
}

impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InjectError::BadReview(e) => write!(f, "not an admission.k8s.io/v1 AdmissionReview request: {e}"),
        }
    }
}

/// JSON Pointer escaping of one path segment (RFC 6901).
fn esc(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Answers one AdmissionReview body. The response always allows the pod (a pod the injector
/// cannot patch is admitted unchanged, with the reason as a warning).
pub fn review(body: &[u8], cfg: &InjectorConfig) -> Result<Value, InjectError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| InjectError::BadReview(e.to_string()))?;
    let req: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| InjectError::BadReview(e.to_string()))?;
    let resp = AdmissionResponse::from(&req);
    let resp = match patch_for(&req, cfg) {
        Ok(Some(ops)) => {
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| InjectError::BadReview(format!("internal patch: {e}")))?;
            match resp.with_patch(patch) {
                Ok(r) => r,
                Err(e) => AdmissionResponse::from(&req).deny(format!("weft injector: {e}")),
            }
        }
        Ok(None) => resp,
        Err(why) => {
            tracing::warn!(uid = %req.uid, name = ?req.name, namespace = ?req.namespace, reason = %why, "not injected");
            let mut r = resp;
            r.warnings = Some(vec![format!("weft sidecar not injected: {why}")]);
            r
        }
    };
    let mut out = serde_json::to_value(resp.into_review()).map_err(|e| InjectError::BadReview(e.to_string()))?;
    // kube-core serializes the patch bytes as a JSON array of numbers; the API documents the
    // field as Go `[]byte`, i.e. a base64 string, which is what the API server's own clients send.
    if let Some(p) = out.pointer_mut("/response/patch") {
        if let Some(arr) = p.as_array() {
            let bytes: Vec<u8> = arr.iter().filter_map(|b| b.as_u64()).map(|b| b as u8).collect();
            *p = Value::String(base64(&bytes));
        }
    }
    Ok(out)
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    weft_core::trace::base64_encode(data, &mut out);
    String::from_utf8(out).expect("base64 is ASCII")
}

/// The JSON patch for one request: None when nothing is to be done (not a pod creation, opted
/// out, already injected); Err with a reason when the pod cannot be injected.
pub fn patch_for(req: &AdmissionRequest<DynamicObject>, cfg: &InjectorConfig) -> Result<Option<Vec<Value>>, String> {
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        return Ok(None);
    }
    let Some(obj) = &req.object else {
        return Ok(None);
    };
    let pod = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    let annotations = pod["metadata"]["annotations"].as_object();
    let ann = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_str);
    if ann(INJECT_ANNOTATION) == Some("false") {
        return Ok(None);
    }
    let containers = pod["spec"]["containers"]
        .as_array()
        .ok_or("spec.containers is missing")?;
    if containers.is_empty() {
        return Err("spec.containers is empty".into());
    }
    let injected = ann(STATUS_ANNOTATION).is_some()
        || containers.iter().any(|c| c["name"] == PROXY_CONTAINER)
        || pod["spec"]["initContainers"]
            .as_array()
            .is_some_and(|v| v.iter().any(|c| c["name"] == INIT_CONTAINER));
    if injected {
        return Ok(None);
    }
    if pod["spec"]["hostNetwork"] == json!(true) {
        return Err("spec.hostNetwork is true: iptables redirection would capture the node's traffic".into());
    }
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod["metadata"]["namespace"].as_str().map(str::to_string))
        .unwrap_or_else(|| "default".into());
    let labels = pod["metadata"]["labels"].as_object();
    let app = labels
        .and_then(|l| l.get("app").or_else(|| l.get("app.kubernetes.io/name")))
        .and_then(Value::as_str);
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| pod["metadata"]["generateName"].as_str())
        .unwrap_or("pod");
    let service = ann(SERVICE_ANNOTATION)
        .map(str::to_string)
        .or_else(|| app.map(|a| format!("{a}.{namespace}")))
        .unwrap_or_default();
    let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    let app_port = containers
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["containerPort"].as_u64())
        .next();
    let mut bootstrap = format!(
        "node:\n  id: \"sidecar~{namespace}~{pod_name}\"\n  cluster: \"{service}\"\n  metadata:\n    NAMESPACE: \"{namespace}\"\n    weft.role: sidecar\n    weft.outbound: \"0.0.0.0:{}\"\n    weft.inbound: \"0.0.0.0:{}\"\n",
        cfg.outbound_port, cfg.inbound_port
    );
    if let Some(p) = app_port {
        bootstrap.push_str(&format!("    weft.app: \"127.0.0.1:{p}\"\n"));
    }
    let xds_address = cfg.secure_xds.as_ref().map_or(&cfg.xds_address, |s| &s.address);
    bootstrap.push_str(&format!(
        "admin:\n  address: \"127.0.0.1:{}\"\nxds:\n  address: \"{xds_address}\"\n  mode: ads_delta\n",
        cfg.admin_port
    ));
    if cfg.secure_xds.is_some() {
        // Verify weft control against the mesh root, authenticate with the workload certificate.
        bootstrap.push_str("  tls: { mode: mesh }\n");
    }
    let token = match &cfg.tokens {
        Some((key, ttl)) => Some(
            key.mint(&format!("{namespace}/{sa}"), *ttl)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let weft_cmd = |args: &[&str]| -> Value {
        let mut v = vec![json!("weft")];
        v.extend(args.iter().map(|a| json!(a)));
        Value::Array(v)
    };
    let admin = format!("127.0.0.1:{}", cfg.admin_port);
    let mut proxy_args = vec![json!("proxy"), json!("-c"), json!("/etc/weft/bootstrap.yaml")];
    let ca_address = cfg.secure_xds.as_ref().map(|s| &s.address).or(cfg.ca_address.as_ref());
    if let (Some(ca), Some(_)) = (ca_address, &token) {
        proxy_args.extend([json!("--ca-address"), json!(ca)]);
        if cfg.secure_xds.is_some() {
            proxy_args.extend([json!("--ca-root-file"), json!("/etc/weft/ca-root.pem")]);
        }
        proxy_args.extend([json!("--identity-token-file"), json!("/etc/weft/identity-token")]);
    }
    let proxy = json!({
        "name": PROXY_CONTAINER,
        "image": cfg.image,
        "args": proxy_args,
        "ports": [{"name": "weft-inbound", "containerPort": cfg.inbound_port, "protocol": "TCP"}],
        "env": [{"name": "WEFT_LOG", "value": "info"}],
        "securityContext": {
            "runAsUser": cfg.proxy_uid,
            "runAsGroup": cfg.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}
        },
        "readinessProbe": {
            "exec": {"command": weft_cmd(&["wait-ready", "--admin", &admin, "--timeout", "1s"])},
            "periodSeconds": 5,
            "timeoutSeconds": 3
        },
        "lifecycle": {
            "postStart": {"exec": {"command": weft_cmd(&["wait-ready", "--admin", &admin, "--timeout", "60s"])}},
            "preStop": {"sleep": {"seconds": 5}}
        },
        "volumeMounts": [{"name": "weft-bootstrap", "mountPath": "/etc/weft", "readOnly": true}],
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}}
    });
    let uid = cfg.proxy_uid.to_string();
    let init = json!({
        "name": INIT_CONTAINER,
        "image": cfg.image,
        "args": [
            "init",
            "--proxy-uid", uid, "--proxy-gid", uid,
            "--outbound-port", cfg.outbound_port.to_string(),
            "--inbound-port", cfg.inbound_port.to_string(),
            "--exclude-inbound-ports", cfg.admin_port.to_string()
        ],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}
    });
    let mut items = vec![
        json!({"path": "bootstrap.yaml", "fieldRef": {"fieldPath": format!("metadata.annotations['{BOOTSTRAP_ANNOTATION}']")}}),
    ];
    if token.is_some() {
        items.push(json!({"path": "identity-token", "fieldRef": {"fieldPath": format!("metadata.annotations['{TOKEN_ANNOTATION}']")}}));
    }
    if cfg.secure_xds.is_some() {
        items.push(json!({"path": "ca-root.pem", "fieldRef": {"fieldPath": format!("metadata.annotations['{ROOT_ANNOTATION}']")}}));
    }
    let volume = json!({"name": "weft-bootstrap", "downwardAPI": {"items": items}});

    let mut ops = Vec::new();
    let mut new_ann = vec![
        (STATUS_ANNOTATION, json!("injected")),
        (BOOTSTRAP_ANNOTATION, json!(bootstrap)),
    ];
    if let Some(t) = token {
        new_ann.push((TOKEN_ANNOTATION, json!(t)));
    }
    if let Some(s) = &cfg.secure_xds {
        let roots = s.ca.as_ref().map_or_else(|| s.root_pem.clone(), |ca| ca.root_pem());
        new_ann.push((ROOT_ANNOTATION, json!(roots)));
    }
    if annotations.is_none() {
        let m: serde_json::Map<String, Value> = new_ann.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": m}));
    } else {
        for (k, v) in new_ann {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", esc(k)), "value": v}));
        }
    }
    match pod["spec"]["initContainers"].as_array() {
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init})),
        None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]})),
    }
    ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": proxy}));
    match pod["spec"]["volumes"].as_array() {
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume})),
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]})),
    }
    Ok(Some(ops))
}

/// A running injector.
pub struct Injector {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Injector {
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Why the injector could not start.
#[derive(Debug)]
pub enum StartError {
    Tls(String),
    Bind(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "injector TLS: {e}"),
            StartError::Bind(e) => write!(f, "injector listen: {e}"),
        }
    }
}

/// The largest AdmissionReview accepted (the API server sends at most a few hundred KiB).
const MAX_BODY: usize = 3 << 20;

/// Serves `POST /inject` over HTTPS (HTTP/1.1 and h2) on `addr` with the PEM certificate chain and
/// PKCS#8 key given (the API server verifies it against the webhook configuration's caBundle).
pub async fn start(
    addr: SocketAddr,
    cert_pem: &[u8],
    key_pem: &[u8],
    cfg: InjectorConfig,
) -> Result<Injector, StartError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| StartError::Tls(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(StartError::Tls("certificate: no PEM certificate".into()));
    }
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| StartError::Tls(format!("key: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(StartError::Bind)?;
    let addr = listener.local_addr().map_err(StartError::Bind)?;
    let cfg = Arc::new(cfg);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let cfg = cfg.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(req, &cfg).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    tracing::info!(%addr, "sidecar injector listening (POST /inject)");
    Ok(Injector { addr, task })
}

fn reply(status: u16, body: Value) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap_or_default()
}

async fn handle(
    req: http::Request<hyper::body::Incoming>,
    cfg: &InjectorConfig,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    if req.uri().path() != "/inject" {
        return reply(404, json!({"error": "not found: the injector answers POST /inject"}));
    }
    if req.method() != http::Method::POST {
        return reply(405, json!({"error": "POST an AdmissionReview to /inject"}));
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(413, json!({"error": format!("body: {e}")})),
    };
    match review(&body, cfg) {
        Ok(v) => reply(200, v),
        Err(e) => reply(400, json!({"error": e.to_string()})),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
