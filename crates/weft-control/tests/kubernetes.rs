//! The Kubernetes registry against the stand-in API server (weft-test-support's `kube_api`: real
//! list/watch HTTP traffic from recorded JSON fixtures; no real API server runs here): the initial
//! list, watch ADDED/MODIFIED/DELETED, endpoint health from EndpointSlice conditions, pod labels and
//! identity, malformed objects skipped with their reason, `410 Gone` relisting without an empty
//! mesh in between, and an unreachable API server reported while the last state keeps serving.
#![cfg(feature = "kubernetes")]

use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use weft_control::model::{Fragment, Health};
use weft_control::registry::kubernetes::KubeRegistry;
use weft_control::registry::{Registry, RegistryEvent, SourceChange};
use weft_test_support::kube_api::{fixture, KubeApi};

/// What the registry has said so far, folded.
#[derive(Default)]
struct Seen {
    sources: BTreeMap<String, Arc<Fragment>>,
    skipped: BTreeMap<String, String>,
    synced: bool,
    connected: Option<bool>,
    /// Sources that were ever removed or published empty.
    emptied: Vec<String>,
    batches: usize,
}

struct Harness {
    rx: mpsc::Receiver<RegistryEvent>,
    seen: Seen,
    _stop: watch::Sender<bool>,
}

impl Harness {
    fn start(api: &KubeApi) -> Harness {
        let reg = KubeRegistry::parse(&format!("kubernetes?api={}", api.url())).unwrap();
        let (tx, rx) = mpsc::channel(64);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(Box::new(reg).run(tx, stop_rx));
        Harness {
            rx,
            seen: Seen::default(),
            _stop: stop,
        }
    }

    /// Folds events until `done` holds (or panics after `timeout`); returns the time it took.
    async fn until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Seen) -> bool) -> Duration {
        let start = Instant::now();
        while !done(&self.seen) {
            let left = timeout.saturating_sub(start.elapsed());
            let ev = tokio::time::timeout(left, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"))
                .expect("registry ended");
            self.fold(ev);
        }
        start.elapsed()
    }

    fn fold(&mut self, ev: RegistryEvent) {
        match ev {
            RegistryEvent::Changes(c) => {
                self.seen.batches += 1;
                for ch in c {
                    match ch {
                        SourceChange::Upsert { source, fragment } => {
                            if fragment.services.iter().all(|s| s.endpoints.is_empty()) {
                                self.seen.emptied.push(source.clone());
                            }
                            self.seen.sources.insert(source, Arc::new(fragment));
                        }
                        SourceChange::Remove { source } => {
                            self.seen.emptied.push(source.clone());
                            self.seen.sources.remove(&source);
                        }
                        SourceChange::Invalid { source, errors } => panic!("{source}: {errors:?}"),
                    }
                }
            }
            RegistryEvent::Synced => self.seen.synced = true,
            RegistryEvent::Health { connected, .. } => self.seen.connected = Some(connected),
            RegistryEvent::Skipped(m) => self.seen.skipped = m,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn endpoints(seen: &Seen, source: &str) -> Vec<(String, Health)> {
    seen.sources.get(source).map_or_else(Vec::new, |f| {
        f.services[0]
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.health))
            .collect()
    })
}

const REVIEWS: &str = "k8s:bookinfo/reviews";

fn load_bookinfo(api: &KubeApi) {
    for f in [
        "namespace-bookinfo.json",
        "service-reviews.json",
        "endpointslice-reviews.json",
        "pod-reviews-v1.json",
        "pod-reviews-v2.json",
        "service-noports.json",
        "endpointslice-noports.json",
    ] {
        api.apply(fixture(f));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_watches_relists_and_survives_an_outage() {
    let api = KubeApi::start();
    load_bookinfo(&api);
    let mut h = Harness::start(&api);
    let took = h.until("the first sync", Duration::from_secs(10), |s| s.synced).await;
    eprintln!("initial list → synced in {took:?}");

    // The fixture's three endpoints: ready, serving+terminating, not ready.
    let f = h.seen.sources.get(REVIEWS).expect("reviews published").clone();
    assert_eq!(f.services.len(), 1);
    let svc = &f.services[0];
    assert_eq!(svc.name, "reviews.bookinfo");
    assert_eq!(svc.port, Some(9080));
    assert_eq!(
        endpoints(&h.seen, REVIEWS),
        vec![
            ("10.244.1.12:9080".to_string(), Health::Healthy),
            ("10.244.2.7:9080".to_string(), Health::Draining),
            ("10.244.3.9:9080".to_string(), Health::Unhealthy),
        ]
    );
    let v1 = &svc.endpoints[0];
    assert_eq!(v1.locality.zone, "eu-west-1a");
    assert_eq!(v1.locality.sub_zone, "node-a");
    assert_eq!(v1.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(
        v1.labels.get("security.weft.dev/identity").map(String::as_str),
        Some("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews")
    );
    assert_eq!(svc.endpoints[1].labels.get("version").map(String::as_str), Some("v2"));
    assert!(svc.endpoints[2].labels.is_empty(), "no targetRef: no pod labels");

    // Malformed objects: skipped with their reason, nothing else affected.
    assert_eq!(
        h.seen.skipped.get("Service bookinfo/legacy").map(String::as_str),
        Some("spec.ports is empty: a Service needs at least one port")
    );
    assert_eq!(
        h.seen
            .skipped
            .get("EndpointSlice bookinfo/reviews-manual")
            .map(String::as_str),
        Some("ports is empty: no endpoint port to send traffic to")
    );
    assert!(!h.seen.sources.contains_key("k8s:bookinfo/legacy"));

    // Watch: a new slice (ADDED).
    let mut extra = fixture("endpointslice-reviews.json");
    extra["metadata"]["name"] = json!("reviews-q9w8e");
    extra["metadata"].as_object_mut().unwrap().remove("uid");
    extra["endpoints"] = json!([{"addresses": ["10.244.4.4"], "conditions": {"ready": true}}]);
    api.apply(extra);
    let took = h
        .until("the ADDED slice's endpoint", Duration::from_secs(5), |s| {
            endpoints(s, REVIEWS).len() == 4
        })
        .await;
    eprintln!("EndpointSlice ADDED → endpoint published in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // MODIFIED pod: the endpoint's labels follow.
    let mut pod = fixture("pod-reviews-v1.json");
    pod["metadata"]["labels"]["version"] = json!("v3");
    api.apply(pod);
    h.until("the pod's new labels", Duration::from_secs(5), |s| {
        s.sources[REVIEWS].services[0].endpoints[0]
            .labels
            .get("version")
            .map(String::as_str)
            == Some("v3")
    })
    .await;

    // 410 Gone: every watch ends with an expired Status; the registry relists. A deletion made
    // meanwhile arrives through the relist's diff; the service never goes empty.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("/apis/discovery.k8s.io/v1/endpointslices") && !r.contains("watch="))
        .count();
    api.expire_watches();
    assert!(api.delete("EndpointSlice", "bookinfo", "reviews-q9w8e"));
    let took = h
        .until("the relist to drop the deleted slice", Duration::from_secs(10), |s| {
            endpoints(s, REVIEWS).len() == 3
        })
        .await;
    eprintln!("410 Gone + DELETE → relisted, endpoint removed in {took:?}");
    let lists_after = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("/apis/discovery.k8s.io/v1/endpointslices") && !r.contains("watch="))
        .count();
    assert!(
        lists_after > lists_before,
        "410 must force a relist ({lists_before} → {lists_after})"
    );
    assert!(h.seen.emptied.is_empty(), "the mesh went empty: {:?}", h.seen.emptied);

    // The API server goes away: reported, the last state keeps serving; it comes back: reported,
    // and changes flow again.
    api.set_down(true);
    let took = h
        .until(
            "the registry to report the API unreachable",
            Duration::from_secs(10),
            |s| s.connected == Some(false),
        )
        .await;
    eprintln!("API server down → reported in {took:?}");
    assert_eq!(endpoints(&h.seen, REVIEWS).len(), 3, "last state keeps serving");
    api.set_down(false);
    let mut pod = fixture("pod-reviews-v1.json");
    pod["metadata"]["labels"]["version"] = json!("v4");
    api.apply(pod);
    let took = h
        .until(
            "reconnection and the change made meanwhile",
            Duration::from_secs(40),
            |s| {
                s.connected == Some(true)
                    && s.sources[REVIEWS].services[0].endpoints[0]
                        .labels
                        .get("version")
                        .map(String::as_str)
                        == Some("v4")
            },
        )
        .await;
    eprintln!("API server back → reconnected and caught up in {took:?}");
    assert!(h.seen.emptied.is_empty(), "the mesh went empty: {:?}", h.seen.emptied);

    // DELETED Service: its source goes.
    assert!(api.delete("Service", "bookinfo", "reviews"));
    h.until("the service's removal", Duration::from_secs(5), |s| {
        !s.sources.contains_key(REVIEWS)
    })
    .await;
    // And a fixed Service leaves the skipped list.
    let mut legacy = fixture("service-noports.json");
    legacy["spec"]["ports"] = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    api.apply(legacy);
    h.until("the fixed service", Duration::from_secs(5), |s| {
        s.sources.contains_key("k8s:bookinfo/legacy") && !s.skipped.contains_key("Service bookinfo/legacy")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_can_opt_out_of_discovery() {
    let api = KubeApi::start();
    load_bookinfo(&api);
    let mut h = Harness::start(&api);
    h.until("the first sync", Duration::from_secs(10), |s| s.synced).await;
    assert!(h.seen.sources.contains_key(REVIEWS));
    let mut ns = fixture("namespace-bookinfo.json");
    ns["metadata"]["labels"]["mesh.weft.dev/discovery"] = json!("disabled");
    api.apply(ns);
    h.until("the namespace's services to go", Duration::from_secs(5), |s| {
        s.sources.is_empty()
    })
    .await;
}

#[test]
fn objects_map_to_the_same_fragments_without_a_server() {
    // What the fuzz target drives: the mapping alone, from the same fixtures.
    let objects: Vec<serde_json::Value> = [
        "namespace-bookinfo.json",
        "service-reviews.json",
        "endpointslice-reviews.json",
        "pod-reviews-v1.json",
        "service-noports.json",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    let (changes, skipped) = weft_control::registry::kubernetes::changes_for_objects(&objects, "corp.example");
    assert_eq!(changes.len(), 1, "{changes:?}");
    let SourceChange::Upsert { source, fragment } = &changes[0] else {
        panic!("{changes:?}")
    };
    assert_eq!(source, REVIEWS);
    let eps = &fragment.services[0].endpoints;
    assert_eq!(eps.len(), 3);
    assert_eq!(
        eps[0].labels.get("security.weft.dev/identity").map(String::as_str),
        Some("spiffe://corp.example/ns/bookinfo/sa/bookinfo-reviews")
    );
    // The v2 pod is absent here: its endpoint has no labels.
    assert!(eps[1].labels.is_empty());
    assert!(skipped.contains_key("Service bookinfo/legacy"), "{skipped:?}");
}

/// Mesh mTLS per Service: no pod with a weft sidecar makes the Service DISABLE (callers send
/// plaintext); some pods injected: weft control's default, each endpoint marked with whether its
/// pod has a sidecar (callers reach the others in plaintext); an annotation decides over both.
#[test]
fn services_without_sidecars_are_plaintext_and_annotations_set_the_mode() {
    use weft_control::model::MtlsMode;
    let base = [
        "namespace-bookinfo.json",
        "service-reviews.json",
        "endpointslice-reviews.json",
    ];
    let mode = |extra: Vec<serde_json::Value>, annotation: Option<&str>| {
        let mut objects: Vec<serde_json::Value> = base.iter().map(|f| fixture(f)).collect();
        if let Some(a) = annotation {
            objects[1]["metadata"]["annotations"] = json!({ "security.weft.dev/mtls": a });
        }
        objects.extend(extra);
        let (changes, skipped) = weft_control::registry::kubernetes::changes_for_objects(&objects, "cluster.local");
        let SourceChange::Upsert { fragment, .. } = &changes[0] else {
            panic!("{changes:?}")
        };
        (fragment.services[0].mtls, skipped)
    };
    let mut injected = fixture("pod-reviews-v1.json");
    injected["metadata"]["annotations"] = json!({ "sidecar.weft.dev/status": "injected" });
    // No endpoint's Pod has a sidecar (no Pod, or one without): plaintext.
    assert_eq!(
        mode(vec![fixture("pod-reviews-v1.json")], None).0,
        Some(MtlsMode::Disable)
    );
    // One injected Pod among others: the default, TLS chosen per endpoint.
    assert_eq!(mode(vec![injected.clone()], None).0, None);
    let mut objects: Vec<serde_json::Value> = base.iter().map(|f| fixture(f)).collect();
    objects.push(injected.clone());
    let (changes, _) = weft_control::registry::kubernetes::changes_for_objects(&objects, "cluster.local");
    let SourceChange::Upsert { fragment, .. } = &changes[0] else {
        panic!("{changes:?}")
    };
    let eps = &fragment.services[0].endpoints;
    assert_eq!(eps.iter().filter(|e| e.sidecar).count(), 1, "{eps:?}");
    assert!(eps.iter().any(|e| !e.sidecar), "{eps:?}");
    // Every endpoint's Pod injected: the default.
    let mut eps = fixture("endpointslice-reviews.json");
    let all = eps["endpoints"].as_array().unwrap().len();
    eps["endpoints"] = json!(eps["endpoints"].as_array().unwrap()[..1]);
    assert!(all >= 1);
    let objects = vec![
        fixture("namespace-bookinfo.json"),
        fixture("service-reviews.json"),
        eps,
        injected.clone(),
    ];
    let (changes, _) = weft_control::registry::kubernetes::changes_for_objects(&objects, "cluster.local");
    let SourceChange::Upsert { fragment, .. } = &changes[0] else {
        panic!("{changes:?}")
    };
    assert_eq!(fragment.services[0].mtls, None, "{:?}", fragment.services[0].endpoints);
    // The annotation wins; a bad one is reported and ignored.
    assert_eq!(mode(vec![], Some("STRICT")).0, Some(MtlsMode::Strict));
    let (m, skipped) = mode(vec![], Some("sometimes"));
    assert_eq!(m, Some(MtlsMode::Disable));
    assert!(
        skipped
            .get("Service bookinfo/reviews annotation security.weft.dev/mtls")
            .is_some_and(|r| r.contains("unknown mode \"sometimes\"")),
        "{skipped:?}"
    );
}

/// The `Accepted` condition of a weft resource as the stand-in API server stores it: (status,
/// reason, message, condition's observedGeneration), and the status's observedGeneration.
type Accepted = (String, String, String, Option<i64>, Option<i64>);

fn accepted(api: &KubeApi, kind: &str, name: &str) -> Option<Accepted> {
    let o = api.get(kind, "bookinfo", name)?;
    let s = o.get("status")?;
    let c = s["conditions"].as_array()?.iter().find(|c| c["type"] == "Accepted")?;
    assert!(
        c["lastTransitionTime"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{c}"
    );
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["message"].as_str()?.to_string(),
        c["observedGeneration"].as_i64(),
        s["observedGeneration"].as_i64(),
    ))
}

/// Waits (polling the stand-in's store) until `done` holds.
async fn eventually(what: &str, timeout: Duration, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn status_patches(api: &KubeApi, kind_plural: &str, name: &str) -> usize {
    let path = format!("PATCH /apis/weft.dev/v1alpha1/namespaces/bookinfo/{kind_plural}/{name}/status");
    api.status_writes().iter().filter(|(p, _)| *p == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_custom_resources_become_policies_and_invalid_ones_are_skipped() {
    let api = KubeApi::start();
    load_bookinfo(&api);
    let route = |name: &str, timeout: &str| {
        json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "WeftRoute",
            "metadata": {"name": name, "namespace": "bookinfo"},
            "spec": {"service": "reviews.bookinfo", "http": [{
                "match": [{"prefix": "/v2"}],
                "route": [{"destination": "reviews.bookinfo", "subset": "v2"}],
                "timeout": timeout
            }, {"route": [{"destination": "reviews.bookinfo", "subset": "v1"}]}]}
        })
    };
    api.apply(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "WeftDestination",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"service": "reviews.bookinfo", "lb": "least_request",
                 "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}
    }));
    api.apply(route("reviews", "2s"));
    api.apply(route("broken", "soon"));
    // No RBAC on the status subresource at first: the mesh must not wait for it.
    api.refuse_status_writes(true);
    let mut h = Harness::start(&api);
    h.until("the first sync", Duration::from_secs(10), |s| s.synced).await;
    let r = h
        .seen
        .sources
        .get("k8s:weftroute/bookinfo/reviews")
        .expect("the route published");
    assert_eq!(r.routes[0].service, "reviews.bookinfo");
    assert_eq!(r.routes[0].http.len(), 2);
    assert_eq!(r.routes[0].http[0].timeout, Some(Duration::from_secs(2)));
    let d = h
        .seen
        .sources
        .get("k8s:weftdestination/bookinfo/reviews")
        .expect("the policy published");
    assert_eq!(d.destinations[0].subsets.len(), 2);
    let why = h
        .seen
        .skipped
        .get("WeftRoute bookinfo/broken")
        .expect("the invalid route skipped");
    assert!(why.contains("spec.http[0].timeout"), "{why}");
    assert!(!h.seen.sources.contains_key("k8s:weftroute/bookinfo/broken"));

    // The status writes were refused (403) and are retried: once allowed, they land.
    eventually("a refused status write", Duration::from_secs(5), || {
        status_patches(&api, "weftroutes", "broken") >= 1
    })
    .await;
    assert!(accepted(&api, "WeftRoute", "broken").is_none());
    api.refuse_status_writes(false);
    let took = eventually("the statuses written after the retry", Duration::from_secs(10), || {
        accepted(&api, "WeftRoute", "broken").is_some()
            && accepted(&api, "WeftRoute", "reviews").is_some()
            && accepted(&api, "WeftDestination", "reviews").is_some()
    })
    .await;
    eprintln!("status subresource allowed again → statuses written in {took:?}");
    let (status, reason, message, cond_gen, gen) = accepted(&api, "WeftRoute", "broken").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(message.starts_with("spec.http[0].timeout: "), "{message}");
    assert_eq!((cond_gen, gen), (Some(1), Some(1)));
    let (status, reason, ..) = accepted(&api, "WeftRoute", "reviews").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));
    assert_eq!(accepted(&api, "WeftDestination", "reviews").unwrap().0, "True");
    // Written as merge patches of `status` alone.
    let (_, body) = api
        .status_writes()
        .into_iter()
        .rfind(|(p, _)| p.ends_with("/weftroutes/broken/status"))
        .unwrap();
    assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["status"]);

    // Fixed: published and no longer skipped, and the status follows with the new generation.
    api.apply(route("broken", "3s"));
    h.until("the fixed route", Duration::from_secs(5), |s| {
        s.sources.contains_key("k8s:weftroute/bookinfo/broken") && !s.skipped.contains_key("WeftRoute bookinfo/broken")
    })
    .await;
    let took = eventually("the fixed route's status", Duration::from_secs(5), || {
        accepted(&api, "WeftRoute", "broken").is_some_and(|a| a.0 == "True")
    })
    .await;
    eprintln!("WeftRoute fixed → Accepted=True written in {took:?}");
    let (_, reason, _, cond_gen, gen) = accepted(&api, "WeftRoute", "broken").unwrap();
    assert_eq!((reason.as_str(), cond_gen, gen), ("Accepted", Some(2), Some(2)));

    // Nothing changed: a relist (410 Gone) writes no status. A new route's status, written after
    // the relist, shows the registry has been through it.
    let patches = |api: &KubeApi| {
        (
            status_patches(api, "weftroutes", "broken"),
            status_patches(api, "weftroutes", "reviews"),
            status_patches(api, "weftdestinations", "reviews"),
        )
    };
    let before = patches(&api);
    let lists = |api: &KubeApi| {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("/apis/weft.dev/v1alpha1/weftroutes") && !r.contains("watch="))
            .count()
    };
    let lists_before = lists(&api);
    api.expire_watches();
    eventually("the WeftRoutes relisted", Duration::from_secs(10), || {
        lists(&api) > lists_before
    })
    .await;
    api.apply(route("probe", "1s"));
    eventually("the new route's status", Duration::from_secs(5), || {
        accepted(&api, "WeftRoute", "probe").is_some()
    })
    .await;
    assert_eq!(patches(&api), before, "an unchanged resource's status is not rewritten");
    eprintln!("status PATCHes after relist: {before:?} → {:?}", patches(&api));

    // A second weft control replica: it reads the statuses the first wrote and agrees with them,
    // so it writes none of them (no fight); a new resource's status lands once both have seen it.
    let mut h2 = Harness::start(&api);
    h2.until("the second replica's sync", Duration::from_secs(10), |s| s.synced)
        .await;
    api.apply(route("probe2", "soon"));
    h.until("the first replica skips probe2", Duration::from_secs(5), |s| {
        s.skipped.contains_key("WeftRoute bookinfo/probe2")
    })
    .await;
    h2.until("the second replica skips probe2", Duration::from_secs(5), |s| {
        s.skipped.contains_key("WeftRoute bookinfo/probe2")
    })
    .await;
    eventually("probe2's status", Duration::from_secs(5), || {
        accepted(&api, "WeftRoute", "probe2").is_some_and(|a| a.0 == "False")
    })
    .await;
    assert_eq!(patches(&api), before, "a second replica rewrites no status");
    let probe2 = status_patches(&api, "weftroutes", "probe2");
    assert!(
        (1..=2).contains(&probe2),
        "{probe2} writes of one new status by two replicas"
    );
    eprintln!("two replicas: {probe2} PATCH(es) for a new resource, none for the others");

    assert!(api.delete("WeftRoute", "bookinfo", "broken"));
    h.until("the deleted route", Duration::from_secs(5), |s| {
        !s.sources.contains_key("k8s:weftroute/bookinfo/broken")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_resources_become_policies_and_a_cluster_without_istio_still_syncs() {
    // Istio's CRDs not installed: their lists answer 404; the registry syncs without them.
    let bare: Vec<_> = weft_test_support::kube_api::standard_types()
        .into_iter()
        .filter(|t| !t.prefix.contains("istio"))
        .collect();
    let api = KubeApi::start_with_types(bare);
    load_bookinfo(&api);
    let mut h = Harness::start(&api);
    h.until("the first sync without Istio", Duration::from_secs(10), |s| s.synced)
        .await;
    assert_ne!(h.seen.connected, Some(false), "a missing Istio CRD is not an outage");
    assert!(h.seen.sources.contains_key(REVIEWS));

    // With Istio: the recorded VirtualService and DestinationRule become routes and a policy.
    let api = KubeApi::start();
    load_bookinfo(&api);
    api.apply(fixture("virtualservice-reviews.json"));
    api.apply(fixture("destinationrule-reviews.json"));
    let mut broken = fixture("destinationrule-reviews.json");
    broken["metadata"]["name"] = json!("ratings");
    broken["spec"] = json!({"host": "ratings", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpQueryParameterName": "user"}}}});
    api.apply(broken);
    let mut h = Harness::start(&api);
    h.until("the first sync", Duration::from_secs(10), |s| s.synced).await;
    let vs = h
        .seen
        .sources
        .get("k8s:virtualservice/bookinfo/reviews")
        .expect("the VirtualService published");
    assert_eq!(vs.routes[0].service, "reviews.bookinfo");
    let http = &vs.routes[0].http;
    assert_eq!(http.len(), 2);
    assert_eq!(http[1].route[0].subset.as_deref(), Some("v1"));
    assert_eq!(http[1].route[0].weight, 90);
    assert_eq!(http[1].timeout, Some(Duration::from_secs(10)));
    assert_eq!(http[1].retries.as_ref().unwrap().attempts, 3);
    let dr = h
        .seen
        .sources
        .get("k8s:destinationrule/bookinfo/reviews")
        .expect("the DestinationRule published");
    assert_eq!(dr.destinations[0].service, "reviews.bookinfo");
    assert_eq!(dr.destinations[0].outlier.as_ref().unwrap().consecutive_5xx, Some(5));
    let why = h
        .seen
        .skipped
        .get("DestinationRule bookinfo/ratings")
        .expect("the unsupported rule reported");
    assert!(why.contains("httpQueryParameterName is not supported"), "{why}");

    // A malformed object never stops the watch; deleting it clears its report.
    let mut bad = fixture("virtualservice-reviews.json");
    bad["metadata"]["name"] = json!("bad");
    bad["spec"] = json!({"hosts": 42, "http": "nope"});
    api.apply(bad);
    h.until("the malformed VirtualService reported", Duration::from_secs(5), |s| {
        s.skipped
            .get("VirtualService bookinfo/bad")
            .is_some_and(|w| w.contains("malformed"))
    })
    .await;
    assert!(api.delete("VirtualService", "bookinfo", "bad"));
    assert!(api.delete("VirtualService", "bookinfo", "reviews"));
    h.until("deleted", Duration::from_secs(5), |s| {
        !s.skipped.contains_key("VirtualService bookinfo/bad")
            && !s.sources.contains_key("k8s:virtualservice/bookinfo/reviews")
    })
    .await;
}

#[test]
fn a_destination_rule_http_cookie_hashes_the_virtual_service_routes_on_a_generated_cookie() {
    let mut dr = fixture("destinationrule-reviews.json");
    dr["spec"]["trafficPolicy"]["loadBalancer"] =
        json!({"consistentHash": {"httpCookie": {"name": "user", "path": "/", "ttl": "0s"}}});
    let objects = vec![
        fixture("service-reviews.json"),
        dr,
        fixture("virtualservice-reviews.json"),
    ];
    let (changes, skipped) = weft_control::registry::kubernetes::changes_for_objects(&objects, "cluster.local");
    assert!(skipped.is_empty(), "{skipped:?}");
    let fragment = |name: &str| {
        changes
            .iter()
            .find_map(|c| match c {
                SourceChange::Upsert { source, fragment } if source == name => Some(fragment),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} published"))
    };
    let d = &fragment("k8s:destinationrule/bookinfo/reviews").destinations[0];
    assert_eq!(d.lb, weft_control::model::LbPolicy::RingHash);
    for h in &fragment("k8s:virtualservice/bookinfo/reviews").routes[0].http {
        assert_eq!(
            h.hash,
            Some(weft_control::model::HashOn::Cookie {
                name: "user".into(),
                ttl: Some(Duration::ZERO),
                path: Some("/".into())
            }),
            "{h:?}"
        );
    }
}

#[test]
fn a_destination_rule_consistent_hash_keys_the_virtual_service_routes_to_its_host() {
    let mut dr = fixture("destinationrule-reviews.json");
    dr["spec"]["trafficPolicy"]["loadBalancer"] = json!({"consistentHash": {"httpHeaderName": "x-user"}});
    let mut vs = fixture("virtualservice-reviews.json");
    // A second port: `port.number` picks its weft service.
    let mut svc = fixture("service-reviews.json");
    svc["spec"]["ports"] = json!([
        {"name": "http", "protocol": "TCP", "port": 9080},
        {"name": "grpc", "protocol": "TCP", "port": 9090}
    ]);
    vs["spec"]["http"][0]["route"][0]["destination"]["port"] = json!({"number": 9080});
    vs["spec"]["http"][1]["mirror"] = json!({"host": "reviews.bookinfo.svc.cluster.local", "port": {"number": 9090}});
    vs["spec"]["http"][1]["mirrorPercentage"] = json!({"value": 1.5});
    let objects = vec![svc, dr, vs];
    let (changes, skipped) = weft_control::registry::kubernetes::changes_for_objects(&objects, "cluster.local");
    assert!(skipped.is_empty(), "{skipped:?}");
    let f = changes
        .iter()
        .find_map(|c| match c {
            SourceChange::Upsert { source, fragment } if source == "k8s:virtualservice/bookinfo/reviews" => {
                Some(fragment)
            }
            _ => None,
        })
        .expect("the VirtualService published");
    let http = &f.routes[0].http;
    assert_eq!(http[0].route[0].service, "reviews.bookinfo");
    for h in http {
        assert_eq!(
            h.hash,
            Some(weft_control::model::HashOn::Header("x-user".into())),
            "{h:?}"
        );
    }
    let m = http[1].mirror.as_ref().unwrap();
    assert_eq!(m.dest.service, "reviews.bookinfo.grpc");
    assert_eq!(m.percent, 1.5);
    let d = changes
        .iter()
        .find_map(|c| match c {
            SourceChange::Upsert { source, fragment } if source == "k8s:destinationrule/bookinfo/reviews" => {
                Some(fragment)
            }
            _ => None,
        })
        .expect("the DestinationRule published");
    assert_eq!(d.destinations[0].lb, weft_control::model::LbPolicy::RingHash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_authorizations_become_mesh_policies_and_invalid_ones_say_why_in_their_status() {
    let api = KubeApi::start();
    load_bookinfo(&api);
    let authz = |name: &str, action: &str| {
        json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "WeftAuthorization",
            "metadata": {"name": name, "namespace": "bookinfo"},
            "spec": {"name": name, "service": "reviews.bookinfo", "action": action, "dryRun": false,
                     "rules": [{"from": [{"ipBlocks": ["10.0.0.0/8"]}],
                                "to": [{"methods": ["POST"], "paths": ["/admin/*"], "ports": ["9080", 9081]}]}]}
        })
    };
    api.apply(authz("no-admin", "DENY"));
    api.apply(authz("typo", "DENIED"));
    // A policy for another namespace's service: refused (only weft-system's may apply elsewhere).
    let mut foreign = authz("foreign", "ALLOW");
    foreign["spec"]["service"] = json!("ratings.other");
    api.apply(foreign);
    // Without `spec.name`: named after the resource, so two unnamed ones do not collide.
    for n in ["unnamed-a", "unnamed-b"] {
        let mut a = authz(n, "AUDIT");
        a["spec"].as_object_mut().unwrap().remove("name");
        api.apply(a);
    }
    let mut h = Harness::start(&api);
    h.until("the first sync", Duration::from_secs(10), |s| s.synced).await;
    let f = h
        .seen
        .sources
        .get("k8s:weftauthorization/bookinfo/no-admin")
        .expect("the policy published");
    assert_eq!(f.authorization.len(), 1);
    let a = &f.authorization[0];
    // Names are per namespace (no namespace can take another's), and a namespace's policy
    // applies to its own namespace only.
    assert_eq!(a.name, "no-admin.bookinfo");
    assert_eq!(a.service.as_deref(), Some("reviews.bookinfo"));
    assert_eq!(a.namespace.as_deref(), Some("bookinfo"));
    let why = h
        .seen
        .skipped
        .get("WeftAuthorization bookinfo/foreign")
        .expect("the foreign policy skipped")
        .clone();
    assert!(
        why.contains("spec.service: \"ratings.other\" is not a service of namespace bookinfo"),
        "{why}"
    );
    for n in ["unnamed-a", "unnamed-b"] {
        let f = h
            .seen
            .sources
            .get(&format!("k8s:weftauthorization/bookinfo/{n}"))
            .expect("an unnamed policy published");
        assert_eq!(f.authorization[0].name, format!("{n}.bookinfo"));
    }
    let why = h
        .seen
        .skipped
        .get("WeftAuthorization bookinfo/typo")
        .expect("the invalid policy skipped")
        .clone();
    assert!(why.contains("spec.action"), "{why}");
    assert!(!h.seen.sources.contains_key("k8s:weftauthorization/bookinfo/typo"));
    eventually("both statuses", Duration::from_secs(5), || {
        accepted(&api, "WeftAuthorization", "typo").is_some()
            && accepted(&api, "WeftAuthorization", "no-admin").is_some()
    })
    .await;
    let (status, reason, message, ..) = accepted(&api, "WeftAuthorization", "typo").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(message.starts_with("spec.action: "), "{message}");
    assert_eq!(accepted(&api, "WeftAuthorization", "no-admin").unwrap().0, "True");

    // A field no authorization entry has: refused with its path, not dropped.
    let mut extra = authz("typo", "DENY");
    extra["spec"]["rules"][0]["from"][0]["ipBlock"] = json!(["10.0.0.0/8"]);
    api.apply(extra);
    eventually("the unknown field's reason", Duration::from_secs(5), || {
        accepted(&api, "WeftAuthorization", "typo").is_some_and(|a| a.3 == Some(2))
    })
    .await;
    let (status, _, message, ..) = accepted(&api, "WeftAuthorization", "typo").unwrap();
    assert_eq!(status, "False");
    assert!(
        message.starts_with("spec.rules[0].from[0].ipBlock: unknown field"),
        "{message}"
    );
    eprintln!("unknown field → status message: {message}");

    api.apply(authz("typo", "DENY"));
    h.until("the fixed policy", Duration::from_secs(5), |s| {
        s.sources.contains_key("k8s:weftauthorization/bookinfo/typo")
            && !s.skipped.contains_key("WeftAuthorization bookinfo/typo")
    })
    .await;
    assert!(api.delete("WeftAuthorization", "bookinfo", "no-admin"));
    h.until("the deleted policy", Duration::from_secs(5), |s| {
        !s.sources.contains_key("k8s:weftauthorization/bookinfo/no-admin")
    })
    .await;
}

/// WeftRoute and WeftDestination carry every field of their registry-file entries: fields beyond
/// the first hand-written subset (fault, mirror, rewrite, hash, headers, query params, rate
/// limits, priority, Dubbo rules; connection limits, health checks, locality) are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_routes_and_destinations_carry_every_field_of_their_entries() {
    let api = KubeApi::start();
    load_bookinfo(&api);
    api.apply(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "WeftRoute",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"service": "reviews.bookinfo", "http": [{
            "name": "v2-users",
            "match": [{"prefix": "/v2", "query_params": {"debug": {"exact": "1"}}, "headers": {"x-user": {"present": true}}}],
            "route": [{"destination": "reviews.bookinfo", "subset": "v2"}],
            "fault": {"abort": {"http_status": 503, "percent": 10.0}, "delay": {"fixed": "100ms", "percent": 5.0}},
            "mirror": {"destination": "reviews.bookinfo", "subset": "v1", "percent": 50.0},
            "rewrite": {"uri": "/", "authority": "reviews-v2"},
            "hash": {"header": "x-user"},
            "headers": {"request": {"set": {"x-weft": "1"}}, "response": {"remove": ["server"]}},
            "rate_limit": {"requests": 10, "per": "1s", "burst": 20},
            "rate_limits": [{"actions": [{"remote_address": {}}]}],
            "priority": "high",
            "retries": {"attempts": 2, "per_try_timeout": "1s", "retry_on": ["5xx"]},
            "timeout": "3s"
        }]}
    }));
    api.apply(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "WeftDestination",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"service": "reviews.bookinfo", "lb": "least_request",
                 "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
                 "connection_limits": {"max_connections": 100, "high_priority": {"max_connections": 200}},
                 "health_checks": [{"interval": "1s", "http": {"path": "/healthz", "expected_statuses": [200, "200-299"]}}],
                 "panic_threshold": 50.0,
                 "locality_lb": "weighted"}
    }));
    let mut h = Harness::start(&api);
    h.until("the first sync", Duration::from_secs(10), |s| s.synced).await;
    assert!(
        h.seen.skipped.is_empty() || !h.seen.skipped.keys().any(|k| k.starts_with("Weft")),
        "{:?}",
        h.seen.skipped
    );
    let r = &h.seen.sources["k8s:weftroute/bookinfo/reviews"].routes[0].http[0];
    assert_eq!(r.name.as_deref(), Some("v2-users"));
    assert_eq!(r.matches[0].query_params.len(), 1);
    let fault = r.fault.as_ref().expect("fault");
    assert!(fault.abort.is_some() && fault.delay.is_some());
    assert_eq!(r.mirror.as_ref().expect("mirror").percent, 50.0);
    let rw = r.rewrite.as_ref().expect("rewrite");
    assert_eq!(
        (rw.uri.as_deref(), rw.authority.as_deref()),
        (Some("/"), Some("reviews-v2"))
    );
    assert!(r.hash.is_some(), "hash");
    assert_eq!(r.request_headers.set.get("x-weft").map(String::as_str), Some("1"));
    assert_eq!(r.response_headers.remove, vec!["server".to_string()]);
    assert!(r.rate_limit.is_some(), "rate_limit");
    assert_eq!(r.rate_limits.len(), 1);
    assert!(r.high_priority);
    assert_eq!(r.retries.as_ref().expect("retries").attempts, 2);
    let d = &h.seen.sources["k8s:weftdestination/bookinfo/reviews"].destinations[0];
    assert!(d.limits.is_some(), "connection_limits");
    assert_eq!(d.health_checks.len(), 1);
    assert_eq!(d.panic_threshold, Some(50.0));
    assert!(d.locality_lb.is_some());
    eventually("the statuses", Duration::from_secs(5), || {
        accepted(&api, "WeftRoute", "reviews").is_some_and(|a| a.0 == "True")
            && accepted(&api, "WeftDestination", "reviews").is_some_and(|a| a.0 == "True")
    })
    .await;
}

/// The typed CRD structs are the file parser's: a resource read into them and written back is the
/// resource (nothing dropped, nothing added).
#[test]
fn weft_resources_round_trip_through_their_types() {
    use weft_control::crd::{WeftDestination, WeftRoute};
    let route = json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "WeftRoute",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"service": "reviews.bookinfo",
            "http": [{"match": [{"prefix": "/v2", "query_params": {"q": {"regex": "a.*"}}}],
                      "route": [{"destination": "reviews.bookinfo", "subset": "v2", "weight": 100}],
                      "fault": {"abort": {"grpc_status": 14, "percent": 1.5}},
                      "hash": {"source_ip": true}}],
            "dubbo": [{"match": {"interface": "a.B", "method": "get", "arguments": [{"index": 0, "equals": "x"}]},
                       "route": {"destination": "b.default"}}]}
    });
    let typed: WeftRoute = serde_json::from_value(route.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), route);
    let dest = json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "WeftDestination",
        "metadata": {"name": "reviews", "namespace": "bookinfo"},
        "spec": {"service": "reviews.bookinfo", "outlier_detection": {"consecutive_5xx": 3},
                 "health_checks": [{"tcp": {}}, {"grpc": {"service_name": "x"}, "timeout": "1s"}]}
    });
    let typed: WeftDestination = serde_json::from_value(dest.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), dest);
}

/// The stand-in API server's status subresource, driven by kube-rs like the registry drives it:
/// only `status` changes, `resourceVersion` bumps only on a change, JSON patches apply, an
/// unknown object is 404, and an update of the main resource keeps the status and counts spec
/// changes in `metadata.generation`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_serves_the_status_subresource_like_the_api_server() {
    use kube::api::{DynamicObject, Patch, PatchParams};
    let api = KubeApi::start();
    let route = |timeout: &str| {
        json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "WeftRoute",
            "metadata": {"name": "r", "namespace": "bookinfo"},
            "spec": {"service": "reviews.bookinfo", "http": [{"route": [{"destination": "reviews.bookinfo"}], "timeout": timeout}]}
        })
    };
    api.apply(route("1s"));
    let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let routes: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(client, "bookinfo", &(weft_control::crd::KINDS[0].resource)());
    let pp = PatchParams::default();
    let rv = api.resource_version();
    let patch = json!({"status": {"observedGeneration": 1}, "spec": {"service": "other"}});
    let o = routes.patch_status("r", &pp, &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(o.data["status"]["observedGeneration"], 1);
    assert_eq!(o.data["spec"]["service"], "reviews.bookinfo", "only status changes");
    assert_eq!(api.resource_version(), rv + 1);
    routes.patch_status("r", &pp, &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(api.resource_version(), rv + 1, "an identical status changes nothing");
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/status/observedGeneration", "value": 2}])).unwrap();
    let o = routes.patch_status("r", &pp, &Patch::<()>::Json(jp)).await.unwrap();
    assert_eq!(o.data["status"]["observedGeneration"], 2);
    match routes.patch_status("nope", &pp, &Patch::Merge(&patch)).await {
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        other => panic!("{other:?}"),
    }
    api.apply(route("1s"));
    let o = api.get("WeftRoute", "bookinfo", "r").unwrap();
    assert_eq!(
        (
            o["metadata"]["generation"].as_i64(),
            o["status"]["observedGeneration"].as_i64()
        ),
        (Some(1), Some(2))
    );
    api.apply(route("2s"));
    let o = api.get("WeftRoute", "bookinfo", "r").unwrap();
    assert_eq!(o["metadata"]["generation"], 2);
    assert_eq!(o["status"]["observedGeneration"], 2, "an update keeps the status");
}
