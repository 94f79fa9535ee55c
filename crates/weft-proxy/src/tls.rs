//! TLS on listeners: termination with certificates from files (chosen by SNI, reloaded when the
//! files change) or with the workload's mesh identity (SPIFFE mTLS), the STRICT / PERMISSIVE /
//! DISABLE modes, the peer's identity for the request path (access log, x-forwarded-client-cert),
//! and handshake counters.
//!
//! The TLS branch is taken once per connection, in `server::handle_connection`; a plaintext
//! listener's connections never reach this module.

use crate::http::HttpRt;
use crate::idle::ConnIo;
use crate::server::{AdminExtension, ListenerRt, Shared};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weft_config::tls::{ForwardClientCert, ListenerTls, TlsMinVersion, TlsMode, TlsSuite};
use weft_config::Codec;
use weft_tls::stats::{HandshakeCounters, Side, TlsStats};
use weft_tls::{FailureReason, MeshIdentity, PeerIdentity, TlsError};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often certificate files are checked for changes.
pub const FILE_POLL: Duration = Duration::from_secs(2);

static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The process's TLS state: the workload identity (empty until set) and the handshake counters.
#[derive(Default)]
pub struct TlsState {
    pub mesh: Arc<MeshIdentity>,
    pub stats: Arc<TlsStats>,
}

impl AdminExtension for TlsState {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn status_json(&self) -> serde_json::Value {
        let mut v = match self.mesh.current_standard() {
            Some(m) => serde_json::json!({ "identity": m.id, "not_after": m.not_after }),
            None => serde_json::json!({ "identity": null }),
        };
        if let Some(m) = self.mesh.current_sm() {
            if v["identity"].is_null() {
                v["identity"] = m.id.clone().into();
            }
            v["sm2"] = serde_json::json!({ "identity": m.id, "not_after": m.not_after });
        }
        v
    }

    fn prometheus(&self) -> String {
        let mut out = self.stats.prometheus();
        if let Some(m) = self.mesh.current() {
            out.push_str("# TYPE weft_tls_identity_expiry_seconds gauge\n");
            out.push_str(&format!("weft_tls_identity_expiry_seconds {}\n", m.not_after));
        }
        out
    }
}

fn min_version(v: TlsMinVersion) -> weft_tls::TlsVersion {
    match v {
        TlsMinVersion::V12 => weft_tls::TlsVersion::V12,
        TlsMinVersion::V13 => weft_tls::TlsVersion::V13,
    }
}

fn suites(v: &[TlsSuite]) -> Vec<weft_tls::Suite> {
    v.iter()
        .map(|s| match s {
            TlsSuite::Standard => weft_tls::Suite::Standard,
            TlsSuite::Sm => weft_tls::Suite::Sm,
        })
        .collect()
}

/// A mesh listener or cluster may offer a suite family only when the workload identity declared
/// at start (`weft proxy --identity-key-type`) holds a certificate for it: `sm` needs an SM2 SVID,
/// `standard` an ECDSA one. Nothing declared (identity from files or SDS): not checked here.
fn check_mesh_suites(suites_: &[TlsSuite], ciphers: &[String], field: &str) -> Result<(), TlsError> {
    let Some((standard, sm2)) = weft_tls::mesh::declared_key_types() else {
        return Ok(());
    };
    let field = if ciphers.is_empty() {
        format!("{field}suites")
    } else {
        format!("{field}cipher_suites")
    };
    if suites_.contains(&TlsSuite::Sm) && !sm2 {
        return Err(TlsError::Invalid {
            field,
            reason: "sm (TLS_SM4_GCM_SM3) needs an SM2 mesh identity, and this proxy's is ECDSA only: start weft proxy with --identity-key-type sm2 (or both)".into(),
        });
    }
    if suites_.contains(&TlsSuite::Standard) && !standard {
        return Err(TlsError::Invalid {
            field,
            reason: "standard suites need an ECDSA mesh identity, and this proxy's is SM2 only: offer only sm (suites: [sm]) or start weft proxy with --identity-key-type both".into(),
        });
    }
    Ok(())
}

/// The IANA ids of validated `cipher_suites` (canonical names).
fn cipher_ids(v: &[String]) -> Vec<u16> {
    v.iter().filter_map(|n| weft_config::tls::cipher_suite_id(n)).collect()
}

/// Builds what a cluster's `tls` block asks for: the connector its connections use. `field` is
/// the block's path for errors (`clusters[0].tls.`).
pub fn cluster_connector(
    t: &weft_config::tls::ClusterTls,
    state: &TlsState,
    cluster: &str,
    field: &str,
) -> Result<weft_tls::Connector, TlsError> {
    use weft_config::tls::ClusterTlsMode;
    let (trust, cert) = match t.mode {
        ClusterTlsMode::Mesh => {
            check_mesh_suites(&t.suites, &t.cipher_suites, field)?;
            (
                weft_tls::Trust::Mesh(state.mesh.clone()),
                weft_tls::ClientCert::Mesh(state.mesh.clone()),
            )
        }
        mode => {
            let ca = t.trusted_ca.as_ref().map(pem_source).ok_or_else(|| TlsError::Invalid {
                field: format!("{field}trusted_ca_file"),
                reason: "is required".into(),
            })?;
            let roots = weft_tls::pem::roots(&ca.field(field, "trusted_ca"), &ca)?;
            let cert = match (mode, &t.cert, &t.key) {
                (ClusterTlsMode::Mutual, Some(c), Some(k)) => weft_tls::ClientCert::Static(
                    weft_tls::pem::load_certified_key(field, &pem_source(c), &pem_source(k))?,
                ),
                _ => weft_tls::ClientCert::None,
            };
            (weft_tls::Trust::Roots(roots), cert)
        }
    };
    let cfg = weft_tls::client_config_with_ciphers(
        trust,
        t.subject_alt_names.clone(),
        cert,
        t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
        min_version(t.min_version),
        &suites(&t.suites),
        &cipher_ids(&t.cipher_suites),
        field,
    )?;
    Ok(weft_tls::Connector::new(cfg, &t.sni, field)?.with_counters(state.stats.counters(Side::Upstream, cluster)))
}

/// The model's PEM (a file or inline) as the TLS layer reads it.
fn pem_source(p: &weft_config::tls::Pem) -> weft_tls::PemSource {
    match p {
        weft_config::tls::Pem::File(f) => weft_tls::PemSource::File(f.clone()),
        weft_config::tls::Pem::Inline(s) => weft_tls::PemSource::Inline(s.clone()),
    }
}

/// A listener's TLS for one configuration generation.
pub struct ListenerTlsRt {
    pub config: ListenerTls,
    acceptor: tokio_rustls::TlsAcceptor,
    /// File certificates (polled for changes while this generation lives).
    pub resolver: Option<Arc<weft_tls::SniResolver>>,
    mesh: Arc<MeshIdentity>,
    counters: Arc<HandshakeCounters>,
}

impl ListenerTlsRt {
    /// `field` is the block's path for errors (`listeners[0].tls.`).
    pub fn new(cfg: &ListenerTls, state: &TlsState, listener: &str, field: &str) -> Result<ListenerTlsRt, TlsError> {
        let (resolver, cert_resolver, client_auth): (_, Arc<dyn rustls::server::ResolvesServerCert>, _) =
            if cfg.is_mesh() {
                check_mesh_suites(&cfg.suites, &cfg.cipher_suites, field)?;
                (
                    None,
                    Arc::new(weft_tls::mesh::MeshServerResolver(state.mesh.clone())),
                    weft_tls::ClientAuth::Mesh(state.mesh.clone()),
                )
            } else {
                let files: Vec<weft_tls::CertFiles> = cfg
                    .certificates
                    .iter()
                    .enumerate()
                    .map(|(i, c)| weft_tls::CertFiles {
                        field: format!("{field}certificates[{i}]."),
                        cert: pem_source(&c.cert),
                        key: pem_source(&c.key),
                        server_names: c.server_names.clone(),
                    })
                    .collect();
                let r = weft_tls::SniResolver::from_files(&files)?;
                // ShangMi needs an SM2 certificate, and an SM2 certificate needs ShangMi offered.
                let sm = cfg.suites.contains(&TlsSuite::Sm);
                if sm && !r.has_sm() {
                    return Err(TlsError::Invalid {
                        field: format!("{field}suites"),
                        reason: "sm is offered but no certificate is an SM2 one".into(),
                    });
                }
                if let Some(f) = r.sm_fields().first().filter(|_| !sm) {
                    return Err(TlsError::Invalid {
                        field: f.clone(),
                        reason: "an SM2 certificate needs `sm` in the listener's tls.suites".into(),
                    });
                }
                let auth = match cfg.trusted_ca.as_ref().map(pem_source) {
                    Some(ca) => {
                        let roots = weft_tls::pem::roots(&ca.field(field, "trusted_ca"), &ca)?;
                        if cfg.require_client_certificate {
                            weft_tls::ClientAuth::Required(roots)
                        } else {
                            weft_tls::ClientAuth::Optional(roots)
                        }
                    }
                    None => weft_tls::ClientAuth::None,
                };
                (Some(r.clone()), r, auth)
            };
        let settings = weft_tls::ServerSettings {
            alpn: cfg.alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
            min_version: min_version(cfg.min_version),
            client_auth,
            suites: suites(&cfg.suites),
            cipher_suites: cipher_ids(&cfg.cipher_suites),
        };
        let server = weft_tls::server_config(cert_resolver, &settings, field)?;
        Ok(ListenerTlsRt {
            config: cfg.clone(),
            acceptor: tokio_rustls::TlsAcceptor::from(server),
            resolver,
            mesh: state.mesh.clone(),
            counters: state.stats.counters(Side::Downstream, listener),
        })
    }

    fn own_id(&self, sni: Option<&str>) -> Option<String> {
        match &self.resolver {
            None => self.mesh.id(),
            Some(r) => {
                let key = r.select(sni)?;
                let id = PeerIdentity::from_der(key.cert.first()?)?;
                id.uris.first().cloned().or_else(|| id.dns.first().cloned())
            }
        }
    }
}

/// What the request path knows of a connection on a TLS listener.
pub struct ConnTls {
    /// The peer's principal (SPIFFE ID, else first SAN, else subject), when it sent a certificate.
    pub principal: Option<Arc<str>>,
    peer: Option<PeerIdentity>,
    /// This proxy's identity on the connection (for `By=`), when x-forwarded-client-cert needs it.
    own_id: Option<String>,
    mode: ForwardClientCert,
    /// The server name the client asked for (SNI), for the access log.
    pub sni: Option<Arc<str>>,
}

impl ConnTls {
    /// The client certificate's identity, when it sent one.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    fn plaintext(mode: ForwardClientCert) -> ConnTls {
        ConnTls {
            principal: None,
            peer: None,
            own_id: None,
            mode,
            sni: None,
        }
    }

    /// Applies the listener's `forward_client_cert` policy to a request's headers (Envoy's
    /// `forward_client_cert_details`).
    pub fn forward_client_cert(&self, headers: &mut HeaderMap) {
        let mtls = self.peer.is_some();
        match self.mode {
            ForwardClientCert::AlwaysForwardOnly => {}
            ForwardClientCert::ForwardOnly if mtls => {}
            ForwardClientCert::AppendForward if mtls => {
                let mine = self.details();
                let v = match headers.get(&XFCC).and_then(|v| v.to_str().ok()) {
                    Some(prev) if !prev.is_empty() => format!("{prev},{mine}"),
                    _ => mine,
                };
                set(headers, v);
            }
            ForwardClientCert::SanitizeSet if mtls => set(headers, self.details()),
            _ => {
                headers.remove(&XFCC);
            }
        }
    }

    /// This hop's element: `By=<own>;Hash=<sha256>;Subject="<subject>";URI=<peer uri>;DNS=<dns>`.
    fn details(&self) -> String {
        let Some(p) = &self.peer else { return String::new() };
        let mut parts = Vec::new();
        if let Some(by) = &self.own_id {
            parts.push(format!("By={}", quote(by)));
        }
        parts.push(format!("Hash={}", p.sha256));
        parts.push(format!("Subject={}", quote_always(&p.subject)));
        parts.push(format!("URI={}", p.uris.first().map_or(String::new(), |u| quote(u))));
        for d in &p.dns {
            parts.push(format!("DNS={}", quote(d)));
        }
        parts.join(";")
    }
}

fn set(headers: &mut HeaderMap, v: String) {
    match HeaderValue::from_str(&v) {
        Ok(v) => {
            headers.insert(XFCC.clone(), v);
        }
        Err(_) => {
            headers.remove(&XFCC);
        }
    }
}

/// Values with `,` `;` `=` or `"` are double-quoted (with `"` escaped), as Envoy does.
fn quote(s: &str) -> String {
    if s.contains([',', ';', '=', '"']) {
        quote_always(s)
    } else {
        s.to_string()
    }
}

fn quote_always(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

/// A server-side TLS stream that can be peeked (the idle-connection parking waits for the client
/// this way): peeked plaintext is kept and handed to the next read.
pub struct TlsIo {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    ahead: Vec<u8>,
    pos: usize,
}

impl AsyncRead for TlsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.ahead.len() {
            let n = (this.ahead.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.ahead[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.ahead.len() {
                this.ahead = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl ConnIo for TlsIo {
    fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.get_ref().0.local_addr().ok()
    }
    fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        if self.pos >= self.ahead.len() {
            let mut tmp = vec![0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    tmp.truncate(n);
                    self.ahead = tmp;
                    self.pos = 0;
                }
            }
        }
        let avail = &self.ahead[self.pos..];
        let n = avail.len().min(buf.remaining());
        buf.put_slice(&avail[..n]);
        Poll::Ready(Ok(n))
    }
}

/// The server side of the TLS handshake, counted and logged; None if it failed or timed out.
async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    lrt: &ListenerRt,
    tls: &ListenerTlsRt,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await;
    let s = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = FailureReason::of_io(&e);
            tls.counters.failed(reason);
            match reason {
                FailureReason::Io | FailureReason::Protocol | FailureReason::Other => {
                    tracing::debug!(listener = %lrt.config.name, %peer, reason = reason.as_str(), error = %e, "TLS handshake failed")
                }
                _ => {
                    tracing::warn!(listener = %lrt.config.name, %peer, reason = reason.as_str(), error = %e, "TLS handshake refused")
                }
            }
            return None;
        }
        Err(_) => {
            tls.counters.failed(FailureReason::Io);
            tracing::debug!(listener = %lrt.config.name, %peer, "TLS handshake timed out");
            return None;
        }
    };
    tls.counters
        .completed(s.get_ref().1.negotiated_cipher_suite().map(|c| c.suite()));
    Some(s)
}

/// Whether a connection on a listener with a `tls` block is served in plaintext: always in
/// `disable` mode, never in `STRICT`, and in `PERMISSIVE` when its first bytes are not a TLS
/// ClientHello (counted).
async fn is_plaintext(stream: &TcpStream, tls: &ListenerTlsRt) -> bool {
    let cfg = &tls.config;
    let plaintext = match cfg.mode {
        TlsMode::Disable => true,
        TlsMode::Strict => false,
        TlsMode::Permissive => !weft_tls::sniff::peek_is_tls(stream, cfg.detect_timeout)
            .await
            .unwrap_or(false),
    };
    if plaintext && cfg.mode == TlsMode::Permissive {
        tls.counters.plaintext.fetch_add(1, Ordering::Relaxed);
    }
    plaintext
}

/// Serves a connection accepted on a Dubbo or Bolt `rpc` listener with a `tls` block: the RPC
/// proxy over the TLS stream (or over the plaintext connection, in `disable` mode and for a
/// plaintext client in `PERMISSIVE` mode).
pub async fn serve_rpc(
    stream: TcpStream,
    peer: SocketAddr,
    r: Arc<weft_rpc::RpcRt>,
    lrt: Arc<ListenerRt>,
    shared: Arc<Shared>,
    tls: Arc<ListenerTlsRt>,
) {
    if is_plaintext(&stream, &tls).await {
        weft_rpc::serve_connection(stream, peer, r, &*shared, lrt.drain_signal()).await;
        return;
    }
    let Some(s) = handshake(stream, peer, &lrt, &tls).await else {
        return;
    };
    weft_rpc::serve_connection(weft_rpc::SplitIo(s), peer, r, &*shared, lrt.drain_signal()).await;
}

/// Serves a connection accepted on a listener with a `tls` block (HTTP filter chains).
pub async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    h: Arc<HttpRt>,
    lrt: Arc<ListenerRt>,
    shared: Arc<Shared>,
    tls: Arc<ListenerTlsRt>,
) {
    let cfg = &tls.config;
    let original_dst = crate::interception::original_dst(&stream, &lrt.config);
    if is_plaintext(&stream, &tls).await {
        let conn = Arc::new(ConnTls::plaintext(cfg.forward_client_cert));
        let codec = h.config.codec;
        crate::http::serve_io(stream, peer, original_dst, h, lrt, shared, Some(conn), codec).await;
        return;
    }
    let Some(s) = handshake(stream, peer, &lrt, &tls).await else {
        return;
    };
    let c = s.get_ref().1;
    let codec = match c.alpn_protocol() {
        Some(b"h2") => Codec::Http2,
        Some(b"http/1.1") => Codec::Http1,
        _ => h.config.codec,
    };
    let peer_id = PeerIdentity::from_chain(c.peer_certificates());
    let mode = cfg.forward_client_cert;
    let own_id = match mode {
        ForwardClientCert::SanitizeSet | ForwardClientCert::AppendForward if peer_id.is_some() => {
            tls.own_id(c.server_name())
        }
        _ => None,
    };
    let conn = Arc::new(ConnTls {
        principal: peer_id.as_ref().map(|p| Arc::from(p.principal())),
        peer: peer_id,
        own_id,
        mode,
        // Kept only for an Envoy-style access log (%REQUESTED_SERVER_NAME%) or the gRPC log
        // (`tls_properties.tls_sni_hostname`).
        sni: (h.access_log.as_ref().and_then(|l| l.format()).is_some() || h.grpc_log.is_some())
            .then(|| c.server_name())
            .flatten()
            .map(Arc::from),
    });
    let io = TlsIo {
        inner: s,
        ahead: Vec::new(),
        pos: 0,
    };
    crate::http::serve_io(io, peer, original_dst, h, lrt, shared, Some(conn), codec).await;
}
