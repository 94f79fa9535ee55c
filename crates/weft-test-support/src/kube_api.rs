//! A stand-in Kubernetes API server for tests (no real API server can run on these machines).
//!
//! It serves real list/watch traffic over HTTP/1.1 on 127.0.0.1 in the exact shapes the Kubernetes
//! API returns, from objects the test loads (recorded JSON fixtures under `fixtures/kubernetes/`)
//! and then changes:
//!
//! - `GET /api/v1/services`, `/api/v1/namespaces/NS/services` (and the same for every resource the
//!   test registers with [`KubeApi::resource`]): a `…List` with `metadata.resourceVersion` (and
//!   `metadata.continue` when `limit` cuts it short); list items carry no `kind`/`apiVersion`, as
//!   on a real server.
//! - `?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S`: newline-delimited
//!   `WatchEvent`s (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`) after `N`, then live ones; a
//!   bookmark every [`KubeApi::bookmark_every`]; the stream ends after `timeoutSeconds`.
//! - A watch from a `resourceVersion` older than the last compaction gets one `ERROR` event whose
//!   object is a `Status` with `code: 410`, `reason: "Expired"`, `message: "too old resource
//!   version: N (M)"` (what the API server sends; kube's watcher then relists).
//!   [`KubeApi::expire_watches`] compacts and sends that to every open watch.
//! - [`KubeApi::set_down`]: the server stops answering (listener closed, open connections cut),
//!   and comes back on the same port.
//! - The status subresource of the types that have one (weft's CRDs): `PATCH
//!   …/namespaces/NS/PLURAL/NAME/status` (merge patch, `application/merge-patch+json`; JSON patch,
//!   `application/json-patch+json`; server-side apply, `application/apply-patch+yaml`, merged like
//!   a merge patch) and `PUT` on it change only the
//!   object's `status`: a change bumps `resourceVersion` and emits `MODIFIED`, an identical status
//!   changes nothing (as on a real server), an unknown object gets 404, another patch type 415.
//!   [`KubeApi::refuse_status_writes`] answers them 403 (missing RBAC). [`KubeApi::status_writes`]
//!   lists them. On such types, [`KubeApi::apply`] keeps the stored status (a real update of the
//!   main resource ignores `status`) and keeps `metadata.generation`, bumped when `spec` changes.
//!
//! Every change gets the next cluster-wide `resourceVersion`; created objects get a `uid` and a
//! `creationTimestamp`.

use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// One resource type the server serves.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// `/api/v1` or `/apis/GROUP/VERSION`.
    pub prefix: String,
    /// `services`.
    pub plural: String,
    /// `Service`.
    pub kind: String,
    /// `v1`, `discovery.k8s.io/v1`.
    pub api_version: String,
    pub namespaced: bool,
    /// Has a status subresource (`…/NAME/status`), with `metadata.generation` kept.
    pub status: bool,
}

#[derive(Clone)]
struct Ev {
    rv: u64,
    plural: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    types: Vec<ResourceType>,
    /// plural → (namespace, name) → object.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    log: Vec<Ev>,
    rv: u64,
    /// Watches from a resourceVersion below this get 410.
    compacted: u64,
    uid: u64,
    /// Bumped by expire_watches: open watches end with a 410.
    epoch: u64,
    requests: Vec<String>,
    /// `METHOD PATH` of the Secret requests (see the Secrets section).
    secret_requests: Vec<String>,
    /// Status subresource writes: (method and path, body).
    status_writes: Vec<(String, Value)>,
    /// Status writes answer 403.
    refuse_status: bool,
}

/// The stand-in API server. Dropping it stops it.
pub struct KubeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    notify: watch::Sender<u64>,
    down: watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    bookmark: Arc<Mutex<Duration>>,
}

fn core(plural: &str, kind: &str, namespaced: bool) -> ResourceType {
    ResourceType {
        prefix: "/api/v1".into(),
        plural: plural.into(),
        kind: kind.into(),
        api_version: "v1".into(),
        namespaced,
        status: false,
    }
}

/// The resource types a weft control's Kubernetes registry reads: Services, EndpointSlices,
/// Pods, Namespaces, weft's custom resources (WeftRoute, WeftDestination, WeftAuthorization, with
/// a status subresource) and Istio's
/// VirtualService and DestinationRule.
pub fn standard_types() -> Vec<ResourceType> {
    vec![
        core("services", "Service", true),
        core("pods", "Pod", true),
        core("namespaces", "Namespace", false),
        ResourceType {
            prefix: "/apis/discovery.k8s.io/v1".into(),
            plural: "endpointslices".into(),
            kind: "EndpointSlice".into(),
            api_version: "discovery.k8s.io/v1".into(),
            namespaced: true,
            status: false,
        },
        crd("weftroutes", "WeftRoute"),
        crd("weftdestinations", "WeftDestination"),
        crd("weftauthorizations", "WeftAuthorization"),
        istio("virtualservices", "VirtualService"),
        istio("destinationrules", "DestinationRule"),
    ]
}

/// Istio's `networking.istio.io/v1` kinds, as served by a cluster with Istio's CRDs installed.
fn istio(plural: &str, kind: &str) -> ResourceType {
    ResourceType {
        prefix: "/apis/networking.istio.io/v1".into(),
        plural: plural.into(),
        kind: kind.into(),
        api_version: "networking.istio.io/v1".into(),
        namespaced: true,
        status: false,
    }
}

fn crd(plural: &str, kind: &str) -> ResourceType {
    ResourceType {
        prefix: "/apis/weft.dev/v1alpha1".into(),
        plural: plural.into(),
        kind: kind.into(),
        api_version: "weft.dev/v1alpha1".into(),
        namespaced: true,
        status: true,
    }
}

/// A recorded fixture from `fixtures/kubernetes/` (this crate's directory), parsed.
pub fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kubernetes")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture's text, unparsed (AdmissionReview bodies are sent as recorded).
pub fn fixture_text(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kubernetes")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn key_of(obj: &Value) -> (String, String) {
    let md = &obj["metadata"];
    (
        md["namespace"].as_str().unwrap_or("").to_string(),
        md["name"].as_str().unwrap_or("").to_string(),
    )
}

impl KubeApi {
    /// Starts the server on 127.0.0.1 (ephemeral port) on its own thread and runtime, serving
    /// [`standard_types`].
    pub fn start() -> KubeApi {
        KubeApi::start_with_types(standard_types())
    }

    /// Starts the server serving only `types` (others answer 404 NotFound, as on a cluster
    /// without those CRDs installed).
    pub fn start_with_types(types: Vec<ResourceType>) -> KubeApi {
        let state = Arc::new(Mutex::new(State {
            types,
            rv: 100,
            ..Default::default()
        }));
        let (notify, _) = watch::channel(0u64);
        let (down, _) = watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stand-in API server");
        let addr = std_listener.local_addr().unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let bookmark = Arc::new(Mutex::new(Duration::from_secs(1)));
        let ctx = Ctx {
            state: state.clone(),
            notify: notify.clone(),
            down: down.clone(),
            bookmark: bookmark.clone(),
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(ctx, std_listener, addr, stop_rx));
        });
        KubeApi {
            addr,
            state,
            notify,
            down,
            stop: Some(stop_tx),
            thread: Some(thread),
            bookmark,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file's text pointing at this server (no credentials: the stand-in takes none).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\ncurrent-context: standin\nusers:\n- name: standin\n  user: {{}}\n",
            self.url()
        )
    }

    /// Serves one more resource type (a CRD).
    pub fn resource(&self, t: ResourceType) {
        self.state.lock().types.push(t);
    }

    /// How often open watches get a BOOKMARK (default 1 s).
    pub fn bookmark_every(&self, d: Duration) {
        *self.bookmark.lock() = d;
    }

    /// The current cluster-wide resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.lock().rv
    }

    /// Paths and queries of the requests served so far (other methods than GET: `PATCH /apis/…`).
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().requests.clone()
    }

    /// The status subresource writes received so far, accepted or not: (`PATCH /apis/…/status`,
    /// body).
    pub fn status_writes(&self) -> Vec<(String, Value)> {
        self.state.lock().status_writes.clone()
    }

    /// Answers status writes with 403 Forbidden (a ClusterRole without `…/status`), or accepts them
    /// again.
    pub fn refuse_status_writes(&self, refuse: bool) {
        self.state.lock().refuse_status = refuse;
    }

    /// The stored object, as a GET of it would return it.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.state.lock();
        let plural = &st.types.iter().find(|t| t.kind == kind)?.plural;
        st.objects
            .get(plural)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Creates or replaces an object (ADDED or MODIFIED), giving it the next resourceVersion.
    /// Returns that version.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let mut st = self.state.lock();
        let kind = obj["kind"].as_str().expect("object without kind").to_string();
        let t = st
            .types
            .iter()
            .find(|t| t.kind == kind)
            .unwrap_or_else(|| panic!("the stand-in API server does not serve kind {kind}"))
            .clone();
        let plural = t.plural.clone();
        st.rv += 1;
        let rv = st.rv;
        let key = key_of(&obj);
        let existing = st.objects.get(&plural).and_then(|m| m.get(&key)).cloned();
        if t.status {
            // An update of the main resource ignores `status`; `generation` counts spec changes.
            let o = obj.as_object_mut().expect("object is not an object");
            let generation = match &existing {
                Some(old) => {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    g + i64::from(old.get("spec") != o.get("spec"))
                }
                None => 1,
            };
            match existing.as_ref().and_then(|old| old.get("status")) {
                Some(s) => o.insert("status".into(), s.clone()),
                None => o.remove("status"),
            };
            obj["metadata"]["generation"] = json!(generation);
        }
        let md = obj["metadata"].as_object_mut().expect("object without metadata");
        md.insert("resourceVersion".into(), json!(rv.to_string()));
        match &existing {
            Some(old) => {
                md.insert("uid".into(), old["metadata"]["uid"].clone());
                md.insert("creationTimestamp".into(), old["metadata"]["creationTimestamp"].clone());
            }
            None => {
                st.uid += 1;
                let uid = format!("5f8c2a0e-0000-4000-8000-{:012x}", st.uid);
                let md = obj["metadata"].as_object_mut().unwrap();
                md.entry("uid").or_insert(json!(uid));
                md.entry("creationTimestamp").or_insert(json!("2026-12-01T10:00:00Z"));
            }
        }
        let ev_kind = if existing.is_some() { "MODIFIED" } else { "ADDED" };
        st.objects.entry(plural.clone()).or_default().insert(key, obj.clone());
        st.log.push(Ev {
            rv,
            plural,
            kind: ev_kind,
            object: obj,
        });
        drop(st);
        self.notify.send_replace(rv);
        rv
    }

    /// Deletes an object (DELETED with its last state at a new resourceVersion). False if absent.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let mut st = self.state.lock();
        let Some(plural) = st.types.iter().find(|t| t.kind == kind).map(|t| t.plural.clone()) else {
            return false;
        };
        let Some(mut obj) = st
            .objects
            .get_mut(&plural)
            .and_then(|m| m.remove(&(namespace.to_string(), name.to_string())))
        else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push(Ev {
            rv,
            plural,
            kind: "DELETED",
            object: obj,
        });
        drop(st);
        self.notify.send_replace(rv);
        true
    }

    /// Compacts history at the current resourceVersion and ends every open watch with an ERROR
    /// event carrying a 410 Status: watchers must relist.
    pub fn expire_watches(&self) {
        let mut st = self.state.lock();
        st.compacted = st.rv + 1;
        st.epoch += 1;
        st.log.clear();
        let rv = st.rv;
        drop(st);
        self.notify.send_replace(rv);
    }

    /// Takes the server down (listener closed, open connections cut) or brings it back on the same
    /// port.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
struct Ctx {
    state: Arc<Mutex<State>>,
    notify: watch::Sender<u64>,
    down: watch::Sender<bool>,
    bookmark: Arc<Mutex<Duration>>,
}

async fn serve(
    ctx: Ctx,
    std_listener: std::net::TcpListener,
    addr: SocketAddr,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut listener = Some(tokio::net::TcpListener::from_std(std_listener).unwrap());
    let mut down_rx = ctx.down.subscribe();
    loop {
        let accepted = async {
            match &listener {
                Some(l) => l.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            changed = down_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let down = *down_rx.borrow_and_update();
                if down {
                    listener = None;
                } else if listener.is_none() {
                    // The same port: tokio sets SO_REUSEADDR on listeners.
                    for _ in 0..100 {
                        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                            listener = Some(l);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            conn = accepted => {
                let Some((stream, _)) = conn else { continue };
                let ctx = ctx.clone();
                let mut down = ctx.down.subscribe();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move {
                            // Secrets by name (GET, POST): their own section below.
                            let req = match secret_request(&ctx, req).await {
                                Ok(resp) => return Ok::<_, std::convert::Infallible>(resp),
                                Err(req) => req,
                            };
                            Ok::<_, std::convert::Infallible>(handle(ctx, req).await)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        }
    }
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

fn full(status: u16, v: Value) -> http::Response<Body> {
    use http_body_util::BodyExt;
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// (type, namespace filter) for a path.
fn route(types: &[ResourceType], path: &str) -> Option<(ResourceType, Option<String>)> {
    for t in types {
        let Some(rest) = path.strip_prefix(t.prefix.as_str()) else {
            continue;
        };
        if rest == format!("/{}", t.plural) {
            return Some((t.clone(), None));
        }
        if let Some(r) = rest.strip_prefix("/namespaces/") {
            if let Some((ns, p)) = r.split_once('/') {
                if p == t.plural && t.namespaced {
                    return Some((t.clone(), Some(ns.to_string())));
                }
            }
        }
    }
    None
}

/// (type, namespace, name) for a status subresource path `…/namespaces/NS/PLURAL/NAME/status`.
fn status_route(types: &[ResourceType], path: &str) -> Option<(ResourceType, String, String)> {
    let rest = path.strip_suffix("/status")?;
    for t in types.iter().filter(|t| t.status) {
        let Some(r) = rest.strip_prefix(t.prefix.as_str()) else {
            continue;
        };
        let (ns, r) = match r.strip_prefix("/namespaces/") {
            Some(r) if t.namespaced => r.split_once('/')?,
            None if !t.namespaced => ("", r.strip_prefix('/')?),
            _ => continue,
        };
        if let Some((p, name)) = r.split_once('/') {
            if p == t.plural && !name.is_empty() && !name.contains('/') {
                return Some((t.clone(), ns.to_string(), name.to_string()));
            }
        }
    }
    None
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// A write of the status subresource: only `status` changes.
fn write_status(ctx: &Ctx, method: &http::Method, content_type: &str, path: &str, body: &[u8]) -> http::Response<Body> {
    let mut st = ctx.state.lock();
    let Some((t, ns, name)) = status_route(&st.types, path) else {
        return full(
            404,
            status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ),
        );
    };
    let body: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return full(400, status(400, "BadRequest", format!("the body is not JSON: {e}"))),
    };
    st.status_writes.push((format!("{method} {path}"), body.clone()));
    if st.refuse_status {
        let msg = format!(
            "{} \"{name}\" is forbidden: User \"system:serviceaccount:weft-system:weft-control\" cannot {} resource \"{}/status\" in API group \"{}\" in the namespace \"{ns}\"",
            t.plural,
            method.as_str().to_ascii_lowercase(),
            t.plural,
            t.api_version.split('/').next().unwrap_or(""),
        );
        return full(403, status(403, "Forbidden", msg));
    }
    let Some(existing) = st
        .objects
        .get(&t.plural)
        .and_then(|m| m.get(&(ns.clone(), name.clone())))
        .cloned()
    else {
        return full(
            404,
            status(
                404,
                "NotFound",
                format!(
                    "{}.{} \"{name}\" not found",
                    t.plural,
                    t.api_version.split('/').next().unwrap_or("")
                ),
            ),
        );
    };
    let mut patched = existing.clone();
    match (method.as_str(), content_type) {
        ("PATCH", "application/merge-patch+json" | "application/apply-patch+yaml") => merge_patch(&mut patched, &body),
        ("PATCH", "application/json-patch+json") => {
            let applied = serde_json::from_value::<json_patch::Patch>(body.clone())
                .map_err(|e| e.to_string())
                .and_then(|p| json_patch::patch(&mut patched, &p).map_err(|e| e.to_string()));
            if let Err(e) = applied {
                return full(422, status(422, "Invalid", format!("the JSON patch does not apply: {e}")));
            }
        }
        ("PUT", _) => patched = body,
        _ => {
            return full(
                415,
                status(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (not {content_type})")),
            )
        }
    }
    let mut obj = existing.clone();
    match patched.get("status") {
        Some(s) if !s.is_null() => obj["status"] = s.clone(),
        _ => {
            obj.as_object_mut().unwrap().remove("status");
        }
    }
    if obj == existing {
        return full(200, obj);
    }
    st.rv += 1;
    let rv = st.rv;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.objects
        .entry(t.plural.clone())
        .or_default()
        .insert((ns, name), obj.clone());
    st.log.push(Ev {
        rv,
        plural: t.plural.clone(),
        kind: "MODIFIED",
        object: obj.clone(),
    });
    drop(st);
    ctx.notify.send_replace(rv);
    full(200, obj)
}

async fn handle(ctx: Ctx, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
    if req.method() == http::Method::PATCH || req.method() == http::Method::PUT {
        use http_body_util::BodyExt;
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        ctx.state.lock().requests.push(format!("{method} {}", req.uri()));
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return full(400, status(400, "BadRequest", format!("reading the body: {e}"))),
        };
        return write_status(&ctx, &method, &content_type, &path, &body);
    }
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.replace("%2F", "/"))
        })
        .collect();
    let types = {
        let mut st = ctx.state.lock();
        st.requests.push(req.uri().to_string());
        st.types.clone()
    };
    if req.method() != http::Method::GET {
        return full(
            405,
            status(
                405,
                "MethodNotAllowed",
                format!("{} is not supported here", req.method()),
            ),
        );
    }
    let Some((t, ns)) = route(&types, &path) else {
        return full(
            404,
            status(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ),
        );
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if watching {
        return watch_response(ctx, t, ns, &query);
    }
    let st = ctx.state.lock();
    let mut items: Vec<Value> = st
        .objects
        .get(&t.plural)
        .map(|m| {
            m.iter()
                .filter(|((n, _), _)| ns.as_ref().is_none_or(|want| want == n))
                .map(|(_, v)| {
                    let mut v = v.clone();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("kind");
                        o.remove("apiVersion");
                    }
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    let offset: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(usize::MAX);
    let total = items.len();
    items = items.into_iter().skip(offset).take(limit).collect();
    let mut metadata = json!({ "resourceVersion": st.rv.to_string() });
    if offset + items.len() < total {
        metadata["continue"] = json!((offset + items.len()).to_string());
        metadata["remainingItemCount"] = json!(total - offset - items.len());
    }
    full(
        200,
        json!({
            "kind": format!("{}List", t.kind),
            "apiVersion": t.api_version,
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn watch_response(
    ctx: Ctx,
    t: ResourceType,
    ns: Option<String>,
    query: &BTreeMap<String, String>,
) -> http::Response<Body> {
    use http_body_util::BodyExt;
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = Duration::from_secs(query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(1800));
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    tokio::spawn(async move {
        let line = |v: Value| {
            let mut s = v.to_string();
            s.push('\n');
            bytes::Bytes::from(s)
        };
        let mut seen = from;
        let (epoch, gone) = {
            let st = ctx.state.lock();
            if from == 0 {
                seen = st.rv;
            }
            let gone = (from != 0 && from < st.compacted).then(|| {
                let msg = format!("too old resource version: {from} ({})", st.compacted);
                json!({"type": "ERROR", "object": status(410, "Expired", msg)})
            });
            (st.epoch, gone)
        };
        if let Some(ev) = gone {
            let _ = tx.send(line(ev)).await;
            return;
        }
        let mut changes = ctx.notify.subscribe();
        let end = tokio::time::Instant::now() + timeout;
        let every = *ctx.bookmark.lock();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let (out, expired) = {
                let st = ctx.state.lock();
                let expired =
                    (st.epoch != epoch).then(|| format!("too old resource version: {seen} ({})", st.compacted));
                let out: Vec<Ev> = st
                    .log
                    .iter()
                    .filter(|e| e.rv > seen && e.plural == t.plural)
                    .filter(|e| ns.as_ref().is_none_or(|want| key_of(&e.object).0 == *want))
                    .cloned()
                    .collect();
                seen = seen.max(st.log.last().map_or(seen, |e| e.rv.max(seen)));
                (out, expired)
            };
            if let Some(msg) = expired {
                let _ = tx
                    .send(line(json!({"type": "ERROR", "object": status(410, "Expired", msg)})))
                    .await;
                return;
            }
            for e in out {
                if tx
                    .send(line(json!({"type": e.kind, "object": e.object})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tick.tick() => {
                    if bookmarks {
                        // Everything up to `seen` has been sent: a resume from here loses nothing.
                        let rv = seen;
                        let bm = json!({"type": "BOOKMARK", "object": {
                            "kind": t.kind, "apiVersion": t.api_version,
                            "metadata": {"resourceVersion": rv.to_string()}
                        }});
                        if tx.send(line(bm)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(end) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(http_body::Frame::data(b)), rx))
    });
    http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(http_body_util::StreamBody::new(stream).boxed())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Secrets: what weft control's shared CA (`--ca-store kubernetes`) needs, in the core v1 shapes.
//
// - `GET /api/v1/namespaces/NS/secrets/NAME`: the Secret (`kind`, `apiVersion` included), or 404
//   with a `Status` (`reason: NotFound`, `message: secrets "NAME" not found`, `details`).
// - `POST /api/v1/namespaces/NS/secrets` with a Secret: 201 and the stored object (namespace,
//   `uid`, `resourceVersion`, `creationTimestamp` filled in), or 409 with a `Status`
//   (`reason: AlreadyExists`, `message: secrets "NAME" already exists`) when the name is taken;
//   400 when the body is not a Secret or its namespace differs from the path's; 422 without a name.
//
// Secrets live with the other objects (plural `secrets`), so [`KubeApi::apply`] works for them once
// the `secrets` type is registered; creations are logged as ADDED events.

impl KubeApi {
    /// A stored Secret (as the API server would return it), None if absent.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .objects
            .get("secrets")
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// `METHOD PATH` of every Secret request served so far.
    pub fn secret_requests(&self) -> Vec<String> {
        self.state.lock().secret_requests.clone()
    }
}

fn secret_status(code: u16, reason: &str, message: String, name: &str) -> Value {
    let mut v = status(code, reason, message);
    v["details"] = json!({ "name": name, "kind": "secrets" });
    v
}

/// (namespace, name) of `/api/v1/namespaces/NS/secrets[/NAME]`.
fn secret_path(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("secrets")?;
    match rest {
        "" => Some((ns.to_string(), None)),
        r => {
            let name = r.strip_prefix('/')?;
            (!name.is_empty() && !name.contains('/')).then(|| (ns.to_string(), Some(name.to_string())))
        }
    }
}

/// Answers a Secret GET-by-name or POST; hands any other request back.
async fn secret_request(
    ctx: &Ctx,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, http::Request<hyper::body::Incoming>> {
    use http_body_util::BodyExt;
    let Some((ns, name)) = secret_path(req.uri().path()) else {
        return Err(req);
    };
    if *ctx.down.borrow() {
        return Err(req);
    }
    let method = req.method().as_str().to_string();
    match (method.as_str(), name) {
        ("GET", Some(name)) => {
            let mut st = ctx.state.lock();
            st.secret_requests.push(format!("GET {}", req.uri().path()));
            let found = st
                .objects
                .get("secrets")
                .and_then(|m| m.get(&(ns.clone(), name.clone())))
                .cloned();
            Ok(match found {
                Some(s) => full(200, s),
                None => full(
                    404,
                    secret_status(404, "NotFound", format!("secrets \"{name}\" not found"), &name),
                ),
            })
        }
        ("POST", None) => {
            let path = req.uri().path().to_string();
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Ok(full(400, status(400, "BadRequest", e.to_string()))),
            };
            let mut st = ctx.state.lock();
            st.secret_requests.push(format!("POST {path}"));
            let mut obj: Value = match serde_json::from_slice(&body) {
                Ok(v @ Value::Object(_)) if v["kind"] == "Secret" || v["kind"].is_null() => v,
                _ => return Ok(full(400, status(400, "BadRequest", "the body is not a Secret".into()))),
            };
            let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                return Ok(full(
                    422,
                    status(
                        422,
                        "Invalid",
                        "Secret \"\" is invalid: metadata.name: Required value: name or generateName is required"
                            .into(),
                    ),
                ));
            };
            match obj["metadata"]["namespace"].as_str() {
                Some(n) if n != ns => {
                    return Ok(full(
                        400,
                        status(
                            400,
                            "BadRequest",
                            "the namespace of the provided object does not match the namespace sent on the request"
                                .into(),
                        ),
                    ))
                }
                _ => {}
            }
            let key = (ns.clone(), name.clone());
            if st.objects.get("secrets").is_some_and(|m| m.contains_key(&key)) {
                return Ok(full(
                    409,
                    secret_status(
                        409,
                        "AlreadyExists",
                        format!("secrets \"{name}\" already exists"),
                        &name,
                    ),
                ));
            }
            st.rv += 1;
            st.uid += 1;
            let rv = st.rv;
            let uid = format!("5f8c2a0e-0000-4000-8000-{:012x}", st.uid);
            obj["kind"] = json!("Secret");
            obj["apiVersion"] = json!("v1");
            let md = obj["metadata"].as_object_mut().expect("metadata is an object");
            md.insert("namespace".into(), json!(ns));
            md.insert("uid".into(), json!(uid));
            md.insert("resourceVersion".into(), json!(rv.to_string()));
            md.insert("creationTimestamp".into(), json!("2026-12-01T10:00:00Z"));
            if obj.get("type").is_none() {
                obj["type"] = json!("Opaque");
            }
            st.objects.entry("secrets".into()).or_default().insert(key, obj.clone());
            st.log.push(Ev {
                rv,
                plural: "secrets".into(),
                kind: "ADDED",
                object: obj.clone(),
            });
            drop(st);
            ctx.notify.send_replace(rv);
            Ok(full(201, obj))
        }
        _ => Err(req),
    }
}
