//! Scaffolding shared by weft-proxy's integration tests: Prometheus exposition text parsed into
//! samples and summed as a dashboard query would, and a TCP upstream and client session for the
//! TCP proxy's byte counts.

#![allow(dead_code)] // each test file uses its part

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed sample: metric name, labels, value.
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus/OpenMetrics text exposition samples (`name{a="b",...} value`).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (head, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
            None => (head, ""),
        };
        let mut map = HashMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").expect("label");
            let end = after.find('"').expect("label value end");
            map.insert(k.to_string(), after[..end].to_string());
            rest = after[end + 1..].trim_start_matches(',');
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value: value.parse().expect("sample value"),
        });
    }
    out
}

/// `sum(NAME{k="v",...})`.
pub fn sum(samples: &[Sample], name: &str, matchers: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && matchers
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// A TCP upstream that reads until EOF, then answers with twice as many bytes and closes.
pub async fn doubling_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                let _ = s.write_all(&vec![b'y'; buf.len() * 2]).await;
            });
        }
    });
    addr
}

/// One TCP session: sends `n` bytes, half-closes, reads the reply to EOF (panics after 5s).
/// Returns the client's own address and the reply's length (or the read's error).
pub async fn tcp_session(addr: SocketAddr, n: usize) -> (SocketAddr, std::io::Result<usize>) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(&vec![b'x'; n]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut reply))
        .await
        .expect("session ends in time");
    (me, read)
}
