//! JWT request authentication with Envoy's `jwt_authn` semantics, compiled once per configuration
//! ([`weft_config::jwt::JwtAuthn`]) and run per request before authorization and routing.
//!
//! - Tokens come from each provider's headers (`authorization: Bearer …` by default) or query
//!   parameters (`access_token`); the first rule whose path match fits decides what is required.
//! - Signatures are verified by `jsonwebtoken` (ring): RS256/384/512, PS256/384/512, ES256/384,
//!   EdDSA and, with `oct` keys, HS256/384/512. `exp` and `nbf` are checked with the provider's
//!   clock skew (60 s by default); `iss` must equal the provider's issuer when it has one; one of
//!   the token's `aud` must be among the provider's audiences when it lists any.
//! - Remote JWKS are fetched over HTTP/1.1 from a host of the configured cluster: the first request
//!   needing them waits for the fetch (up to the URI's timeout); later ones use the cached keys and,
//!   once `cache_duration` has passed, trigger a refresh in the background. A failed fetch keeps
//!   the last good keys; a token whose `kid` is unknown triggers an early refresh (at most one per
//!   second), so a rotated key is picked up without waiting for the cache to expire.
//! - Failures answer as Envoy does: 401 (403 for a disallowed audience) with Envoy's status text as
//!   the body and `www-authenticate: Bearer realm="<url>"` (plus `, error="invalid_token"` unless
//!   the token was missing).
#![forbid(unsafe_code)]

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use weft_config::jwt::{JwksSource, JwtAuthn as Config, JwtProvider, JwtRequirement, RemoteJwks};
use weft_upstream::ClusterLookup;

/// A validated token's claims (its payload object).
pub type Claims = Arc<Map<String, Value>>;

/// Why a token (or its absence) failed; the text is Envoy's (`jwt_verify::getStatusString`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Missing,
    BadFormat,
    Expired,
    NotYetValid,
    UnknownIssuer,
    AudienceNotAllowed,
    VerificationFail,
    KidAlgMismatch,
    JwksFetchFail,
}

impl Status {
    pub fn text(self) -> &'static str {
        match self {
            Status::Missing => "Jwt is missing",
            Status::BadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            Status::Expired => "Jwt is expired",
            Status::NotYetValid => "Jwt not yet valid",
            Status::UnknownIssuer => "Jwt issuer is not configured",
            Status::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Status::VerificationFail => "Jwt verification fails",
            Status::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Status::JwksFetchFail => "Jwks remote fetch is failed",
        }
    }

    /// Envoy: 403 for a disallowed audience, else 401.
    pub fn http_status(self) -> StatusCode {
        match self {
            Status::AudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A rejected request: what to answer.
#[derive(Debug)]
pub struct Rejection {
    pub status: Status,
    pub www_authenticate: HeaderValue,
}

/// The result of [`JwtAuthn::authenticate`].
#[derive(Debug)]
pub enum Outcome {
    /// The request goes on; the claims of its (first) valid token, if any.
    Pass(Option<Claims>),
    Reject(Rejection),
}

/// Decoded keys of one JWKS.
#[derive(Default)]
pub struct Keys {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
    family: Family,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
    Hmac,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

impl Keys {
    /// Decodes a JWKS document; keys that cannot be used are skipped (as Envoy does). Err: not a
    /// JWKS, or no usable key.
    pub fn parse(text: &[u8]) -> Result<Keys, String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| format!("not a JWKS (JSON): {e}"))?;
        let list = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("not a JWKS: no \"keys\" array")?;
        let mut keys = Vec::new();
        for k in list {
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                continue;
            };
            let fam = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                AlgorithmParameters::OctetKey(_) => Family::Hmac,
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            // Encryption keys, and keys bound to an algorithm that is not a signature one, are not
            // for verifying tokens.
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match a.to_string().parse::<Algorithm>() {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
                family: fam,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS has no usable key".into());
        }
        Ok(Keys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One provider's checks, independent of where its keys come from (also the fuzz target's entry).
pub struct Checks {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub clock_skew_seconds: u64,
}

impl Checks {
    pub fn of(p: &JwtProvider) -> Checks {
        Checks {
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            clock_skew_seconds: p.clock_skew_seconds,
        }
    }
}

/// The unverified payload of a well-formed token (for its issuer), or why it is not well-formed.
pub fn peek_payload(token: &str) -> Result<Map<String, Value>, Status> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Status::BadFormat);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Status::BadFormat)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Status::BadFormat),
    }
}

/// Verifies `token` against `keys` and the provider's checks. Never panics, whatever the input.
pub fn verify(token: &str, keys: &Keys, checks: &Checks) -> Result<Map<String, Value>, Status> {
    let unverified = peek_payload(token)?;
    if let Some(iss) = &checks.issuer {
        if unverified.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
            return Err(Status::UnknownIssuer);
        }
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| Status::BadFormat)?;
    let fam = family(header.alg);
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.leeway = checks.clock_skew_seconds;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    let mut tried = false;
    let mut last = Status::KidAlgMismatch;
    for k in &keys.keys {
        if k.family != fam || k.alg.is_some_and(|a| a != header.alg) {
            continue;
        }
        // A token naming a key only tries keys of that id (keys without one are tried too).
        if let (Some(want), Some(have)) = (&header.kid, &k.kid) {
            if want != have {
                continue;
            }
        }
        tried = true;
        match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation) {
            Ok(data) => {
                let claims = data.claims;
                if !checks.audiences.is_empty() && !audience_ok(&claims, &checks.audiences) {
                    return Err(Status::AudienceNotAllowed);
                }
                return Ok(claims);
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                last = match e.kind() {
                    K::ExpiredSignature => return Err(Status::Expired),
                    K::ImmatureSignature => return Err(Status::NotYetValid),
                    K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
                        Status::VerificationFail
                    }
                    K::InvalidAlgorithm => Status::KidAlgMismatch,
                    _ => return Err(Status::BadFormat),
                };
            }
        }
    }
    Err(if tried { last } else { Status::KidAlgMismatch })
}

fn audience_ok(claims: &Map<String, Value>, allowed: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => allowed.iter().any(|x| x == a),
        Some(Value::Array(v)) => v
            .iter()
            .filter_map(Value::as_str)
            .any(|a| allowed.iter().any(|x| x == a)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Remote JWKS
// ---------------------------------------------------------------------------------------------

/// The largest JWKS document accepted from a remote.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// After a failed fetch, how long before the next attempt (requests meanwhile answer 401 if no
/// keys were ever fetched, else use the last good ones).
const RETRY_AFTER: Duration = Duration::from_secs(1);

struct RemoteState {
    keys: Option<Arc<Keys>>,
    /// When the cached keys are due for a refresh (or when a failed fetch may be retried).
    refresh_at: Option<Instant>,
    /// The last fetch attempt (an unknown `kid` refreshes at most once per [`RETRY_AFTER`]).
    last_attempt: Option<Instant>,
    refreshing: bool,
}

pub struct RemoteKeys {
    cfg: RemoteJwks,
    state: Mutex<RemoteState>,
    /// One fetch at a time; waiters then read what it stored.
    fetch: tokio::sync::Mutex<()>,
}

impl RemoteKeys {
    fn new(cfg: RemoteJwks) -> RemoteKeys {
        RemoteKeys {
            cfg,
            state: Mutex::new(RemoteState {
                keys: None,
                refresh_at: None,
                last_attempt: None,
                refreshing: false,
            }),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// The keys to verify with: cached ones (a due refresh runs in the background), else fetched now.
    async fn get(self: &Arc<Self>, clusters: &Arc<dyn ClusterLookup>) -> Result<Arc<Keys>, Status> {
        {
            let mut st = self.state.lock();
            if let Some(k) = &st.keys {
                let k = k.clone();
                if st.refresh_at.is_some_and(|t| Instant::now() >= t) && !st.refreshing {
                    st.refreshing = true;
                    drop(st);
                    self.spawn_refresh(clusters);
                }
                return Ok(k);
            }
        }
        let _one = self.fetch.lock().await;
        {
            let st = self.state.lock();
            if let Some(k) = &st.keys {
                return Ok(k.clone());
            }
            if st.refresh_at.is_some_and(|t| Instant::now() < t) {
                // A fetch failed just now: do not hammer the server.
                return Err(Status::JwksFetchFail);
            }
        }
        self.fetch_and_store(&**clusters).await.map_err(|e| {
            tracing::warn!(cluster = %self.cfg.cluster, path = %self.cfg.path, error = %e, "JWKS fetch failed (no keys yet)");
            Status::JwksFetchFail
        })
    }

    /// A token named a key id the cached JWKS lacks: refresh soon (at most once per [`RETRY_AFTER`]).
    fn kid_miss(self: &Arc<Self>, clusters: &Arc<dyn ClusterLookup>) {
        let mut st = self.state.lock();
        let due = st.last_attempt.is_none_or(|t| t.elapsed() >= RETRY_AFTER);
        if due && !st.refreshing && st.keys.is_some() {
            st.refreshing = true;
            drop(st);
            self.spawn_refresh(clusters);
        }
    }

    fn spawn_refresh(self: &Arc<Self>, clusters: &Arc<dyn ClusterLookup>) {
        let me = self.clone();
        let clusters = clusters.clone();
        tokio::spawn(async move {
            let _one = me.fetch.lock().await;
            if let Err(e) = me.fetch_and_store(&*clusters).await {
                // The last good keys stay.
                tracing::warn!(cluster = %me.cfg.cluster, path = %me.cfg.path, error = %e, "JWKS refresh failed; keeping the cached keys");
            }
            me.state.lock().refreshing = false;
        });
    }

    async fn fetch_and_store(&self, clusters: &dyn ClusterLookup) -> Result<Arc<Keys>, String> {
        let r = tokio::time::timeout(self.cfg.timeout, fetch(&self.cfg, clusters))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.cfg.timeout)))
            .and_then(|body| Keys::parse(&body));
        let mut st = self.state.lock();
        st.last_attempt = Some(Instant::now());
        match r {
            Ok(keys) => {
                let keys = Arc::new(keys);
                st.keys = Some(keys.clone());
                st.refresh_at = Some(Instant::now() + self.cfg.cache_duration);
                Ok(keys)
            }
            Err(e) => {
                // Retry after a short while; cached keys, if any, stay in use meanwhile.
                st.refresh_at = Some(Instant::now() + RETRY_AFTER.min(self.cfg.cache_duration));
                Err(e)
            }
        }
    }
}

/// An HTTP/1.1 client connection over `io`, its task spawned.
async fn h1<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// GET the JWKS from one host of the cluster (healthy ones preferred), over TLS when that host's
/// TLS is (the cluster's `tls` block, or its `tls_matches` entry's: trust, SNI and client
/// certificate; HTTP/1.1 on it).
async fn fetch(cfg: &RemoteJwks, clusters: &dyn ClusterLookup) -> Result<Bytes, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let cluster = clusters
        .cluster(&cfg.cluster)
        .ok_or_else(|| format!("no cluster \"{}\"", cfg.cluster))?;
    let (host, tls): (SocketAddr, _) = cluster
        .any_host_with_tls()
        .ok_or_else(|| format!("cluster \"{}\" has no hosts", cfg.cluster))?;
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut sender = match tls {
        None if cfg.https => {
            return Err(format!(
                "the URI is https:// but cluster \"{}\" has no tls block; not fetching in plaintext",
                cfg.cluster
            ))
        }
        None => h1(stream).await,
        Some(tls) => {
            let s = tls.connect(stream).await.map_err(|e| format!("{host}: TLS: {e}"))?;
            if s.get_ref().1.alpn_protocol().is_some_and(|p| p != b"http/1.1") {
                return Err(format!(
                    "{host}: the JWKS server chose ALPN {:?}; the fetch speaks HTTP/1.1 (set the cluster's tls alpn to [http/1.1])",
                    String::from_utf8_lossy(s.get_ref().1.alpn_protocol().unwrap_or_default())
                ));
            }
            h1(s).await
        }
    }
    .map_err(|e| format!("{host}: {e}"))?;
    let req = http::Request::get(cfg.path.as_str())
        .header(http::header::HOST, cfg.authority.as_str())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "weft")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("{host}: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{host}: HTTP status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    Ok(body.to_bytes())
}

/// One proxy's remote key caches, kept across configurations: a reload (or an xDS update) that
/// keeps a provider's JWKS source reuses the keys the configuration in use fetched, instead of
/// answering 401 "Jwks remote fetch is failed" until the new configuration's first fetch. (Per
/// proxy, not per process: several proxies in one process may point the same names elsewhere.)
#[derive(Default)]
pub struct JwksCache(Mutex<Vec<std::sync::Weak<RemoteKeys>>>);

impl JwksCache {
    /// The cache for `cfg`: the one a configuration still in use has, or a new one.
    fn get(&self, cfg: &RemoteJwks) -> Arc<RemoteKeys> {
        let mut live = self.0.lock();
        live.retain(|w| w.strong_count() > 0);
        if let Some(k) = live.iter().filter_map(std::sync::Weak::upgrade).find(|k| k.cfg == *cfg) {
            return k;
        }
        let k = Arc::new(RemoteKeys::new(cfg.clone()));
        live.push(Arc::downgrade(&k));
        k
    }
}

// ---------------------------------------------------------------------------------------------
// The filter
// ---------------------------------------------------------------------------------------------

enum KeySource {
    Local(Arc<Keys>),
    Remote(Arc<RemoteKeys>),
}

struct Provider {
    cfg: JwtProvider,
    checks: Checks,
    keys: KeySource,
    forward_payload_header: Option<HeaderName>,
    claim_to_headers: Vec<(HeaderName, Vec<String>)>,
    from_headers: Vec<HeaderName>,
}

pub struct JwtAuthn {
    providers: Vec<Provider>,
    rules: Vec<weft_config::jwt::JwtRule>,
    /// Headers this filter writes: a client's own copies are removed from every request.
    written: Vec<HeaderName>,
}

/// Where a token was found.
#[derive(Clone, PartialEq)]
enum Location {
    Header(usize),
    Param(String),
}

struct Found {
    provider: usize,
    token: String,
    at: Location,
}

/// One verification per (provider, token) within a request.
#[derive(Default)]
struct Memo {
    done: Vec<(usize, String, Result<Claims, Status>)>,
}

impl JwtAuthn {
    /// Compiles a validated configuration. A local JWKS whose keys cannot be decoded (the
    /// configuration check looks only at their members) fails closed: its provider accepts no token.
    pub fn new(cfg: &Config, cache: &JwksCache) -> JwtAuthn {
        let mut providers = Vec::new();
        let mut written = Vec::new();
        for p in &cfg.providers {
            let keys = match &p.jwks {
                JwksSource::Local(text) => KeySource::Local(Arc::new(Keys::parse(text.as_bytes()).unwrap_or_else(
                    |e| {
                        tracing::error!(provider = %p.name, error = %e, "local JWKS unusable: the provider accepts no token");
                        Keys::default()
                    },
                ))),
                JwksSource::Remote(r) => KeySource::Remote(cache.get(r)),
            };
            // Header names were checked when the configuration was validated.
            let hn = |s: &str| HeaderName::from_bytes(s.as_bytes()).ok();
            let forward_payload_header = p.forward_payload_header.as_deref().and_then(hn);
            let claim_to_headers: Vec<(HeaderName, Vec<String>)> = p
                .claim_to_headers
                .iter()
                .filter_map(|c| {
                    Some((
                        hn(&c.header_name)?,
                        c.claim_name.split('.').map(str::to_string).collect(),
                    ))
                })
                .collect();
            written.extend(forward_payload_header.iter().cloned());
            written.extend(claim_to_headers.iter().map(|(h, _)| h.clone()));
            let from_headers = p
                .from_headers
                .iter()
                .map(|h| hn(&h.name).unwrap_or(http::header::AUTHORIZATION))
                .collect();
            providers.push(Provider {
                checks: Checks::of(p),
                cfg: p.clone(),
                keys,
                forward_payload_header,
                claim_to_headers,
                from_headers,
            });
        }
        written.dedup();
        JwtAuthn {
            providers,
            rules: cfg.rules.clone(),
            written,
        }
    }

    /// Checks a request against the first matching rule; on success edits its headers (and query)
    /// as the providers ask: tokens removed unless `forward`, payload and claim headers added.
    pub async fn authenticate<B>(&self, req: &mut http::Request<B>, clusters: &Arc<dyn ClusterLookup>) -> Outcome {
        for h in &self.written {
            req.headers_mut().remove(h);
        }
        let path = req.uri().path();
        let Some(rule) = self.rules.iter().find(|r| r.matcher.matches(path)) else {
            return Outcome::Pass(None);
        };
        let found = self.extract(req.headers(), req.uri());
        let mut memo = Memo::default();
        let verdict = self.requirement(&rule.requires, &found, &mut memo, clusters).await;
        if let Err(status) = verdict {
            return Outcome::Reject(Rejection {
                status,
                www_authenticate: www_authenticate(req, status),
            });
        }
        // Effects of every token that verified.
        let mut first: Option<Claims> = None;
        let mut strip_params: Vec<String> = Vec::new();
        for (pi, token, r) in &memo.done {
            let Ok(claims) = r else { continue };
            let p = &self.providers[*pi];
            if let Some(h) = &p.forward_payload_header {
                if let Some(v) = token.split('.').nth(1).and_then(|s| HeaderValue::from_str(s).ok()) {
                    req.headers_mut().insert(h.clone(), v);
                }
            }
            for (h, path) in &p.claim_to_headers {
                let v = weft_claim(claims, path);
                if let Some(v) = v.and_then(|s| HeaderValue::from_str(&s).ok()) {
                    req.headers_mut().insert(h.clone(), v);
                }
            }
            if !p.cfg.forward {
                for f in found.iter().filter(|f| f.provider == *pi && f.token == *token) {
                    match &f.at {
                        Location::Header(i) => {
                            req.headers_mut().remove(&p.from_headers[*i]);
                        }
                        Location::Param(name) => strip_params.push(name.clone()),
                    }
                }
            }
            if first.is_none() {
                first = Some(claims.clone());
            }
        }
        if !strip_params.is_empty() {
            if let Some(u) = strip_query(req.uri(), &strip_params) {
                *req.uri_mut() = u;
            }
        }
        Outcome::Pass(first)
    }

    fn extract(&self, headers: &HeaderMap, uri: &Uri) -> Vec<Found> {
        let mut out = Vec::new();
        for (pi, p) in self.providers.iter().enumerate() {
            for (i, h) in p.cfg.from_headers.iter().enumerate() {
                for v in headers.get_all(&p.from_headers[i]) {
                    let Ok(v) = v.to_str() else { continue };
                    let prefix = h.value_prefix.as_str();
                    if v.len() >= prefix.len() && v.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()) {
                        let t = v[prefix.len()..].trim();
                        if !t.is_empty() {
                            out.push(Found {
                                provider: pi,
                                token: t.to_string(),
                                at: Location::Header(i),
                            });
                        }
                    }
                }
            }
            if let Some(q) = uri.query() {
                for name in &p.cfg.from_params {
                    for pair in q.split('&') {
                        if let Some((k, v)) = pair.split_once('=') {
                            if k == name && !v.is_empty() {
                                out.push(Found {
                                    provider: pi,
                                    token: v.to_string(),
                                    at: Location::Param(name.clone()),
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    async fn check_one(
        &self,
        pi: usize,
        token: &str,
        memo: &mut Memo,
        clusters: &Arc<dyn ClusterLookup>,
    ) -> Result<Claims, Status> {
        if let Some((_, _, r)) = memo.done.iter().find(|(p, t, _)| *p == pi && t == token) {
            return r.clone();
        }
        let p = &self.providers[pi];
        let r = match &p.keys {
            KeySource::Local(k) => verify(token, k, &p.checks).map(Arc::new),
            KeySource::Remote(rk) => match rk.get(clusters).await {
                Err(s) => Err(s),
                Ok(k) => {
                    let r = verify(token, &k, &p.checks).map(Arc::new);
                    if r == Err(Status::KidAlgMismatch) {
                        rk.kid_miss(clusters);
                    }
                    r
                }
            },
        };
        memo.done.push((pi, token.to_string(), r.clone()));
        r
    }

    /// Envoy's verifier tree. `Box::pin` for the recursion.
    fn requirement<'a>(
        &'a self,
        r: &'a JwtRequirement,
        found: &'a [Found],
        memo: &'a mut Memo,
        clusters: &'a Arc<dyn ClusterLookup>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send + 'a>> {
        Box::pin(async move {
            match r {
                JwtRequirement::Provider(pi) => {
                    let Some(f) = found.iter().find(|f| f.provider == *pi) else {
                        return Err(Status::Missing);
                    };
                    self.check_one(*pi, &f.token, memo, clusters).await.map(|_| ())
                }
                JwtRequirement::All(list) => {
                    for q in list {
                        self.requirement(q, found, memo, clusters).await?;
                    }
                    Ok(())
                }
                JwtRequirement::Any(list) => {
                    let mut err = None;
                    for q in list {
                        match self.requirement(q, found, memo, clusters).await {
                            Ok(()) => return Ok(()),
                            // The most telling failure: one about a token rather than its absence.
                            Err(s) => {
                                if err.is_none() || err == Some(Status::Missing) {
                                    err = Some(s);
                                }
                            }
                        }
                    }
                    Err(err.unwrap_or(Status::Missing))
                }
                JwtRequirement::AllowMissing | JwtRequirement::AllowMissingOrFailed => {
                    let fail_ok = matches!(r, JwtRequirement::AllowMissingOrFailed);
                    for f in found {
                        // A token goes to the provider of its issuer (any, for providers without one).
                        let iss = peek_payload(&f.token)
                            .ok()
                            .and_then(|m| m.get("iss").and_then(Value::as_str).map(str::to_string));
                        let p = &self.providers[f.provider];
                        if p.checks.issuer.is_some() && p.checks.issuer != iss {
                            let claimed = found.iter().any(|g| {
                                g.token == f.token
                                    && self.providers[g.provider]
                                        .checks
                                        .issuer
                                        .as_ref()
                                        .is_none_or(|i| Some(i) == iss.as_ref())
                            });
                            if !claimed && !fail_ok {
                                return Err(Status::UnknownIssuer);
                            }
                            continue;
                        }
                        let r = self.check_one(f.provider, &f.token, memo, clusters).await;
                        if let Err(s) = r {
                            if !fail_ok {
                                return Err(s);
                            }
                        }
                    }
                    Ok(())
                }
            }
        })
    }
}

/// A claim as a header value: strings as they are, numbers and booleans in JSON; else none.
fn weft_claim(claims: &Map<String, Value>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for k in rest {
        v = v.as_object()?.get(k)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

fn strip_query(uri: &Uri, names: &[String]) -> Option<Uri> {
    let pq = uri.path_and_query()?;
    let q = pq.query()?;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| !names.iter().any(|n| pair.split('=').next() == Some(n.as_str())))
        .collect();
    let new_pq = if kept.is_empty() {
        pq.path().to_string()
    } else {
        format!("{}?{}", pq.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(new_pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Envoy's `Bearer realm="<scheme>://<host><path>"`, plus `, error="invalid_token"` unless the
/// token was missing.
fn www_authenticate<B>(req: &http::Request<B>, status: Status) -> HeaderValue {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let mut v = format!("Bearer realm=\"{scheme}://{host}{}\"", req.uri().path());
    if status != Status::Missing {
        v.push_str(", error=\"invalid_token\"");
    }
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

#[cfg(any(test, feature = "test-keys"))]
pub mod testing;

#[cfg(test)]
mod tests;
