//! Dubbo peers for the RPC-over-xDS tests: providers that say who answered, a one-call client,
//! and Envoy 1.40 (with its contrib Dubbo and generic proxies) attached to the scripted control
//! plane.

use super::{Cp, WAIT};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_rpc::codec::{Codec, Frame, FrameKind};
use weft_rpc::dubbo::{self, Dubbo};
use weft_rpc::hessian::{self, Reader};
use weft_xds_api::type_url::CLUSTER;

/// A Dubbo provider answering every two-way call with `name:method:arg0`.
pub async fn provider(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(provider_conn(name, s));
        }
    });
    addr
}

async fn provider_conn(name: &'static str, mut s: TcpStream) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Some(f) = Dubbo.decode(&mut buf, 1 << 20).unwrap() {
            let reply = match f.kind {
                FrameKind::Heartbeat => Dubbo.heartbeat_reply(&f),
                FrameKind::Request => {
                    let info = Dubbo.request_info(&f).unwrap();
                    let m = info.method.get(&f.data).unwrap().into_owned();
                    let arg0 = Dubbo
                        .argument(&f, &info, 0)
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let mut v = Vec::new();
                    hessian::write_string(&mut v, &format!("{name}:{m}:{arg0}"));
                    dubbo::encode_response(f.id, &v)
                }
                _ => continue,
            };
            if s.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

/// One two-way call on a fresh connection: the provider's answer, or the status and message of
/// the proxy's own reply.
pub async fn call(
    addr: SocketAddr,
    svc: &str,
    version: &str,
    m: &str,
    arg: &str,
    att: &[(&str, &str)],
) -> Result<String, (u16, String)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut args = Vec::new();
    hessian::write_string(&mut args, arg);
    let req = dubbo::encode_request(7, true, svc, version, m, "Ljava/lang/String;", &args, att);
    s.write_all(&req).await.unwrap();
    let f: Frame = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = BytesMut::new();
        loop {
            if let Some(f) = Dubbo.decode(&mut buf, 1 << 20).unwrap() {
                return f;
            }
            assert!(s.read_buf(&mut buf).await.unwrap() > 0, "connection closed");
        }
    })
    .await
    .expect("an answer within 5s");
    assert_eq!(f.id, 7);
    if f.status != 20 {
        return Err((f.status, dubbo::error_message(&f).unwrap_or_default()));
    }
    let mut r = Reader::at(&f.data, dubbo::HEADER_LEN);
    assert_eq!(r.read_int().unwrap(), 1, "RESPONSE_VALUE");
    Ok(r.read_opt_string().unwrap().unwrap().into_owned())
}

/// Envoy 1.40 (`interop/.venv-envoy`) on ADS from `cp`; `None` when it is not installed (outside
/// CI: under `CI=true` a missing Envoy fails the test).
pub struct Envoy {
    _child: weft_test_support::peers::ChildGuard,
    dir: weft_test_support::TempDir,
}

impl Envoy {
    /// Starts Envoy and waits until it asks `cp` for clusters.
    pub async fn start(cp: &Cp, id: &str) -> Option<Envoy> {
        use std::process::{Command, Stdio};
        use weft_test_support::peers;
        let envoy_bin = peers::envoy_binary()?;
        let dir = weft_test_support::TempDir::new("rpc-envoy");
        let bootstrap = peers::envoy_ads_bootstrap(&format!("  id: {id}\n  cluster: rpc-test"), 0, cp.addr.port(), "");
        dir.write("envoy.yaml", &bootstrap);
        let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
        let child = peers::ChildGuard(
            Command::new(&envoy_bin)
                .arg("-c")
                .arg(dir.join("envoy.yaml"))
                .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start envoy"),
        );
        let envoy = Envoy { _child: child, dir };
        // Envoy takes a few seconds to start on a busy machine.
        let started = weft_test_support::within(Duration::from_secs(30), || async {
            cp.log().iter().any(|r| r.type_url() == CLUSTER)
        })
        .await;
        assert!(started, "Envoy did not ask for clusters; its log:\n{}", envoy.log());
        Some(envoy)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Pushes listener `l`, moved to `addr`, as version `version` and asserts Envoy ACKs it.
    pub async fn accepts(
        &self,
        cp: &Cp,
        mut l: weft_xds_api::pb::envoy::config::listener::v3::Listener,
        addr: SocketAddr,
        version: &str,
    ) {
        use weft_xds_api::type_url::LISTENER;
        l.address = Some(super::socket(addr));
        let nonce = format!("n-{version}");
        let m = cp.mark();
        cp.send_sotw(LISTENER, version, &nonce, vec![weft_xds_api::pack(LISTENER, &l)]);
        let ack = cp.reply_to(m, &nonce).await;
        assert!(ack.error().is_none(), "Envoy NACKed: {:?}\n{}", ack.error(), self.log());
        assert_eq!(ack.sotw().version_info, version, "Envoy ACKs the listener");
    }

    /// Waits until Envoy's worker accepts on `addr` (it binds shortly after the ACK).
    pub async fn wait_bound(&self, addr: SocketAddr) {
        weft_test_support::eventually("Envoy's listener to accept", WAIT, || async {
            TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
    }
}

/// A listener on 127.0.0.1:0 with one network filter, `name`d `filter`, configured by `typed`.
pub fn rpc_listener(
    name: &str,
    filter: &str,
    typed: weft_xds_api::pb::google::protobuf::Any,
) -> weft_xds_api::pb::envoy::config::listener::v3::Listener {
    use weft_xds_api::pb::envoy::config::listener::v3 as ls;
    ls::Listener {
        name: name.into(),
        address: Some(super::socket("127.0.0.1:0".parse().unwrap())),
        filter_chains: vec![ls::FilterChain {
            filters: vec![ls::Filter {
                name: filter.into(),
                config_type: Some(ls::filter::ConfigType::TypedConfig(typed)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Converts and validates `l` as the xDS client does: its Dubbo listener's RPC routes (its
/// `stat_prefix` checked), or the errors joined.
pub fn dubbo_routes(
    l: &weft_xds_api::pb::envoy::config::listener::v3::Listener,
    stat_prefix: &str,
) -> Result<Vec<weft_config::rpc::RpcRoute>, String> {
    use weft_config::{validate_with, NetworkFilter, ValidateOptions};
    let x = weft_xds_client::convert::listener(l)
        .map_err(|e| e.lines().join("; "))?
        .unwrap();
    let raw = weft_config::raw::RawConfig {
        listeners: vec![x.raw],
        ..Default::default()
    };
    let opts = ValidateOptions {
        allow_unknown_clusters: true,
        allow_empty_clusters: true,
        allow_empty_route_configs: true,
    };
    let cfg = validate_with(raw, opts).map_err(|e| e.to_string())?;
    match &cfg.listeners[0].filter_chains[0].filter {
        NetworkFilter::Rpc(r) => {
            assert_eq!(r.protocol, weft_config::rpc::RpcProtocol::Dubbo);
            assert_eq!(r.stat_prefix, stat_prefix);
            Ok(r.routes.clone())
        }
        other => panic!("not an rpc filter: {other:?}"),
    }
}

/// Starts the providers `gold` and `silver` and pushes their EDS clusters (version `c1`) and
/// endpoints (`e1`) to `cp`'s client, weft or Envoy, waiting for its EDS request in between and
/// for its first listener request after.
pub async fn push_gold_and_silver(cp: &Cp) {
    use super::{cla, eds_cluster};
    use weft_xds_api::type_url::{ENDPOINT, LISTENER};
    let (gold, silver) = (provider("gold").await, provider("silver").await);
    // The client's stream is open once it has asked for clusters.
    cp.sotw_req(0, CLUSTER).await;
    let m = cp.mark();
    cp.send_sotw(CLUSTER, "c1", "n1", vec![eds_cluster("gold"), eds_cluster("silver")]);
    cp.wait_for(m, "EDS request", |r| {
        r.type_url() == ENDPOINT && r.sotw().resource_names.len() == 2
    })
    .await;
    cp.send_sotw(
        ENDPOINT,
        "e1",
        "n2",
        vec![cla("gold", &[gold]), cla("silver", &[silver])],
    );
    cp.sotw_req(0, LISTENER).await;
}
