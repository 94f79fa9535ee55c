//! The sidecar's DNS proxy (Istio's DNS proxying): `weft init --dns-port` redirects the app's
//! DNS (UDP and TCP port 53) here; names in the `dns.hosts` table get A/AAAA answers from it, every
//! other query is forwarded unchanged to the upstream resolver and its answer relayed.
//!
//! A minimal hand-written parser rather than `hickory-proto`: the proxy reads only the header and
//! the one question of a query, and writes answers by copying the question and appending fixed-size
//! records; everything else (forwarded queries and their answers) passes through as bytes. That is
//! about 100 lines against a crate of ~30k lines and its dependency tree in the proxy's build. The
//! parser has a fuzz target (`fuzz/fuzz_targets/dns_message.rs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a message is not a query this proxy can read.
#[derive(Debug, PartialEq, Eq)]
pub enum DnsError {
    Truncated,
    NotAQuery,
    /// Not exactly one question.
    QuestionCount(u16),
    /// A compression pointer or a reserved label type in the question name.
    BadName,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::Truncated => write!(f, "truncated message"),
            DnsError::NotAQuery => write!(f, "not a query"),
            DnsError::QuestionCount(n) => write!(f, "{n} questions (expected 1)"),
            DnsError::BadName => write!(f, "malformed question name"),
        }
    }
}

impl std::error::Error for DnsError {}

/// The one question of a query.
#[derive(Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question section ends in the message.
    pub end: usize,
}

/// Reads the header and the question of a standard query.
pub fn parse_query(msg: &[u8]) -> Result<Question, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Truncated);
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    // QR must be 0 (a query), OPCODE 0 (QUERY).
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 {
        return Err(DnsError::NotAQuery);
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    if qd != 1 {
        return Err(DnsError::QuestionCount(qd));
    }
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = *msg.get(at).ok_or(DnsError::Truncated)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Err(DnsError::BadName);
        }
        let label = msg.get(at..at + len).ok_or(DnsError::Truncated)?;
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            name.push(b.to_ascii_lowercase() as char);
        }
        if name.len() > 255 {
            return Err(DnsError::BadName);
        }
    }
    let tail = msg.get(at..at + 4).ok_or(DnsError::Truncated)?;
    Ok(Question {
        name,
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        end: at + 4,
    })
}

/// An authoritative answer to `query` with the addresses of `ips` that fit the question's type
/// (none: NOERROR without records, "no data"). Additional records of the query (EDNS) are dropped.
pub fn answer(query: &[u8], q: &Question, ips: &[IpAddr], ttl: u32) -> Vec<u8> {
    let fitting: Vec<&IpAddr> = ips
        .iter()
        .filter(|ip| {
            q.qclass == CLASS_IN && matches!((q.qtype, ip), (TYPE_A, IpAddr::V4(_)) | (TYPE_AAAA, IpAddr::V6(_)))
        })
        .collect();
    let mut out = Vec::with_capacity(q.end + fitting.len() * 28);
    out.extend_from_slice(&query[..2]); // id
    let rd = query[2] & 0x01;
    out.push(0x84 | rd); // QR, AA, RD as asked
    out.push(0x80); // RA, NOERROR
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(fitting.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..q.end]);
    for ip in fitting {
        out.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    out
}

/// SERVFAIL for a query the upstream did not answer (same id and question).
fn servfail(query: &[u8], q: &Question) -> Vec<u8> {
    let mut out = answer(query, q, &[], 0);
    out[2] &= !0x04; // not authoritative
    out[3] = 0x82; // RA, SERVFAIL
    out
}

struct Dns {
    hosts: BTreeMap<String, Vec<IpAddr>>,
    upstream: Option<SocketAddr>,
    ttl: u32,
}

impl Dns {
    /// The reply to one message: from the table, or from the upstream; `None`: drop it.
    async fn reply(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let q = parse_query(msg).ok();
        if let Some(q) = &q {
            if let Some(ips) = self.hosts.get(&q.name) {
                return Some(answer(msg, q, ips, self.ttl));
            }
        }
        match self.forward(msg).await {
            Some(r) => Some(r),
            None => q.map(|q| servfail(msg, &q)),
        }
    }

    async fn forward(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let up = self.upstream?;
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let sock = UdpSocket::bind(bind).await.ok()?;
        sock.connect(up).await.ok()?;
        sock.send(msg).await.ok()?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = tokio::time::timeout(FORWARD_TIMEOUT, sock.recv(&mut buf))
                .await
                .ok()?
                .ok()?;
            // Only the answer to this query (same id).
            if n >= 2 && buf[..2] == msg[..2] {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
}

/// The first `nameserver` of /etc/resolv.conf.
pub fn system_resolver() -> Option<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

/// Binds `dns.listen` (UDP and TCP) and serves on `handle` until the runtime stops.
pub fn start(cfg: &weft_config::Dns, handle: &tokio::runtime::Handle) -> std::io::Result<()> {
    let udp = std::net::UdpSocket::bind(cfg.listen)?;
    udp.set_nonblocking(true)?;
    let tcp = std::net::TcpListener::bind(cfg.listen)?;
    tcp.set_nonblocking(true)?;
    let dns = Arc::new(Dns {
        hosts: cfg.hosts.clone(),
        upstream: cfg.upstream.or_else(system_resolver),
        ttl: cfg.ttl.as_secs().min(u32::MAX as u64) as u32,
    });
    let _enter = handle.enter();
    let udp = UdpSocket::from_std(udp)?;
    let tcp = TcpListener::from_std(tcp)?;
    tracing::info!(listen = %cfg.listen, upstream = ?dns.upstream, names = dns.hosts.len(), "DNS proxy");
    handle.spawn(serve_udp(Arc::new(udp), dns.clone()));
    handle.spawn(serve_tcp(tcp, dns));
    Ok(())
}

async fn serve_udp(sock: Arc<UdpSocket>, dns: Arc<Dns>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            // (ICMP errors surface here; never spin on a persistent one.)
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let msg = buf[..n].to_vec();
        let (sock, dns) = (sock.clone(), dns.clone());
        tokio::spawn(async move {
            if let Some(r) = dns.reply(&msg).await {
                let _ = sock.send_to(&r, from).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, dns: Arc<Dns>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            // Messages with a 2-byte length prefix, until the client closes or idles 10 s.
            loop {
                let mut len = [0u8; 2];
                let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len)).await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut msg).await.is_err() {
                    return;
                }
                let Some(r) = dns.reply(&msg).await else { return };
                let mut out = (r.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&r);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn answers_a_and_aaaa_from_the_table() {
        let q = query(0x1234, "Reviews.Mesh", TYPE_A);
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.name, "reviews.mesh");
        let ips: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        let a = answer(&q, &parsed, &ips, 30);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[2], 0x85, "QR AA RD");
        assert_eq!(&a[6..8], &[0, 1], "one A record");
        assert_eq!(&a[a.len() - 4..], &[10, 0, 0, 7]);
        let q6 = query(7, "reviews.mesh", TYPE_AAAA);
        let a6 = answer(&q6, &parse_query(&q6).unwrap(), &ips, 30);
        assert_eq!(
            &a6[a6.len() - 16..],
            &"fd00::7".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        // MX for a known name: no data.
        let mx = query(8, "reviews.mesh", 15);
        assert_eq!(&answer(&mx, &parse_query(&mx).unwrap(), &ips, 30)[6..8], &[0, 0]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(parse_query(&[0; 5]), Err(DnsError::Truncated));
        let mut q = query(1, "a.b", TYPE_A);
        q[2] |= 0x80;
        assert_eq!(parse_query(&q), Err(DnsError::NotAQuery));
        let mut q = query(1, "a.b", TYPE_A);
        q[5] = 2;
        assert_eq!(parse_query(&q), Err(DnsError::QuestionCount(2)));
        let mut q = query(1, "a.b", TYPE_A);
        q[12] = 0xc0;
        assert_eq!(parse_query(&q), Err(DnsError::BadName));
        let q = query(1, "a.b", TYPE_A);
        assert_eq!(parse_query(&q[..q.len() - 1]), Err(DnsError::Truncated));
    }

    #[test]
    fn servfail_keeps_id_and_question() {
        let q = query(9, "x.y", TYPE_A);
        let r = servfail(&q, &parse_query(&q).unwrap());
        assert_eq!(&r[..2], &[0, 9]);
        assert_eq!(r[3] & 0x0f, 2);
        assert_eq!(&r[12..], &q[12..]);
    }
}
