//! Test certificates (feature `test-certs`): a CA and leaves with DNS or SPIFFE URI SANs, written
//! to PEM files when a test needs files.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// A certificate authority that signs leaves.
pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("self-signed");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn sign(&self, sans: Vec<SanType>, cn: &str, expired: bool) -> Leaf {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 2);
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A leaf for DNS names.
    pub fn leaf_dns(&self, names: &[&str]) -> Leaf {
        let sans = names
            .iter()
            .map(|n| SanType::DnsName((*n).try_into().expect("dns name")))
            .collect();
        self.sign(sans, names.first().copied().unwrap_or("leaf"), false)
    }

    /// A leaf whose URI SAN is `uri` (a SPIFFE ID).
    pub fn leaf_uri(&self, uri: &str) -> Leaf {
        self.sign(vec![SanType::URI(uri.try_into().expect("uri"))], "workload", false)
    }

    /// A leaf for DNS `name` that expired a day ago.
    pub fn leaf_expired(&self, name: &str) -> Leaf {
        self.sign(vec![SanType::DnsName(name.try_into().expect("dns name"))], name, true)
    }
}

impl Leaf {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }
}

impl Ca {
    /// Writes `<dir>/<name>.crt`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let c = dir.join(format!("{name}.crt"));
        std::fs::write(&c, &self.cert_pem).expect("write CA");
        c
    }
}
