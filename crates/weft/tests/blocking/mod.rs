//! Blocking helpers shared by the process-level tests (`mod blocking;`): HTTP/1.1 requests, a
//! named upstream, and `weft control` / `weft proxy` sidecar processes.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_test_support::peers::ChildGuard;
use weft_test_support::{eventually_blocking, free_addr, within_blocking, TempDir};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// One HTTP/1.1 GET on a fresh connection (`connection: close`): (status, body).
pub fn http(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// An HTTP/1.1 server answering every request with `name` (connection: close).
pub fn name_server(name: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
            });
        }
    });
    addr
}

/// `weft control` on `reg` with `extra` flags, ready: (process, xDS address, admin address).
pub fn start_control(reg: &TempDir, extra: &[&str]) -> (ChildGuard, SocketAddr, SocketAddr) {
    let (xds, admin) = (free_addr(), free_addr());
    let child = ChildGuard(
        Command::new(WEFT)
            .arg("control")
            .args(extra)
            .arg("--registry")
            .arg(reg.path())
            .args(["--xds", &xds.to_string(), "--admin", &admin.to_string()])
            .env("WEFT_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft control"),
    );
    eventually_blocking("weft control /ready", Duration::from_secs(20), || {
        (http(admin, "x", "/ready")?.0 == 200).then_some(())
    });
    (child, xds, admin)
}

/// A `weft proxy` sidecar `id` of `service` whose `xds:` section is `xds_yaml` (indented lines),
/// ready: (process, admin address, outbound address).
pub fn start_sidecar(dir: &TempDir, id: &str, service: &str, xds_yaml: &str) -> (ChildGuard, SocketAddr, SocketAddr) {
    let (admin, outbound) = (free_addr(), free_addr());
    let cfg = format!(
        "node:\n  id: {id}\n  cluster: {service}\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{outbound}\"\n    weft.inbound: \"{}\"\n    weft.app: \"{}\"\nadmin:\n  address: \"{admin}\"\nruntime:\n  concurrency: 1\nxds:\n{xds_yaml}",
        free_addr(),
        free_addr(),
    );
    let path = dir.join(&format!("{id}.yaml"));
    std::fs::write(&path, cfg).unwrap();
    let child = start_proxy(&path, &[], admin).unwrap_or_else(|| panic!("sidecar {id} never became ready"));
    (child, admin, outbound)
}

/// `weft proxy -c PATH EXTRA...` (errors-only log), once its admin `/ready` answers 200 (20 s at
/// most; `None` then, and the process is ended).
pub fn start_proxy(path: &Path, extra: &[&OsStr], admin: SocketAddr) -> Option<ChildGuard> {
    let child = ChildGuard(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(path)
            .args(extra)
            .env("WEFT_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft proxy"),
    );
    within_blocking(Duration::from_secs(20), || {
        (http(admin, "x", "/ready")?.0 == 200).then_some(())
    })?;
    Some(child)
}
