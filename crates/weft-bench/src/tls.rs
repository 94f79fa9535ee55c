//! TLS for `https://` targets: client configuration (roots from `--cacert`
//! or `--insecure`), ALPN offers, the connection stream type shared by
//! cleartext and TLS connections, and handshake-time accounting.
//!
//! Only rustls' `ring` crypto provider is used; it is passed to the config
//! builder explicitly, so no process-wide default provider is needed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use hdrhistogram::Histogram;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::stats::{new_histogram, LatencySummary};

/// ALPN identifier of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN identifier of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Where the client's trust comes from.
#[derive(Debug, Clone)]
pub(crate) enum Trust {
    /// Roots read from a PEM file (`--cacert`).
    CaFile(std::path::PathBuf),
    /// Accept any server certificate (`--insecure`).
    Insecure,
}

/// A TLS client shared by every connection of a run.
pub(crate) struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    handshakes: Mutex<Histogram<u64>>,
    failures: AtomicU64,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// What the reachability probe learnt from its handshake.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    /// ALPN protocol the server selected (`None`: it selected none).
    pub alpn: Option<Vec<u8>>,
    /// "TLSv1.3" or "TLSv1.2".
    pub version: String,
}

impl TlsClient {
    /// Build the client. `server_name` is the `--sni` value or the URL host;
    /// `alpn` is the list of protocols to offer, most preferred first.
    pub fn new(trust: &Trust, server_name: &str, alpn: &[&[u8]]) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        let mut config = match trust {
            Trust::CaFile(path) => builder.with_root_certificates(load_roots(path)?).with_no_client_auth(),
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = server_name.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| format!("invalid TLS server name {server_name:?} (use --sni NAME)"))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            handshakes: Mutex::new(new_histogram()),
            failures: AtomicU64::new(0),
        })
    }

    async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), tcp).await
    }

    /// Handshake on a connection of the run: its time (TCP connect excluded)
    /// goes into the handshake statistics, a failure into `failures`.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let t0 = Instant::now();
        match self.handshake(tcp).await {
            Ok(s) => {
                let us = (t0.elapsed().as_micros() as u64).clamp(1, crate::stats::MAX_LATENCY_US);
                let mut h = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
                let _ = h.record(us);
                Ok(s)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The reachability probe's handshake: not counted in the statistics,
    /// and its error is described for the user.
    pub async fn probe(&self, addr: SocketAddr, tcp: TcpStream) -> Result<(TlsStream<TcpStream>, Negotiated), String> {
        let stream = self.handshake(tcp).await.map_err(|e| {
            let name = match &self.server_name {
                ServerName::DnsName(d) => d.as_ref().to_string(),
                ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                other => format!("{other:?}"),
            };
            format!("TLS handshake with {addr} (server name {name:?}) failed: {e}")
        })?;
        let (_, conn) = stream.get_ref();
        let negotiated = Negotiated {
            alpn: conn.alpn_protocol().map(|p| p.to_vec()),
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
                Some(v) => format!("{v:?}"),
                None => "unknown".to_string(),
            },
        };
        Ok((stream, negotiated))
    }

    /// Handshake statistics so far, and the number of failed handshakes.
    pub fn handshake_stats(&self) -> (LatencySummary, u64) {
        let h = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        (
            LatencySummary::from_histogram(&h),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read --cacert {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("cannot parse --cacert {shown}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("unusable certificate in --cacert {shown}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("--cacert {shown} holds no PEM certificate"));
    }
    Ok(roots)
}

/// `--insecure`: a certificate verifier that accepts ANY server certificate
/// and ANY handshake signature — no chain, name, expiry or signature check.
///
/// For benchmarks against test servers only: a connection made with it is
/// encrypted but not authenticated, so anyone on the path could read or
/// change it. (Because the handshake signature is not checked either, a
/// handshake costs the client slightly less CPU than a verified one.)
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // Offer what the provider could verify, so servers pick a usual scheme.
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client connection: cleartext TCP or TLS over TCP.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
