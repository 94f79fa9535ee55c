//! Ports and listeners on 127.0.0.1.

use std::net::SocketAddr;

/// A 127.0.0.1 port that was free a moment ago, for something (a child process, a config) to
/// bind later. Drawn below the kernel's ephemeral range (32768+ by default), which every outgoing
/// connection and every bind to port 0 also draws from: a port from there could be taken before
/// the later bind. Prefer [`listener`] (bind port 0 and keep the socket) whenever the code under
/// test can take a bound socket or report the port it bound.
///
/// Within one test process (whose tests run in parallel threads) no port is handed out twice until
/// the range wraps: the ports come in sequence from a random start, so two tests cannot draw the
/// same one between the check and their later binds (random draws could, and did: a CI run's
/// graph test lost its listener to a port another test drew).
///
/// The range is 20000-25999. Programs that draw their own ports at random while tests run
/// (`weft demo`, `weft-xds-sim`) draw from 26000-32767 instead: a CI run's graph test lost its
/// sidecar's listener to a port `weft demo`, started by another test of the same binary, drew
/// between this check and the sidecar's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20000;
    const SPAN: u32 = 26000 - LOW;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, fastrand::u32(0..SPAN), Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..200 {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// [`free_port`] as a 127.0.0.1 socket address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A 127.0.0.1 address held for a proxy the test starts later (a listener it will be told about):
/// the returned socket is bound with SO_REUSEADDR and SO_REUSEPORT and never listens, so another
/// process's plain bind cannot take the port in between, while weft, which binds its listeners
/// with SO_REUSEPORT, can. Keep the socket until the proxy holds the port.
pub fn reserved_addr() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    for _ in 0..50 {
        let addr = free_addr();
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        s.set_reuse_port(true).expect("SO_REUSEPORT");
        if s.bind(&addr.into()).is_ok() {
            return (s, addr);
        }
    }
    panic!("no free 127.0.0.1 port to reserve");
}

/// A listener bound to 127.0.0.1 on an ephemeral port (kept open: nobody else can take it).
pub fn listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A 127.0.0.1 address on which nothing listens, for the life of the test process: the port stays
/// bound by a socket that never listens (leaked on purpose), so connecting is always refused and
/// no other socket of a test running in parallel can be given that port. (Binding and closing at
/// once left the port free for the next `127.0.0.1:0` bind, which made "dead upstream" tests
/// flaky.)
pub fn dead_addr() -> SocketAddr {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind 127.0.0.1:0");
    let addr = s.local_addr().ok().and_then(|a| a.as_socket()).expect("local address");
    std::mem::forget(s);
    addr
}

/// Whether a TCP connection to `addr` is refused (or fails) within `wait`.
pub async fn connection_refused(addr: SocketAddr, wait: std::time::Duration) -> bool {
    matches!(
        tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(_))
    )
}
