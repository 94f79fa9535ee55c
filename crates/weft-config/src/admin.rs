//! The admin API's access policy, shared by `weft proxy` and `weft control` (see docs/security.md).
//!
//! The admin APIs have no authentication. They are safe because of where they listen and what they
//! accept:
//!
//! - **Loopback by default.** A non-loopback admin address needs an explicit opt-in
//!   ([`loopback_refusal`]): `admin.allow_non_loopback: true` in a proxy's YAML,
//!   `--admin-allow-non-loopback` for `weft proxy --admin` and for `weft control`.
//! - **No cross-site mutation.** A browser on the operator's machine can reach loopback: a page
//!   elsewhere can send it a "simple" request (form-encoded or `text/plain` POST, no preflight), or
//!   rebind its own DNS name to 127.0.0.1. A mutating request (any method but GET, HEAD, OPTIONS,
//!   TRACE) is refused ([`check_mutating`]) when it carries a foreign `Origin`, a `Host` that is not
//!   this admin API's address or a loopback name, or a CORS simple-request content type. curl,
//!   scripts and probes send none of these and are not affected.

use http::{HeaderMap, Method, Uri};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// True for 127.0.0.0/8, `::1`, and IPv4-mapped loopback (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Why an admin address may not be used, or `None` if it may: a non-loopback address (including
/// `0.0.0.0` and `::`) needs `allowed`. `opt_in` names the setting that allows it, for the message.
pub fn loopback_refusal(address: SocketAddr, allowed: bool, opt_in: &str) -> Option<String> {
    if allowed || is_loopback(address.ip()) {
        return None;
    }
    Some(format!(
        "{address} is not a loopback address; the admin API has no authentication and can drain and \
         reconfigure this process, so exposing it needs an explicit opt-in: set {opt_in} (see docs/security.md)"
    ))
}

/// True for the methods that may change state: everything but GET, HEAD, OPTIONS and TRACE.
pub fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// Why a mutating request was refused (answered 403).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `Origin` is present and is neither this admin API's own origin nor a loopback origin.
    ForeignOrigin(String),
    /// `Host` (or the HTTP/2 `:authority`) is neither this admin API's address nor a loopback name.
    ForeignHost(String),
    /// A content type a browser may send cross-site without a CORS preflight.
    SimpleContentType(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::ForeignOrigin(o) => write!(
                f,
                "Origin {o:?} is not this admin API's origin or a loopback origin (a cross-site request from a browser)"
            ),
            Refusal::ForeignHost(h) => write!(
                f,
                "Host {h:?} is not this admin API's address or a loopback name (a DNS-rebinding request from a browser?)"
            ),
            Refusal::SimpleContentType(c) => write!(
                f,
                "Content-Type {c:?} is what a cross-site HTML form or fetch sends; mutating calls take no body (curl -X POST)"
            ),
        }
    }
}

impl Refusal {
    /// The body of the 403 answer.
    pub fn body(&self) -> String {
        format!(
            "403 refused: {self}.\nMutating admin calls must come from a non-browser client such as curl -X POST, \
             addressed to the admin address or a loopback name; see docs/security.md\n"
        )
    }
}

/// Checks a mutating request against the cross-site rules. `local` is the address the connection
/// arrived on (the concrete address, also when the listener is bound to `0.0.0.0`).
pub fn check_mutating(uri: &Uri, headers: &HeaderMap, local: SocketAddr) -> Result<(), Refusal> {
    for o in headers.get_all(http::header::ORIGIN) {
        let o = String::from_utf8_lossy(o.as_bytes());
        if !origin_allowed(o.trim(), local) {
            return Err(Refusal::ForeignOrigin(o.into_owned()));
        }
    }
    let hosts: Vec<String> = headers
        .get_all(http::header::HOST)
        .iter()
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .chain(uri.authority().map(|a| a.as_str().to_string()))
        .collect();
    for h in hosts {
        if !host_allowed(h.trim(), local) {
            return Err(Refusal::ForeignHost(h));
        }
    }
    for c in headers.get_all(http::header::CONTENT_TYPE) {
        let c = String::from_utf8_lossy(c.as_bytes());
        let media = c.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if matches!(
            media.as_str(),
            "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
        ) {
            return Err(Refusal::SimpleContentType(c.into_owned()));
        }
    }
    Ok(())
}

/// Splits `host[:port]` (IPv6 in brackets) into the host, without brackets, and the port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address has more than one colon and no port.
        Some((h, _)) if h.contains(':') => Some((s, None)),
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((s, None)),
    }
}

/// A name or address that always means this machine: an attacker's DNS name cannot be one.
fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// `Host`: a loopback name or address, or the IP the connection arrived on. Any port (a port
/// forward or tunnel may change it); never a DNS name other than `localhost`.
fn host_allowed(host: &str, local: SocketAddr) -> bool {
    let Some((name, _port)) = split_host_port(host) else {
        return false;
    };
    is_loopback_name(name) || name.parse::<IpAddr>().is_ok_and(|ip| same_ip(ip, local.ip()))
}

/// `Origin`: a loopback origin (any port), or this admin API's own origin (its IP and port).
/// `null` (sandboxed or privacy-sensitive contexts) is foreign.
fn origin_allowed(origin: &str, local: SocketAddr) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") || rest.contains('/') {
        return false;
    }
    let Some((name, port)) = split_host_port(rest) else {
        return false;
    };
    if is_loopback_name(name) {
        return true;
    }
    let port = port.unwrap_or(if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 });
    name.parse::<IpAddr>().is_ok_and(|ip| same_ip(ip, local.ip())) && port == local.port()
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Who made an admin call, for the log line every mutating call gets.
#[derive(Clone, Debug)]
pub struct Caller {
    pub peer: SocketAddr,
    pub origin: String,
    pub host: String,
    pub user_agent: String,
}

impl Caller {
    pub fn new(peer: SocketAddr, uri: &Uri, headers: &HeaderMap) -> Caller {
        let get = |name: http::header::HeaderName| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_else(|| "-".into())
        };
        let mut host = get(http::header::HOST);
        if host == "-" {
            if let Some(a) = uri.authority() {
                host = a.as_str().to_string();
            }
        }
        Caller {
            peer,
            origin: get(http::header::ORIGIN),
            host,
            user_agent: get(http::header::USER_AGENT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:9901".parse().unwrap()
    }

    fn check(headers: &[(&str, &str)], local: SocketAddr) -> Result<(), Refusal> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        check_mutating(&Uri::from_static("/drain"), &h, local)
    }

    #[test]
    fn loopback_needs_no_opt_in_and_anything_else_does() {
        for a in ["127.0.0.1:9901", "127.1.2.3:0", "[::1]:9901", "[::ffff:127.0.0.1]:1"] {
            assert_eq!(loopback_refusal(a.parse().unwrap(), false, "x"), None, "{a}");
        }
        for a in ["0.0.0.0:9901", "[::]:9901", "10.0.0.5:9901", "[::ffff:10.0.0.1]:1"] {
            let e = loopback_refusal(a.parse().unwrap(), false, "admin.allow_non_loopback: true").unwrap();
            assert!(e.contains("admin.allow_non_loopback: true"), "{e}");
            assert_eq!(loopback_refusal(a.parse().unwrap(), true, "x"), None);
        }
    }

    #[test]
    fn mutating_methods() {
        assert!(is_mutating(&Method::POST) && is_mutating(&Method::PUT) && is_mutating(&Method::DELETE));
        assert!(is_mutating(&Method::PATCH) && is_mutating(&Method::from_bytes(b"PURGE").unwrap()));
        assert!(!is_mutating(&Method::GET) && !is_mutating(&Method::HEAD) && !is_mutating(&Method::OPTIONS));
    }

    #[test]
    fn curl_like_requests_pass() {
        assert_eq!(check(&[], local()), Ok(()));
        assert_eq!(
            check(&[("host", "127.0.0.1:9901"), ("user-agent", "curl/8")], local()),
            Ok(())
        );
        assert_eq!(check(&[("host", "localhost:9901")], local()), Ok(()));
        assert_eq!(check(&[("host", "LOCALHOST.")], local()), Ok(()));
        assert_eq!(check(&[("host", "127.0.0.1:18080")], local()), Ok(()), "a port forward");
        assert_eq!(check(&[("host", "[::1]:9901")], local()), Ok(()));
        assert_eq!(check(&[("content-type", "application/json")], local()), Ok(()));
        assert_eq!(check(&[("origin", "http://127.0.0.1:9901")], local()), Ok(()));
        assert_eq!(check(&[("origin", "http://localhost:3000")], local()), Ok(()));
        assert_eq!(check(&[("origin", "https://[::1]")], local()), Ok(()));
    }

    #[test]
    fn exposed_admin_accepts_its_own_address() {
        let l: SocketAddr = "10.0.0.5:9901".parse().unwrap();
        assert_eq!(check(&[("host", "10.0.0.5:9901")], l), Ok(()));
        assert_eq!(check(&[("host", "10.0.0.5")], l), Ok(()));
        assert_eq!(check(&[("origin", "http://10.0.0.5:9901")], l), Ok(()));
        assert!(matches!(
            check(&[("origin", "http://10.0.0.5:8080")], l),
            Err(Refusal::ForeignOrigin(_))
        ));
        assert!(matches!(
            check(&[("host", "10.0.0.6:9901")], l),
            Err(Refusal::ForeignHost(_))
        ));
        assert!(matches!(
            check(&[("host", "proxy-1.internal:9901")], l),
            Err(Refusal::ForeignHost(_))
        ));
    }

    #[test]
    fn cross_site_requests_are_refused() {
        for o in [
            "https://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
            "file://",
            "http://localhost.evil.example:80",
        ] {
            assert!(
                matches!(check(&[("origin", o)], local()), Err(Refusal::ForeignOrigin(_))),
                "{o}"
            );
        }
        for h in [
            "evil.example:9901",
            "evil.example",
            "127.0.0.1.nip.io:9901",
            "[::1",
            "localhost:x",
        ] {
            assert!(
                matches!(check(&[("host", h)], local()), Err(Refusal::ForeignHost(_))),
                "{h}"
            );
        }
        for c in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "Application/X-WWW-Form-Urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let r = check(&[("content-type", c)], local());
            assert!(matches!(r, Err(Refusal::SimpleContentType(_))), "{c}");
            assert!(r.unwrap_err().body().starts_with("403 refused: "));
        }
        // An authority in the request target counts like Host.
        let r = check_mutating(
            &Uri::from_static("http://evil.example:9901/drain"),
            &HeaderMap::new(),
            local(),
        );
        assert!(matches!(r, Err(Refusal::ForeignHost(_))));
    }
}
