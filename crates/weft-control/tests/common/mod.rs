//! Test harness: a control plane on 127.0.0.1:0 over a temporary registry directory, and minimal ADS
//! clients (SotW and Delta) that behave like a sidecar or a proxyless gRPC client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_control::{ControlOptions, ControlPlane};
use weft_xds_api::pb::envoy::config::core::v3::Node;
use weft_xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weft_xds_api::pb::google::protobuf::{value::Kind as VKind, Struct, Value};

pub const T: Duration = Duration::from_secs(5);

pub use weft_test_support::TempDir;

pub async fn start(dir: &TempDir) -> ControlPlane {
    let mut opts = ControlOptions::new(dir.path());
    opts.debounce = Duration::from_millis(50);
    opts.registry = Box::new(weft_control::registry::FileRegistry {
        dir: dir.path().to_path_buf(),
        interval: Duration::from_millis(50),
    });
    ControlPlane::start(opts).await.unwrap()
}

pub async fn wait_ready(cp: &ControlPlane) {
    weft_test_support::eventually("the control plane to be ready", T, || async {
        cp.is_ready().then_some(())
    })
    .await;
}

pub fn node(id: &str, cluster: &str, meta: &[(&str, &str)]) -> Node {
    Node {
        id: id.into(),
        cluster: cluster.into(),
        metadata: Some(Struct {
            fields: meta
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value {
                            kind: Some(VKind::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        }),
        ..Default::default()
    }
}

pub fn sidecar(id: &str, cluster: &str) -> Node {
    node(
        id,
        cluster,
        &[
            ("weft.outbound", "127.0.0.1:15001"),
            ("weft.inbound", "127.0.0.1:15006"),
            ("weft.app", "127.0.0.1:8080"),
        ],
    )
}

pub async fn client(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    tokio::time::timeout(T, AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")))
        .await
        .expect("connect timeout")
        .expect("connect")
}

pub struct Sotw {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: tonic::Streaming<DiscoveryResponse>,
    pub node: Node,
    /// Last response per type: (version, nonce).
    pub last: HashMap<String, (String, String)>,
}

impl Sotw {
    pub async fn connect(addr: SocketAddr, node: Node) -> Sotw {
        let mut c = client(addr).await;
        let (tx, rx) = mpsc::channel(16);
        let resp = tokio::time::timeout(T, c.stream_aggregated_resources(ReceiverStream::new(rx)))
            .await
            .expect("stream timeout")
            .expect("stream");
        Sotw {
            tx,
            rx: resp.into_inner(),
            node,
            last: HashMap::new(),
        }
    }

    pub async fn request(&mut self, type_url: &str, names: &[&str]) {
        let (version, nonce) = self.last.get(type_url).cloned().unwrap_or_default();
        self.tx
            .send(DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                version_info: version,
                response_nonce: nonce,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// ACKs `r` with the given subscription.
    pub async fn ack(&mut self, r: &DiscoveryResponse, names: &[&str]) {
        self.last
            .insert(r.type_url.clone(), (r.version_info.clone(), r.nonce.clone()));
        self.request(&r.type_url.clone(), names).await;
    }

    pub async fn nack(&mut self, r: &DiscoveryResponse, names: &[&str], msg: &str) {
        let prev_version = self.last.get(&r.type_url).map(|x| x.0.clone()).unwrap_or_default();
        self.tx
            .send(DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: r.type_url.clone(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                version_info: prev_version,
                response_nonce: r.nonce.clone(),
                error_detail: Some(weft_xds_api::pb::google::rpc::Status {
                    code: 3,
                    message: msg.into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    pub async fn recv(&mut self, timeout: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => None,
        }
    }

    pub async fn expect(&mut self) -> DiscoveryResponse {
        self.recv(T).await.expect("expected a response")
    }
}

pub struct Delta {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: tonic::Streaming<DeltaDiscoveryResponse>,
    pub node: Node,
}

impl Delta {
    pub async fn connect(addr: SocketAddr, node: Node) -> Delta {
        let mut c = client(addr).await;
        let (tx, rx) = mpsc::channel(16);
        let resp = tokio::time::timeout(T, c.delta_aggregated_resources(ReceiverStream::new(rx)))
            .await
            .expect("stream timeout")
            .expect("stream");
        Delta {
            tx,
            rx: resp.into_inner(),
            node,
        }
    }

    pub async fn subscribe(&mut self, type_url: &str, names: &[&str], initial: &[(String, String)]) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.into(),
                resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
                initial_resource_versions: initial.iter().cloned().collect(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    pub async fn ack(&mut self, r: &DeltaDiscoveryResponse) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    pub async fn recv(&mut self, timeout: Duration) -> Option<DeltaDiscoveryResponse> {
        match tokio::time::timeout(timeout, self.rx.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => None,
        }
    }

    pub async fn expect(&mut self) -> DeltaDiscoveryResponse {
        self.recv(T).await.expect("expected a response")
    }
}

/// Minimal HTTP/1.1 GET (raw socket, `Connection: close`) against the admin API: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = weft_test_support::http_close(addr, "x", path).await;
    assert_ne!(status, 0, "admin GET {path} on {addr} failed or timed out");
    (status, body)
}

pub fn names_of_any(resources: &[weft_xds_api::pb::google::protobuf::Any], type_url: &str) -> Vec<String> {
    use weft_xds_api::pb::envoy::config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment};
    use weft_xds_api::pb::envoy::config::{listener::v3::Listener, route::v3::RouteConfiguration};
    let mut v: Vec<String> = resources
        .iter()
        .map(|a| match type_url {
            weft_xds_api::type_url::CLUSTER => weft_xds_api::unpack::<Cluster>(a, type_url).unwrap().name,
            weft_xds_api::type_url::ENDPOINT => {
                weft_xds_api::unpack::<ClusterLoadAssignment>(a, type_url)
                    .unwrap()
                    .cluster_name
            }
            weft_xds_api::type_url::LISTENER => weft_xds_api::unpack::<Listener>(a, type_url).unwrap().name,
            weft_xds_api::type_url::ROUTE => weft_xds_api::unpack::<RouteConfiguration>(a, type_url).unwrap().name,
            _ => panic!("type {type_url}"),
        })
        .collect();
    v.sort();
    v
}
