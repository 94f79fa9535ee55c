//! A (re)started control plane answers nothing until its registry's first sync is complete.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use weft_control::model::parse_fragment;
use weft_control::registry::{BoxFuture, Registry, RegistryEvent, SourceChange};
use weft_control::{ControlOptions, ControlPlane};
use weft_xds_api::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// A registry that delivers one service at once but declares its initial sync only when told:
/// like a Kubernetes informer still listing.
struct SlowRegistry {
    release: Arc<Notify>,
}

impl Registry for SlowRegistry {
    fn describe(&self) -> String {
        "slow test registry".into()
    }

    fn run(self: Box<Self>, events: mpsc::Sender<RegistryEvent>, mut shutdown: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(async move {
            let fragment = parse_fragment("k8s", "services: [{name: a, endpoints: [{address: 10.0.0.1:80}]}]").unwrap();
            let change = SourceChange::Upsert {
                source: "k8s".into(),
                fragment,
            };
            let _ = events.send(RegistryEvent::Changes(vec![change])).await;
            tokio::select! {
                _ = self.release.notified() => {}
                _ = shutdown.changed() => return,
            }
            let _ = events.send(RegistryEvent::Synced).await;
            let _ = shutdown.changed().await;
        })
    }
}

#[tokio::test]
async fn nothing_is_answered_before_first_sync() {
    let release = Arc::new(Notify::new());
    let mut opts = ControlOptions::new("/nonexistent");
    opts.registry = Box::new(SlowRegistry {
        release: release.clone(),
    });
    let cp = ControlPlane::start(opts).await.unwrap();
    let admin = cp.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/ready").await.0, 503);
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("a-1", "a")).await;
    c.request(CLUSTER, &[]).await;
    assert!(
        c.recv(Duration::from_millis(500)).await.is_none(),
        "no answer before sync"
    );
    release.notify_one();
    let cds = c.expect().await;
    assert_eq!(names_of_any(&cds.resources, CLUSTER), ["a", "inbound|a"]);
    assert_eq!(http_get(admin, "/ready").await.0, 200);
    cp.stop().await;
}

#[tokio::test]
async fn versions_are_stable_across_restarts() {
    let dir = TempDir::new("control");
    dir.write("s.yaml", "services: [{name: a, endpoints: [{address: 10.0.0.1:80}]}]\n");
    let mut versions = Vec::new();
    for _ in 0..2 {
        let cp = start(&dir).await;
        let mut c = Sotw::connect(cp.xds_addr(), sidecar("a-1", "a")).await;
        c.request(CLUSTER, &[]).await;
        versions.push(c.expect().await.version_info);
        cp.stop().await;
    }
    assert_eq!(versions[0], versions[1]);
}

#[tokio::test]
async fn symlinked_files_are_followed_like_a_configmap_volume() {
    let dir = TempDir::new("control");
    let data1 = dir.path().join("..2026_1");
    std::fs::create_dir(&data1).unwrap();
    std::fs::write(
        data1.join("s.yaml"),
        "services: [{name: a, endpoints: [{address: 10.0.0.1:80}]}]\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/s.yaml", dir.path().join("s.yaml")).unwrap();
    let cp = start(&dir).await;
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("a-1", "a")).await;
    c.request(CLUSTER, &[]).await;
    let cds = c.expect().await;
    assert_eq!(names_of_any(&cds.resources, CLUSTER), ["a", "inbound|a"]);
    c.ack(&cds, &[]).await;
    // Atomic swap of ..data, as the kubelet does.
    let data2 = dir.path().join("..2026_2");
    std::fs::create_dir(&data2).unwrap();
    std::fs::write(
        data2.join("s.yaml"),
        "services: [{name: a, endpoints: []}, {name: b, endpoints: [{address: 10.0.0.2:80}]}]\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    let cds = c.expect().await;
    assert_eq!(names_of_any(&cds.resources, CLUSTER), ["a", "b", "inbound|a"]);
    cp.stop().await;
}

/// Endpoints with several labels and a route with two per-filter configs: protobuf maps with
/// several entries, whose encoding order differs from one process (or map) to the next.
const MAPS: &str = r#"
services:
  - name: a
    port: 8080
    endpoints:
      - {address: 10.0.0.1:80, labels: {version: v1, track: stable, tier: web, team: x}, locality: {region: r, zone: z}}
      - {address: 10.0.0.2:80, labels: {version: v2, track: canary, tier: web, team: y}}
routes:
  - service: a
    http:
      - match: [{prefix: /x}]
        route: [{destination: a}]
        fault: {abort: {http_status: 503, percent: 1}}
        rate_limit: {requests: 10, per: 1s}
destinations:
  - service: a
    subsets: [{name: v1, labels: {version: v1, track: stable}}, {name: v2, labels: {version: v2}}]
"#;

/// A SotW client that reconnects to a restarted control plane (same registry) with the versions
/// it accepted gets nothing: versions are content hashes, stable across processes even with
/// protobuf maps in the resources. A Delta client with `initial_resource_versions` neither.
#[tokio::test]
async fn reconnecting_clients_with_current_versions_get_nothing_after_restart() {
    const QUIET: Duration = Duration::from_millis(500);
    let dir = TempDir::new("control");
    dir.write("s.yaml", MAPS);
    let node = || sidecar("a-1", "a");
    let cp = start(&dir).await;
    let mut c = Sotw::connect(cp.xds_addr(), node()).await;
    c.request(CLUSTER, &[]).await;
    let cds = c.expect().await;
    c.ack(&cds, &[]).await;
    let clusters: Vec<String> = names_of_any(&cds.resources, CLUSTER)
        .into_iter()
        .filter(|n| !n.starts_with("inbound|"))
        .collect();
    let eds_names: Vec<&str> = clusters.iter().map(|s| s.as_str()).collect();
    c.request(ENDPOINT, &eds_names).await;
    let eds = c.expect().await;
    c.ack(&eds, &eds_names).await;
    c.request(LISTENER, &[]).await;
    let lds = c.expect().await;
    c.ack(&lds, &[]).await;
    let rds_names = ["outbound", "inbound|a"];
    c.request(ROUTE, &rds_names).await;
    let rds = c.expect().await;
    assert_eq!(rds.resources.len(), 2);
    c.ack(&rds, &rds_names).await;
    assert!(c.recv(QUIET).await.is_none());
    let held = c.last.clone();
    // Delta: what it holds, by name.
    let mut d = Delta::connect(cp.xds_addr(), node()).await;
    let mut initial = std::collections::HashMap::new();
    for (t, names) in [(CLUSTER, vec![]), (ENDPOINT, eds_names.clone())] {
        d.subscribe(t, &names, &[]).await;
        let r = d.expect().await;
        d.ack(&r).await;
        initial.insert(
            t,
            r.resources
                .iter()
                .map(|x| (x.name.clone(), x.version.clone()))
                .collect::<Vec<_>>(),
        );
    }
    cp.stop().await;

    let cp = start(&dir).await;
    wait_ready(&cp).await;
    let mut c = Sotw::connect(cp.xds_addr(), node()).await;
    for (t, v) in &held {
        c.last.insert(t.clone(), (v.0.clone(), String::new()));
    }
    c.request(CLUSTER, &[]).await;
    c.request(ENDPOINT, &eds_names).await;
    c.request(LISTENER, &[]).await;
    c.request(ROUTE, &rds_names).await;
    if let Some(r) = c.recv(QUIET).await {
        panic!(
            "a reconnecting SotW client was sent {} again ({} resources, version {} vs {:?})",
            r.type_url,
            r.resources.len(),
            r.version_info,
            held.get(&r.type_url)
        );
    }
    // Something new is still sent.
    dir.write("t.yaml", "services: [{name: b, endpoints: [{address: 10.0.0.9:80}]}]\n");
    let cds = c.expect().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert!(names_of_any(&cds.resources, CLUSTER).contains(&"b".to_string()));
    dir.remove("t.yaml");

    let mut d = Delta::connect(cp.xds_addr(), node()).await;
    for (t, names) in [(CLUSTER, vec![]), (ENDPOINT, eds_names.clone())] {
        d.subscribe(t, &names, &initial[t]).await;
    }
    // The wildcard CDS subscription gets its (empty) first answer; EDS nothing.
    loop {
        let Some(r) = d.recv(QUIET).await else { break };
        let changed: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
        assert!(
            changed.is_empty() || changed == ["b"] || r.removed_resources == ["b"],
            "a reconnecting Delta client was sent {} {changed:?} again",
            r.type_url
        );
        d.ack(&r).await;
    }
    cp.stop().await;
}

/// A SotW EDS response split into chunks carries the version of the whole only on its last chunk:
/// a client whose stream broke after the first chunk reconnects with a version that matches
/// nothing and is sent everything again; one that got them all is sent nothing.
#[tokio::test]
async fn a_partly_received_chunked_sotw_response_is_resent_after_reconnect() {
    let dir = TempDir::new("control");
    let mut yaml = String::from("services:\n");
    for s in 0..24 {
        yaml.push_str(&format!("  - name: s{s}\n    endpoints:\n"));
        for e in 0..100 {
            yaml.push_str(&format!(
                "      - {{address: 10.{s}.{}.{}:8080, labels: {{version: v{e}}}}}\n",
                e / 250,
                e % 250
            ));
        }
    }
    dir.write("s.yaml", &yaml);
    let cp = start(&dir).await;
    wait_ready(&cp).await;
    let names: Vec<String> = (0..24).map(|s| format!("s{s}")).collect();
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("a-1", "s0")).await;
    c.request(ENDPOINT, &names).await;
    let mut chunks = Vec::new();
    while let Some(r) = c.recv(Duration::from_millis(500)).await {
        chunks.push(r);
    }
    assert!(
        chunks.len() >= 2,
        "the test needs a split response, got {}",
        chunks.len()
    );
    let total: usize = chunks.iter().map(|r| r.resources.len()).sum();
    assert_eq!(total, 24);
    let last = chunks.last().unwrap().version_info.clone();
    assert!(
        chunks[..chunks.len() - 1].iter().all(|r| r.version_info != last),
        "only the last chunk has the version of the whole"
    );
    // Reconnect claiming the first chunk's version: everything again.
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("a-1", "s0")).await;
    c.last
        .insert(ENDPOINT.into(), (chunks[0].version_info.clone(), String::new()));
    c.request(ENDPOINT, &names).await;
    let mut again = 0;
    while let Some(r) = c.recv(Duration::from_millis(500)).await {
        again += r.resources.len();
    }
    assert_eq!(again, 24);
    // Reconnect claiming the whole: nothing.
    let mut c = Sotw::connect(cp.xds_addr(), sidecar("a-1", "s0")).await;
    c.last.insert(ENDPOINT.into(), (last, String::new()));
    c.request(ENDPOINT, &names).await;
    assert!(c.recv(Duration::from_millis(500)).await.is_none());
    cp.stop().await;
}
