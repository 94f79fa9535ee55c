//! Transparent interception on the proxy side: the socket options and the original-destination
//! dispatch of `original_destination` listeners (see `weft init` for the iptables side).
//!
//! - REDIRECT (iptables nat): the kernel rewrote the destination; `SO_ORIGINAL_DST`
//!   (`IP6T_SO_ORIGINAL_DST` for IPv6) gives it back.
//! - TPROXY (iptables mangle): no rewrite; the listening socket has `IP_TRANSPARENT` (listener
//!   `transparent: true`) and the accepted socket's local address *is* the original destination.
//!
//! All through socket2's safe wrappers: no `unsafe` here.

use crate::server::{ListenerRt, Shared};
use socket2::Socket;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use weft_config::Listener;

/// `IP_TRANSPARENT` (`IPV6_TRANSPARENT`) on a listening socket before it binds, so that it accepts
/// connections TPROXY diverts to it whatever their destination. Needs CAP_NET_ADMIN (or CAP_NET_RAW).
pub fn set_transparent(s: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    let r = if addr.is_ipv4() {
        s.set_ip_transparent_v4(true)
    } else {
        s.set_ip_transparent_v6(true)
    };
    r.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("transparent: true: cannot set IP_TRANSPARENT ({e}); the proxy needs CAP_NET_ADMIN"),
        )
    })
}

/// The connection's destination before interception: `SO_ORIGINAL_DST` after a REDIRECT, else
/// (a `transparent` listener) the accepted socket's own address when it is not the listener's.
/// `None` for a connection made straight to the listener.
pub fn original_dst(stream: &TcpStream, listener: &Listener) -> Option<SocketAddr> {
    if let Some(d) = crate::tcp::original_dst(stream) {
        return Some(d);
    }
    if !listener.transparent {
        return None;
    }
    let local = stream.local_addr().ok()?;
    let l = listener.address;
    let to_listener = local.port() == l.port() && (l.ip().is_unspecified() || l.ip() == local.ip());
    (!to_listener).then_some(local)
}

/// For an `original_destination` listener: the listener that serves the connection (a virtual
/// listener, `bind_to_port: false`, whose address is the original destination, else the accepting
/// one) and the address its filter chains match on (the original destination, else `local`).
pub fn dispatch(
    stream: &TcpStream,
    accepting: &Arc<ListenerRt>,
    shared: &Shared,
    local: SocketAddr,
) -> (Arc<ListenerRt>, SocketAddr) {
    let Some(orig) = original_dst(stream, &accepting.config) else {
        return (accepting.clone(), local);
    };
    let snapshot = shared.snapshot.load();
    let matches = |a: SocketAddr, exact: bool| {
        a.port() == orig.port()
            && if exact {
                a.ip() == orig.ip()
            } else {
                a.ip().is_unspecified()
            }
    };
    // The most specific virtual listener: its exact address, then a wildcard one on the port.
    let virtual_listener = [true, false].into_iter().find_map(|exact| {
        snapshot
            .listeners
            .values()
            .find(|l| !l.config.bind_to_port && matches(l.config.address, exact))
            .cloned()
    });
    (virtual_listener.unwrap_or_else(|| accepting.clone()), orig)
}
