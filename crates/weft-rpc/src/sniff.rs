//! Which protocol a connection speaks, from its first bytes (one peek, nothing consumed or
//! copied beyond a few bytes on the stack): TLS ClientHello, the HTTP/2 connection preface, an
//! HTTP/1.x request line, Dubbo's magic `0xdabb`, Bolt's protocol codes 1 and 2. Whatever else —
//! including a client that sends nothing first — is the listener's fallback.
//!
//! A peek may return fewer bytes than a full signature: the decision is made on what is there
//! (a prefix of a signature counts), and bytes that contradict every signature are [`Sniffed::Other`].

/// The most bytes [`classify`] looks at (the peek buffer's size).
pub const SNIFF_LEN: usize = 24;

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Tls,
    Http2,
    Http1,
    Dubbo,
    Bolt,
    /// Nothing recognised (or nothing sent in time): the fallback.
    Other,
}

impl Sniffed {
    /// The label counted per connection.
    pub fn label(self) -> &'static str {
        match self {
            Sniffed::Tls => "tls",
            Sniffed::Http2 => "http2",
            Sniffed::Http1 => "http1",
            Sniffed::Dubbo => "dubbo",
            Sniffed::Bolt => "bolt",
            Sniffed::Other => "fallback",
        }
    }
}

/// `b` and `sig` agree on their common length (and `b` is not empty).
fn prefix_of(b: &[u8], sig: &[u8]) -> bool {
    let n = b.len().min(sig.len());
    n > 0 && b[..n] == sig[..n]
}

/// Classifies a connection's first bytes.
pub fn classify(b: &[u8]) -> Sniffed {
    let Some(&first) = b.first() else {
        return Sniffed::Other;
    };
    match first {
        // A TLS handshake record: version 3.x, handshake type 1 (ClientHello).
        0x16 => {
            let ok = b.get(1).is_none_or(|&v| v == 0x03)
                && b.get(2).is_none_or(|&v| v <= 0x04)
                && b.get(5).is_none_or(|&t| t == 0x01);
            if ok {
                Sniffed::Tls
            } else {
                Sniffed::Other
            }
        }
        0xda if b.get(1).is_none_or(|&m| m == 0xbb) => Sniffed::Dubbo,
        // Bolt v1: the command type (0 response, 1 request, 2 one-way) follows the code; v2 has
        // its version byte first. A command code's high byte is 0.
        0x01 if b.get(1).is_none_or(|&t| t <= 2) && b.get(2).is_none_or(|&c| c == 0) => Sniffed::Bolt,
        0x02 if b.get(2).is_none_or(|&t| t <= 2) && b.get(3).is_none_or(|&c| c == 0) => Sniffed::Bolt,
        _ if prefix_of(b, H2_PREFACE) && (b.len() >= 4 || !METHODS.iter().any(|m| prefix_of(b, m))) => Sniffed::Http2,
        _ if METHODS.iter().any(|m| prefix_of(b, m)) || prefix_of(b, H2_PREFACE) => Sniffed::Http1,
        _ => Sniffed::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]), Sniffed::Tls);
        assert_eq!(classify(&[0x16, 0x07]), Sniffed::Other);
        assert_eq!(classify(H2_PREFACE), Sniffed::Http2);
        assert_eq!(classify(b"PRI "), Sniffed::Http2);
        // "P" could be PRI, POST, PUT or PATCH: all are the HTTP path.
        assert_eq!(classify(b"P"), Sniffed::Http1);
        assert_eq!(classify(b"POST /x HTTP/1.1\r\n"), Sniffed::Http1);
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n"), Sniffed::Http1);
        assert_eq!(classify(b"GE"), Sniffed::Http1);
        assert_eq!(classify(b"GETX"), Sniffed::Other);
        assert_eq!(classify(&[0xda, 0xbb, 0xc2]), Sniffed::Dubbo);
        assert_eq!(classify(&[0xda, 0x00]), Sniffed::Other);
        assert_eq!(classify(&[0x01, 0x01, 0x00, 0x01]), Sniffed::Bolt);
        assert_eq!(classify(&[0x02, 0x01, 0x01, 0x00, 0x01]), Sniffed::Bolt);
        assert_eq!(classify(&[0x01, 0x09]), Sniffed::Other);
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Sniffed::Other);
        assert_eq!(classify(b""), Sniffed::Other);
    }
}
