//! Configuration scoping over real ADS streams: a sidecar is sent only the services its workload
//! declared (or asked for on demand), and widening or narrowing that set pushes exactly the change.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;
use weft_control::server::Scoping;
use weft_control::{ControlOptions, ControlPlane};
use weft_xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use weft_xds_api::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use weft_xds_api::type_url::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

const QUIET: Duration = Duration::from_millis(400);

fn services(frontend_deps: &str) -> String {
    format!(
        r#"
services:
  - name: frontend
    port: 8080
    {frontend_deps}
    endpoints: [{{address: 127.0.0.1:9001}}]
  - name: cart
    port: 8080
    endpoints: [{{address: 127.0.0.1:9011}}, {{address: 127.0.0.1:9012}}]
  - name: catalog
    port: 8080
    endpoints: [{{address: 127.0.0.1:9021}}]
  - name: payments
    port: 8080
    endpoints: [{{address: 127.0.0.1:9031}}]
"#
    )
}

async fn start_with(dir: &TempDir, scoping: Scoping) -> ControlPlane {
    let mut opts = ControlOptions::new(dir.path());
    opts.debounce = Duration::from_millis(50);
    opts.scoping = scoping;
    opts.registry = Box::new(weft_control::registry::FileRegistry {
        dir: dir.path().to_path_buf(),
        interval: Duration::from_millis(50),
    });
    let cp = ControlPlane::start(opts).await.unwrap();
    wait_ready(&cp).await;
    cp
}

fn names(r: &DeltaDiscoveryResponse) -> BTreeSet<String> {
    r.resources.iter().map(|x| x.name.clone()).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The virtual host names of the `outbound` route table in a Delta RDS response.
fn vhosts(r: &DeltaDiscoveryResponse) -> BTreeSet<String> {
    assert_eq!(r.type_url, ROUTE);
    let any = r.resources[0].resource.as_ref().expect("resource body");
    let rc: RouteConfiguration = weft_xds_api::unpack(any, ROUTE).unwrap();
    assert_eq!(rc.name, "outbound");
    rc.virtual_hosts.into_iter().map(|v| v.name).collect()
}

/// A sidecar of `service` that subscribes CDS (wildcard), the EDS it was given, LDS and RDS
/// `outbound`, ACKing each; returns it with the clusters and virtual hosts it received.
async fn synced_sidecar(
    cp: &ControlPlane,
    id: &str,
    service: &str,
    on_demand: bool,
) -> (Delta, BTreeSet<String>, BTreeSet<String>) {
    let mut meta = vec![
        ("weft.outbound", "127.0.0.1:15001"),
        ("weft.inbound", "127.0.0.1:15006"),
        ("weft.app", "127.0.0.1:8080"),
    ];
    if on_demand {
        meta.push(("weft.on_demand", "true"));
    }
    let mut d = Delta::connect(cp.xds_addr(), node(id, service, &meta)).await;
    d.subscribe(CLUSTER, &[], &[]).await;
    let cds = d.expect().await;
    assert_eq!(cds.type_url, CLUSTER);
    d.ack(&cds).await;
    let clusters = names(&cds);
    let eds_names: Vec<&str> = clusters
        .iter()
        .filter(|n| !n.starts_with("inbound|"))
        .map(|s| s.as_str())
        .collect();
    if !eds_names.is_empty() {
        d.subscribe(ENDPOINT, &eds_names, &[]).await;
        let eds = d.expect().await;
        assert_eq!(eds.type_url, ENDPOINT);
        d.ack(&eds).await;
    }
    d.subscribe(LISTENER, &[], &[]).await;
    let lds = d.expect().await;
    d.ack(&lds).await;
    d.subscribe(ROUTE, &["outbound"], &[]).await;
    let rds = d.expect().await;
    d.ack(&rds).await;
    let v = vhosts(&rds);
    assert!(d.recv(QUIET).await.is_none(), "nothing more after sync");
    (d, clusters, v)
}

#[tokio::test]
async fn declared_dependencies_scope_clusters_and_routes() {
    let dir = TempDir::new("scoping");
    dir.write("services.yaml", &services("dependencies: [cart]"));
    let cp = start_with(&dir, Scoping::Declared).await;

    // frontend declares cart: it gets cart's cluster and virtual host, and its own inbound.
    let (mut fe, clusters, vh) = synced_sidecar(&cp, "fe-1", "frontend", false).await;
    assert_eq!(clusters, set(&["cart", "inbound|frontend"]));
    assert_eq!(vh, set(&["cart"]));

    // cart declares nothing: the whole mesh, as before scoping.
    let (_cart, clusters, vh) = synced_sidecar(&cp, "cart-1", "cart", false).await;
    assert_eq!(
        clusters,
        set(&["cart", "catalog", "frontend", "inbound|cart", "payments"])
    );
    assert_eq!(vh, set(&["cart", "catalog", "frontend", "payments"]));

    // A change to a service outside frontend's scope sends frontend nothing.
    dir.write(
        "services.yaml",
        &services("dependencies: [cart]").replace("127.0.0.1:9031", "127.0.0.1:9032"),
    );
    assert!(
        fe.recv(QUIET * 2).await.is_none(),
        "payments changed: not frontend's business"
    );

    // Declaring another dependency pushes exactly its cluster, its endpoints and the wider table.
    dir.write(
        "services.yaml",
        &services("dependencies: [cart, catalog]").replace("127.0.0.1:9031", "127.0.0.1:9032"),
    );
    let cds = fe.expect().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(names(&cds), set(&["catalog"]));
    assert!(cds.removed_resources.is_empty());
    fe.ack(&cds).await;
    // The proxy asks for the new cluster's endpoints, as Envoy and weft do after CDS.
    fe.subscribe(ENDPOINT, &["catalog"], &[]).await;
    let mut got_rds = None;
    let mut got_eds = None;
    for _ in 0..2 {
        let r = fe.expect().await;
        fe.ack(&r).await;
        match r.type_url.as_str() {
            ROUTE => got_rds = Some(r),
            ENDPOINT => got_eds = Some(r),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(names(&got_eds.unwrap()), set(&["catalog"]));
    assert_eq!(vhosts(&got_rds.unwrap()), set(&["cart", "catalog"]));

    // Narrowing removes.
    dir.write("services.yaml", &services("dependencies: [catalog]"));
    let cds = fe.expect().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(cds.removed_resources, ["cart"]);
    fe.ack(&cds).await;
    cp.stop().await;
}

#[tokio::test]
async fn on_demand_sidecar_starts_empty_and_learns_by_name() {
    let dir = TempDir::new("scoping");
    dir.write("services.yaml", &services(""));
    let cp = start_with(&dir, Scoping::OnDemand).await;

    // A weft sidecar (it can ask on demand) of a service without declarations: nothing shared.
    let (mut fe, clusters, vh) = synced_sidecar(&cp, "fe-1", "frontend", true).await;
    assert_eq!(clusters, set(&["inbound|frontend"]));
    assert!(vh.is_empty(), "{vh:?}");

    // A proxy that cannot ask on demand (an Envoy sidecar) still gets everything.
    let (_envoy, clusters, _) = synced_sidecar(&cp, "envoy-1", "frontend", false).await;
    assert_eq!(clusters.len(), 5, "{clusters:?}");

    // Asking for `payments` by name: its cluster, then the route table grows by its virtual host.
    fe.subscribe(CLUSTER, &["payments"], &[]).await;
    let mut seen_cds = false;
    let mut seen_rds = false;
    for _ in 0..2 {
        let r = fe.expect().await;
        fe.ack(&r).await;
        match r.type_url.as_str() {
            CLUSTER => {
                assert_eq!(names(&r), set(&["payments"]));
                seen_cds = true;
            }
            ROUTE => {
                assert_eq!(vhosts(&r), set(&["payments"]));
                seen_rds = true;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(seen_cds && seen_rds);
    fe.subscribe(ENDPOINT, &["payments"], &[]).await;
    let eds = fe.expect().await;
    assert_eq!(names(&eds), set(&["payments"]));
    fe.ack(&eds).await;

    // Other services' changes still send it nothing; its own learned service's do.
    dir.write(
        "services.yaml",
        &services("").replace("127.0.0.1:9021", "127.0.0.1:9022"),
    );
    assert!(fe.recv(QUIET * 2).await.is_none(), "catalog changed: not learned");
    dir.write(
        "services.yaml",
        &services("")
            .replace("127.0.0.1:9021", "127.0.0.1:9022")
            .replace("127.0.0.1:9031", "127.0.0.1:9033"),
    );
    let eds = fe.expect().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(names(&eds), set(&["payments"]));
    fe.ack(&eds).await;

    // Unsubscribing (the proxy forgot an unused service) shrinks the route table again.
    fe.tx
        .send(weft_xds_api::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            resource_names_unsubscribe: vec!["payments".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let rds = fe.expect().await;
    assert!(vhosts(&rds).is_empty());
    cp.stop().await;
}

#[tokio::test]
async fn scoping_off_sends_everything() {
    let dir = TempDir::new("scoping");
    dir.write("services.yaml", &services("dependencies: [cart]"));
    let cp = start_with(&dir, Scoping::Off).await;
    let (_fe, clusters, vh) = synced_sidecar(&cp, "fe-1", "frontend", true).await;
    assert_eq!(clusters.len(), 5, "{clusters:?}");
    assert_eq!(vh.len(), 4);
    cp.stop().await;
}

#[test]
fn bad_dependency_names_are_refused_with_their_path() {
    let errs = weft_control::model::parse_fragment(
        "s.yaml",
        "services:\n - {name: a, dependencies: [b, 'no spaces'], endpoints: [{address: 127.0.0.1:1}]}\n",
    )
    .unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("services[0].dependencies[1]")),
        "{errs:?}"
    );
}
