//! Header helpers for the request path: request facts, smuggling checks, hop-by-hop removal,
//! upgrade detection, request ids and load-balancer hashing.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use std::net::SocketAddr;
use weft_config::HashPolicy;
use weft_upstream::body::RequestBody;
use weft_upstream::h1::{hop_by_hop_index, HOP_BY_HOP};
pub(super) use weft_upstream::h1::{X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REQUEST_ID};

/// gRPC's fields, looked up as constants: a `&str` key is parsed into a header name on every lookup.
pub(super) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(super) static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub(super) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Header naming the upstream for `original_dst` clusters in HTTP.
pub(super) static ORIGINAL_DST_HEADER: HeaderName = HeaderName::from_static("x-weft-original-dst-host");

pub(super) fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC (or Dubbo3 Triple) call's service and method from its path, `/<service>/<method>`.
/// None for any other shape (no leading `/`, an empty part, more than two parts).
pub(super) fn grpc_service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

pub(super) fn request_host(req: &Request<RequestBody>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// Rejects request shapes that let a front end and a back end disagree about where a request ends.
pub(super) fn smuggling_check(req: &Request<RequestBody>) -> bool {
    let h = req.headers();
    if req.version() == Version::HTTP_2 {
        // h2 frames its own bodies; these headers are connection-specific and forbidden (RFC 9113 8.2.2).
        return !h.contains_key(header::TRANSFER_ENCODING);
    }
    let mut cl = h.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = cl.next() else {
        return true;
    };
    !h.contains_key(header::TRANSFER_ENCODING) && cl.all(|v| v == first)
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including any named in `Connection`.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these, and most others only `connection`: one pass of cheap name
    // comparisons (standard header names compare as enum values) finds which are present, and only
    // those are removed (each removal hashes the name).
    let found = h.keys().fold(0u8, |m, k| m | hop_bit(k));
    strip_found(h, found, keep_upgrade);
}

/// [`strip_hop_by_hop`] with the hop-by-hop fields present (`found`, bits of [`HOP_BY_HOP`])
/// already known. `true`: fields named in `Connection` were removed (other masks of the map's
/// fields may be out of date).
fn strip_found(h: &mut HeaderMap, found: u8, keep_upgrade: bool) -> bool {
    if found == 0 {
        return false;
    }
    if found & HOP_CONNECTION != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            if let Ok(s) = v.to_str() {
                for token in s.split(',') {
                    let t = token.trim();
                    // `keep-alive` is removed below if present (its bit); nothing to look up.
                    if t.is_empty()
                        || t.eq_ignore_ascii_case("keep-alive")
                        || (keep_upgrade && t.eq_ignore_ascii_case("upgrade"))
                    {
                        continue;
                    }
                    // `from_bytes` lower-cases the name itself.
                    if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                        named.push(n);
                    }
                }
            }
        }
        for n in named {
            h.remove(n);
        }
    }
    let removable = match keep_upgrade {
        true => found & !(HOP_CONNECTION | HOP_UPGRADE),
        false => found,
    };
    for (bit, name) in HOP_BY_HOP.iter().enumerate() {
        if removable & (1 << bit) != 0 {
            h.remove(name);
        }
    }
    found & HOP_CONNECTION != 0
}

/// The request fields the upstream rewrite reads or removes, as bits of a [`RequestFields`] mask.
pub(super) mod field {
    pub const EXPECT: u16 = 1 << 8;
    pub const TE: u16 = 1 << 9;
    pub const X_FORWARDED_FOR: u16 = 1 << 10;
    pub const X_FORWARDED_PROTO: u16 = 1 << 11;
    pub const X_REQUEST_ID: u16 = 1 << 12;
    pub const ORIGINAL_DST: u16 = 1 << 13;
}

/// Which of the fields the upstream rewrite touches a request has: the hop-by-hop ones (low
/// byte, bits of [`HOP_BY_HOP`]) and those of [`field`]. One pass over the request's (few) field
/// names, matched by length and bytes, instead of a hashed lookup for each of a dozen names
/// most requests do not carry (`bench/instructions`).
#[derive(Clone, Copy)]
pub(super) struct RequestFields(u16);

impl RequestFields {
    pub(super) fn scan(h: &HeaderMap) -> RequestFields {
        RequestFields(h.keys().fold(0u16, |m, k| m | request_field_bit(k)))
    }

    pub(super) fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// Removes the hop-by-hop fields found ([`strip_hop_by_hop`]); the mask is taken again if
    /// `Connection` named other fields (they may be among the others).
    pub(super) fn strip_hop_by_hop(self, h: &mut HeaderMap, keep_upgrade: bool) -> RequestFields {
        match strip_found(h, self.0 as u8, keep_upgrade) {
            true => RequestFields::scan(h),
            false => self,
        }
    }
}

fn request_field_bit(k: &HeaderName) -> u16 {
    let name = k.as_str();
    match name.len() {
        2 if name == "te" => field::TE,
        6 if name == "expect" => field::EXPECT,
        12 if name == "x-request-id" => field::X_REQUEST_ID,
        15 if name == "x-forwarded-for" => field::X_FORWARDED_FOR,
        17 if name == "x-forwarded-proto" => field::X_FORWARDED_PROTO,
        24 if k == ORIGINAL_DST_HEADER => field::ORIGINAL_DST,
        _ => hop_bit(k) as u16,
    }
}

const HOP_CONNECTION: u8 = 1;
const HOP_UPGRADE: u8 = 2;
/// Bit `i` of the mask stands for entry `i` of [`HOP_BY_HOP`].
fn hop_bit(k: &HeaderName) -> u8 {
    hop_by_hop_index(k).map_or(0, |i| 1 << i)
}

pub(super) fn is_upgrade(req: &Request<RequestBody>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
                .unwrap_or(false)
        })
}

pub(super) fn request_id() -> HeaderValue {
    let mut n = fastrand::u128(..);
    // UUID v4: version nibble 4, variant bits 10.
    n = (n & !(0xf << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    let out = uuid_text(n);
    // SAFETY (of the contract: valid header-value bytes): lower-case hex digits and dashes only.
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes::Bytes::copy_from_slice(&out)) }
}

/// `n` as a UUID's text (8-4-4-4-12 lower-case hex digits), without a loop: see [`hex16`].
fn uuid_text(n: u128) -> [u8; 36] {
    let (hi, lo) = (hex16((n >> 64) as u64), hex16(n as u64));
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hi[..8]);
    out[9..13].copy_from_slice(&hi[8..12]);
    out[14..18].copy_from_slice(&hi[12..]);
    out[19..23].copy_from_slice(&lo[..4]);
    out[24..].copy_from_slice(&lo[4..]);
    out
}

/// The 16 lower-case hex digits of `x`, most significant first. Each nibble is spread into a byte
/// of its own and mapped to its digit eight bytes at a time (SWAR): ~30 instructions, against
/// ~150 for a table lookup per nibble.
fn hex16(x: u64) -> [u8; 16] {
    // Nibble k of a 32-bit value into byte k.
    fn spread(x: u64) -> u64 {
        let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f
    }
    // Every byte 0..=15 to '0'..='9' or 'a'..='f' (b + 6 carries into bit 4 exactly when b > 9).
    fn digits(b: u64) -> u64 {
        let above_9 = ((b + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
        b + 0x3030_3030_3030_3030 + above_9 * (u64::from(b'a') - u64::from(b'0') - 10)
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&digits(spread(x >> 32)).to_be_bytes());
    out[8..].copy_from_slice(&digits(spread(x & 0xffff_ffff)).to_be_bytes());
    out
}

/// `peer_ip` is the client address as text (already formatted once per connection). With
/// `conn` (the connection's remote and local addresses; `None` when the cluster does not hash),
/// a cookie policy with a ttl whose cookie the request lacks generates one (see
/// [`generated_cookie`]): the hash is that of the generated value, and its `Set-Cookie` is pushed
/// on `set_cookies` for the response.
pub(super) fn compute_hash(
    policies: &[HashPolicy],
    req: &Request<RequestBody>,
    peer_ip: &[u8],
    conn: Option<(SocketAddr, Option<SocketAddr>)>,
    set_cookies: &mut Vec<HeaderValue>,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        let (h, terminal) = match p {
            HashPolicy::Header { name, terminal } => (
                req.headers().get(name).map(|v| weft_lb::hash_key(v.as_bytes())),
                *terminal,
            ),
            HashPolicy::Cookie {
                name,
                terminal,
                generate,
            } => match (cookie(req.headers(), name), generate.as_deref().zip(conn)) {
                (Some(v), _) => (Some(weft_lb::hash_key(v.as_bytes())), *terminal),
                (None, Some((g, (remote, local)))) => {
                    let value = generated_cookie(remote, local);
                    if let Ok(v) = HeaderValue::from_str(&g.set_cookie(name, &value)) {
                        set_cookies.push(v);
                    }
                    (Some(weft_lb::hash_key(value.as_bytes())), *terminal)
                }
                (None, None) => (None, *terminal),
            },
            HashPolicy::SourceIp { terminal } => (Some(weft_lb::hash_key(peer_ip)), *terminal),
            HashPolicy::QueryParameter { name, terminal } => (
                req.uri()
                    .query()
                    .and_then(|q| crate::router::query_param(q, name))
                    .map(|v| weft_lb::hash_key(v.as_bytes())),
                *terminal,
            ),
        };
        if let Some(h) = h {
            // Combine like Envoy: rotate-left and xor.
            hash = Some(match hash {
                None => h,
                Some(prev) => prev.rotate_left(1) ^ h,
            });
            if terminal {
                break;
            }
        }
    }
    hash
}

/// A generated hash cookie's value, as Envoy's router makes it: the hex of xxHash64 over the
/// downstream connection's remote then local address (`"127.0.0.1:50000127.0.0.1:8080"`), so every
/// request of one connection gets the same cookie.
pub(super) fn generated_cookie(remote: SocketAddr, local: Option<SocketAddr>) -> String {
    use std::fmt::Write as _;
    let mut addrs = String::with_capacity(96);
    let _ = write!(addrs, "{remote}");
    if let Some(l) = local {
        let _ = write!(addrs, "{l}");
    }
    format!("{:016x}", weft_lb::hash_key(addrs.as_bytes()))
}

/// The value of cookie `name` (compared case-sensitively), without the double quotes that may
/// surround it (as Envoy: `s="abc"` hashes like `s=abc`); an empty value counts as absent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == name {
                    let unquoted = val.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(val);
                    return Some(unquoted).filter(|v| !v.is_empty());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod cookie_tests {
    use super::{cookie, generated_cookie};
    use http::header::{HeaderMap, HeaderValue, COOKIE};

    #[test]
    fn quoted_values_are_unquoted() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; s=\"00ff\""));
        assert_eq!(cookie(&h, "s"), Some("00ff"));
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "S"), None);
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("s=\"\"; e="));
        assert_eq!(cookie(&h, "s"), None, "empty: absent, as Envoy");
        assert_eq!(cookie(&h, "e"), None);
    }

    #[test]
    fn generated_values_are_16_hex_digits_per_connection() {
        let a = "127.0.0.1:40000".parse().unwrap();
        let b = "127.0.0.1:40001".parse().unwrap();
        let l = Some("127.0.0.1:8080".parse().unwrap());
        let v = generated_cookie(a, l);
        assert_eq!(v.len(), 16);
        assert!(v.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(v, generated_cookie(a, l));
        assert_ne!(v, generated_cookie(b, l));
        assert_eq!(
            v,
            format!("{:016x}", weft_lb::hash_key(b"127.0.0.1:40000127.0.0.1:8080"))
        );
    }
}

#[cfg(test)]
mod grpc_path_tests {
    use super::grpc_service_method;

    #[test]
    fn service_and_method() {
        assert_eq!(
            grpc_service_method("/org.apache.dubbo.samples.Greeter/sayHello"),
            Some(("org.apache.dubbo.samples.Greeter", "sayHello"))
        );
        for bad in ["", "/", "//", "/a", "/a/", "//m", "/a/b/c", "a/b", "/a/b/"] {
            assert_eq!(grpc_service_method(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_field_bits_match_the_names() {
        let named = [
            (header::EXPECT, field::EXPECT),
            (header::TE, field::TE),
            (HeaderName::from_static("x-forwarded-for"), field::X_FORWARDED_FOR),
            (HeaderName::from_static("x-forwarded-proto"), field::X_FORWARDED_PROTO),
            (HeaderName::from_static("x-request-id"), field::X_REQUEST_ID),
            (ORIGINAL_DST_HEADER.clone(), field::ORIGINAL_DST),
        ];
        for (name, bit) in &named {
            assert_eq!(request_field_bit(name), *bit, "{name}");
        }
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(request_field_bit(name), 1 << i, "{name}");
        }
        for other in ["host", "content-length", "tee", "x-forwarded-host", "x-request-ids"] {
            assert_eq!(request_field_bit(&HeaderName::from_static(other)), 0, "{other}");
        }
        // Fields named in `Connection` are removed, and the mask is taken again.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-request-id, te"));
        h.insert(HeaderName::from_static("x-request-id"), HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        let f = RequestFields::scan(&h);
        assert!(f.has(field::X_REQUEST_ID) && f.has(field::TE) && f.has(field::EXPECT));
        let f = f.strip_hop_by_hop(&mut h, false);
        assert!(!f.has(field::X_REQUEST_ID) && !f.has(field::TE) && f.has(field::EXPECT));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn hop_bits_match_the_names() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_bit(name), 1 << i, "{name}");
        }
        assert_eq!(hop_bit(&header::CONTENT_LENGTH), 0);
        assert_eq!(hop_bit(&HeaderName::from_static("x-upgrade")), 0);
    }

    #[test]
    fn uuid_text_is_the_hex_of_the_number() {
        let mut rng = fastrand::Rng::with_seed(7);
        for n in [0, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210]
            .into_iter()
            .chain((0..1000).map(|_| rng.u128(..)))
        {
            let hex = format!("{n:032x}");
            let want = format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            );
            assert_eq!(std::str::from_utf8(&uuid_text(n)).unwrap(), want);
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = request_id();
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        for (i, c) in s.chars().enumerate() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(c, '-', "{s}"),
                14 => assert_eq!(c, '4', "{s}"),
                19 => assert!(matches!(c, '8' | '9' | 'a' | 'b'), "{s}"),
                _ => assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{s}"),
            }
        }
        assert_ne!(a, request_id());
    }
}
