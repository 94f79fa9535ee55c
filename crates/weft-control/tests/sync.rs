//! A (re)started control plane answers nothing until its registry's first sync is complete.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use weft_control::model::parse_fragment;
use weft_control::registry::{BoxFuture, Registry, RegistryEvent, SourceChange};
use weft_control::{ControlOptions, ControlPlane};
use weft_xds_api::type_url::CLUSTER;

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
    let dir = TempDir::new();
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
    let dir = TempDir::new();
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
