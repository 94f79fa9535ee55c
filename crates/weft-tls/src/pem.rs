//! Certificates, private keys and trust roots from PEM (files or memory).

use crate::error::TlsError;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where PEM data comes from: a file (listener certificates are re-read when it changes), or
/// memory: a configuration's `*_pem` fields, xDS `inline_bytes`/`inline_string`.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    Inline(Arc<str>),
}

/// Never prints inline data: it may be a private key.
impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(p) => write!(f, "File({})", p.display()),
            PemSource::Inline(s) => write!(f, "Inline({} bytes)", s.len()),
        }
    }
}

impl PemSource {
    /// The configuration field this source came from: `<prefix><stem>_file` or `<prefix><stem>_pem`.
    pub fn field(&self, prefix: &str, stem: &str) -> String {
        match self {
            PemSource::File(_) => format!("{prefix}{stem}_file"),
            PemSource::Inline(_) => format!("{prefix}{stem}_pem"),
        }
    }

    /// The file, if it is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PemSource::File(p) => Some(p),
            PemSource::Inline(_) => None,
        }
    }

    /// What errors name as the origin of the data: the file, or `(inline PEM)`.
    fn origin(&self) -> PathBuf {
        match self {
            PemSource::File(p) => p.clone(),
            PemSource::Inline(_) => PathBuf::from("(inline PEM)"),
        }
    }

    fn bytes(&self, field: &str) -> Result<Cow<'_, [u8]>, TlsError> {
        match self {
            PemSource::File(p) => read(field, p).map(Cow::Owned),
            PemSource::Inline(s) => Ok(Cow::Borrowed(s.as_bytes())),
        }
    }
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        field: field.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` block of `pem`, each checked to be a parseable X.509 certificate.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(c) {
            return Err(format!("certificate #{i} is not valid X.509: {e}"));
        }
    }
    Ok(certs)
}

/// The first private key block (PKCS#8, SEC1 or PKCS#1) of `pem`.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".to_string(),
        e => format!("invalid PEM: {e}"),
    })
}

/// The certificate chain (leaf first) in the file `path`, read for configuration field `field`.
pub fn read_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs(field, &PemSource::File(path.to_path_buf()))
}

/// The certificate chain (leaf first) from `src`, read for configuration field `field`.
pub fn certs(field: &str, src: &PemSource) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs_from_pem(&src.bytes(field)?).map_err(|reason| TlsError::Pem {
        field: field.to_string(),
        path: src.origin(),
        reason,
    })
}

/// The private key from `src`.
pub fn key(field: &str, src: &PemSource) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&src.bytes(field)?).map_err(|reason| TlsError::Pem {
        field: field.to_string(),
        path: src.origin(),
        reason,
    })
}

/// A chain and its key as rustls signs with them; the key must be supported and match the leaf.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let signer = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        // A key type whose public half rustls cannot derive: accepted as is.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
        Err(_) => Err("the private key does not match the certificate".into()),
    }
}

/// Certificate chain and key from two sources (fields `<field>cert_file` or `<field>cert_pem`,
/// and `<field>key_file` or `<field>key_pem`).
pub fn load_certified_key(field: &str, cert: &PemSource, key_src: &PemSource) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs(&cert.field(field, "cert"), cert)?;
    let key_field = key_src.field(field, "key");
    let key = key(&key_field, key_src)?;
    certified_key(chain, key).map_err(|reason| TlsError::Key {
        field: key_field,
        path: key_src.origin(),
        reason,
    })
}

/// A root store from DER certificates; an error if none is a usable trust anchor.
pub fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err("no usable trust anchor".into());
    }
    Ok(store)
}

/// The trust roots in the file `path`.
pub fn read_roots(field: &str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    roots(field, &PemSource::File(path.to_path_buf()))
}

/// The trust roots from `src`.
pub fn roots(field: &str, src: &PemSource) -> Result<Arc<RootCertStore>, TlsError> {
    let certs = certs(field, src)?;
    root_store(&certs).map(Arc::new).map_err(|reason| TlsError::Pem {
        field: field.to_string(),
        path: src.origin(),
        reason,
    })
}
