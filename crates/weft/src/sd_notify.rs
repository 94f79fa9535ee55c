//! systemd's readiness protocol (`sd_notify(3)`), written by hand: one datagram of
//! `KEY=VALUE` lines to the Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name
//! when it starts with `@`). Without `$NOTIFY_SOCKET` (not under a `Type=notify` unit) nothing is
//! sent.
//!
//! weft sends `READY=1` once its listeners serve and its configuration is loaded (after a hot
//! restart with `MAINPID=` its own pid, so systemd follows the new process; that needs
//! `NotifyAccess=all`), `RELOADING=1` … `READY=1` around a SIGHUP reload, and `STOPPING=1` when it
//! drains.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where `$NOTIFY_SOCKET` points.
fn address(var: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = var.as_bytes();
    match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(var)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "NOTIFY_SOCKET={:?} is neither an absolute path nor an abstract name (@...)",
                var
            ),
        )),
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments). `Ok(false)` when `$NOTIFY_SOCKET`
/// is not set.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(var) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let addr = address(&var)?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// [`notify`], logging a failure instead of returning it: readiness reports never stop the proxy.
pub fn report(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state = %state.replace('\n', " "), "sd_notify"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, state = %state.replace('\n', " "), "sd_notify failed"),
    }
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd 253+ asks for (`Type=notify-reload`).
pub fn reloading() -> String {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn paths_and_abstract_names() {
        let a = address(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(a.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        let a = address(OsStr::new("@weft-test")).unwrap();
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(a.as_abstract_name(), Some(&b"weft-test"[..]));
        let e = address(OsStr::new("relative")).unwrap_err();
        assert!(e.to_string().contains("NOTIFY_SOCKET"), "{e}");
        assert!(address(OsStr::new("")).is_err());
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("weft-sd-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let addr = address(OsStr::new(&format!("@{name}"))).unwrap();
        UnixDatagram::unbound()
            .unwrap()
            .send_to_addr(b"READY=1", &addr)
            .unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(reloading().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }
}
