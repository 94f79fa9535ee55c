//! Certificates, private keys and trust roots from PEM (files or memory).

use crate::error::TlsError;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

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
    certs_from_pem(&read(field, path)?).map_err(|reason| TlsError::Pem {
        field: field.to_string(),
        path: path.to_path_buf(),
        reason,
    })
}

/// The private key in the file `path`.
pub fn read_key(field: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    key_from_pem(&read(field, path)?).map_err(|reason| TlsError::Pem {
        field: field.to_string(),
        path: path.to_path_buf(),
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

/// Certificate chain and key from two files (`<field>.cert_file`, `<field>.key_file`).
pub fn load_certified_key(field: &str, cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(&format!("{field}cert_file"), cert_file)?;
    let key = read_key(&format!("{field}key_file"), key_file)?;
    certified_key(chain, key).map_err(|reason| TlsError::Key {
        field: format!("{field}key_file"),
        path: key_file.to_path_buf(),
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
    let certs = read_certs(field, path)?;
    root_store(&certs).map(Arc::new).map_err(|reason| TlsError::Pem {
        field: field.to_string(),
        path: path.to_path_buf(),
        reason,
    })
}
