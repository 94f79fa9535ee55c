//! The secure port (`--xds-tls ADDR`): ADS and the CA API over TLS, with a server certificate
//! that the CA issues to itself (URI SAN `spiffe://<td>/ns/weft-system/sa/weft-control`, the
//! listen IP, and `localhost`), renewed at half-life. Clients verify it against the mesh root.
//!
//! Client certificates are asked for and, when sent, verified against the mesh root: a proxy's
//! SVID authenticates its ADS stream (which is refused without one) and its renewals. A proxy
//! without a certificate yet may still call the CA with its bootstrap token.

use super::Ca;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tonic::transport::server::{Connected, TcpConnectInfo};

#[derive(Debug)]
struct Resolver(ArcSwap<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// What a request on the secure port knows of its connection: the TCP peer, and the identity
/// its client certificate proved (None: no certificate was sent).
#[derive(Clone, Debug)]
pub struct MeshConnectInfo {
    pub tcp: TcpConnectInfo,
    pub peer: Option<weft_identity::spiffe::SpiffeId>,
}

/// A TLS connection for tonic, with the peer's verified identity.
pub struct TlsIo(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<weft_identity::spiffe::SpiffeId>,
);

impl Connected for TlsIo {
    type ConnectInfo = MeshConnectInfo;

    fn connect_info(&self) -> MeshConnectInfo {
        MeshConnectInfo {
            tcp: self.0.get_ref().0.connect_info(),
            peer: self.1.clone(),
        }
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

fn certified_key(ca: &Ca, addr: SocketAddr) -> std::io::Result<(rustls::sign::CertifiedKey, u64)> {
    let super::ServerCert {
        chain,
        key_pkcs8: key,
        not_after,
    } = ca
        .issue_server(addr.ip())
        .map_err(|e| std::io::Error::other(format!("issuing the CA's own TLS certificate: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = provider
        .key_provider
        .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()))
        .map_err(|e| std::io::Error::other(format!("the CA's own TLS key: {e}")))?;
    Ok((
        rustls::sign::CertifiedKey::new(chain.into_iter().map(Into::into).collect(), key),
        not_after,
    ))
}

/// Client certificates: asked for, verified against the CA's root when sent, not required at
/// the handshake (a proxy's first certificate request comes with a token instead).
fn client_verifier(ca: &Ca) -> std::io::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    let ders = weft_identity::client::parse_pem_certs(&[ca.root_pem()])
        .map_err(|e| std::io::Error::other(format!("the CA's root: {e}")))?;
    for der in ders {
        roots
            .add(rustls_pki_types::CertificateDer::from(der))
            .map_err(|e| std::io::Error::other(format!("the CA's root: {e}")))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| std::io::Error::other(format!("client certificate verifier: {e}")))
}

/// A TLS acceptor serving `resolver`'s certificate and verifying clients against `ca`'s bundle.
fn acceptor_of(ca: &Ca, resolver: Arc<Resolver>) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_client_cert_verifier(client_verifier(ca)?)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// The SPIFFE ID of a verified client certificate (None without one).
fn peer_identity(
    ca: &Ca,
    tls: &tokio_rustls::server::TlsStream<TcpStream>,
) -> Result<Option<weft_identity::spiffe::SpiffeId>, String> {
    let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return Ok(None);
    };
    ca.check_svid(leaf).map(|(id, _)| Some(id))
}

/// Serves `svc` (ADS and the CA) over TLS on `listener` until `shutdown`.
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    ca: Arc<Ca>,
    svc: S,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let addr = listener.local_addr()?;
    let (ck, mut not_after) = certified_key(&ca, addr)?;
    let resolver = Arc::new(Resolver(ArcSwap::from_pointee(ck)));
    let acceptor = Arc::new(ArcSwap::from_pointee(acceptor_of(&ca, resolver.clone())?));
    tracing::info!(%addr, "ADS and the CA API over TLS");
    // Renew the server certificate at half-life, and at once when a root rollover step changes
    // the signing CA or the trust bundle (with a new client verifier for the latter).
    let renew_ca = ca.clone();
    let renew_acceptor = acceptor.clone();
    let mut renew_sd = shutdown.clone();
    let mut changed = ca.subscribe();
    let renew = tokio::spawn(async move {
        loop {
            let wait = not_after.saturating_sub(weft_identity::unix_now()) / 2;
            let rollover = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait.max(1))) => false,
                r = changed.changed() => r.is_ok(),
                _ = renew_sd.wait_for(|v| *v) => return,
            };
            match certified_key(&renew_ca, addr) {
                Ok((ck, na)) => {
                    resolver.0.store(Arc::new(ck));
                    not_after = na;
                }
                Err(e) => tracing::error!(error = %e, "cannot renew the CA's own TLS certificate"),
            }
            if rollover {
                match acceptor_of(&renew_ca, resolver.clone()) {
                    Ok(a) => {
                        renew_acceptor.store(Arc::new(a));
                        tracing::info!(%addr, "xDS/CA over TLS: new certificate and trust bundle after a root rollover step");
                    }
                    Err(e) => tracing::error!(error = %e, "xDS/CA over TLS: cannot apply the new trust bundle"),
                }
            }
        }
    });
    let (tx, rx) = mpsc::channel::<std::io::Result<TlsIo>>(64);
    let mut sd = shutdown.clone();
    let accept = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = sd.wait_for(|v| *v) => return,
            };
            let Ok((tcp, peer)) = accepted else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let (acceptor, tx, ca) = (acceptor.load_full(), tx.clone(), ca.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => match peer_identity(&ca, &tls) {
                        Ok(id) => {
                            let _ = tx.send(Ok(TlsIo(tls, id))).await;
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "xDS/CA over TLS: client certificate refused"),
                    },
                    Ok(Err(e)) => tracing::warn!(%peer, error = %e, "xDS/CA over TLS: handshake failed"),
                    Err(_) => tracing::warn!(%peer, "xDS/CA over TLS: handshake timed out"),
                }
            });
        }
    });
    let res = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .serve_with_incoming_shutdown(svc, tokio_stream::wrappers::ReceiverStream::new(rx), async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await;
    renew.abort();
    accept.abort();
    res.map_err(std::io::Error::other)
}
