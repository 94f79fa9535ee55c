//! TLS or plaintext, from a connection's first bytes (a permissive listener serves both on one
//! port). A TLS connection starts with a handshake record (content type 0x16, version 3.x) whose
//! first message is a ClientHello (type 1).

use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniff {
    Tls,
    Plaintext,
    /// The bytes so far could start either.
    NeedMore,
}

/// Bytes [`sniff`] needs at most to decide.
pub const SNIFF_LEN: usize = 6;

/// Classifies the first bytes of a connection.
pub fn sniff(first: &[u8]) -> Sniff {
    // Record header: type, version (2), length (2); then the handshake type.
    let checks: [&dyn Fn(u8) -> bool; 6] = [
        &|b| b == 0x16,
        &|b| b == 0x03,
        &|b| b <= 0x04,
        &|_| true,
        &|_| true,
        &|b| b == 0x01,
    ];
    for (i, check) in checks.iter().enumerate() {
        match first.get(i) {
            None => return Sniff::NeedMore,
            Some(&b) if !check(b) => return Sniff::Plaintext,
            Some(_) => {}
        }
    }
    // A record length of 0 is not a ClientHello.
    if first[3] == 0 && first[4] == 0 {
        return Sniff::Plaintext;
    }
    Sniff::Tls
}

/// Peeks at `stream` (without consuming) until [`sniff`] decides or `timeout` passes. A client
/// that sends too few bytes in time is plaintext (a TLS client sends its whole ClientHello at
/// once); a closed connection is plaintext too (the caller then sees the close).
pub async fn peek_is_tls(stream: &TcpStream, timeout: Duration) -> std::io::Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; SNIFF_LEN];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(false),
        };
        if n == 0 {
            return Ok(false);
        }
        match sniff(&buf[..n]) {
            Sniff::Tls => return Ok(true),
            Sniff::Plaintext => return Ok(false),
            Sniff::NeedMore => {
                // Peek returns at once while any byte is buffered: wait a little for the rest.
                if tokio::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Plaintext);
        assert_eq!(sniff(b"PRI * HTTP/2.0"), Sniff::Plaintext);
        assert_eq!(sniff(&[0x16]), Sniff::NeedMore);
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniff::NeedMore);
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Sniff::Tls);
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x00, 0x00, 0x01]), Sniff::Plaintext);
        assert_eq!(sniff(&[0x16, 0x02]), Sniff::Plaintext);
        assert_eq!(sniff(&[0x16, 0x03, 0x09]), Sniff::Plaintext);
        assert_eq!(sniff(&[0x16, 0x03, 0x03, 0x00, 0x10, 0x02]), Sniff::Plaintext);
    }
}
