//! The CA API over TLS on a port of its own (`--ca-tls ADDR`), with a server certificate that the
//! CA issues to itself (URI SAN `spiffe://<td>/ns/weft-system/sa/weft-control`, the listen IP, and
//! `localhost`), renewed at half-life. Clients verify it against the mesh root (`--ca-root`).
//! The xDS port itself stays plaintext for now: the proxy's xDS client does not speak TLS yet.

use super::service::CaService;
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

/// A TLS connection for tonic, reporting the TCP peer address like a plain one.
pub struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
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

/// Serves `svc` over TLS on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ca: Arc<Ca>,
    svc: CaService,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let (ck, mut not_after) = certified_key(&ca, addr)?;
    let resolver = Arc::new(Resolver(ArcSwap::from_pointee(ck)));
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tracing::info!(%addr, "CA API over TLS");
    // Renew the server certificate at half-life.
    let renew_ca = ca.clone();
    let mut renew_sd = shutdown.clone();
    let renew = tokio::spawn(async move {
        loop {
            let wait = not_after.saturating_sub(weft_identity::unix_now()) / 2;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait.max(1))) => {}
                _ = renew_sd.wait_for(|v| *v) => return,
            }
            match certified_key(&renew_ca, addr) {
                Ok((ck, na)) => {
                    resolver.0.store(Arc::new(ck));
                    not_after = na;
                }
                Err(e) => tracing::error!(error = %e, "cannot renew the CA's own TLS certificate"),
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
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsIo(tls))).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, error = %e, "CA: TLS handshake failed"),
                    Err(_) => tracing::warn!(%peer, "CA: TLS handshake timed out"),
                }
            });
        }
    });
    let res = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(svc, tokio_stream::wrappers::ReceiverStream::new(rx), async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await;
    renew.abort();
    accept.abort();
    res.map_err(std::io::Error::other)
}
