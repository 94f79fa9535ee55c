//! SM2 certificates: self-signed roots and the leaves they issue (server names, SPIFFE IDs), signed
//! SM2-with-SM3 under the certificate ID `1234567812345678`.
//!
//! rcgen cannot sign with SM2, so certificates are assembled here from `x509-cert`'s structures and
//! signed with [`crate::sign::sign_with_id`].

use crate::sign::{self, CERT_ID, SM2_WITH_SM3};
use der::asn1::{BitString, Ia5String, OctetString};
use der::Encode;
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

/// A PEM block.
pub fn pem(label: &str, der_bytes: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der_bytes).expect("PEM encodes")
}

fn subject_name(cn: &str) -> Result<Name, CertError> {
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
