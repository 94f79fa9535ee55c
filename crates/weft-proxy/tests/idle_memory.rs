//! Memory per idle downstream connection: real idle connections (one request each, then nothing)
//! to an in-process proxy, measured as the growth of this process's live heap bytes (a counting
//! global allocator) and, for information, of its RSS. The clients are plain blocking sockets (no
//! user-space state per connection besides the fd), so the growth is the proxy's. One test per
//! binary on purpose: both figures are process-wide.
//!
//! The assertions use live heap bytes, not RSS: this binary uses the system allocator (weft uses
//! mimalloc), and glibc keeps freed chunks resident in ways that depend on their layout, so the
//! RSS of the same workload varied between 7 and 14 KiB per connection from run to run.
//! `bench/idle-memory` measures the RSS of the release binary as deployed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;
use weft_test_support::*;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `weft_proxy::idle::parked_connections()` while the last batch was idle.
static PARKED_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// This process's resident memory, after asking the allocator to give free memory back (glibc
/// keeps freed chunks resident otherwise, so memory freed by parking would not show).
fn rss_kib() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only releases free memory.
        unsafe { malloc_trim(0) };
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn h1_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "closed before the response: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("content-length");
            if got.len() >= end + 4 + cl {
                return s;
            }
        }
    }
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Prior-knowledge h2c: preface, SETTINGS, one GET; ACKs the server's SETTINGS; reads until the
/// response's END_STREAM. `:authority` and `user-agent` are sent as literals with incremental
/// indexing, as nghttp2, curl and browsers do, so that they enter the proxy's HPACK decoder table
/// (and the response's fields its encoder table).
fn h2_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    // HPACK: :method GET, :scheme http, :path / (static indices 2, 6, 4); :authority (static name
    // 1) and user-agent (static name 58) as literals with incremental indexing (0x40 | index).
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 10];
    block.extend_from_slice(b"test.local");
    block.extend_from_slice(&[0x40 | 58, 11]);
    block.extend_from_slice(b"idle-memory");
    out.extend(h2_frame(0x1, 0x5, 1, &block));
    s.write_all(&out).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while got.len() >= 9 {
            let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
            if got.len() < 9 + len {
                break;
            }
            let (kind, flags) = (got[3], got[4]);
            let stream = u32::from_be_bytes([got[5], got[6], got[7], got[8]]) & 0x7fff_ffff;
            got.drain(..9 + len);
            match kind {
                0x4 if flags & 1 == 0 => s.write_all(&h2_frame(0x4, 1, 0, &[])).unwrap(),
                0x7 => panic!("GOAWAY"),
                0x3 if stream == 1 => panic!("RST_STREAM"),
                0x0 | 0x1 if stream == 1 && flags & 1 == 1 => return s,
                _ => {}
            }
        }
        let n = s.read(&mut buf).expect("response");
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Growth of live heap bytes and of RSS per connection (KiB) while `n` connections made by
/// `open` are idle.
/// `parks`: whether these connections get parked (HTTP/1.1) — then the measurement waits until
/// all `n` are, instead of sleeping past `PARK_AFTER`.
fn per_idle_connection(
    up: &Upstream,
    addr: SocketAddr,
    n: usize,
    open: fn(SocketAddr) -> TcpStream,
    parks: bool,
) -> (f64, f64) {
    // Warm-up: first-use allocations (upstream pool, runtime, allocator) are not per connection.
    for _ in 0..3 {
        let warm: Vec<_> = (0..n / 4).map(|_| open(addr)).collect();
        drop(warm);
        std::thread::sleep(Duration::from_millis(200));
    }
    up.seen.lock().clear();
    let mut conns = Vec::with_capacity(n);
    let (live0, rss0) = (LIVE.load(Ordering::Relaxed), rss_kib());
    conns.extend((0..n).map(|_| open(addr)));
    if parks {
        // Idle HTTP/1 connections are parked after `weft_proxy::idle::PARK_AFTER` (1 s): wait
        // for the parked count itself (bounded; the assertion on it stays in the test).
        eventually_blocking(
            "every idle HTTP/1.1 connection to be parked",
            Duration::from_secs(10),
            || (weft_proxy::idle::parked_connections() >= n).then_some(()),
        );
    } else {
        // A kept sleep: h2 releases an idle connection's buffers after the same idle time, and no
        // counter says it has.
        std::thread::sleep(Duration::from_millis(1500));
    }
    // The test upstream records every request, and the recorded headers share its read buffers.
    up.seen.lock().clear();
    let (live1, rss1) = (LIVE.load(Ordering::Relaxed), rss_kib());
    PARKED_SEEN.store(weft_proxy::idle::parked_connections(), Ordering::Relaxed);
    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    let kib = |d: f64| d / 1024.0 / n as f64;
    (kib((live1 - live0) as f64), kib((rss1 as f64 - rss0 as f64) * 1024.0))
}

#[test]
fn idle_connections_hold_little_memory() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(named_upstream("a"));
    let proxy = start_proxy(&one_route_yaml(
        "{ cluster: app }",
        &format!("  - name: app\n    endpoints: [{{ address: \"{}\" }}]\n", up.addr),
    ));
    let addr = proxy.listener_addr("web").unwrap();

    let (h1, h1_rss) = per_idle_connection(&up, addr, 500, h1_request, true);
    let h1_parked = PARKED_SEEN.load(Ordering::Relaxed);
    let (h2, h2_rss) = per_idle_connection(&up, addr, 200, h2_request, false);
    eprintln!(
        "per idle connection: HTTP/1.1 {h1:.1} KiB heap ({h1_rss:.1} KiB RSS), h2c {h2:.1} KiB heap ({h2_rss:.1} KiB RSS)"
    );
    // The assertions use live heap bytes: RSS with the system allocator depends on how freed
    // chunks happen to be laid out (see the module docs). Before parking, an idle HTTP/1.1
    // connection held hyper's 8 KiB read and 8 KiB write buffers and its dispatcher.
    // 2.5 KiB measured (28.6 KiB before parking).
    assert_eq!(h1_parked, 500, "every idle HTTP/1.1 connection is parked");
    assert!(h1 <= 4.0, "idle HTTP/1.1 connection holds {h1:.1} KiB");
    // HTTP/2 connections are not parked (their HPACK tables, stream ids and settings must
    // survive); the patched h2 (third_party/h2) frees what an idle connection does not need.
    // Measured: 45 KiB with stock h2 (8 KiB read, 16 KiB write and 4 KiB HPACK scratch buffers
    // for the connection's whole life); 17 KiB once h2 freed those when idle; 6.0 KiB since the
    // HPACK tables copy what they keep (a response field sliced from the upstream connection's
    // read buffer kept all 8 KiB of it alive) and the stream store and frame queues are freed
    // when no stream is open (about 3.5 KiB more in this debug build).
    assert!(h2 <= 8.0, "idle h2c connection holds {h2:.1} KiB");
    drop(proxy);
    drop(up);
}
