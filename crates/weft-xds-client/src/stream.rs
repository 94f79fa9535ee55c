//! The gRPC side: connect, subscribe, ACK/NACK, reconnect with jittered exponential backoff.

use crate::state::{Change, State, CDS, EDS, LDS, RDS, SDS, TYPES};
use crate::Inner;
use futures_util::stream::{BoxStream, SelectAll, StreamExt, TryStreamExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_config::XdsMode;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use weft_xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use weft_xds_api::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use weft_xds_api::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use weft_xds_api::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
use weft_xds_api::pb::google::protobuf::{value::Kind, Struct, Value};
use weft_xds_api::pb::google::rpc::Status as RpcStatus;

/// Order of the first requests on a stream: clusters before listeners, so that listeners do not
/// wait on clusters that are still unknown (Envoy's order).
const SUBSCRIBE_ORDER: [usize; 5] = [CDS, EDS, LDS, RDS, SDS];

/// Requests queued towards one stream. A response causes at most a few requests and tonic drains
/// the queue continuously; the bound only guards against a stuck stream (then we reconnect).
const REQUEST_QUEUE: usize = 256;

const RESOURCE_URL: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

enum Incoming {
    Sotw(DiscoveryResponse),
    Delta(DeltaDiscoveryResponse),
}

type Inbound = SelectAll<BoxStream<'static, Result<Incoming, tonic::Status>>>;

/// Per-stream bookkeeping for one resource type.
#[derive(Default)]
struct Sub {
    /// The first request for this type has been sent on this stream.
    started: bool,
    /// Names last sent (SotW: the full list; Delta: the subscribed set).
    names: BTreeSet<String>,
}

struct Session {
    delta: bool,
    sotw_tx: Vec<mpsc::Sender<DiscoveryRequest>>,
    delta_tx: Vec<mpsc::Sender<DeltaDiscoveryRequest>>,
    subs: [Sub; 5],
    /// The node goes on the first request of each stream only.
    node_sent: Vec<bool>,
    /// A request could not be queued: the session must restart so nothing is silently missing.
    broken: bool,
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let base = inner.xds.backoff_base;
    let max = inner.xds.backoff_max;
    let mut backoff = base;
    let addrs = inner.xds.addresses.clone();
    let (mut next, mut failed_in_a_row) = (0usize, 0usize);
    loop {
        let address = addrs[next % addrs.len()].clone();
        *inner.current.lock().unwrap() = address.clone();
        // A session only ends with an error: every stream ends with one (see `with_end`).
        let Err((e, progress)) = session(&inner, &address).await;
        tracing::warn!(%address, error = %e, "xDS stream failed");
        if progress {
            backoff = base;
            failed_in_a_row = 0;
        }
        inner.state.lock().unwrap().connected = false;
        next += 1;
        failed_in_a_row += 1;
        // Another replica is tried at once (the configuration keeps serving meanwhile); only a
        // whole round of failures backs off.
        if failed_in_a_row < addrs.len() {
            tracing::info!(address = %addrs[next % addrs.len()], "trying the next control-plane replica");
            continue;
        }
        failed_in_a_row = 0;
        // Full jitter over [backoff/2, backoff] so that many proxies do not reconnect in lockstep
        // after a control-plane restart.
        let half = backoff / 2;
        let delay = half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos().max(1) as u64));
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(max);
    }
}

fn node(inner: &Inner) -> core::Node {
    let n = &inner.node;
    let fields = n
        .metadata
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value {
                    kind: Some(Kind::StringValue(v.clone())),
                },
            )
        })
        // This client asks for clusters it was not sent on demand (see `XdsClient::discover`).
        .chain(std::iter::once((
            "weft.on_demand".to_string(),
            Value {
                kind: Some(Kind::StringValue("true".into())),
            },
        )))
        .collect();
    core::Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        metadata: Some(Struct { fields }),
        locality: Some(core::Locality {
            region: n.locality.region.clone(),
            zone: n.locality.zone.clone(),
            sub_zone: n.locality.sub_zone.clone(),
        }),
        user_agent_name: "weft".into(),
        user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
    }
}

/// One connection's life. Returns whether any response was accepted (resets the backoff).
/// One connection's life; ends only with an error and whether any response was accepted.
async fn session(inner: &Arc<Inner>, address: &str) -> Result<std::convert::Infallible, (String, bool)> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| (e.to_string(), false))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = match &inner.tls {
        None => endpoint.connect().await,
        Some(cfg) => {
            endpoint
                .connect_with_connector(weft_identity::client::TlsConnector::new(cfg.clone()))
                .await
        }
    }
    .map_err(|e| {
        // The cause (a refused certificate, say) is in the source chain, not the top error.
        use std::error::Error;
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        (msg, false)
    })?;
    let mode = inner.xds.mode;
    let delta = matches!(mode, XdsMode::AdsDelta | XdsMode::Delta);
    let ads = matches!(mode, XdsMode::AdsDelta | XdsMode::AdsSotw);
    let streams = if ads { 1 } else { 4 };
    let mut sess = Session {
        delta,
        sotw_tx: Vec::new(),
        delta_tx: Vec::new(),
        subs: Default::default(),
        node_sent: vec![false; streams],
        broken: false,
    };
    let mut rxs_sotw = Vec::new();
    let mut rxs_delta = Vec::new();
    for _ in 0..streams {
        if delta {
            let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
            sess.delta_tx.push(tx);
            rxs_delta.push(rx);
        } else {
            let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
            sess.sotw_tx.push(tx);
            rxs_sotw.push(rx);
        }
    }
    // Queue the subscriptions before opening the streams: some servers send response headers
    // only after the first request.
    {
        let mut st = inner.state.lock().unwrap();
        // Nonces belong to the stream that carried them: a new stream starts without any (a
        // server that sends nothing because we are current must not see an old one on our next
        // subscription change and take it for stale).
        for s in st.types.iter_mut() {
            s.nonce.clear();
        }
        for t in SUBSCRIBE_ORDER {
            sess.subscribe(inner, &st, t, true);
        }
    }
    let mut inbound: Inbound = SelectAll::new();
    // Each call is made lazily inside its stream: awaiting a call waits for the response headers,
    // which servers built on grpc-go send only with their first response; a per-type RDS or EDS
    // stream with nothing to ask for yet would then block the whole session. A failed call
    // surfaces as the stream's error, which restarts the session.
    macro_rules! open {
        ($rxs:expr, $wrap:path, $ads:ident, $lds:ident, $rds:ident, $cds:ident, $eds:ident) => {
            for (t, rx) in $rxs.into_iter().enumerate() {
                let (ch, req) = (channel.clone(), ReceiverStream::new(rx));
                let call = async move {
                    if ads {
                        AggregatedDiscoveryServiceClient::new(ch).$ads(req).await
                    } else {
                        match t {
                            LDS => ListenerDiscoveryServiceClient::new(ch).$lds(req).await,
                            RDS => RouteDiscoveryServiceClient::new(ch).$rds(req).await,
                            CDS => ClusterDiscoveryServiceClient::new(ch).$cds(req).await,
                            _ => EndpointDiscoveryServiceClient::new(ch).$eds(req).await,
                        }
                    }
                };
                let responses = futures_util::stream::once(call)
                    .map_ok(tonic::Response::into_inner)
                    .try_flatten()
                    .map_ok($wrap);
                inbound.push(with_end(responses));
            }
        };
    }
    if delta {
        open!(
            rxs_delta,
            Incoming::Delta,
            delta_aggregated_resources,
            delta_listeners,
            delta_routes,
            delta_clusters,
            delta_endpoints
        );
    } else {
        open!(
            rxs_sotw,
            Incoming::Sotw,
            stream_aggregated_resources,
            stream_listeners,
            stream_routes,
            stream_clusters,
            stream_endpoints
        );
    }
    {
        inner.state.lock().unwrap().connected = true;
        inner.metrics.lock().unwrap().connects += 1;
    }
    tracing::info!(%address, ?mode, "xDS stream up");
    let mut progress = false;
    loop {
        let deadline = inner.state.lock().unwrap().next_deadline();
        let msg = tokio::select! {
            m = inbound.next() => m,
            _ = inner.wake.notified() => {
                // A cluster asked for on demand (or one forgotten): update the CDS subscription.
                let st = inner.state.lock().unwrap();
                sess.subscribe(inner, &st, CDS, false);
                drop(st);
                if sess.broken {
                    return Err(("an xDS request could not be queued; reconnecting".into(), progress));
                }
                continue;
            }
            _ = sleep_until(deadline) => {
                let mut st = inner.state.lock().unwrap();
                if st.expire(tokio::time::Instant::now()) {
                    match st.reapply(&inner.apply) {
                        Ok(()) => check_initialized(inner, &mut st),
                        Err(e) => tracing::error!(error = %e, "applying after an initial fetch timeout failed"),
                    }
                }
                continue;
            }
        };
        match msg {
            None => return Err(("every xDS stream ended".into(), progress)),
            Some(Err(status)) => return Err((format!("{}: {}", status.code(), status.message()), progress)),
            Some(Ok(m)) => {
                if sess.handle(inner, m) {
                    progress = true;
                }
                if sess.broken {
                    return Err(("an xDS request could not be queued; reconnecting".into(), progress));
                }
            }
        }
    }
}

/// How often the client logs a summary of the updates it accepted and rejected (at INFO; each
/// update itself is logged at debug).
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Logs, every [`SUMMARY_INTERVAL`] in which anything happened, how many updates were accepted
/// and rejected per type since the last summary.
pub(crate) async fn summary(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut last = ([0u64; 5], [0u64; 5]);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = {
            let m = inner.metrics.lock().unwrap();
            (m.accepted, m.rejected)
        };
        let mut parts = Vec::new();
        let (mut acc, mut rej) = (0, 0);
        for (i, t) in TYPES.iter().enumerate() {
            let (a, r) = (now.0[i] - last.0[i], now.1[i] - last.1[i]);
            acc += a;
            rej += r;
            if a + r > 0 {
                parts.push(format!("{} {a}/{r}", weft_xds_api::type_url::short(t)));
            }
        }
        if acc + rej > 0 {
            let versions: Vec<String> = {
                let st = inner.state.lock().unwrap();
                TYPES
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("{}={}", weft_xds_api::type_url::short(t), st.types[i].version))
                    .collect()
            };
            tracing::info!(
                accepted = acc,
                rejected = rej,
                per_type = %parts.join(", "),
                versions = %versions.join(" "),
                "xDS updates in the last {}s (accepted/rejected per type)",
                every.as_secs()
            );
        }
        last = now;
    }
}

/// Ends every stream with an error item: with one stream per type, one of them closing must
/// restart the session (the merged stream would otherwise carry on without that type).
fn with_end(
    s: impl futures_util::Stream<Item = Result<Incoming, tonic::Status>> + Send + 'static,
) -> BoxStream<'static, Result<Incoming, tonic::Status>> {
    s.chain(futures_util::stream::once(async {
        Err(tonic::Status::unavailable("stream closed by the control plane"))
    }))
    .boxed()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn check_initialized(inner: &Inner, st: &mut State) {
    if !st.initialized && st.complete() && st.last_applied.is_some() {
        st.initialized = true;
        tracing::info!("xDS: first complete configuration applied");
        (inner.on_initialized)();
    }
}

fn nack_status(msg: &str) -> RpcStatus {
    RpcStatus {
        code: 3,
        message: msg.to_string(),
        details: Vec::new(),
    }
}

impl Session {
    fn stream_of(&self, t: usize) -> usize {
        if self.node_sent.len() == 1 {
            0
        } else {
            t
        }
    }

    fn take_node(&mut self, inner: &Inner, t: usize) -> Option<core::Node> {
        let s = self.stream_of(t);
        if self.node_sent[s] {
            None
        } else {
            self.node_sent[s] = true;
            Some(node(inner))
        }
    }

    /// The names this type should be subscribed to now; `None` means wildcard.
    fn wanted(st: &State, t: usize) -> Option<BTreeSet<String>> {
        match t {
            RDS => Some(st.res.rds_names()),
            EDS => Some(st.res.eds_names()),
            SDS => Some(st.res.sds_names()),
            // The wildcard plus the clusters asked for on demand (configuration scoping).
            CDS if !st.on_demand.is_empty() => Some(
                std::iter::once("*".to_string())
                    .chain(st.on_demand.keys().cloned())
                    .collect(),
            ),
            _ => None,
        }
    }

    fn send_sotw(&mut self, t: usize, req: DiscoveryRequest) {
        // The channel is drained by tonic; a full channel means the stream is stuck. The session
        // then ends (`broken`), and the reconnect that follows resends everything.
        if let Err(e) = self.sotw_tx[self.stream_of(t)].try_send(req) {
            tracing::warn!(error = %e, "xDS request not queued");
            self.broken = true;
        }
    }

    fn send_delta(&mut self, t: usize, req: DeltaDiscoveryRequest) {
        if let Err(e) = self.delta_tx[self.stream_of(t)].try_send(req) {
            tracing::warn!(error = %e, "xDS request not queued");
            self.broken = true;
        }
    }

    /// Sends the first request for `t`, or a subscription change if the wanted names changed.
    fn subscribe(&mut self, inner: &Inner, st: &State, t: usize, first: bool) {
        // Secrets come on the ADS stream only (there is no per-type SDS stream; resources that
        // name a secret are refused on other streams).
        if t == SDS && self.node_sent.len() != 1 {
            return;
        }
        let wanted = Self::wanted(st, t);
        let names = wanted.clone().unwrap_or_default();
        if first {
            // RDS/EDS with nothing to ask for wait until a listener / cluster names something.
            if wanted.as_ref().is_some_and(|w| w.is_empty()) {
                return;
            }
        } else if (self.subs[t].started && self.subs[t].names == names) || (!self.subs[t].started && names.is_empty()) {
            // Unchanged, or nothing to ask for yet.
            return;
        }
        let node = self.take_node(inner, t);
        if self.delta {
            let mut req = DeltaDiscoveryRequest {
                node,
                type_url: TYPES[t].to_string(),
                ..Default::default()
            };
            if !self.subs[t].started {
                // Wildcard LDS/CDS: an empty first subscription. On reconnect, tell the server
                // what we hold so it sends only what changed.
                req.resource_names_subscribe = names.iter().cloned().collect();
                req.initial_resource_versions = st.res.versions(t);
            } else {
                req.resource_names_subscribe = names.difference(&self.subs[t].names).cloned().collect();
                req.resource_names_unsubscribe = self.subs[t].names.difference(&names).cloned().collect();
            }
            self.send_delta(t, req);
        } else {
            let s = &st.types[t];
            let req = DiscoveryRequest {
                version_info: s.version.clone(),
                node,
                resource_names: names.iter().cloned().collect(),
                type_url: TYPES[t].to_string(),
                // The nonce is per stream: a fresh stream starts without one.
                response_nonce: if self.subs[t].started {
                    s.nonce.clone()
                } else {
                    String::new()
                },
                ..Default::default()
            };
            self.send_sotw(t, req);
        }
        self.subs[t].started = true;
        self.subs[t].names = names;
    }

    /// Handles one response; true if it was accepted.
    fn handle(&mut self, inner: &Arc<Inner>, m: Incoming) -> bool {
        let (type_url, nonce, version, change) = match &m {
            Incoming::Sotw(r) => {
                let Some(t) = crate::state::type_index(&r.type_url) else {
                    tracing::warn!(type_url = %r.type_url, "ignoring response of an unknown type");
                    return false;
                };
                let mut upserts = Vec::new();
                let mut keep = Vec::new();
                for a in &r.resources {
                    // SotW resources may come wrapped in a discovery Resource (name, TTL).
                    if a.type_url == RESOURCE_URL {
                        match weft_xds_api::unpack::<Resource>(a, RESOURCE_URL) {
                            Ok(Resource {
                                name,
                                resource: Some(inner),
                                ..
                            }) => upserts.push((name, r.version_info.clone(), inner)),
                            // A wrapper without a body is a TTL heartbeat: the resource stays.
                            Ok(res) => keep.push(res.name),
                            Err(e) => tracing::warn!(error = %e, "undecodable Resource wrapper"),
                        }
                    } else {
                        upserts.push((String::new(), r.version_info.clone(), a.clone()));
                    }
                }
                (
                    r.type_url.clone(),
                    r.nonce.clone(),
                    r.version_info.clone(),
                    Change {
                        t,
                        upserts,
                        removed: Vec::new(),
                        keep,
                        full_set: t == LDS || t == CDS,
                    },
                )
            }
            Incoming::Delta(r) => {
                let Some(t) = crate::state::type_index(&r.type_url) else {
                    tracing::warn!(type_url = %r.type_url, "ignoring response of an unknown type");
                    return false;
                };
                // A Resource without a body is a TTL heartbeat: the resource stays. Delta removes
                // only through `removed_resources`.
                let upserts: Vec<_> = r
                    .resources
                    .iter()
                    .filter_map(|res| Some((res.name.clone(), res.version.clone(), res.resource.clone()?)))
                    .collect();
                let removed = r.removed_resources.clone();
                (
                    r.type_url.clone(),
                    r.nonce.clone(),
                    r.system_version_info.clone(),
                    Change {
                        t,
                        upserts,
                        removed,
                        keep: Vec::new(),
                        full_set: false,
                    },
                )
            }
        };
        let t = change.t;
        let short = weft_xds_api::type_url::short(&type_url).to_string();
        let mut st = inner.state.lock().unwrap();
        if t == CDS {
            // A cluster asked for on demand that the control plane does not have.
            for name in &change.removed {
                if st.on_demand.remove(name).is_some() {
                    st.on_demand_missing.insert(name.clone(), tokio::time::Instant::now());
                }
            }
        }
        let result = st.handle(change, &inner.apply);
        {
            let mut mtx = inner.metrics.lock().unwrap();
            match &result {
                Ok(()) => mtx.accepted[t] += 1,
                Err(_) => mtx.rejected[t] += 1,
            }
        }
        let ok = result.is_ok();
        let s = &mut st.types[t];
        s.nonce = nonce.clone();
        s.last_update = Some(std::time::SystemTime::now());
        match &result {
            Ok(()) => {
                s.version = version.clone();
                // Per update at debug: under churn these would flood the log. The periodic summary
                // (`summary`) reports the counts at INFO.
                tracing::debug!(r#type = %short, %version, "xDS update accepted");
            }
            Err(e) => {
                // A rejection is worth a WARN, but the same one repeated is not.
                if s.last_error.as_ref() != Some(e) {
                    tracing::warn!(r#type = %short, %version, error = %e, "xDS update rejected (NACK)");
                } else {
                    tracing::debug!(r#type = %short, %version, error = %e, "xDS update rejected (NACK), same error again");
                }
                s.last_error = Some(e.clone());
            }
        }
        let accepted_version = s.version.clone();
        // ACK / NACK.
        if self.delta {
            let req = DeltaDiscoveryRequest {
                type_url: type_url.clone(),
                response_nonce: nonce,
                error_detail: result.as_ref().err().map(|e| nack_status(e)),
                node: self.take_node(inner, t),
                ..Default::default()
            };
            self.send_delta(t, req);
        } else {
            let names = Self::wanted(&st, t).unwrap_or_default();
            let req = DiscoveryRequest {
                version_info: accepted_version,
                node: self.take_node(inner, t),
                resource_names: names.iter().cloned().collect(),
                type_url: type_url.clone(),
                response_nonce: nonce,
                error_detail: result.as_ref().err().map(|e| nack_status(e)),
                ..Default::default()
            };
            self.subs[t].names = names;
            self.subs[t].started = true;
            self.send_sotw(t, req);
        }
        if ok {
            // New listeners / clusters may need route configurations / endpoints.
            for u in [EDS, RDS, SDS] {
                self.subscribe(inner, &st, u, false);
            }
            check_initialized(inner, &mut st);
        }
        // Requests waiting for on-demand discovery look at the route table again.
        inner.changed.send_modify(|n| *n += 1);
        ok
    }
}
