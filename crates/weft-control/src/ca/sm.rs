//! The mesh CA's ShangMi side (`--ca-sm2`): an SM2 root beside the ECDSA one, persisted in the CA
//! directory (`sm-root-cert.pem`, `sm-root-key.pem`), and SM2 SVIDs for CSRs whose key is SM2 —
//! for listeners and clusters that offer `tls.suites: [sm]`, and for Tongsuo peers.
//!
//! The certificates are built and signed by `weft-sm` (SM2-with-SM3 under the certificate ID
//! `1234567812345678`); the CSR's own SM2 signature is verified there too (x509-parser, which checks
//! the ECDSA CSRs, knows no SM2).

use super::{err, err_at, write_new, CaError, IssueError, Issued, Named, BACKDATE, MIN_TTL, ROOT_LIFETIME};
use std::path::Path;
use std::time::{Duration, SystemTime};
use weft_identity::SpiffeId;
use weft_sm::cert::{Params, Sm2Cert};

/// The SM2 root and what it issues.
pub struct SmCa {
    root: Sm2Cert,
    root_pem: String,
}

impl std::fmt::Debug for SmCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmCa").field("root", &self.root).finish()
    }
}

impl SmCa {
    /// Loads `dir/sm-root-{cert,key}.pem`, generating them at first start. Errors name the file.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<SmCa, CaError> {
        let c = dir.join("sm-root-cert.pem");
        let k = dir.join("sm-root-key.pem");
        match (c.exists(), k.exists()) {
            (true, true) => {}
            (false, false) => {
                let (cert, key) = SmCa::generate(trust_domain)?;
                // The key first, as for the ECDSA root.
                write_new(&k, key.as_bytes(), 0o600)?;
                write_new(&c, cert.as_bytes(), 0o644)?;
                tracing::info!(cert = %c.display(), "generated a new mesh SM2 root CA");
            }
            (true, false) => return Err(err(&k, "missing (the key for sm-root-cert.pem); restore it")),
            (false, true) => return Err(err(&c, "missing (the certificate for sm-root-key.pem); restore it")),
        }
        super::warn_if_readable_by_others(&k);
        SmCa::from_pem(&Named::file(&c)?, &Named::file(&k)?)
    }

    /// A new SM2 root: (certificate PEM, key PEM).
    pub(crate) fn generate(trust_domain: &str) -> Result<(String, String), CaError> {
        let mut p = Params::ca(&format!("weft mesh SM2 root CA {trust_domain}"), ROOT_LIFETIME);
        p.not_before = SystemTime::now() - Duration::from_secs(3600);
        let root = Sm2Cert::self_signed(&p).map_err(|e| CaError(format!("generating the SM2 root: {e}")))?;
        Ok((root.cert_pem(), root.key_pem()))
    }

    /// The SM2 root from its certificate and key. Errors name where each came from.
    pub(crate) fn from_pem(cert: &Named, key: &Named) -> Result<SmCa, CaError> {
        let der = super::parse_pem_certs(std::slice::from_ref(&cert.text))
            .map_err(|e| err_at(&cert.label, e))?
            .into_iter()
            .next()
            .ok_or_else(|| err_at(&cert.label, "no certificate"))?;
        let secret = weft_sm::cert::secret_key_from_pem(&key.text).map_err(|e| err_at(&key.label, e))?;
        let root = Sm2Cert::from_parts(der, secret).map_err(|e| err_at(&key.label, format!("{e} ({})", cert.label)))?;
        if root.not_after() < SystemTime::now() {
            return Err(err_at(&cert.label, "expired"));
        }
        Ok(SmCa {
            root_pem: weft_sm::cert::pem("CERTIFICATE", &root.der),
            root,
        })
    }

    /// Whether `leaf` was signed by this SM2 root (issuer name and SM2-with-SM3 signature).
    pub fn issued(&self, leaf: &x509_parser::certificate::X509Certificate<'_>) -> bool {
        use rustls_pki_types::SignatureVerificationAlgorithm;
        let Ok((_, root)) = x509_parser::parse_x509_certificate(&self.root.der) else {
            return false;
        };
        leaf.issuer().as_raw() == root.subject().as_raw()
            && weft_sm::SM2_SM3_CERT
                .verify_signature(
                    &root.public_key().subject_public_key.data,
                    leaf.tbs_certificate.as_ref(),
                    &leaf.signature_value.data,
                )
                .is_ok()
    }

    /// The SM2 root, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Checks an SM2 CSR (DER; signature, exactly the URI SAN `id`) and issues its SVID for `ttl`
    /// (already clamped by the caller), never past the root's end.
    pub fn issue(&self, der: &[u8], id: &SpiffeId, ttl: Duration) -> Result<Issued, IssueError> {
        let req = weft_sm::cert::parse_csr(der).map_err(|e| IssueError::BadCsr(format!("csr: {e}")))?;
        let want = id.to_string();
        let mut sans = req.uris.clone();
        sans.extend(req.dns_names.iter().cloned());
        if sans != [want.clone()] {
            return Err(IssueError::WrongIdentity(format!(
                "the CSR asks for SAN {sans:?}, but this credential may only obtain [\"{want}\"]"
            )));
        }
        let now = SystemTime::now();
        let ttl = ttl.max(MIN_TTL);
        let not_after = (now + ttl).min(self.root.not_after());
        let p = Params {
            common_name: String::new(),
            dns_names: vec![],
            uris: vec![want],
            ca: false,
            not_before: now - BACKDATE,
            not_after,
        };
        let leaf = self
            .root
            .issue_for_key(&p, &req.public_key)
            .map_err(|e| IssueError::Internal(format!("signing: {e}")))?;
        let serial = x509_parser::parse_x509_certificate(&leaf)
            .map(|(_, c)| weft_identity::hex::encode(c.raw_serial()))
            .map_err(|e| IssueError::Internal(e.to_string()))?;
        Ok(Issued {
            cert_chain: vec![weft_sm::cert::pem("CERTIFICATE", &leaf), self.root_pem.clone()],
            serial,
            ttl: not_after.duration_since(now).unwrap_or_default(),
        })
    }
}
