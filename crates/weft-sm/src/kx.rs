//! `curveSM2` key exchange (RFC 8998 §2: NamedGroup 41): plain ECDHE on the SM2 curve, key shares as
//! uncompressed points (RFC 8446 §4.2.8.2 format), the shared secret the x coordinate (RFC 8998
//! §3.2.1 — not the SM2 key agreement protocol of GB/T 32918.3).
//!
//! Hand-written because rustls' `SupportedKxGroup` has no SM2 implementation; the arithmetic is
//! RustCrypto's (`elliptic-curve`'s generic ECDH over the `sm2` curve).

use elliptic_curve::ecdh::EphemeralSecret;
use elliptic_curve::sec1::ToEncodedPoint;
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};
use sm2::{PublicKey, Sm2};

/// `curveSM2`'s NamedGroup code point.
pub const CURVE_SM2_ID: u16 = 41;

/// An uncompressed SM2 point: 0x04 || x || y.
const POINT_LEN: usize = 65;

/// The `curveSM2` group for a rustls `CryptoProvider`'s `kx_groups`.
#[derive(Debug)]
pub struct CurveSm2;

/// `curveSM2`.
pub static CURVE_SM2: CurveSm2 = CurveSm2;

impl SupportedKxGroup for CurveSm2 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let secret = EphemeralSecret::<Sm2>::random(&mut rand_core::OsRng);
        let public = secret.public_key().to_encoded_point(false).as_bytes().to_vec();
        Ok(Box::new(ActiveSm2 { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::from(CURVE_SM2_ID)
    }
}

struct ActiveSm2 {
    secret: EphemeralSecret<Sm2>,
    public: Vec<u8>,
}

impl ActiveKeyExchange for ActiveSm2 {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        let peer = parse_key_share(peer_pub_key)?;
        let shared = self.secret.diffie_hellman(&peer);
        Ok(SharedSecret::from(&shared.raw_secret_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::from(CURVE_SM2_ID)
    }
}

/// A peer's key share: exactly an uncompressed point on the curve (not the identity).
pub fn parse_key_share(bytes: &[u8]) -> Result<PublicKey, Error> {
    if bytes.len() != POINT_LEN || bytes[0] != 0x04 {
        return Err(PeerMisbehaved::InvalidKeyShare.into());
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| PeerMisbehaved::InvalidKeyShare.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_secret() {
        let a = CURVE_SM2.start().unwrap();
        let b = CURVE_SM2.start().unwrap();
        let (pa, pb) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        assert_eq!(pa.len(), 65);
        let sa = a.complete(&pb).unwrap();
        let sb = b.complete(&pa).unwrap();
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
    }

    #[test]
    fn refuses_malformed_shares() {
        let a = CURVE_SM2.start().unwrap();
        let mut p = a.pub_key().to_vec();
        assert!(parse_key_share(&p[..64]).is_err());
        p[0] = 0x02;
        assert!(parse_key_share(&p[..33]).is_err());
        p[0] = 0x04;
        p[64] ^= 1; // off the curve
        assert!(parse_key_share(&p).is_err());
        assert!(parse_key_share(&[0x04; 65]).is_err());
    }
}
