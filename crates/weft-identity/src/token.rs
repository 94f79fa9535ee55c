//! Bootstrap tokens: `weft1.<hex payload>.<hex HMAC-SHA256>`.
//!
//! The payload is `<SPIFFE ID>\n<expiry, Unix seconds>`. The HMAC key lives in the CA directory
//! (`token-hmac.key`, mode 0600) and never leaves `weft control`; a token is therefore only
//! checkable by the CA that minted it. A holder can read the identity a token is bound to with
//! [`peek`] (the client uses that to build its CSR) but cannot change it.

use crate::spiffe::{IdError, SpiffeId};
use std::fmt;

const PREFIX: &str = "weft1.";
/// Longer tokens are refused before any parsing.
pub const MAX_LEN: usize = 8192;

/// What a token asserts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub id: SpiffeId,
    /// Unix seconds.
    pub expires: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed(&'static str),
    Identity(IdError),
    BadSignature,
    Expired { expired_at: u64, now: u64 },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::Identity(e) => write!(f, "token identity: {e}"),
            TokenError::BadSignature => f.write_str("token signature does not verify (not minted by this CA)"),
            TokenError::Expired { expired_at, now } => {
                write!(f, "token expired {}s ago (at unix time {expired_at})", now - expired_at)
            }
        }
    }
}

impl std::error::Error for TokenError {}

fn payload(id: &SpiffeId, expires: u64) -> String {
    format!("{id}\n{expires}")
}

/// A token for `id`, valid until `expires` (Unix seconds).
pub fn mint(key: &[u8], id: &SpiffeId, expires: u64) -> String {
    let p = payload(id, expires);
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), p.as_bytes());
    format!(
        "{PREFIX}{}.{}",
        crate::hex::encode(p.as_bytes()),
        crate::hex::encode(tag.as_ref())
    )
}

fn split(token: &str) -> Result<(Vec<u8>, Vec<u8>), TokenError> {
    let token = token.trim();
    if token.len() > MAX_LEN {
        return Err(TokenError::Malformed("longer than 8192 bytes"));
    }
    let rest = token
        .strip_prefix(PREFIX)
        .ok_or(TokenError::Malformed("does not start with \"weft1.\""))?;
    let (p, t) = rest
        .split_once('.')
        .ok_or(TokenError::Malformed("expected weft1.<payload>.<signature>"))?;
    let p = crate::hex::decode(p).ok_or(TokenError::Malformed("payload is not hex"))?;
    let t = crate::hex::decode(t).ok_or(TokenError::Malformed("signature is not hex"))?;
    Ok((p, t))
}

fn claims(p: &[u8]) -> Result<Claims, TokenError> {
    let p = std::str::from_utf8(p).map_err(|_| TokenError::Malformed("payload is not UTF-8"))?;
    let (id, exp) = p
        .split_once('\n')
        .ok_or(TokenError::Malformed("payload is not <id>\\n<expiry>"))?;
    let expires = exp
        .parse::<u64>()
        .map_err(|_| TokenError::Malformed("expiry is not a number"))?;
    Ok(Claims {
        id: SpiffeId::parse(id).map_err(TokenError::Identity)?,
        expires,
    })
}

/// Reads the claims without checking the signature or the expiry (client side).
pub fn peek(token: &str) -> Result<Claims, TokenError> {
    claims(&split(token)?.0)
}

/// Checks the signature with `key` and the expiry against `now` (Unix seconds).
pub fn verify(key: &[u8], token: &str, now: u64) -> Result<Claims, TokenError> {
    let (p, tag) = split(token)?;
    ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), &p, &tag)
        .map_err(|_| TokenError::BadSignature)?;
    let c = claims(&p)?;
    if c.expires <= now {
        return Err(TokenError::Expired {
            expired_at: c.expires,
            now,
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_verify_and_refuse() {
        let id = SpiffeId::new("cluster.local", "default", "reviews").unwrap();
        let t = mint(b"k1", &id, 1000);
        assert_eq!(verify(b"k1", &t, 999).unwrap().id, id);
        assert_eq!(peek(&t).unwrap().expires, 1000);
        assert!(matches!(verify(b"k1", &t, 1000), Err(TokenError::Expired { .. })));
        assert_eq!(verify(b"k2", &t, 1), Err(TokenError::BadSignature));
        // Changing the identity in the payload breaks the signature.
        let other = SpiffeId::new("cluster.local", "default", "ratings").unwrap();
        let forged = format!(
            "weft1.{}.{}",
            crate::hex::encode(payload(&other, 1000).as_bytes()),
            t.rsplit('.').next().unwrap()
        );
        assert_eq!(verify(b"k1", &forged, 1), Err(TokenError::BadSignature));
        for bad in ["", "weft1.", "weft1.zz.00", "weft2.00.00", "weft1.0a0b"] {
            assert!(matches!(verify(b"k1", bad, 1), Err(TokenError::Malformed(_))), "{bad}");
        }
    }
}
