//! One `CreateCertificate` call to the mesh CA.

use crate::csr::{KeyType, WorkloadKey};
use crate::proto::{self, IstioCertificateRequest, IstioCertificateResponse};
use crate::spiffe::SpiffeId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use x509_parser::prelude::*;

/// How a request proves who it is for.
pub enum Auth<'a> {
    /// A bootstrap token from `weft control token` (first certificate, or when the SVID is gone).
    Token(&'a str),
    /// The current, still valid SVID: renewal.
    Svid(&'a Svid),
}

/// A workload certificate with its key and the trust roots.
pub struct Svid {
    pub id: SpiffeId,
    /// The leaf certificate, DER.
    pub leaf_der: Vec<u8>,
    /// Leaf then intermediates, PEM (what a TLS server or client presents).
    pub chain_pem: String,
    /// The mesh root(s), PEM (what a peer's chain is verified against).
    pub roots_pem: String,
    /// Validity, Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
    /// The leaf's serial number, lower-case hex.
    pub serial: String,
    /// When this process received it, Unix seconds.
    pub received: u64,
    key: Arc<WorkloadKey>,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The private key, PKCS#8 DER.
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The key's type (ECDSA P-256 or SM2).
    pub fn key_type(&self) -> KeyType {
        self.key.key_type()
    }

    /// When to renew: half-way between receipt and expiry.
    pub fn renew_at(&self) -> u64 {
        self.received + self.not_after.saturating_sub(self.received) / 2
    }
}

#[derive(Debug)]
pub enum FetchError {
    /// The key or CSR could not be made, or the token file not read.
    Local(String),
    /// The CA could not be reached.
    Connect(String),
    /// The CA answered with an error status.
    Status { code: tonic::Code, message: String },
    /// The CA's answer is not a usable certificate for this key and identity.
    BadResponse(String),
}

impl FetchError {
    /// True when the CA refused the credential (as opposed to being unreachable or broken).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            FetchError::Status {
                code: tonic::Code::Unauthenticated | tonic::Code::PermissionDenied,
                ..
            }
        )
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Local(e) => write!(f, "{e}"),
            FetchError::Connect(e) => write!(f, "cannot reach the CA: {e}"),
            FetchError::Status { code, message } => write!(f, "the CA refused: {code:?}: {message}"),
            FetchError::BadResponse(e) => write!(f, "unusable answer from the CA: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// `host:port` or `http://host:port`.
pub fn endpoint_uri(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Generates a key, sends a CSR for `id` and returns the SVID. `ttl` None asks for the CA's default.
/// Plaintext (h2c): the xDS port.
pub async fn fetch(ca_address: &str, id: &SpiffeId, auth: Auth<'_>, ttl: Option<Duration>) -> Result<Svid, FetchError> {
    fetch_via(ca_address, None, id, auth, ttl, KeyType::Ecdsa).await
}

/// Like [`fetch`] (plaintext) or [`fetch_tls`] (`roots_pem` given), with a new key of `kind`.
pub async fn fetch_key(
    ca_address: &str,
    roots_pem: Option<&str>,
    id: &SpiffeId,
    auth: Auth<'_>,
    ttl: Option<Duration>,
    kind: KeyType,
) -> Result<Svid, FetchError> {
    fetch_via(ca_address, roots_pem, id, auth, ttl, kind).await
}

/// Like [`fetch`], over TLS (weft control's `--ca-tls` port): the CA's certificate must chain to
/// one of `roots_pem` and name the IP address (or `localhost`) dialled.
pub async fn fetch_tls(
    ca_address: &str,
    roots_pem: &str,
    id: &SpiffeId,
    auth: Auth<'_>,
    ttl: Option<Duration>,
) -> Result<Svid, FetchError> {
    fetch_via(ca_address, Some(roots_pem), id, auth, ttl, KeyType::Ecdsa).await
}

/// A TLS connector for tonic: TCP to the URI's host and port, then a rustls handshake with
/// `config` (the URI's host as server name). Used for the CA's TLS port here and for ADS over TLS
/// by weft's xDS client.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl TlsConnector {
    pub fn new(config: Arc<rustls::ClientConfig>) -> TlsConnector {
        TlsConnector { config }
    }
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
            let host = uri
                .host()
                .ok_or_else(|| bad("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls_pki_types::ServerName::try_from(host).map_err(|e| bad(&e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

fn tls_config(roots_pem: &str) -> Result<rustls::ClientConfig, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = parse_pem_certs(&[roots_pem.to_string()]).map_err(|e| FetchError::Local(format!("CA roots: {e}")))?;
    for c in certs {
        roots
            .add(c.into())
            .map_err(|e| FetchError::Local(format!("CA roots: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Local(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

async fn fetch_via(
    ca_address: &str,
    roots_pem: Option<&str>,
    id: &SpiffeId,
    auth: Auth<'_>,
    ttl: Option<Duration>,
    kind: KeyType,
) -> Result<Svid, FetchError> {
    let key = WorkloadKey::generate(kind).map_err(|e| FetchError::Local(format!("generating a {kind} key: {e}")))?;
    let csr = key
        .csr_pem(id)
        .map_err(|e| FetchError::Local(format!("building the CSR: {e}")))?;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.clone(),
        validity_duration: ttl.map_or(0, |t| t.as_secs() as i64),
        metadata: Vec::new(),
    });
    let md = req.metadata_mut();
    match auth {
        Auth::Token(t) => {
            let v = format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| FetchError::Local("the token has characters not allowed in a header".into()))?;
            md.insert("authorization", v);
        }
        Auth::Svid(svid) => {
            let now = crate::unix_now();
            let sig = svid
                .key
                .sign(&proto::renewal_message(now, &csr))
                .map_err(|e| FetchError::Local(format!("signing the renewal proof: {e}")))?;
            md.insert_bin(
                proto::SVID_METADATA,
                tonic::metadata::MetadataValue::from_bytes(&svid.leaf_der),
            );
            md.insert_bin(proto::PROOF_METADATA, tonic::metadata::MetadataValue::from_bytes(&sig));
            md.insert(
                proto::PROOF_TIME_METADATA,
                now.to_string().parse().map_err(|_| FetchError::Local("time".into()))?,
            );
        }
    }
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint_uri(ca_address))
        .map_err(|e| FetchError::Local(format!("CA address {ca_address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15));
    let connected = match roots_pem {
        None => endpoint.connect().await,
        Some(r) => {
            endpoint
                .connect_with_connector(TlsConnector {
                    config: Arc::new(tls_config(r)?),
                })
                .await
        }
    };
    let channel = connected.map_err(|e| {
        use std::error::Error;
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        FetchError::Connect(format!("{ca_address}: {msg}"))
    })?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| FetchError::Connect(format!("{ca_address}: {e}")))?;
    let resp: tonic::Response<IstioCertificateResponse> = grpc
        .unary(
            req,
            tonic::codegen::http::uri::PathAndQuery::from_static(proto::CREATE_CERTIFICATE),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(|s| FetchError::Status {
            code: s.code(),
            message: s.message().to_string(),
        })?;
    from_response(id, key, &resp.into_inner().cert_chain)
}

/// One DER certificate as a PEM block.
pub fn pem_block(der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b = String::new();
    for c in der.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                b.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b.push('=');
            }
        }
    }
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// Every certificate in the PEM strings, in order.
pub fn parse_pem_certs(pems: &[String]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for (i, s) in pems.iter().enumerate() {
        for p in Pem::iter_from_buffer(s.as_bytes()) {
            let p = p.map_err(|e| format!("cert_chain[{i}]: not PEM: {e}"))?;
            if p.label != "CERTIFICATE" {
                return Err(format!("cert_chain[{i}]: a {:?} block, expected CERTIFICATE", p.label));
            }
            out.push(p.contents);
        }
    }
    Ok(out)
}

/// The URI SANs of a certificate.
pub fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                v.push(u.to_string());
            }
        }
    }
    v
}

fn from_response(id: &SpiffeId, key: WorkloadKey, chain: &[String]) -> Result<Svid, FetchError> {
    let bad = FetchError::BadResponse;
    let ders = parse_pem_certs(chain).map_err(bad)?;
    if ders.len() < 2 {
        return Err(bad(format!(
            "{} certificate(s) in cert_chain; expected the leaf and at least the root",
            ders.len()
        )));
    }
    // The last element is the trust bundle: one root, or several during a root rollover (Istio's
    // layout). When everything comes in one element, its last certificate is the root.
    let (chain_ders, root_ders) = match chain {
        [.., last] if chain.len() >= 2 => {
            let roots = parse_pem_certs(std::slice::from_ref(last)).map_err(bad)?;
            if roots.is_empty() {
                return Err(bad(
                    "the last cert_chain element (the trust bundle) holds no certificate".into(),
                ));
            }
            let n = ders.len() - roots.len();
            if n == 0 {
                return Err(bad("no leaf certificate before the trust bundle in cert_chain".into()));
            }
            (ders[..n].to_vec(), roots)
        }
        _ => (ders[..ders.len() - 1].to_vec(), ders[ders.len() - 1..].to_vec()),
    };
    let (_, leaf) = X509Certificate::from_der(&ders[0]).map_err(|e| bad(format!("leaf: {e}")))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw().as_slice() {
        return Err(bad("the leaf certificate is not for the key this CSR carried".into()));
    }
    let sans = uri_sans(&leaf);
    if sans != [id.to_string()] {
        return Err(bad(format!("the leaf's URI SANs are {sans:?}, expected [{id}]")));
    }
    let not_before = leaf.validity().not_before.timestamp().max(0) as u64;
    let not_after = leaf.validity().not_after.timestamp().max(0) as u64;
    let serial = crate::hex::encode(leaf.raw_serial());
    Ok(Svid {
        id: id.clone(),
        chain_pem: chain_ders.iter().map(|d| pem_block(d)).collect(),
        roots_pem: root_ders.iter().map(|d| pem_block(d)).collect(),
        leaf_der: ders[0].clone(),
        not_before,
        not_after,
        serial,
        received: crate::unix_now(),
        key: Arc::new(key),
    })
}
