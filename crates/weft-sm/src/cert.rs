//! SM2 certificates: self-signed roots and the leaves they issue (server names, SPIFFE IDs), signed
//! SM2-with-SM3 under the certificate ID `1234567812345678`.
//!
//! rcgen cannot sign with SM2, so certificates are assembled here from `x509-cert`'s structures and
//! signed with [`crate::sign::sign_with_id`].

use crate::sign::{self, CERT_ID, SM2_WITH_SM3};
use der::asn1::{BitString, Ia5String, OctetString};
use der::{Decode, Encode};
use pkcs8::EncodePrivateKey;
use spki::AlgorithmIdentifierOwned;
use std::str::FromStr;
use std::time::SystemTime;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

/// What goes into a certificate.
#[derive(Debug, Clone)]
pub struct Params {
    /// Subject common name.
    pub common_name: String,
    pub dns_names: Vec<String>,
    /// URI SANs, e.g. a SPIFFE ID.
    pub uris: Vec<String>,
    /// A certificate authority (basicConstraints cA, keyCertSign) rather than a TLS leaf.
    pub ca: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Params {
    /// A leaf valid from an hour ago for `lifetime`.
    pub fn leaf(common_name: &str, lifetime: std::time::Duration) -> Params {
        let now = SystemTime::now();
        Params {
            common_name: common_name.to_string(),
            dns_names: vec![],
            uris: vec![],
            ca: false,
            not_before: now - std::time::Duration::from_secs(3600),
            not_after: now + lifetime,
        }
    }

    /// A CA valid from an hour ago for `lifetime`.
    pub fn ca(common_name: &str, lifetime: std::time::Duration) -> Params {
        Params {
            ca: true,
            ..Params::leaf(common_name, lifetime)
        }
    }
}

/// A certificate and its private key.
#[derive(Clone)]
pub struct Sm2Cert {
    pub der: Vec<u8>,
    pub key: sm2::SecretKey,
    subject: Name,
}

impl std::fmt::Debug for Sm2Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sm2Cert")
            .field("subject", &self.subject.to_string())
            .finish()
    }
}

/// Why a certificate could not be made.
#[derive(Debug)]
pub struct CertError(pub String);

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertError {}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> CertError {
    move |e| CertError(format!("{what}: {e}"))
}

impl Sm2Cert {
    /// A self-signed root with a new key.
    pub fn self_signed(params: &Params) -> Result<Sm2Cert, CertError> {
        let key = sm2::SecretKey::random(&mut rand_core::OsRng);
        let subject = subject_name(&params.common_name)?;
        let der = build(params, &key.public_key(), &subject, &subject, &key)?;
        Ok(Sm2Cert { der, key, subject })
    }

    /// A certificate for a new key, issued by `self`.
    pub fn issue(&self, params: &Params) -> Result<Sm2Cert, CertError> {
        let key = sm2::SecretKey::random(&mut rand_core::OsRng);
        let subject = subject_name(&params.common_name)?;
        let der = build(params, &key.public_key(), &subject, &self.subject, &self.key)?;
        Ok(Sm2Cert { der, key, subject })
    }

    /// A certificate for someone else's public key (a CSR's), issued by `self`.
    pub fn issue_for_key(&self, params: &Params, public: &sm2::PublicKey) -> Result<Vec<u8>, CertError> {
        let subject = subject_name(&params.common_name)?;
        build(params, public, &subject, &self.subject, &self.key)
    }

    /// An existing certificate and its key (a persisted CA); refused when the key is not the
    /// certificate's or the certificate is not an SM2 one.
    pub fn from_parts(der: Vec<u8>, key: sm2::SecretKey) -> Result<Sm2Cert, CertError> {
        let cert = Certificate::from_der(&der).map_err(err("certificate"))?;
        let spki_der = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(err("certificate"))?;
        if !sign::is_sm2_spki(&spki_der) {
            return Err(CertError("not an SM2 certificate".into()));
        }
        if spki_der != sign::spki_der(&key.public_key()) {
            return Err(CertError("the key does not match the certificate".into()));
        }
        Ok(Sm2Cert {
            subject: cert.tbs_certificate.subject,
            der,
            key,
        })
    }

    /// The end of the certificate's validity.
    pub fn not_after(&self) -> SystemTime {
        Certificate::from_der(&self.der)
            .map(|c| c.tbs_certificate.validity.not_after.to_system_time())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// The private key as PKCS#8 DER.
    pub fn key_pkcs8_der(&self) -> Vec<u8> {
        self.key.to_pkcs8_der().expect("an SM2 key encodes").as_bytes().to_vec()
    }

    /// The private key as a PKCS#8 `PRIVATE KEY` PEM block.
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.key_pkcs8_der())
    }
}

/// What an SM2 certificate signing request asks for, its signature verified.
#[derive(Debug, Clone)]
pub struct CsrRequest {
    pub public_key: sm2::PublicKey,
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
}

/// Parses a DER PKCS#10 request: an SM2 key, signed SM2-with-SM3 (certificate ID) by that key;
/// its SANs from the extensionRequest attribute. Anything else is refused with the reason.
pub fn parse_csr(der_bytes: &[u8]) -> Result<CsrRequest, CertError> {
    use der::Decode;
    use rustls_pki_types::SignatureVerificationAlgorithm;
    use x509_cert::request::{CertReq, ExtensionReq};
    let req = CertReq::from_der(der_bytes).map_err(err("not a PKCS#10 request"))?;
    if req.algorithm.oid != SM2_WITH_SM3 {
        return Err(CertError(format!(
            "signature algorithm {} is not SM2-with-SM3",
            req.algorithm.oid
        )));
    }
    let spki_der = req.info.public_key.to_der().map_err(err("public key"))?;
    if !sign::is_sm2_spki(&spki_der) {
        return Err(CertError("the key is not an SM2 key".into()));
    }
    let point = req.info.public_key.subject_public_key.raw_bytes();
    let public_key = sm2::PublicKey::from_sec1_bytes(point).map_err(err("public key"))?;
    let info = req.info.to_der().map_err(err("request"))?;
    let sig = req
        .signature
        .as_bytes()
        .ok_or_else(|| CertError("signature: not a whole number of bytes".into()))?;
    sign::SM2_SM3_CERT
        .verify_signature(point, &info, sig)
        .map_err(|_| CertError("its signature does not verify with its own public key".into()))?;
    let (mut uris, mut dns_names) = (vec![], vec![]);
    for attr in req.info.attributes.iter() {
        if attr.oid != <ExtensionReq as der::oid::AssociatedOid>::OID {
            continue;
        }
        for v in attr.values.iter() {
            let exts: ExtensionReq = v.decode_as().map_err(err("extensionRequest"))?;
            for e in exts.0 {
                if e.extn_id != <SubjectAltName as der::oid::AssociatedOid>::OID {
                    continue;
                }
                let san = SubjectAltName::from_der(e.extn_value.as_bytes()).map_err(err("subjectAltName"))?;
                for n in san.0 {
                    match n {
                        GeneralName::UniformResourceIdentifier(u) => uris.push(u.to_string()),
                        GeneralName::DnsName(d) => dns_names.push(d.to_string()),
                        other => return Err(CertError(format!("unsupported subjectAltName {other:?}"))),
                    }
                }
            }
        }
    }
    Ok(CsrRequest {
        public_key,
        uris,
        dns_names,
    })
}

/// A DER PKCS#10 request for `key` with URI SANs `uris` (empty subject), signed SM2-with-SM3.
pub fn csr(key: &sm2::SecretKey, uris: &[String]) -> Result<Vec<u8>, CertError> {
    use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq};
    let mut sans = vec![];
    for u in uris {
        sans.push(GeneralName::UniformResourceIdentifier(
            Ia5String::new(u).map_err(err("URI"))?,
        ));
    }
    let ext = extension(false, &SubjectAltName(sans))?;
    let attr = x509_cert::attr::Attribute::try_from(ExtensionReq(vec![ext])).map_err(err("extensionRequest"))?;
    let mut attributes = x509_cert::attr::Attributes::new();
    attributes.insert(attr).map_err(err("attributes"))?;
    let info = CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject: Name::default(),
        public_key: sign::spki(&key.public_key()),
        attributes,
    };
    let sig = sign::sign_with_id(key, CERT_ID, &info.to_der().map_err(err("request"))?).map_err(err("signature"))?;
    CertReq {
        info,
        algorithm: AlgorithmIdentifierOwned {
            oid: SM2_WITH_SM3,
            parameters: None,
        },
        signature: BitString::from_bytes(&sig).map_err(err("signature"))?,
    }
    .to_der()
    .map_err(err("request"))
}

/// A new SM2 private key (OS randomness).
pub fn new_key() -> sm2::SecretKey {
    sm2::SecretKey::random(&mut rand_core::OsRng)
}

/// An SM2 private key from a PKCS#8 `PRIVATE KEY` PEM block.
pub fn secret_key_from_pem(pem_text: &str) -> Result<sm2::SecretKey, CertError> {
    use pkcs8::DecodePrivateKey;
    sm2::SecretKey::from_pkcs8_pem(pem_text).map_err(err("not an SM2 PKCS#8 key"))
}

/// A PEM block.
pub fn pem(label: &str, der_bytes: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der_bytes).expect("PEM encodes")
}

fn subject_name(cn: &str) -> Result<Name, CertError> {
    if cn.is_empty() {
        // An empty subject, as SPIFFE SVIDs carry (the identity is the URI SAN).
        return Ok(Name::default());
    }
    if cn.contains([',', '+', '=', '\\', '"']) {
        return Err(CertError(format!("common name {cn:?}: only plain names are supported")));
    }
    Name::from_str(&format!("CN={cn}")).map_err(err("subject name"))
}

fn extension<T: Encode + der::oid::AssociatedOid>(critical: bool, value: &T) -> Result<Extension, CertError> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(err("extension"))?).map_err(err("extension"))?,
    })
}

fn build(
    params: &Params,
    public: &sm2::PublicKey,
    subject: &Name,
    issuer: &Name,
    issuer_key: &sm2::SecretKey,
) -> Result<Vec<u8>, CertError> {
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x01;
    let sig_alg = AlgorithmIdentifierOwned {
        oid: SM2_WITH_SM3,
        parameters: None,
    };
    let mut extensions = vec![];
    if params.ca {
        extensions.push(extension(
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: None,
            },
        )?);
        extensions.push(extension(true, &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))?);
    } else {
        extensions.push(extension(
            true,
            &BasicConstraints {
                ca: false,
                path_len_constraint: None,
            },
        )?);
        extensions.push(extension(true, &KeyUsage(KeyUsages::DigitalSignature.into()))?);
        extensions.push(extension(
            false,
            &ExtendedKeyUsage(vec![
                const_oid::db::rfc5280::ID_KP_SERVER_AUTH,
                const_oid::db::rfc5280::ID_KP_CLIENT_AUTH,
            ]),
        )?);
    }
    let mut sans = vec![];
    for d in &params.dns_names {
        sans.push(GeneralName::DnsName(Ia5String::new(d).map_err(err("DNS name"))?));
    }
    for u in &params.uris {
        sans.push(GeneralName::UniformResourceIdentifier(
            Ia5String::new(u).map_err(err("URI"))?,
        ));
    }
    if !sans.is_empty() {
        extensions.push(extension(false, &SubjectAltName(sans))?);
    }
    let tbs = TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(err("serial"))?,
        signature: sig_alg.clone(),
        issuer: issuer.clone(),
        validity: Validity {
            not_before: Time::try_from(params.not_before).map_err(err("notBefore"))?,
            not_after: Time::try_from(params.not_after).map_err(err("notAfter"))?,
        },
        subject: subject.clone(),
        subject_public_key_info: sign::spki(public),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(err("tbsCertificate"))?;
    let sig = sign::sign_with_id(issuer_key, CERT_ID, &tbs_der).map_err(err("signature"))?;
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm: sig_alg,
        signature: BitString::from_bytes(&sig).map_err(err("signature"))?,
    }
    .to_der()
    .map_err(err("certificate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_round_trips_and_a_tampered_one_is_refused() {
        let key = sm2::SecretKey::random(&mut rand_core::OsRng);
        let id = "spiffe://sm.test/ns/a/sa/b".to_string();
        let der = csr(&key, std::slice::from_ref(&id)).unwrap();
        let req = parse_csr(&der).unwrap();
        assert_eq!(req.uris, vec![id]);
        assert_eq!(req.public_key, key.public_key());
        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 10] ^= 1; // inside the signature
        assert!(parse_csr(&bad).is_err());
        assert!(parse_csr(b"garbage").is_err());
    }

    #[test]
    fn from_parts_checks_the_key() {
        let root = Sm2Cert::self_signed(&Params::ca("r", std::time::Duration::from_secs(3600))).unwrap();
        assert!(Sm2Cert::from_parts(root.der.clone(), root.key.clone()).is_ok());
        let other = sm2::SecretKey::random(&mut rand_core::OsRng);
        assert!(Sm2Cert::from_parts(root.der.clone(), other).is_err());
    }
}
