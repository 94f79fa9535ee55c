//! Sidecar lifecycle helpers: `weft wait-ready` (an app waits for its sidecar before its first
//! call) and the process's own graceful exit (SIGTERM to itself), used by `POST /quitquitquit` and
//! by a hot-restart hand-over.

use clap::Args;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct WaitReadyArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Give up after this long, e.g. "60s".
    #[arg(long, value_parser = weft_config::duration::parse, default_value = "60s")]
    timeout: Duration,
}

/// Starts this process's drain-and-exit path, exactly as a SIGTERM from outside would.
pub fn terminate_self() {
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}

/// One `GET /ready`: the status code and body, or why there was none.
fn probe(admin: SocketAddr) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(format!("GET /ready HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(64 * 1024).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls the admin `/ready` every 100 ms until it answers 200 (exit 0) or the timeout passes
/// (exit 1, naming the last answer).
pub fn wait_ready(args: WaitReadyArgs) -> i32 {
    let deadline = Instant::now() + args.timeout;
    let mut last;
    loop {
        match probe(args.admin) {
            Ok((200, _)) => return 0,
            Ok((code, body)) => last = format!("{code} {body}"),
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            eprintln!(
                "weft wait-ready: the proxy at {} is not ready after {:?}; last answer: {last}",
                args.admin, args.timeout
            );
            return 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
