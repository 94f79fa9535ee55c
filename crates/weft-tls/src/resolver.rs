//! Server certificates chosen by SNI, each reloaded from its files when they change.
//!
//! Every handshake reads the current certificate through an `ArcSwap`, so a rotated certificate
//! applies to the next handshake without a restart; connections already established keep theirs.
//! A changed file that does not load (bad PEM, a key that does not match) is refused with a log
//! line, and the previous certificate keeps serving.

use crate::error::TlsError;
use crate::pem::PemSource;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// One certificate of a listener, from files (re-read when they change) or inline PEM (fixed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The field path for errors, e.g. `certificates[0].` (ends with a dot).
    pub field: String,
    pub cert: PemSource,
    pub key: PemSource,
    /// SNI names this certificate serves (exact, or `*.example.com`); empty: the default.
    pub server_names: Vec<String>,
}

#[derive(Debug)]
struct Entry {
    files: CertFiles,
    /// An SM2 certificate (ShangMi), served to ClientHellos that prefer `TLS_SM4_GCM_SM3`. Fixed at
    /// load: a reload that changes the key type is refused.
    sm: bool,
    key: ArcSwap<CertifiedKey>,
    /// Modification times of (cert, key) when last loaded.
    mtimes: ArcSwap<(Option<SystemTime>, Option<SystemTime>)>,
}

/// Inline PEM has no modification time, so it never reloads.
fn mtimes(f: &CertFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |s: &PemSource| {
        s.path()
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    (m(&f.cert), m(&f.key))
}

/// Picks a certificate by the ClientHello's server name: an exact name, then a wildcard, then the
/// first certificate without `server_names` (else the first certificate). Among the certificates
/// of the chosen kind of match, an SM2 one when the ClientHello prefers ShangMi
/// ([`weft_sm::client_hello_prefers_sm`]), else a standard one (else whichever there is).
#[derive(Debug)]
pub struct SniResolver {
    entries: Vec<Entry>,
}

/// The standard suites' ids (*ring*'s), against which a ClientHello's preference for SM is judged.
pub(crate) fn standard_suite_ids() -> &'static [rustls::CipherSuite] {
    static IDS: std::sync::OnceLock<Vec<rustls::CipherSuite>> = std::sync::OnceLock::new();
    IDS.get_or_init(|| {
        rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect()
    })
}

impl SniResolver {
    /// Loads every certificate; the first error (naming its field and file) fails the whole.
    pub fn from_files(files: &[CertFiles]) -> Result<Arc<SniResolver>, TlsError> {
        if files.is_empty() {
            return Err(TlsError::invalid(
                "certificates",
                "at least one certificate is required",
            ));
        }
        let mut entries = Vec::new();
        for f in files {
            let times = mtimes(f);
            let key = crate::pem::load_certified_key(&f.field, &f.cert, &f.key)?;
            entries.push(Entry {
                files: f.clone(),
                sm: weft_sm::is_sm2(key.key.as_ref()),
                key: ArcSwap::new(key),
                mtimes: ArcSwap::from_pointee(times),
            });
        }
        Ok(Arc::new(SniResolver { entries }))
    }

    /// Re-reads the certificates whose files changed since they were loaded. Returns how many
    /// were replaced; a file that fails to load is logged and the old certificate stays.
    pub fn reload_changed(&self) -> usize {
        let mut n = 0;
        for e in &self.entries {
            let now = mtimes(&e.files);
            if now == **e.mtimes.load() {
                continue;
            }
            e.mtimes.store(Arc::new(now));
            match crate::pem::load_certified_key(&e.files.field, &e.files.cert, &e.files.key) {
                Ok(k) if weft_sm::is_sm2(k.key.as_ref()) != e.sm => {
                    tracing::error!(
                        cert = ?e.files.cert,
                        "TLS certificate change refused: it changes the key type (SM2 / standard); the previous certificate keeps serving"
                    );
                }
                Ok(k) => {
                    e.key.store(k);
                    n += 1;
                    tracing::info!(cert = ?e.files.cert, "TLS certificate reloaded");
                }
                Err(err) => {
                    tracing::error!(error = %err, "TLS certificate change refused; the previous certificate keeps serving");
                }
            }
        }
        n
    }

    /// The (standard, when there is one) certificate for `sni`.
    pub fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.select_kind(sni, false)
    }

    /// Whether any certificate is an SM2 one.
    pub fn has_sm(&self) -> bool {
        self.entries.iter().any(|e| e.sm)
    }

    /// The certificate fields of the SM2 certificates (`certificates[1].cert_file`, or `cert_pem`).
    pub fn sm_fields(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.sm)
            .map(|e| e.files.cert.field(&e.files.field, "cert"))
            .collect()
    }

    /// The certificate for `sni`, an SM2 one when `sm` and there is one for that name.
    pub fn select_kind(&self, sni: Option<&str>, sm: bool) -> Option<Arc<CertifiedKey>> {
        let pick = |matching: &dyn Fn(&Entry) -> bool| -> Option<&Entry> {
            let mut it = self.entries.iter().filter(|e| matching(e));
            let first = it.next()?;
            if first.sm == sm {
                return Some(first);
            }
            Some(it.find(|e| e.sm == sm).unwrap_or(first))
        };
        if let Some(name) = sni {
            let name = name.trim_end_matches('.');
            let exact = pick(&|e: &Entry| {
                e.files
                    .server_names
                    .iter()
                    .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(name))
            });
            let wildcard = || {
                let parent = name.split_once('.').map(|(_, p)| p)?;
                pick(&|e: &Entry| {
                    e.files
                        .server_names
                        .iter()
                        .any(|n| n.strip_prefix("*.").is_some_and(|s| s.eq_ignore_ascii_case(parent)))
                })
            };
            if let Some(e) = exact.or_else(wildcard) {
                return Some(e.key.load_full());
            }
        }
        pick(&|e: &Entry| e.files.server_names.is_empty())
            .or_else(|| pick(&|_: &Entry| true))
            .map(|e| e.key.load_full())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sm = self.has_sm()
            && weft_sm::client_hello_prefers_sm(hello.cipher_suites(), hello.signature_schemes(), standard_suite_ids());
        self.select_kind(hello.server_name(), sm)
    }
}

/// Polls the resolver's files every `every` until the resolver is dropped.
pub async fn watch_files(resolver: Weak<SniResolver>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(r) = resolver.upgrade() else { return };
        r.reload_changed();
    }
}
