//! The mesh CA: a root (or a user-provided intermediate) that signs workload certificates
//! (X.509 SVIDs, URI SAN `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), and the bootstrap-token key.
//!
//! Files in the CA directory (`--ca-dir`):
//!
//! | file | what | mode |
//! |---|---|---|
//! | `trust-domain` | the trust domain, fixed at first start | 0644 |
//! | `root-cert.pem`, `root-key.pem` | the generated root (absent with `--ca-cert`/`--ca-key`) | 0644, 0600 |
//! | `token-hmac.key` | the key that signs bootstrap tokens | 0600 |
//! | `trust-bundle.pem`, `svid-max-ttl` | the trusted roots, and `--svid-max-ttl` (written at start) | 0644 |
//! | `rollover.json`, `ca-<n>-{cert,key,chain}.pem` | a root rollover's phase and next CA ([`rollover`]) | 0644, key 0600 |
//!
//! A file that is missing when its partner exists, unreadable, unparsable, or a key that does
//! not match its certificate is an error naming the file: weft control does not start.
//!
//! With `--ca-store` the same state lives in etcd or a Kubernetes Secret instead, shared by the
//! replicas, private keys sealed ([`store`]).

pub mod rollover;
pub mod service;
pub mod sm;
pub mod store;
pub mod tls;

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weft_identity::client::{parse_pem_certs, pem_block, uri_sans};
use weft_identity::SpiffeId;
use x509_parser::prelude::*;

/// The shortest certificate lifetime the CA issues (tests use it; production wants hours).
pub const MIN_TTL: Duration = Duration::from_secs(10);
/// Issued certificates start this long before the moment of issue, for clock skew between machines.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime of a generated root.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// How the CA is set up (the `weft control` flags).
#[derive(Clone, Debug)]
pub struct CaOptions {
    pub dir: PathBuf,
    /// A user-provided CA certificate and key (root or intermediate) instead of a generated root.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The certificates above `cert`, up to and including the root (needed when `cert` is not a root).
    pub chain: Option<PathBuf>,
    /// None: the one in `dir/trust-domain`, or `cluster.local` at first start.
    pub trust_domain: Option<String>,
    /// Lifetime of a certificate when the request does not ask for one.
    pub svid_ttl: Duration,
    /// The longest lifetime a request may ask for.
    pub svid_max_ttl: Duration,
    /// Also run an SM2 root (`sm-root-{cert,key}.pem` in `dir`) and issue SM2 SVIDs for SM2 CSRs.
    pub sm2: bool,
}

impl CaOptions {
    pub fn new(dir: impl Into<PathBuf>) -> CaOptions {
        CaOptions {
            dir: dir.into(),
            cert: None,
            key: None,
            chain: None,
            trust_domain: None,
            svid_ttl: Duration::from_secs(24 * 3600),
            svid_max_ttl: Duration::from_secs(7 * 24 * 3600),
            sm2: false,
        }
    }
}

/// A CA set-up error; always names the file or flag at fault.
#[derive(Debug)]
pub struct CaError(pub String);

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CaError {}

fn err(path: &Path, what: impl fmt::Display) -> CaError {
    CaError(format!("{}: {what}", path.display()))
}

/// An error about something named by `label` (a file, or a key in the store).
fn err_at(label: &str, what: impl fmt::Display) -> CaError {
    CaError(format!("{label}: {what}"))
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| err(path, e))
}

/// Writes a new file with `mode` (create-new, so nothing is overwritten).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| err(path, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| err(path, e))
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "a CA key file is readable by group or others; chmod 600 it");
        }
    }
}

/// The bootstrap-token key and the trust domain (what `weft control token` needs).
#[derive(Clone)]
pub struct TokenKey {
    pub trust_domain: String,
    key: Vec<u8>,
}

impl TokenKey {
    /// Loads `dir/trust-domain` and `dir/token-hmac.key`, creating them (and `dir`) when absent.
    pub fn load_or_create(dir: &Path, trust_domain: Option<&str>) -> Result<TokenKey, CaError> {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(dir, format!("cannot create the CA directory: {e}")))?;
        }
        let td_path = dir.join("trust-domain");
        let trust_domain = if td_path.exists() {
            let saved = read(&td_path)?.trim().to_string();
            weft_identity::spiffe::check_trust_domain(&saved).map_err(|e| err(&td_path, e))?;
            if let Some(flag) = trust_domain.filter(|f| *f != saved) {
                return Err(err(
                    &td_path,
                    format!(
                        "this CA's trust domain is {saved:?}, not {flag:?} (--trust-domain); changing it would invalidate every issued identity. Drop the flag, or use a new --ca-dir"
                    ),
                ));
            }
            saved
        } else {
            let td = trust_domain.unwrap_or(DEFAULT_TRUST_DOMAIN).to_string();
            weft_identity::spiffe::check_trust_domain(&td).map_err(|e| CaError(format!("--trust-domain: {e}")))?;
            write_new(&td_path, format!("{td}\n").as_bytes(), 0o644)?;
            td
        };
        let key_path = dir.join("token-hmac.key");
        let key = if key_path.exists() {
            warn_if_readable_by_others(&key_path);
            let k = weft_identity::hex::decode(read(&key_path)?.trim())
                .filter(|k| k.len() >= 32)
                .ok_or_else(|| err(&key_path, "not a token key (expected at least 64 hex digits)"))?;
            k
        } else {
            let mut k = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                .map_err(|_| CaError("no system randomness".into()))?;
            write_new(
                &key_path,
                format!("{}\n", weft_identity::hex::encode(&k)).as_bytes(),
                0o600,
            )?;
            k
        };
        Ok(TokenKey { trust_domain, key })
    }

    /// A new random key for `trust_domain` (checked).
    pub(crate) fn generate(trust_domain: &str) -> Result<TokenKey, CaError> {
        weft_identity::spiffe::check_trust_domain(trust_domain).map_err(|e| CaError(format!("--trust-domain: {e}")))?;
        let mut key = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| CaError("no system randomness".into()))?;
        Ok(TokenKey {
            trust_domain: trust_domain.to_string(),
            key,
        })
    }

    pub(crate) fn from_parts(trust_domain: String, key: Vec<u8>) -> TokenKey {
        TokenKey { trust_domain, key }
    }

    pub(crate) fn key_bytes(&self) -> &[u8] {
        &self.key
    }

    /// A token for `identity` (`ns/sa`) valid for `ttl`.
    pub fn mint(&self, identity: &str, ttl: Duration) -> Result<String, CaError> {
        let id = SpiffeId::from_short(&self.trust_domain, identity).map_err(|e| CaError(format!("--identity: {e}")))?;
        Ok(weft_identity::token::mint(
            &self.key,
            &id,
            weft_identity::unix_now() + ttl.as_secs().max(1),
        ))
    }

    pub fn verify(&self, token: &str) -> Result<SpiffeId, weft_identity::token::TokenError> {
        let c = weft_identity::token::verify(&self.key, token, weft_identity::unix_now())?;
        Ok(c.id)
    }
}

/// The loaded CA.
pub struct Ca {
    pub tokens: TokenKey,
    /// Who signs, who is trusted: replaced whole by a root rollover ([`rollover`]).
    active: ArcSwap<Active>,
    /// The options it was loaded with, when its state is in a CA directory (reloadable); None
    /// with `--ca-store`.
    source: Option<CaOptions>,
    /// The text of `rollover.json` last applied ("" when absent).
    applied: parking_lot::Mutex<String>,
    /// Bumped at each applied change (the TLS port re-issues its certificate and verifier).
    changed: tokio::sync::watch::Sender<u64>,
    pub svid_ttl: Duration,
    pub svid_max_ttl: Duration,
    /// The SM2 root (`--ca-sm2`).
    pub sm: Option<sm::SmCa>,
}

/// One CA certificate with its key, able to sign.
pub(crate) struct Signer {
    issuer: Issuer<'static, KeyPair>,
    issuer_der: Vec<u8>,
    /// Issuer first (when it is not the root), then up to the root (excluded): appended to every leaf.
    chain_pem: Vec<String>,
    root_der: Vec<u8>,
    not_after: i64,
}

/// What the CA does now: the signer, the other CA of a rollover in progress, and the trust bundle.
pub(crate) struct Active {
    signer: Signer,
    /// During a rollover: the next CA (phase prepared) or the previous one (phase active).
    other: Option<Signer>,
    /// Every trusted root, PEM, the signing one first.
    bundle_pem: String,
    pub(crate) phase: rollover::Phase,
    /// When the phase began (Unix seconds; 0 when idle and never rolled over).
    pub(crate) since: u64,
}

/// A root in the trust bundle, for metrics and `/debug/ca`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RootInfo {
    /// SHA-256 of the DER, lower-case hex.
    pub sha256: String,
    pub subject: String,
    /// Unix seconds.
    pub not_after: i64,
    /// True for the root above the certificate that signs new SVIDs.
    pub signing: bool,
}

impl Active {
    fn new(current: Signer, next: Option<Signer>, phase: rollover::Phase, since: u64) -> Active {
        let (signer, other) = match (phase, next) {
            (rollover::Phase::Active, Some(n)) => (n, Some(current)),
            (_, n) => (current, n),
        };
        let mut bundle_pem = pem_block(&signer.root_der);
        if let Some(o) = other.as_ref().filter(|o| o.root_der != signer.root_der) {
            bundle_pem.push_str(&pem_block(&o.root_der));
        }
        Active {
            signer,
            other,
            bundle_pem,
            phase,
            since,
        }
    }

    fn signers(&self) -> impl Iterator<Item = &Signer> {
        std::iter::once(&self.signer).chain(self.other.as_ref())
    }
}

/// SHA-256 of `der`, lower-case hex (how roots are named in metrics and `/debug/ca`).
pub fn sha256_hex(der: &[u8]) -> String {
    weft_identity::hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Why a CSR was refused.
#[derive(Debug)]
pub enum IssueError {
    /// Not a usable CSR (tonic INVALID_ARGUMENT).
    BadCsr(String),
    /// A CSR for an identity other than the caller's (PERMISSION_DENIED).
    WrongIdentity(String),
    /// Signing failed (INTERNAL).
    Internal(String),
}

impl fmt::Display for IssueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssueError::BadCsr(s) | IssueError::WrongIdentity(s) | IssueError::Internal(s) => f.write_str(s),
        }
    }
}

/// weft control's own TLS certificate ([`Ca::issue_server`]).
pub struct ServerCert {
    /// DER, leaf first, then intermediates (not the root).
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
    /// Unix seconds.
    pub not_after: u64,
}

/// A certificate just issued.
pub struct Issued {
    /// Leaf, intermediates, root (PEM each).
    pub cert_chain: Vec<String>,
    pub serial: String,
    pub ttl: Duration,
}

/// PEM text and where it came from (a file, or a key in the CA store), for error messages.
#[derive(Clone)]
pub(crate) struct Named {
    pub label: String,
    pub text: String,
}

impl Named {
    fn file(path: &Path) -> Result<Named, CaError> {
        Ok(Named {
            label: path.display().to_string(),
            text: read(path)?,
        })
    }
}

/// The CA's state in memory, wherever it was read from: what [`Ca::from_material`] checks and uses.
pub(crate) struct Material {
    pub tokens: TokenKey,
    /// The issuing certificate (then, optionally, the certificates above it).
    pub cert: Named,
    pub key: Named,
    /// The certificates above `cert` up to the root (`--ca-chain`).
    pub chain: Option<Named>,
}

fn parse_cert(n: &Named) -> Result<Vec<Vec<u8>>, CaError> {
    let path = n.label.as_str();
    let certs =
        parse_pem_certs(std::slice::from_ref(&n.text)).map_err(|e| err_at(path, e.replace("cert_chain[0]: ", "")))?;
    if certs.is_empty() {
        return Err(err_at(path, "no PEM CERTIFICATE in it"));
    }
    for (i, d) in certs.iter().enumerate() {
        X509Certificate::from_der(d).map_err(|e| err_at(path, format!("certificate #{}: {e}", i + 1)))?;
    }
    Ok(certs)
}

fn parse_key(n: &Named) -> Result<KeyPair, CaError> {
    KeyPair::from_pem(&n.text).map_err(|e| {
        err_at(
            &n.label,
            format!("not a usable private key (PKCS#8 PEM, ECDSA P-256/P-384, Ed25519 or RSA): {e}"),
        )
    })
}

fn is_self_signed(c: &X509Certificate<'_>) -> bool {
    c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok()
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

fn offset_time(unix: i64) -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(::time::OffsetDateTime::UNIX_EPOCH)
}

impl Signer {
    /// Checks a CA certificate `cert_src` (key matches, a CA, valid now, a chain up to a root) and
    /// makes a signer of it. Errors name the file or store key at fault.
    pub(crate) fn from_named(cert_src: &Named, key_src: &Named, chain_src: Option<&Named>) -> Result<Signer, CaError> {
        let cert_label = cert_src.label.as_str();
        let certs = parse_cert(cert_src)?;
        let key = parse_key(key_src)?;
        let issuer_der = certs[0].clone();
        let (_, cert) = X509Certificate::from_der(&issuer_der).map_err(|e| err_at(cert_label, e))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(err_at(
                &key_src.label,
                format!("this key does not match the CA certificate {cert_label}"),
            ));
        }
        if !cert.is_ca() {
            return Err(err_at(
                cert_label,
                "not a CA certificate (basicConstraints CA:TRUE is missing)",
            ));
        }
        if !cert.validity().is_valid() {
            return Err(err_at(
                cert_label,
                format!(
                    "not valid now (valid from {} to {})",
                    cert.validity().not_before,
                    cert.validity().not_after
                ),
            ));
        }
        let not_after = cert.validity().not_after.timestamp();
        // The chain: the rest of the --ca-cert file, then --ca-chain.
        let mut above: Vec<Vec<u8>> = certs[1..].to_vec();
        if let Some(c) = chain_src {
            above.extend(parse_cert(c)?);
        }
        let mut chain_pem = vec![pem_block(&issuer_der)];
        let root_der = if above.is_empty() {
            if !is_self_signed(&cert) {
                return Err(err_at(
                    cert_label,
                    "an intermediate (not self-signed): give the certificates above it, up to the root, with --ca-chain",
                ));
            }
            chain_pem.clear();
            issuer_der.clone()
        } else {
            // Each certificate must be signed by the next one, and the last must be a root.
            let mut prev = issuer_der.clone();
            let file = chain_src.map(|c| c.label.as_str()).unwrap_or(cert_label);
            for (i, d) in above.iter().enumerate() {
                let (_, up) = X509Certificate::from_der(d).map_err(|e| err_at(file, e))?;
                let (_, below) = X509Certificate::from_der(&prev).map_err(|e| err_at(file, e))?;
                if below.verify_signature(Some(up.public_key())).is_err() {
                    return Err(err_at(
                        file,
                        format!("chain certificate #{} did not sign the certificate below it", i + 1),
                    ));
                }
                prev = d.clone();
            }
            let (_, top) = X509Certificate::from_der(&prev).map_err(|e| err_at(file, e))?;
            if !is_self_signed(&top) {
                return Err(err_at(
                    file,
                    "the chain does not end with a root (self-signed) certificate",
                ));
            }
            chain_pem.extend(above[..above.len() - 1].iter().map(|d| pem_block(d)));
            prev
        };
        let issuer = Issuer::from_ca_cert_der(&issuer_der.clone().into(), key)
            .map_err(|e| err_at(cert_label, format!("cannot use it as an issuer: {e}")))?;
        Ok(Signer {
            issuer,
            issuer_der,
            chain_pem,
            root_der,
            not_after,
        })
    }
}

/// The certificate, key and chain files of the CA that signs today (before any rollover step):
/// `rollover.json`'s `current` after a completed rollover, else the flags, else the generated root.
///
/// At start (`at_start`), `--ca-cert` next to a `current` CA is refused: the flag names a CA that a
/// rollover replaced. A running weft control applying `retire` moves on from its flag.
fn current_files(
    opts: &CaOptions,
    state: &rollover::State,
    at_start: bool,
) -> Result<(PathBuf, PathBuf, Option<PathBuf>), CaError> {
    if let Some(f) = &state.current {
        if let Some(c) = opts.cert.as_ref().filter(|_| at_start) {
            return Err(CaError(format!(
                "--ca-cert {}: this CA directory's {} names the CA in use since a root rollover ({}); drop --ca-cert/--ca-key/--ca-chain",
                c.display(),
                rollover::STATE_FILE,
                f.cert
            )));
        }
        return Ok(f.paths(&opts.dir));
    }
    match (&opts.cert, &opts.key) {
        (Some(c), Some(k)) => Ok((c.clone(), k.clone(), opts.chain.clone())),
        (Some(_), None) => Err(CaError("--ca-cert needs --ca-key".into())),
        (None, Some(_)) => Err(CaError("--ca-key needs --ca-cert".into())),
        (None, None) => Ok((opts.dir.join("root-cert.pem"), opts.dir.join("root-key.pem"), None)),
    }
}

fn signer_of(cert: &Path, key: &Path, chain: Option<&Path>) -> Result<Signer, CaError> {
    let c = Named::file(cert)?;
    let k = Named::file(key)?;
    warn_if_readable_by_others(key);
    let ch = chain.map(Named::file).transpose()?;
    Signer::from_named(&c, &k, ch.as_ref())
}

/// The CA's state as `opts.dir` and its `rollover.json` (already read: `state`) describe it.
fn active_from(opts: &CaOptions, state: &rollover::State, at_start: bool) -> Result<Active, CaError> {
    let (c, k, ch) = current_files(opts, state, at_start)?;
    let current = signer_of(&c, &k, ch.as_deref())?;
    let next = match (state.phase, &state.next) {
        (rollover::Phase::Idle, _) => None,
        (_, Some(f)) => {
            let (c, k, ch) = f.paths(&opts.dir);
            Some(signer_of(&c, &k, ch.as_deref())?)
        }
        (p, None) => {
            return Err(err(
                &opts.dir.join(rollover::STATE_FILE),
                format!("phase {} without a \"next\" CA", p.name()),
            ))
        }
    };
    Ok(Active::new(current, next, state.phase, state.since))
}

impl Ca {
    /// Loads the CA described by `opts`, generating a root in `opts.dir` on first start. A root
    /// rollover in progress (`rollover.json`) is resumed.
    pub fn load(opts: &CaOptions) -> Result<Ca, CaError> {
        Ca::check_ttls(opts)?;
        let tokens = TokenKey::load_or_create(&opts.dir, opts.trust_domain.as_deref())?;
        let state_text = rollover::read_state_text(&opts.dir)?;
        let state = rollover::State::parse(&opts.dir, &state_text)?;
        if state.current.is_none() && opts.cert.is_none() && opts.key.is_none() {
            let c = opts.dir.join("root-cert.pem");
            let k = opts.dir.join("root-key.pem");
            match (c.exists(), k.exists()) {
                (true, true) => {}
                (false, false) => {
                    // A directory that went through a rollover but lost rollover.json: its CA is
                    // in a ca-<n> file; a new root would invalidate every certificate.
                    if let Some(n) = rollover::made_ca_file(&opts.dir).filter(|_| state_text.trim().is_empty()) {
                        return Err(err(
                            &opts.dir.join(rollover::STATE_FILE),
                            format!("missing, but {n} from a root rollover is here: restore {} (it names the CA in use); weft control does not generate a new root over it", rollover::STATE_FILE),
                        ));
                    }
                    let (cert, key) = generate_root(&tokens.trust_domain)?;
                    // The key first: a crash in between leaves a key without a certificate,
                    // which is refused loudly, never a certificate whose key is lost.
                    write_new(&k, key.as_bytes(), 0o600)?;
                    write_new(&c, cert.as_bytes(), 0o644)?;
                    tracing::info!(cert = %c.display(), key = %k.display(), "generated a new mesh root CA");
                }
                (true, false) => {
                    return Err(err(&k, "missing (the CA key for root-cert.pem); restore it, or move root-cert.pem away to start a new root (which invalidates every issued certificate)")) }
                (false, true) => return Err(err(&c, "missing (the CA certificate for root-key.pem); restore it")),
            }
        }
        let active = active_from(opts, &state, true)?;
        let sm = if opts.sm2 {
            Some(sm::SmCa::load_or_create(&opts.dir, &tokens.trust_domain)?)
        } else {
            None
        };
        rollover::record_max_ttl(&opts.dir, opts.svid_max_ttl);
        rollover::write_bundle(&opts.dir, &active.bundle_pem);
        rollover::record_applied(&opts.dir, &state);
        let ca = Ca::new(tokens, active, Some(opts.clone()), opts, sm);
        *ca.applied.lock() = state_text;
        ca.log_loaded();
        Ok(ca)
    }

    fn new(tokens: TokenKey, active: Active, source: Option<CaOptions>, opts: &CaOptions, sm: Option<sm::SmCa>) -> Ca {
        Ca {
            tokens,
            active: ArcSwap::from_pointee(active),
            source,
            applied: parking_lot::Mutex::new(String::new()),
            changed: tokio::sync::watch::channel(0).0,
            svid_ttl: opts.svid_ttl,
            svid_max_ttl: opts.svid_max_ttl,
            sm,
        }
    }

    fn log_loaded(&self) {
        let a = self.active.load();
        let roots = self.roots();
        tracing::info!(
            trust_domain = %self.tokens.trust_domain,
            phase = a.phase.name(),
            roots = ?roots.iter().map(|r| format!("{} {} (expires {})", &r.sha256[..16], r.subject, r.not_after)).collect::<Vec<_>>(),
            "mesh CA loaded"
        );
    }

    fn check_ttls(opts: &CaOptions) -> Result<(), CaError> {
        if opts.svid_ttl < MIN_TTL || opts.svid_max_ttl < opts.svid_ttl {
            return Err(CaError(format!(
                "--svid-ttl {:?} must be at least {MIN_TTL:?} and at most --svid-max-ttl {:?}",
                opts.svid_ttl, opts.svid_max_ttl
            )));
        }
        Ok(())
    }

    /// Checks the CA state `m` (key matches certificate, a CA, valid now, a chain up to a root) and
    /// builds the CA from it (the `--ca-store` case: no rollover). Errors name the file or store key
    /// at fault.
    pub(crate) fn from_material(m: Material, opts: &CaOptions, sm: Option<sm::SmCa>) -> Result<Ca, CaError> {
        let signer = Signer::from_named(&m.cert, &m.key, m.chain.as_ref())?;
        let ca = Ca::new(
            m.tokens,
            Active::new(signer, None, rollover::Phase::Idle, 0),
            None,
            opts,
            sm,
        );
        ca.log_loaded();
        Ok(ca)
    }

    /// Applies a change of the CA directory's `rollover.json` (a rollover step taken by
    /// `weft control ca rollover`). Ok(true) when something changed; an error leaves the current
    /// state in use. Nothing to do with `--ca-store`.
    pub fn reload(&self) -> Result<bool, CaError> {
        let Some(opts) = &self.source else { return Ok(false) };
        let text = rollover::read_state_text(&opts.dir)?;
        let mut applied = self.applied.lock();
        if *applied == text {
            return Ok(false);
        }
        // An error leaves `applied` alone: the change is tried again at the next poll.
        let state = rollover::State::parse(&opts.dir, &text)?;
        let active = active_from(opts, &state, false)?;
        // The bundle file first: whoever sees the new phase (`/debug/ca`, the metrics) then finds
        // the bundle that goes with it.
        rollover::write_bundle(&opts.dir, &active.bundle_pem);
        self.active.store(Arc::new(active));
        *applied = text;
        drop(applied);
        rollover::record_applied(&opts.dir, &state);
        self.changed.send_modify(|g| *g += 1);
        self.log_loaded();
        Ok(true)
    }

    /// A receiver that sees every applied rollover step.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The rollover phase and since when (Unix seconds).
    pub fn phase(&self) -> (rollover::Phase, u64) {
        let a = self.active.load();
        (a.phase, a.since)
    }

    /// The CA directory (None with `--ca-store`).
    pub fn dir(&self) -> Option<&Path> {
        self.source.as_ref().map(|o| o.dir.as_path())
    }

    /// The roots in the trust bundle, the signing one first.
    pub fn roots(&self) -> Vec<RootInfo> {
        let a = self.active.load();
        let mut out: Vec<RootInfo> = Vec::new();
        for (i, s) in a.signers().enumerate() {
            let sha256 = sha256_hex(&s.root_der);
            if out.iter().any(|r| r.sha256 == sha256) {
                continue;
            }
            let (subject, not_after) = X509Certificate::from_der(&s.root_der)
                .map(|(_, c)| (c.subject().to_string(), c.validity().not_after.timestamp()))
                .unwrap_or_default();
            out.push(RootInfo {
                sha256,
                subject,
                not_after,
                signing: i == 0,
            });
        }
        out
    }

    pub fn trust_domain(&self) -> &str {
        &self.tokens.trust_domain
    }

    /// The trust bundle: every root that verifies certificates of this CA (two during a root
    /// rollover), PEM, the signing one first.
    pub fn root_pem(&self) -> String {
        self.active.load().bundle_pem.clone()
    }

    /// Checks `csr_pem` (signature, ECDSA P-256 key, exactly one SAN equal to `id`) and signs it.
    pub fn issue(&self, csr_pem: &str, id: &SpiffeId, ttl: Option<Duration>) -> Result<Issued, IssueError> {
        let bad = IssueError::BadCsr;
        let ders = {
            let mut v = Vec::new();
            for p in Pem::iter_from_buffer(csr_pem.as_bytes()) {
                let p = p.map_err(|e| bad(format!("csr is not PEM: {e}")))?;
                if p.label != "CERTIFICATE REQUEST" && p.label != "NEW CERTIFICATE REQUEST" {
                    return Err(bad(format!(
                        "csr is a {:?} PEM block, expected CERTIFICATE REQUEST",
                        p.label
                    )));
                }
                v.push(p.contents);
            }
            v
        };
        let [der] = &ders[..] else {
            return Err(bad(format!(
                "csr holds {} PEM blocks, expected one CERTIFICATE REQUEST",
                ders.len()
            )));
        };
        let (_, csr) = X509CertificationRequest::from_der(der).map_err(|e| bad(format!("csr: {e}")))?;
        if weft_sm::sign::is_sm2_spki(csr.certification_request_info.subject_pki.raw) {
            let Some(sm) = &self.sm else {
                return Err(bad(
                    "csr: an SM2 key, but this CA issues no SM2 certificates (start weft control with --ca-sm2)".into(),
                ));
            };
            let ttl = ttl
                .filter(|t| !t.is_zero())
                .unwrap_or(self.svid_ttl)
                .clamp(MIN_TTL, self.svid_max_ttl);
            return sm.issue(der, id, ttl);
        }
        csr.verify_signature()
            .map_err(|_| bad("csr: its signature does not verify with its own public key".into()))?;
        let spki = &csr.certification_request_info.subject_pki;
        let p256 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
            && spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|o| o == x509_parser::oid_registry::OID_EC_P256);
        if !p256 {
            return Err(bad(format!(
                "csr: the key must be ECDSA P-256, not {}",
                x509_parser::objects::oid2sn(&spki.algorithm.algorithm, x509_parser::objects::oid_registry())
                    .unwrap_or("an unknown algorithm")
            )));
        }
        let mut sans = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    sans.push(match n {
                        GeneralName::URI(u) => u.to_string(),
                        other => format!("{other}"),
                    });
                }
            }
        }
        let want = id.to_string();
        if sans != [want.clone()] {
            return Err(IssueError::WrongIdentity(format!(
                "the CSR asks for SAN {sans:?}, but this credential may only obtain [\"{want}\"]"
            )));
        }
        let public = rcgen::CertificateSigningRequestParams::from_der(&der.clone().into())
            .map_err(|e| bad(format!("csr: {e}")))?
            .public_key;
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(self.svid_ttl)
            .clamp(MIN_TTL, self.svid_max_ttl);
        let now = weft_identity::unix_now() as i64;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(
            want.clone()
                .try_into()
                .map_err(|e| IssueError::Internal(format!("{e}")))?,
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = offset_time(now - BACKDATE.as_secs() as i64);
        // Never outlive the issuer.
        let active = self.active.load();
        let signer = &active.signer;
        let not_after = (now + ttl.as_secs() as i64).min(signer.not_after);
        p.not_after = offset_time(not_after);
        let serial = random_serial();
        let serial_hex = weft_identity::hex::encode(serial.as_ref());
        p.serial_number = Some(serial);
        p.use_authority_key_identifier_extension = true;
        let leaf = p
            .signed_by(&public, &signer.issuer)
            .map_err(|e| IssueError::Internal(format!("signing: {e}")))?;
        let mut cert_chain = vec![leaf.pem()];
        cert_chain.extend(signer.chain_pem.iter().cloned());
        // The last element is the whole trust bundle (both roots during a rollover), as Istio's
        // agents read it: the leaf's own root is in it.
        cert_chain.push(active.bundle_pem.clone());
        Ok(Issued {
            cert_chain,
            serial: serial_hex,
            ttl: Duration::from_secs((not_after - now).max(0) as u64),
        })
    }

    /// A TLS server certificate for weft control itself (the `--ca-tls` port): URI SAN
    /// `spiffe://<td>/ns/weft-system/sa/weft-control`, `ip` (unless unspecified) and `localhost`,
    /// lifetime `--svid-ttl`.
    pub fn issue_server(&self, ip: std::net::IpAddr) -> Result<ServerCert, IssueError> {
        let internal = |e: rcgen::Error| IssueError::Internal(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(internal)?;
        let me = SpiffeId::new(self.trust_domain(), "weft-system", "weft-control")
            .map_err(|e| IssueError::Internal(e.to_string()))?;
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).map_err(internal)?;
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names
            .push(SanType::URI(me.to_string().try_into().map_err(internal)?));
        if !ip.is_unspecified() {
            p.subject_alt_names.push(SanType::IpAddress(ip));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = weft_identity::unix_now() as i64;
        p.not_before = offset_time(now - BACKDATE.as_secs() as i64);
        let active = self.active.load();
        let signer = &active.signer;
        let not_after = (now + self.svid_ttl.as_secs() as i64).min(signer.not_after);
        p.not_after = offset_time(not_after);
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        let leaf = p.signed_by(&key, &signer.issuer).map_err(internal)?;
        let mut chain = vec![leaf.der().to_vec()];
        chain.extend(parse_pem_certs(&signer.chain_pem).map_err(IssueError::Internal)?);
        Ok(ServerCert {
            chain,
            key_pkcs8: key.serialize_der(),
            not_after: not_after.max(0) as u64,
        })
    }

    /// Checks a certificate presented for renewal: issued by this CA, valid now, one SPIFFE ID in
    /// this trust domain. Returns the identity and the leaf's public key (to check the proof with).
    pub fn check_svid(&self, der: &[u8]) -> Result<(SpiffeId, Vec<u8>), String> {
        self.check_svid_key(der).map(|(id, public, _)| (id, public))
    }

    /// Like [`Ca::check_svid`], also for SM2 SVIDs of the `--ca-sm2` root; the bool says the key
    /// is SM2 (a renewal proof is then an SM2-with-SM3 signature).
    pub fn check_svid_key(&self, der: &[u8]) -> Result<(SpiffeId, Vec<u8>, bool), String> {
        let (_, leaf) = X509Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
        let sm2 = weft_sm::sign::is_sm2_spki(leaf.tbs_certificate.subject_pki.raw);
        // Either CA of a rollover in progress: SVIDs of the previous root renew until they expire.
        let active = self.active.load();
        let issued_here = if sm2 {
            self.sm.as_ref().is_some_and(|sm| sm.issued(&leaf))
        } else {
            active.signers().any(|s| {
                X509Certificate::from_der(&s.issuer_der).is_ok_and(|(_, issuer)| {
                    leaf.issuer().as_raw() == issuer.subject().as_raw()
                        && leaf.verify_signature(Some(issuer.public_key())).is_ok()
                })
            })
        };
        if !issued_here {
            return Err("not issued by this CA".into());
        }
        if !leaf.validity().is_valid() {
            return Err(format!("not valid now (expired {})", leaf.validity().not_after));
        }
        let sans = uri_sans(&leaf);
        let [uri] = &sans[..] else {
            return Err(format!("expected one URI SAN, found {sans:?}"));
        };
        let id = SpiffeId::parse(uri).map_err(|e| e.to_string())?;
        if id.trust_domain() != self.trust_domain() {
            return Err(format!("{id} is not in trust domain {}", self.trust_domain()));
        }
        Ok((id, leaf.public_key().subject_public_key.data.to_vec(), sm2))
    }
}

/// A new self-signed root for `trust_domain`: (certificate PEM, PKCS#8 key PEM).
fn generate_root(trust_domain: &str) -> Result<(String, String), CaError> {
    generate_root_named(trust_domain, "weft mesh root CA")
}

/// Like [`generate_root`], with another common name (the roots of a rollover differ by name, so
/// that tools which pick an issuer by name alone see two).
pub(crate) fn generate_root_named(trust_domain: &str, common_name: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError(format!("generating the root key: {e}")))?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = weft_identity::unix_now() as i64;
    p.not_before = offset_time(now - 3600);
    p.not_after = offset_time(now + ROOT_LIFETIME.as_secs() as i64);
    p.serial_number = Some(random_serial());
    let cert = p
        .self_signed(&key)
        .map_err(|e| CaError(format!("generating the root certificate: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}
