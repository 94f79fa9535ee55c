//! What the mesh mTLS tests share (`mod mesh_support;`): a `weft control` CA's bootstrap tokens,
//! `weft proxy` sidecars that fetch their SVID from it, and plain HTTP/1.1 requests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");
pub const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
pub const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free 127.0.0.1 address outside the ephemeral port range ([`weft_test_support::free_addr`]):
/// a port from binding `127.0.0.1:0` can be the local port of another test's connection by the
/// time a proxy binds it.
pub fn addr() -> SocketAddr {
    weft_test_support::free_addr()
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

pub fn token(dir: &Path, identity: &str) -> PathBuf {
    let out = Command::new(WEFT)
        .args(["control", "token", "--ca-dir"])
        .arg(dir.join("ca"))
        .args(["--identity", identity, "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = dir.join(format!("{}.token", identity.replace('/', "_")));
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

pub struct Sidecar {
    pub _p: Proc,
    pub admin: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

pub fn sidecar(dir: &Path, name: &str, yaml: &str, ca: SocketAddr, identity: &str) -> Sidecar {
    sidecar_with(dir, name, yaml, ca, identity, &[])
}

/// [`sidecar`] with more `weft proxy` arguments (e.g. `--identity-key-type sm2`).
pub fn sidecar_with(dir: &Path, name: &str, yaml: &str, ca: SocketAddr, identity: &str, extra: &[&str]) -> Sidecar {
    let admin = addr();
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!("admin: {{ address: \"{admin}\" }}\nruntime: {{ concurrency: 1 }}\n{yaml}"),
    )
    .unwrap();
    let tok = token(dir, identity);
    let log = dir.join(format!("{name}.log"));
    let p = spawn(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(&cfg)
            .args(["--ca-address", &ca.to_string(), "--identity-token-file"])
            .arg(&tok)
            .args(extra),
        &log,
    );
    wait_until(&format!("{name}'s identity"), Duration::from_secs(30), || {
        let dump = http_text(admin, "GET", "/config_dump")?;
        dump.contains("spiffe://").then_some(())
    });
    Sidecar { _p: p, admin, log }
}

/// One request over a fresh plaintext connection: the whole response text; None on failure.
pub fn http_text(a: SocketAddr, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(a).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: ratings\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

pub fn status_and_body(resp: &str) -> (u16, &str) {
    let status = resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, resp.split_once("\r\n\r\n").map_or("", |(_, b)| b))
}

pub fn metric_of(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The status code of a response text (0 if there is none).
pub fn status_of(resp: &str) -> u16 {
    status_and_body(resp).0
}
