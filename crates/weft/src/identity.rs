//! `weft identity fetch` and `weft sds-agent`: workload certificates from weft control's CA for
//! files on disk and for an Envoy sidecar (SDS, the way istio-agent serves it). In both, the
//! private key is generated in this process; only a CSR goes to the CA (docs/security.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use weft_identity::{AgentConfig, IdentityAgent, Svid};
use weft_xds_api::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use weft_xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weft_xds_api::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use weft_xds_api::pb::google::protobuf::Any;
use weft_xds_api::prost::Message;

#[derive(clap::Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    cmd: IdentityCmd,
}

#[derive(clap::Subcommand)]
enum IdentityCmd {
    /// Obtain a workload certificate once and write cert-chain.pem, key.pem (0600), root-cert.pem.
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
struct FetchArgs {
    /// weft control's xDS address (the CA is served there), host:port.
    #[arg(long)]
    ca_address: String,
    /// A bootstrap token file from `weft control token`.
    #[arg(long)]
    token_file: PathBuf,
    /// Talk TLS to the CA (weft control's --ca-tls port), verifying it against this root (PEM).
    #[arg(long)]
    ca_root: Option<PathBuf>,
    /// Where to write the files (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// Requested certificate lifetime, e.g. 1h (default: the CA's --svid-ttl).
    #[arg(long, value_parser = weft_config::duration::parse)]
    ttl: Option<Duration>,
    /// The key generated here: ecdsa (P-256) or sm2 (needs weft control --ca-sm2).
    #[arg(long, value_enum, default_value_t = FetchKeyType::Ecdsa)]
    key_type: FetchKeyType,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FetchKeyType {
    Ecdsa,
    Sm2,
}

#[derive(clap::Args)]
pub struct SdsAgentArgs {
    /// Where Envoy connects for SDS: unix:/path/to/socket (mode 0600) or 127.0.0.1:PORT.
    #[arg(long)]
    listen: String,
    /// weft control's xDS address (the CA is served there), host:port.
    #[arg(long)]
    ca_address: String,
    /// Talk TLS to the CA (weft control's --ca-tls port), verifying it against this root (PEM).
    #[arg(long)]
    ca_root: Option<PathBuf>,
    /// A bootstrap token file from `weft control token` (read again whenever it is needed).
    #[arg(long)]
    token_file: PathBuf,
    /// Requested certificate lifetime, e.g. 24h (default: the CA's --svid-ttl).
    #[arg(long, value_parser = weft_config::duration::parse)]
    ttl: Option<Duration>,
    /// Serve GET /metrics (weft_identity_*) and GET /ready (200 once a certificate is held) here;
    /// loopback only.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// Log filter.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

pub fn run_identity(args: IdentityArgs) -> i32 {
    match args.cmd {
        IdentityCmd::Fetch(a) => fetch(a),
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Write a sibling then rename, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn fetch(a: FetchArgs) -> i32 {
    let token = match std::fs::read_to_string(&a.token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("weft identity fetch: {}: {e}", a.token_file.display());
            return 2;
        }
    };
    let id = match weft_identity::token::peek(&token) {
        Ok(c) => c.id,
        Err(e) => {
            eprintln!("weft identity fetch: {}: {e}", a.token_file.display());
            return 2;
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft identity fetch: {e}");
            return 1;
        }
    };
    let roots = match a.ca_root.as_ref().map(std::fs::read_to_string).transpose() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft identity fetch: --ca-root: {e}");
            return 2;
        }
    };
    let auth = weft_identity::Auth::Token(&token);
    let kind = match a.key_type {
        FetchKeyType::Ecdsa => weft_identity::KeyType::Ecdsa,
        FetchKeyType::Sm2 => weft_identity::KeyType::Sm2,
    };
    let res = rt.block_on(weft_identity::client::fetch_key(
        &a.ca_address,
        roots.as_deref(),
        &id,
        auth,
        a.ttl,
        kind,
    ));
    let svid = match res {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft identity fetch: {e}");
            return 1;
        }
    };
    let written = std::fs::create_dir_all(&a.out_dir)
        .and_then(|_| write_file(&a.out_dir.join("key.pem"), &svid.key_pem(), 0o600))
        .and_then(|_| write_file(&a.out_dir.join("cert-chain.pem"), &svid.chain_pem, 0o644))
        .and_then(|_| write_file(&a.out_dir.join("root-cert.pem"), &svid.roots_pem, 0o644));
    if let Err(e) = written {
        eprintln!("weft identity fetch: {}: {e}", a.out_dir.display());
        return 1;
    }
    println!(
        "{} serial={} not_after={} ({}s)",
        svid.id,
        svid.serial,
        svid.not_after,
        svid.not_after.saturating_sub(svid.received)
    );
    0
}

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Envoy's and istio-agent's names for the workload certificate and the trust roots.
pub const DEFAULT_SECRET: &str = "default";
pub const ROOT_SECRET: &str = "ROOTCA";

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(s.as_bytes().to_vec())),
        ..Default::default()
    })
}

fn secret_for(name: &str, svid: &Svid) -> Option<Secret> {
    let r#type = match name {
        DEFAULT_SECRET => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&svid.chain_pem),
            private_key: inline(&svid.key_pem()),
            ..Default::default()
        }),
        ROOT_SECRET => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(&svid.roots_pem),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(Secret {
        name: name.to_string(),
        r#type: Some(r#type),
    })
}

fn response(names: &[String], svid: &Svid, nonce: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: svid.serial.clone(),
        resources: names
            .iter()
            .filter_map(|n| secret_for(n, svid))
            .map(|s| Any {
                type_url: SECRET_TYPE.to_string(),
                value: s.encode_to_vec(),
            })
            .collect(),
        type_url: SECRET_TYPE.to_string(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

struct Sds {
    svids: watch::Receiver<Option<Arc<Svid>>>,
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = tonic::codegen::tokio_stream::Empty<Result<DeltaDiscoveryResponse, tonic::Status>>;
    type StreamSecretsStream =
        tonic::codegen::tokio_stream::wrappers::ReceiverStream<Result<DiscoveryResponse, tonic::Status>>;

    async fn delta_secrets(
        &self,
        _: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaSecretsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "weft sds-agent serves State-of-the-World SDS (api_type: GRPC)",
        ))
    }

    async fn stream_secrets(
        &self,
        req: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamSecretsStream>, tonic::Status> {
        let mut inbound = req.into_inner();
        let mut svids = self.svids.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut names: Vec<String> = Vec::new();
            let mut nonce = 0u64;
            let mut sent: Option<String> = None;
            loop {
                tokio::select! {
                    m = inbound.message() => {
                        let Ok(Some(r)) = m else { return };
                        if let Some(e) = &r.error_detail {
                            tracing::error!(names = ?r.resource_names, error = %e.message, "Envoy rejected a secret");
                        }
                        for n in &r.resource_names {
                            if n != DEFAULT_SECRET && n != ROOT_SECRET {
                                tracing::warn!(name = %n, "Envoy asked for a secret this agent does not serve (only \"default\" and \"ROOTCA\")");
                            }
                        }
                        if r.resource_names == names && sent.is_some() {
                            continue; // an ACK (or NACK) of what was sent
                        }
                        names = r.resource_names;
                    }
                    c = svids.changed() => {
                        if c.is_err() { return }
                    }
                }
                let cur = svids.borrow_and_update().clone();
                let Some(svid) = cur else { continue };
                if names.is_empty() {
                    continue;
                }
                nonce += 1;
                tracing::info!(names = ?names, serial = %svid.serial, "SDS: pushing secrets");
                sent = Some(svid.serial.clone());
                if tx.send(Ok(response(&names, &svid, nonce))).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
    }

    async fn fetch_secrets(
        &self,
        req: tonic::Request<DiscoveryRequest>,
    ) -> Result<tonic::Response<DiscoveryResponse>, tonic::Status> {
        let cur = self.svids.borrow().clone();
        let svid = cur.ok_or_else(|| tonic::Status::unavailable("no workload certificate yet"))?;
        Ok(tonic::Response::new(response(
            &req.into_inner().resource_names,
            &svid,
            1,
        )))
    }
}

pub fn run_sds_agent(a: SdsAgentArgs) -> i32 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft sds-agent: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let mut cfg = AgentConfig::new(a.ca_address.clone(), a.token_file.clone());
        cfg.ttl = a.ttl;
        if let Some(p) = &a.ca_root {
            match std::fs::read_to_string(p) {
                Ok(r) => cfg.ca_roots_pem = Some(r),
                Err(e) => {
                    eprintln!("weft sds-agent: --ca-root {}: {e}", p.display());
                    return 2;
                }
            }
        }
        let agent = match IdentityAgent::start(cfg) {
            Ok(ag) => ag,
            Err(e) => {
                eprintln!("weft sds-agent: {e}");
                return 2;
            }
        };
        if let Some(addr) = a.metrics {
            if !addr.ip().is_loopback() {
                eprintln!("weft sds-agent: --metrics {addr}: loopback addresses only");
                return 2;
            }
            let l = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("weft sds-agent: --metrics {addr}: {e}");
                    return 2;
                }
            };
            let mut reg = prometheus_client::registry::Registry::default();
            agent.metrics.register(&mut reg);
            tokio::spawn(serve_metrics(l, Arc::new(reg), agent.subscribe()));
        }
        let svc = SecretDiscoveryServiceServer::new(Sds {
            svids: agent.subscribe(),
        });
        let server = tonic::transport::Server::builder();
        tracing::info!(listen = %a.listen, identity = %agent.id(), ca = %a.ca_address, "weft sds-agent running");
        let res = if let Some(path) = a.listen.strip_prefix("unix:") {
            let _ = std::fs::remove_file(path);
            let l = match tokio::net::UnixListener::bind(path) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("weft sds-agent: --listen {path}: {e}");
                    return 2;
                }
            };
            // The socket hands out the private key: only this user may connect.
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                eprintln!("weft sds-agent: --listen {path}: {e}");
                return 2;
            }
            server
                .serve_with_incoming_shutdown(
                    svc,
                    tonic::codegen::tokio_stream::wrappers::UnixListenerStream::new(l),
                    shutdown(),
                )
                .await
        } else {
            let addr: std::net::SocketAddr = match a.listen.parse() {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("weft sds-agent: --listen {:?}: {e} (use unix:PATH or 127.0.0.1:PORT)", a.listen);
                    return 2;
                }
            };
            if !addr.ip().is_loopback() {
                eprintln!("weft sds-agent: --listen {addr}: SDS hands out the private key, so it listens on loopback or a unix socket only");
                return 2;
            }
            server.serve_with_shutdown(addr, svc, shutdown()).await
        };
        match res {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("weft sds-agent: {e}");
                1
            }
        }
    })
}

/// GET /metrics and GET /ready for the agent.
async fn serve_metrics(
    l: tokio::net::TcpListener,
    reg: Arc<prometheus_client::registry::Registry>,
    svids: watch::Receiver<Option<Arc<Svid>>>,
) {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (reg, svids) = (reg.clone(), svids.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, body) = match (req.method() == hyper::Method::GET, req.uri().path()) {
                    (true, "/metrics") => {
                        let mut s = String::new();
                        let _ = prometheus_client::encoding::text::encode(&mut s, &reg);
                        (200, s)
                    }
                    (true, "/ready") => match svids.borrow().as_ref() {
                        Some(s) if s.not_after > weft_identity::unix_now() => {
                            (200, format!("{} serial={} not_after={}\n", s.id, s.serial, s.not_after))
                        }
                        Some(_) => (503, "the workload certificate has expired\n".to_string()),
                        None => (503, "no workload certificate yet\n".to_string()),
                    },
                    (true, _) => (404, "GET /metrics or /ready\n".to_string()),
                    (false, _) => (405, "use GET\n".to_string()),
                };
                let resp = hyper::Response::builder()
                    .status(status)
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(Full::new(bytes::Bytes::from(body)));
                async move { resp }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
