//! Scaffolding shared by weft-rpc's integration tests: the sofa-rpc-node peers of
//! `interop/rpc-node` run as child processes, and, for the wire tests, a raw client and a
//! provider's connection loop over the crate's own codecs.

#![allow(dead_code)] // each test file uses its part

use bytes::{Bytes, BytesMut};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use weft_rpc::codec::{Codec, Frame, FrameKind};
use weft_test_support::peers::ChildGuard;

/// Runs a sofa-rpc-node consumer (`node SCRIPT consumer TARGET ARGS…`) with `cmds` (one JSON
/// object per line) and returns its answers sorted by id; panics if it takes over 30s.
pub fn node_consume(
    script: &Path,
    target: SocketAddr,
    args: &[&str],
    cmds: &[serde_json::Value],
) -> Vec<serde_json::Value> {
    let mut cmd = Command::new("node");
    cmd.arg(script).arg("consumer").arg(target.to_string()).args(args);
    consume(cmd, cmds)
}

/// Runs a consumer process that reads commands on stdin (one JSON object per line) and prints
/// one JSON object per line; returns those sorted by `id` (lines without one last), and panics if
/// it takes over 30s.
pub fn consume(mut cmd: Command, cmds: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} starts: {e}"));
    {
        let mut stdin = child.stdin.take().unwrap();
        for c in cmds {
            writeln!(stdin, "{c}").unwrap();
        }
    }
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<serde_json::Value> = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l: String| serde_json::from_str(&l).ok())
            .collect();
        let _ = tx.send(lines);
    });
    let mut out = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{cmd:?} finishes within 30s"));
    out.sort_by_key(|v| v["id"].as_u64().unwrap_or(u64::MAX));
    drop(guard);
    out
}

/// A raw client speaking codec `C` on one connection.
pub struct Client<C> {
    codec: C,
    s: TcpStream,
    buf: BytesMut,
}

impl<C: Codec + Default> Client<C> {
    pub async fn connect(addr: SocketAddr) -> Client<C> {
        Client {
            codec: C::default(),
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::with_capacity(8192),
        }
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// The next frame, or `None` on EOF; panics after 5s.
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf, 1 << 24).unwrap() {
                    return Some(f);
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a frame within 5s")
    }
}

/// A provider's side of one connection in codec `C`: heartbeats answered, every other frame
/// handed to `on_frame` with the channel its replies are written from (in the order sent),
/// until EOF or `on_frame` breaks (which drops the connection).
pub async fn serve_conn<C: Codec + Default>(
    s: TcpStream,
    mut on_frame: impl FnMut(Frame, &mpsc::UnboundedSender<Bytes>) -> ControlFlow<()>,
) {
    let codec = C::default();
    let (mut r, mut w) = s.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(8192);
    'outer: loop {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while let Some(f) = codec.decode(&mut buf, 1 << 24).unwrap() {
            if f.kind == FrameKind::Heartbeat {
                let _ = tx.send(codec.heartbeat_reply(&f));
            } else if on_frame(f, &tx).is_break() {
                break 'outer;
            }
        }
    }
    writer.abort();
}

/// A proxy config's `clusters:` section: per (name, address) a cluster with a 1s connect timeout
/// and that one endpoint.
pub fn clusters_yaml(clusters: &[(&str, SocketAddr)]) -> String {
    let mut out = String::from("clusters:\n");
    for (name, addr) in clusters {
        out += &format!("  - name: {name}\n    connect_timeout: 1s\n    endpoints: [{{ address: \"{addr}\" }}]\n");
    }
    out
}

/// Asserts that `yaml` is refused as a config, with every one of `wants` in the error text.
#[track_caller]
pub fn assert_refused(yaml: &str, wants: &[&str]) {
    let e = weft_config::from_yaml(yaml).unwrap_err().to_string();
    for want in wants {
        assert!(e.contains(want), "missing {want} in:\n{e}");
    }
}
