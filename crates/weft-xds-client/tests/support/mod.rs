//! A scripted control plane (real gRPC on 127.0.0.1:0) and a real weft proxy with the xDS client
//! attached. Upstreams, clients and waits come from `weft_test_support`; every wait is bounded.
#![allow(dead_code)]

pub mod dubbo;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use weft_xds_api::pb::envoy::config::cluster::v3 as cl;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::endpoint::v3 as ep;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use weft_xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use weft_xds_api::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use weft_xds_api::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use weft_xds_api::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use weft_xds_api::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use weft_xds_api::{pack, type_url};

use weft_test_support::{eventually, eventually_ok, fixed_upstream};
pub use weft_test_support::{http_close as get, WAIT};

#[derive(Clone, Debug)]
pub enum Req {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

impl Req {
    pub fn sotw(&self) -> &DiscoveryRequest {
        match self {
            Req::Sotw(r) => r,
            Req::Delta(_) => panic!("expected a SotW request"),
        }
    }
    pub fn delta(&self) -> &DeltaDiscoveryRequest {
        match self {
            Req::Delta(r) => r,
            Req::Sotw(_) => panic!("expected a Delta request"),
        }
    }
    pub fn type_url(&self) -> &str {
        match self {
            Req::Sotw(r) => &r.type_url,
            Req::Delta(r) => &r.type_url,
        }
    }
    pub fn nonce(&self) -> &str {
        match self {
            Req::Sotw(r) => &r.response_nonce,
            Req::Delta(r) => &r.response_nonce,
        }
    }
    pub fn error(&self) -> Option<String> {
        match self {
            Req::Sotw(r) => r.error_detail.as_ref().map(|e| e.message.clone()),
            Req::Delta(r) => r.error_detail.as_ref().map(|e| e.message.clone()),
        }
    }
}

type Tx<T> = mpsc::Sender<Result<T, Status>>;

#[derive(Default)]
struct CpState {
    log: Vec<Req>,
    /// Response senders of the open streams, keyed "ads" or by type URL.
    sotw: HashMap<String, Tx<DiscoveryResponse>>,
    delta: HashMap<String, Tx<DeltaDiscoveryResponse>>,
    streams_opened: usize,
}

/// The scripted control plane: records every request; the test decides every response.
#[derive(Clone)]
pub struct Cp {
    st: Arc<Mutex<CpState>>,
    notify: Arc<Notify>,
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

async fn dispatch(cp: Cp, req: http::Request<hyper::body::Incoming>) -> http::Response<tonic::body::Body> {
    use tonic::codegen::Service;
    let path = req.uri().path().to_string();
    let r = if path.starts_with("/envoy.service.discovery.v3.AggregatedDiscoveryService/") {
        AggregatedDiscoveryServiceServer::new(cp).call(req).await
    } else if path.starts_with("/envoy.service.listener.v3.ListenerDiscoveryService/") {
        ListenerDiscoveryServiceServer::new(cp).call(req).await
    } else if path.starts_with("/envoy.service.route.v3.RouteDiscoveryService/") {
        RouteDiscoveryServiceServer::new(cp).call(req).await
    } else if path.starts_with("/envoy.service.cluster.v3.ClusterDiscoveryService/") {
        ClusterDiscoveryServiceServer::new(cp).call(req).await
    } else {
        EndpointDiscoveryServiceServer::new(cp).call(req).await
    };
    match r {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

type BoxS<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Cp {
    pub async fn start() -> Cp {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Cp {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind control plane");
        let addr = listener.local_addr().unwrap();
        let cp = Cp {
            st: Arc::new(Mutex::new(CpState::default())),
            notify: Arc::new(Notify::new()),
            addr,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        let svc = cp.clone();
        let tasks = cp.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let svc = svc.clone();
                // tonic's Router needs axum; the generated services are tower services, so a
                // path dispatch over hyper is all a test server needs.
                let conn = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let svc = svc.clone();
                        async move { Ok::<_, std::convert::Infallible>(dispatch(svc, req).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        cp.tasks.lock().unwrap().push(accept);
        cp
    }

    /// Stops the server: closes the listening socket and every connection.
    pub fn shutdown(&self) {
        self.kill_streams();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Ends every open stream (the client sees the stream close and reconnects).
    pub fn kill_streams(&self) {
        let mut st = self.st.lock().unwrap();
        for tx in st.sotw.values() {
            let _ = tx.try_send(Err(Status::unavailable("control plane going away")));
        }
        for tx in st.delta.values() {
            let _ = tx.try_send(Err(Status::unavailable("control plane going away")));
        }
        st.sotw.clear();
        st.delta.clear();
    }

    /// Ends one stream ("ads" or a type URL), as a control plane dropping it would.
    pub fn kill_stream(&self, key: &str) {
        let mut st = self.st.lock().unwrap();
        if let Some(tx) = st.sotw.remove(key) {
            let _ = tx.try_send(Err(Status::unavailable("going away")));
        }
        if let Some(tx) = st.delta.remove(key) {
            let _ = tx.try_send(Err(Status::unavailable("going away")));
        }
    }

    pub fn streams_opened(&self) -> usize {
        self.st.lock().unwrap().streams_opened
    }

    pub fn mark(&self) -> usize {
        self.st.lock().unwrap().log.len()
    }

    pub fn log(&self) -> Vec<Req> {
        self.st.lock().unwrap().log.clone()
    }

    /// The first request at or after `from` matching `pred`.
    pub async fn wait_for(&self, from: usize, what: &str, pred: impl Fn(&Req) -> bool) -> Req {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.notify.notified();
            {
                let st = self.st.lock().unwrap();
                if let Some(r) = st.log.iter().skip(from).find(|r| pred(r)) {
                    return r.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out waiting for {what}; requests: {:#?}",
                    self.log()[from.min(self.log().len())..].to_vec()
                );
            }
        }
    }

    /// Waits for a SotW request of type `t` at or after `from`.
    pub async fn sotw_req(&self, from: usize, t: &str) -> DiscoveryRequest {
        self.wait_for(from, t, |r| matches!(r, Req::Sotw(x) if x.type_url == t))
            .await
            .sotw()
            .clone()
    }

    /// Waits for the ACK/NACK of `nonce`.
    pub async fn reply_to(&self, from: usize, nonce: &str) -> Req {
        self.wait_for(from, &format!("reply to nonce {nonce}"), |r| r.nonce() == nonce)
            .await
    }

    pub async fn wait_streams(&self, n: usize) {
        eventually(&format!("{n} streams"), WAIT, || async {
            (self.streams_opened() >= n).then_some(())
        })
        .await;
    }

    pub fn send_sotw(&self, t: &str, version: &str, nonce: &str, resources: Vec<Any>) {
        let st = self.st.lock().unwrap();
        let tx = st
            .sotw
            .get("ads")
            .or_else(|| st.sotw.get(t))
            .expect("no open SotW stream for this type");
        tx.try_send(Ok(DiscoveryResponse {
            version_info: version.into(),
            resources,
            type_url: t.into(),
            nonce: nonce.into(),
            ..Default::default()
        }))
        .expect("send");
    }

    /// Delta: resources are (name, Any); their version is their content hash as weft control does.
    pub fn send_delta(&self, t: &str, nonce: &str, resources: Vec<(String, Any)>, removed: Vec<String>) {
        let st = self.st.lock().unwrap();
        let tx = st
            .delta
            .get("ads")
            .or_else(|| st.delta.get(t))
            .expect("no open Delta stream for this type");
        tx.try_send(Ok(DeltaDiscoveryResponse {
            system_version_info: nonce.into(),
            resources: resources
                .into_iter()
                .map(|(name, a)| Resource {
                    version: weft_xds_api::content_version(&a.value),
                    name,
                    resource: Some(a),
                    ..Default::default()
                })
                .collect(),
            type_url: t.into(),
            removed_resources: removed,
            nonce: nonce.into(),
            ..Default::default()
        }))
        .expect("send");
    }

    fn open<Rq, Rs: Send + 'static>(
        &self,
        key: String,
        mut incoming: Streaming<Rq>,
        wrap: fn(Rq) -> Req,
        register: fn(&mut CpState, String, Tx<Rs>),
    ) -> BoxS<Rs>
    where
        Rq: weft_xds_api::prost::Message + Default + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(64);
        {
            let mut st = self.st.lock().unwrap();
            st.streams_opened += 1;
            register(&mut st, key, tx);
        }
        let st = self.st.clone();
        let notify = self.notify.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = incoming.next().await {
                st.lock().unwrap().log.push(wrap(r));
                notify.notify_waiters();
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }

    fn sotw_stream(&self, key: &str, req: Request<Streaming<DiscoveryRequest>>) -> BoxS<DiscoveryResponse> {
        self.open(key.to_string(), req.into_inner(), Req::Sotw, |st, k, tx| {
            st.sotw.insert(k, tx);
        })
    }

    fn delta_stream(&self, key: &str, req: Request<Streaming<DeltaDiscoveryRequest>>) -> BoxS<DeltaDiscoveryResponse> {
        self.open(key.to_string(), req.into_inner(), Req::Delta, |st, k, tx| {
            st.delta.insert(k, tx);
        })
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Cp {
    type StreamAggregatedResourcesStream = BoxS<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxS<DeltaDiscoveryResponse>;
    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.sotw_stream("ads", req)))
    }
    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.delta_stream("ads", req)))
    }
}

macro_rules! per_type {
    ($trait:ident, $url:expr, $s:ident, $d:ident, $f:ident, $st:ident, $dt:ident) => {
        #[tonic::async_trait]
        impl $trait for Cp {
            type $st = BoxS<DiscoveryResponse>;
            type $dt = BoxS<DeltaDiscoveryResponse>;
            async fn $s(&self, req: Request<Streaming<DiscoveryRequest>>) -> Result<Response<Self::$st>, Status> {
                Ok(Response::new(self.sotw_stream($url, req)))
            }
            async fn $d(&self, req: Request<Streaming<DeltaDiscoveryRequest>>) -> Result<Response<Self::$dt>, Status> {
                Ok(Response::new(self.delta_stream($url, req)))
            }
            async fn $f(&self, _: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
                Err(Status::unimplemented("fetch"))
            }
        }
    };
}
per_type!(
    ListenerDiscoveryService,
    type_url::LISTENER,
    stream_listeners,
    delta_listeners,
    fetch_listeners,
    StreamListenersStream,
    DeltaListenersStream
);
per_type!(
    RouteDiscoveryService,
    type_url::ROUTE,
    stream_routes,
    delta_routes,
    fetch_routes,
    StreamRoutesStream,
    DeltaRoutesStream
);
per_type!(
    ClusterDiscoveryService,
    type_url::CLUSTER,
    stream_clusters,
    delta_clusters,
    fetch_clusters,
    StreamClustersStream,
    DeltaClustersStream
);
per_type!(
    EndpointDiscoveryService,
    type_url::ENDPOINT,
    stream_endpoints,
    delta_endpoints,
    fetch_endpoints,
    StreamEndpointsStream,
    DeltaEndpointsStream
);

// ---------------------------------------------------------------------------------------------
// Resources

pub fn socket(addr: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

pub fn router_filter() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
            type_url::ROUTER,
            &weft_xds_api::pb::envoy::extensions::filters::http::router::v3::Router::default(),
        ))),
        ..Default::default()
    }
}

pub fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(Default::default())),
        resource_api_version: 2,
        ..Default::default()
    }
}

/// A listener on 127.0.0.1:0 whose HCM takes routes from RDS `rds`.
pub fn listener_with(name: &str, rds: &str, filters: Vec<hcm::HttpFilter>) -> ls::Listener {
    let h = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        http_filters: filters,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            route_config_name: rds.into(),
            config_source: Some(ads()),
        })),
        ..Default::default()
    };
    ls::Listener {
        name: name.into(),
        address: Some(socket("127.0.0.1:0".parse().unwrap())),
        filter_chains: vec![ls::FilterChain {
            filters: vec![ls::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ls::filter::ConfigType::TypedConfig(pack(type_url::HCM, &h))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn listener(name: &str, rds: &str) -> Any {
    pack(type_url::LISTENER, &listener_with(name, rds, vec![router_filter()]))
}

pub fn route_to(cluster: &str) -> rt::Route {
    rt::Route {
        r#match: Some(rt::RouteMatch {
            path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(rt::route::Action::Route(rt::RouteAction {
            cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(cluster.into())),
            timeout: Some(PbDuration { seconds: 2, nanos: 0 }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn route_config_with(name: &str, routes: Vec<rt::Route>) -> rt::RouteConfiguration {
    rt::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rt::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route_config(name: &str, cluster: &str) -> Any {
    pack(type_url::ROUTE, &route_config_with(name, vec![route_to(cluster)]))
}

pub fn eds_cluster_msg(name: &str) -> cl::Cluster {
    cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.into(),
        }),
        connect_timeout: Some(PbDuration { seconds: 1, nanos: 0 }),
        ..Default::default()
    }
}

pub fn eds_cluster(name: &str) -> Any {
    pack(type_url::CLUSTER, &eds_cluster_msg(name))
}

pub fn cla(name: &str, addrs: &[SocketAddr]) -> Any {
    pack(
        type_url::ENDPOINT,
        &ep::ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![ep::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: "r1".into(),
                    zone: "z1".into(),
                    sub_zone: String::new(),
                }),
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                lb_endpoints: addrs
                    .iter()
                    .map(|a| ep::LbEndpoint {
                        host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                            address: Some(socket(*a)),
                            ..Default::default()
                        })),
                        load_balancing_weight: Some(UInt32Value { value: 1 }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Proxy

pub struct Proxy {
    pub server: Arc<weft_proxy::Server>,
    pub client: Arc<weft_xds_client::XdsClient>,
}

impl Proxy {
    /// A proxy whose bootstrap points at `cp` with `mode`; `extra` is appended to the YAML.
    pub fn start(cp: &Cp, mode: &str, extra: &str) -> Proxy {
        let yaml = format!(
            "node: {{ id: test-1, cluster: test, metadata: {{ weft.role: sidecar }} }}\nadmin: {{ address: \"127.0.0.1:0\" }}\nruntime: {{ concurrency: 1 }}\nxds:\n  address: \"{}\"\n  mode: {mode}\n  backoff_base: 50ms\n  backoff_max: 200ms\n{extra}",
            cp.addr
        );
        let bootstrap = weft_config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let server = weft_proxy::Server::start(bootstrap.clone(), weft_proxy::ServerOptions { config_path: None })
            .expect("proxy starts");
        let s = Arc::downgrade(&server);
        let apply: weft_xds_client::ApplyFn = Arc::new(move |cfg| match s.upgrade() {
            Some(s) => s.apply(cfg).map_err(|e| e.to_string()),
            None => Err("stopped".into()),
        });
        let shared = Arc::downgrade(&server.shared);
        let on_init: weft_xds_client::InitializedFn = Arc::new(move || {
            if let Some(s) = shared.upgrade() {
                s.set_xds_initialized();
            }
        });
        let client = Arc::new(
            weft_xds_client::XdsClient::start(bootstrap, apply, on_init, server.control_handle()).expect("client"),
        );
        Proxy { server, client }
    }

    pub fn admin(&self) -> SocketAddr {
        self.server.admin_addr().unwrap()
    }

    pub async fn ready_status(&self) -> u16 {
        get(self.admin(), "admin", "/ready").await.0
    }

    /// Waits until the listener `name` is bound; returns its address.
    pub async fn wait_listener(&self, name: &str) -> SocketAddr {
        eventually(&format!("listener {name} to be bound"), WAIT, || async {
            self.server.listener_addr(name)
        })
        .await
    }

    pub async fn wait_ready(&self) {
        eventually_ok("/ready to answer 200", WAIT, || async {
            match self.ready_status().await {
                200 => Ok(()),
                other => Err(other),
            }
        })
        .await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.client.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams

/// An upstream (HTTP/1.1 and h2c) answering every request with 200 and `name` as the body; it runs
/// for the rest of the test.
pub async fn upstream(name: &'static str) -> SocketAddr {
    let up = fixed_upstream(name).await;
    let addr = up.addr;
    // Kept running until the test's runtime ends (dropping it would stop it).
    std::mem::forget(up);
    addr
}

/// Polls `GET /` on `addr` until the body equals `want` (bounded).
pub async fn until_body(addr: SocketAddr, want: &str) {
    eventually_ok(&format!("body {want:?}"), WAIT, || async {
        let (status, _, body) = get(addr, "svc", "/").await;
        if status == 200 && body == want {
            Ok(())
        } else {
            Err((status, body))
        }
    })
    .await
}
