//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, served next to ADS on the xDS port.
//!
//! Credentials, in this order:
//! - `authorization: Bearer <token>`: a bootstrap token from `weft control token`;
//! - `x-weft-svid-bin` + `x-weft-proof-bin` + `x-weft-proof-time`: the caller's current SVID and
//!   its key's signature over the time and the whole CSR ([`weft_identity::proto::renewal_message`]).
//!
//! Either yields one identity; the CSR must ask for exactly that identity. Every refusal is logged
//! at WARN with its reason and counted in `weft_control_ca_denied_total{reason}`.

use super::{Ca, IssueError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::{Code, Status};
use weft_identity::proto::{self, IstioCertificateRequest, IstioCertificateResponse};
use weft_identity::SpiffeId;

/// How far a renewal proof's time may be from the CA's clock.
pub const PROOF_WINDOW_S: u64 = 300;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    pub auth: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RootLabel {
    /// The first 16 hex digits of the root's SHA-256.
    pub root: String,
    /// "true" for the root whose CA signs new certificates.
    pub signing: &'static str,
}

/// `weft_control_ca_*` metrics.
#[derive(Default)]
pub struct CaMetrics {
    pub issued: Family<AuthLabel, Counter>,
    pub denied: Family<ReasonLabel, Counter>,
    /// Expiry (Unix seconds) of each root in the trust bundle.
    pub roots: Family<RootLabel, Gauge>,
    /// 0 idle, 1 prepared, 2 active.
    pub rollover_phase: Gauge,
    pub rollover_phase_since: Gauge,
}

impl CaMetrics {
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        reg.register(
            "ca_certificates_issued",
            "Workload certificates issued, by credential (token or svid)",
            self.issued.clone(),
        );
        reg.register(
            "ca_denied",
            "Certificate requests refused, by reason",
            self.denied.clone(),
        );
        reg.register(
            "ca_root_expiry_timestamp_seconds",
            "Expiry of each root in the CA's trust bundle (two during a root rollover), by SHA-256 prefix; signing=\"true\" for the one that signs",
            self.roots.clone(),
        );
        reg.register(
            "ca_rollover_phase",
            "Root rollover phase: 0 idle (one root), 1 prepared (next root trusted), 2 active (next root signs)",
            self.rollover_phase.clone(),
        );
        reg.register(
            "ca_rollover_phase_since_timestamp_seconds",
            "When the current root rollover phase began (Unix time; 0 if never)",
            self.rollover_phase_since.clone(),
        );
    }

    /// Sets the root and phase gauges from `ca`.
    pub fn set_roots(&self, ca: &Ca) {
        self.roots.clear();
        for r in ca.roots() {
            self.roots
                .get_or_create(&RootLabel {
                    root: r.sha256[..16].to_string(),
                    signing: if r.signing { "true" } else { "false" },
                })
                .set(r.not_after);
        }
        let (phase, since) = ca.phase();
        self.rollover_phase.set(phase.number());
        self.rollover_phase_since.set(since as i64);
    }
}

/// The gRPC service (hand-written: no protoc).
#[derive(Clone)]
pub struct CaService {
    ca: Arc<Ca>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl CaService {
    pub fn new(ca: Arc<Ca>, metrics: Arc<crate::metrics::Metrics>) -> CaService {
        CaService { ca, metrics }
    }

    fn deny(&self, code: Code, reason: &'static str, msg: String, peer: &str, claimed: Option<&SpiffeId>) -> Status {
        self.metrics.ca.denied.get_or_create(&ReasonLabel { reason }).inc();
        tracing::warn!(
            %peer,
            identity = %claimed.map_or_else(|| "-".to_string(), |i| i.to_string()),
            reason,
            detail = %msg,
            "CA: certificate request denied"
        );
        Status::new(code, msg)
    }

    fn authenticate(
        &self,
        req: &tonic::Request<IstioCertificateRequest>,
        peer: &str,
    ) -> Result<(SpiffeId, &'static str), Status> {
        let md = req.metadata();
        if let Some(v) = md.get("authorization") {
            let v = v.to_str().map_err(|_| {
                self.deny(
                    Code::Unauthenticated,
                    "bad_token",
                    "authorization is not ASCII".into(),
                    peer,
                    None,
                )
            })?;
            let Some(token) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) else {
                return Err(self.deny(
                    Code::Unauthenticated,
                    "bad_token",
                    "authorization must be \"Bearer <token>\"".into(),
                    peer,
                    None,
                ));
            };
            return match self.ca.tokens.verify(token) {
                Ok(id) => Ok((id, "token")),
                Err(e) => {
                    let reason = match e {
                        weft_identity::token::TokenError::Expired { .. } => "expired_token",
                        _ => "bad_token",
                    };
                    let claimed = weft_identity::token::peek(token).ok().map(|c| c.id);
                    Err(self.deny(Code::Unauthenticated, reason, e.to_string(), peer, claimed.as_ref()))
                }
            };
        }
        if let Some(v) = md.get_bin(proto::SVID_METADATA) {
            let bad = |msg: String| self.deny(Code::Unauthenticated, "bad_svid", msg, peer, None);
            let der = v
                .to_bytes()
                .map_err(|_| bad(format!("{}: not base64", proto::SVID_METADATA)))?;
            let (id, public, sm2) = self
                .ca
                .check_svid_key(&der)
                .map_err(|e| bad(format!("renewal certificate: {e}")))?;
            let proof = md
                .get_bin(proto::PROOF_METADATA)
                .and_then(|v| v.to_bytes().ok())
                .ok_or_else(|| bad(format!("renewal without {}", proto::PROOF_METADATA)))?;
            let t: u64 = md
                .get(proto::PROOF_TIME_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("renewal without a numeric {}", proto::PROOF_TIME_METADATA)))?;
            let now = weft_identity::unix_now();
            if t.abs_diff(now) > PROOF_WINDOW_S {
                return Err(bad(format!(
                    "renewal proof time {t} is more than {PROOF_WINDOW_S}s from the CA's clock ({now})"
                )));
            }
            let msg = proto::renewal_message(t, &req.get_ref().csr);
            let verified = if sm2 {
                use rustls_pki_types::SignatureVerificationAlgorithm;
                weft_sm::SM2_SM3_CERT.verify_signature(&public, &msg, &proof).is_ok()
            } else {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &public)
                    .verify(&msg, &proof)
                    .is_ok()
            };
            verified.then_some(()).ok_or_else(|| {
                bad(format!(
                    "renewal proof for {id} does not verify with that certificate's key"
                ))
            })?;
            return Ok((id, "svid"));
        }
        Err(self.deny(
            Code::Unauthenticated,
            "no_credential",
            "no credential: send \"authorization: Bearer <token from weft control token>\", or renew with the current certificate".into(),
            peer,
            None,
        ))
    }

    async fn create(
        &self,
        req: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, Status> {
        let peer = req
            .remote_addr()
            .or_else(|| {
                req.extensions()
                    .get::<super::tls::MeshConnectInfo>()
                    .and_then(|i| i.tcp.remote_addr())
            })
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        let (id, auth) = self.authenticate(&req, &peer)?;
        let r = req.into_inner();
        let ttl = (r.validity_duration > 0).then(|| Duration::from_secs(r.validity_duration as u64));
        match self.ca.issue(&r.csr, &id, ttl) {
            Ok(issued) => {
                self.metrics.ca.issued.get_or_create(&AuthLabel { auth }).inc();
                tracing::info!(%peer, identity = %id, auth, serial = %issued.serial, ttl_s = issued.ttl.as_secs(), "CA: certificate issued");
                Ok(tonic::Response::new(IstioCertificateResponse {
                    cert_chain: issued.cert_chain,
                }))
            }
            Err(IssueError::BadCsr(m)) => Err(self.deny(Code::InvalidArgument, "bad_csr", m, &peer, Some(&id))),
            Err(IssueError::WrongIdentity(m)) => {
                Err(self.deny(Code::PermissionDenied, "wrong_identity", m, &peer, Some(&id)))
            }
            Err(IssueError::Internal(m)) => {
                tracing::error!(%peer, identity = %id, error = %m, "CA: signing failed");
                Err(Status::internal(m))
            }
        }
    }
}

impl tonic::server::NamedService for CaService {
    const NAME: &'static str = proto::SERVICE;
}

struct Create(CaService);

impl tonic::server::UnaryService<IstioCertificateRequest> for Create {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<IstioCertificateResponse>, Status>;

    fn call(&mut self, req: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.create(req).await })
    }
}

impl<B> Service<http::Request<B>> for CaService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == proto::CREATE_CERTIFICATE {
            let svc = self.clone();
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                    .apply_max_message_size_config(Some(64 << 10), Some(1 << 20));
                Ok(grpc.unary(Create(svc), req).await)
            })
        } else {
            Box::pin(
                async move { Ok(Status::unimplemented(format!("{} is not served", req.uri().path())).into_http()) },
            )
        }
    }
}

/// The xDS port's service: CA paths to the CA (when there is one), everything else to `inner`
/// (ADS). A two-way split by path prefix, instead of tonic's router (which needs axum).
#[derive(Clone)]
pub struct WithCa<S> {
    pub inner: S,
    pub ca: Option<CaService>,
}

impl<S> Service<http::Request<tonic::body::Body>> for WithCa<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let p = req.uri().path();
        if let Some(ca) = self.ca.as_mut().filter(|_| {
            p.strip_prefix('/')
                .and_then(|p| p.strip_prefix(proto::SERVICE))
                .is_some_and(|r| r.starts_with('/'))
        }) {
            return ca.call(req);
        }
        // Both services are always ready (their poll_ready returns Ready).
        let mut inner = self.inner.clone();
        Box::pin(inner.call(req))
    }
}
