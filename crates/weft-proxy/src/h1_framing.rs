//! Request-smuggling detection for HTTP/1 downstream connections served by hyper.
//!
//! weft's own HTTP/1 server (`crate::h1_server`) frames requests itself and hands both framing
//! headers on, so the pipeline's checks refuse an ambiguous request; the tracker runs only on the
//! connections hyper's server takes over (after a request that switches protocols), fed from the
//! first byte hyper reads.
//!
//! hyper follows RFC 9112 §6.3 for a request carrying both `Transfer-Encoding` and `Content-Length`:
//! chunked wins, the `Content-Length` is dropped and the connection closes after the response. That is
//! safe but silent, and the request still reaches the upstream. We want such requests refused with a
//! 400 instead, and hyper gives the service no way to see the dropped header. So this wrapper watches
//! the raw bytes hyper reads, tracks HTTP/1 message framing alongside it, and records one verdict per
//! request head ("ambiguous framing or not"); the service takes the verdicts in order.
//!
//! Written by hand because no maintained crate exposes framing verdicts; it only tracks framing
//! (head end, Content-Length skip, chunk sizes) and parses heads with `httparse`, which hyper uses too.
//! If it ever loses track (an unusual head, an upgrade, HTTP/2), it stops and records nothing more, so
//! the worst case is a missed verdict, never a false one.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MAX_HEAD: usize = 64 * 1024;
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, PartialEq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers,
    Stopped,
}

/// Tracks framing over the request byte stream; `verdicts` holds one entry per complete head.
#[derive(Debug)]
pub struct FramingTracker {
    state: State,
    buf: Vec<u8>,
    verdicts: VecDeque<bool>,
}

impl Default for FramingTracker {
    fn default() -> Self {
        FramingTracker {
            state: State::Head,
            buf: Vec::new(),
            verdicts: VecDeque::new(),
        }
    }
}

impl FramingTracker {
    /// The verdict for the next request: `Some(true)` if its framing headers conflicted.
    pub fn next_verdict(&mut self) -> Option<bool> {
        self.verdicts.pop_front()
    }

    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Between messages with nothing pending: every head seen was complete and its verdict taken.
    pub fn at_rest(&self) -> bool {
        self.state == State::Head && self.buf.is_empty() && self.verdicts.is_empty()
    }

    /// Feeds bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Stopped => return,
                State::Head => {
                    if self.buf.is_empty() {
                        // Empty lines before a request line are allowed (RFC 9112 §2.2).
                        let skip = data.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    if self.buf.is_empty() {
                        // Fast path: the whole head is in this read; parse it in place.
                        if let Some(end) = find_head_end(data) {
                            // Limits apply to the complete element, whatever the read sizes were,
                            // so a client cannot switch the tracker off by choosing its writes.
                            if end > MAX_HEAD {
                                return self.stop();
                            }
                            self.on_head(&data[..end]);
                            data = &data[end..];
                            continue;
                        }
                    }
                    let old = self.buf.len();
                    // Search for the end of head across the boundary with what was buffered.
                    let search_from = old.saturating_sub(3);
                    self.buf.extend_from_slice(data);
                    match find_head_end(&self.buf[search_from..]) {
                        Some(end) => {
                            let end = search_from + end;
                            let consumed = end - old;
                            if end > MAX_HEAD {
                                return self.stop();
                            }
                            self.buf.truncate(end);
                            let head = std::mem::take(&mut self.buf);
                            self.on_head(&head);
                            data = &data[consumed..];
                        }
                        None => {
                            if self.buf.len() > MAX_HEAD {
                                self.stop();
                            }
                            return;
                        }
                    }
                }
                State::Fixed(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take { State::Head } else { State::Fixed(n - take) };
                }
                State::ChunkSize | State::Trailers => {
                    let pos = data.iter().position(|b| *b == b'\n');
                    let (line_part, rest) = match pos {
                        Some(p) => (&data[..=p], &data[p + 1..]),
                        None => (data, &data[data.len()..]),
                    };
                    self.buf.extend_from_slice(line_part);
                    data = rest;
                    if pos.is_none() {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            self.stop();
                        }
                        return;
                    }
                    let line = std::mem::take(&mut self.buf);
                    if line.len() > MAX_CHUNK_LINE {
                        return self.stop();
                    }
                    if self.state == State::Trailers {
                        if line == b"\r\n" || line == b"\n" {
                            self.state = State::Head;
                        }
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    let size = text.split(';').next().unwrap_or("").trim();
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => self.state = State::Trailers,
                        Ok(n) => self.state = State::ChunkData(n),
                        Err(_) => self.stop(),
                    }
                }
                State::ChunkData(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::ChunkDataEnd(0)
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkDataEnd(seen) => {
                    // The CRLF after chunk data.
                    let b = data[0];
                    data = &data[1..];
                    match (seen, b) {
                        (0, b'\r') => self.state = State::ChunkDataEnd(1),
                        (0, b'\n') | (1, b'\n') => self.state = State::ChunkSize,
                        _ => self.stop(),
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.buf = Vec::new();
    }

    fn on_head(&mut self, head: &[u8]) {
        // Uninitialised: initialising 128 headers (4 KiB) cost more than parsing a typical head.
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; 128];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, &mut headers) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return self.stop(),
        }
        let mut te = false;
        let mut cl: Option<u64> = None;
        let mut cl_count = 0;
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
            } else if h.name.eq_ignore_ascii_case("content-length") {
                cl_count += 1;
                cl = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        self.verdicts.push_back(te && cl_count > 0);
        if upgrade || req.method == Some("CONNECT") || req.version != Some(1) {
            // After a protocol switch the bytes are no longer HTTP/1 messages.
            return self.stop();
        }
        self.state = if te {
            State::ChunkSize
        } else if cl_count == 0 {
            State::Head
        } else {
            match cl {
                Some(0) => State::Head,
                Some(n) => State::Fixed(n),
                None => return self.stop(),
            }
        };
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    memchr::memmem::find(b, b"\r\n\r\n").map(|p| p + 4)
}

/// An I/O stream whose reads feed a shared [`FramingTracker`].
/// Also records when bytes last moved, for the connection's timeouts.
pub struct Sniffed<T> {
    inner: T,
    tracker: Arc<Mutex<FramingTracker>>,
    /// Set once the tracker has stopped: later reads skip it entirely.
    done: bool,
    activity: Arc<Activity>,
    h2: H2Scan,
}

/// What the connection's watchdog sees of its I/O. Counters rather than timestamps keep clock
/// reads off the per-read path; each has one writer (the connection's I/O), so a plain
/// load-and-store replaces a locked add.
#[derive(Default)]
pub struct Activity {
    /// Reads and writes that moved bytes or hit the end.
    events: AtomicU64,
    /// Reads that brought bytes from the client.
    reads: AtomicU64,
    /// 0: not known yet; 1: not HTTP/2; 2: HTTP/2 (the preface arrived whole).
    proto: AtomicU8,
    /// An HTTP/2 header block was started (HEADERS/PUSH_PROMISE without END_HEADERS) and not
    /// finished by a CONTINUATION with END_HEADERS.
    header_block_open: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        bump(&self.events);
    }

    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub fn is_h2(&self) -> bool {
        self.proto.load(Ordering::Relaxed) == 2
    }

    pub fn header_block_open(&self) -> bool {
        self.header_block_open.load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Follows HTTP/2 frame boundaries (9-byte headers; payloads skipped unread) just far enough to
/// know whether a header block is open, so that a client trickling CONTINUATION frames can be
/// timed out (the HTTP/2 codec has no such timer). Written by hand: it reads two fields of the
/// frame header and nothing else, which no crate offers apart from a whole HTTP/2 codec. Off for
/// any connection that does not start with the preface, so HTTP/1 pays one branch per read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Scan {
    state: ScanState,
    open: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ScanState {
    Preface(u8),
    Frames { hdr: [u8; 9], have: u8, skip: u32 },
    Off,
}

impl Default for H2Scan {
    fn default() -> Self {
        H2Scan {
            state: ScanState::Preface(0),
            open: false,
        }
    }
}

impl H2Scan {
    /// `None` until known, then whether the stream began with the HTTP/2 preface.
    pub fn is_h2(&self) -> Option<bool> {
        match self.state {
            ScanState::Preface(_) => None,
            ScanState::Frames { .. } => Some(true),
            ScanState::Off => Some(false),
        }
    }

    /// True when the last HEADERS/PUSH_PROMISE lacked END_HEADERS and no CONTINUATION with
    /// END_HEADERS has followed yet.
    pub fn header_block_open(&self) -> bool {
        self.open
    }

    fn is_off(&self) -> bool {
        self.state == ScanState::Off
    }

    /// Feeds bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                ScanState::Off => return,
                ScanState::Preface(seen) => {
                    let at = usize::from(*seen);
                    let k = data.len().min(24 - at);
                    if data[..k] != H2_PREFACE[at..at + k] {
                        self.state = ScanState::Off;
                        return;
                    }
                    data = &data[k..];
                    *seen += k as u8;
                    if *seen == 24 {
                        self.state = ScanState::Frames {
                            hdr: [0; 9],
                            have: 0,
                            skip: 0,
                        };
                    }
                }
                ScanState::Frames { hdr, have, skip } => {
                    if *skip > 0 {
                        let t = data.len().min(*skip as usize);
                        data = &data[t..];
                        *skip -= t as u32;
                        continue;
                    }
                    let at = usize::from(*have);
                    let t = data.len().min(9 - at);
                    hdr[at..at + t].copy_from_slice(&data[..t]);
                    *have += t as u8;
                    data = &data[t..];
                    if *have < 9 {
                        return;
                    }
                    *have = 0;
                    *skip = u32::from_be_bytes([0, hdr[0], hdr[1], hdr[2]]);
                    let end_headers = hdr[4] & 0x4 != 0;
                    match hdr[3] {
                        // HEADERS, PUSH_PROMISE: a block opens unless it ends in this frame.
                        0x1 | 0x5 => self.open = !end_headers,
                        // CONTINUATION
                        0x9 if end_headers => self.open = false,
                        _ => {}
                    }
                }
            }
        }
    }
}

impl<T> Sniffed<T> {
    pub fn new(inner: T) -> (Self, Arc<Mutex<FramingTracker>>, Arc<Activity>) {
        let tracker = Arc::new(Mutex::new(FramingTracker::default()));
        let activity = Arc::new(Activity::default());
        (
            Sniffed {
                inner,
                tracker: tracker.clone(),
                done: false,
                activity: activity.clone(),
                h2: H2Scan::default(),
            },
            tracker,
            activity,
        )
    }
}

impl<T> Sniffed<T> {
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    pub fn tracker(&self) -> Arc<Mutex<FramingTracker>> {
        self.tracker.clone()
    }

    /// Stops feeding the framing tracker: weft's own HTTP/1 server frames the requests itself.
    pub fn untracked(mut self) -> Self {
        self.done = true;
        self
    }

    /// Resumes the framing tracker (when hyper's server takes the connection over), first
    /// feeding it `read`: the bytes already read from the connection and handed back to hyper.
    pub fn track_from(&mut self, read: &[u8]) {
        let mut t = self.tracker.lock();
        t.feed(read);
        self.done = t.is_stopped();
    }

    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Counts a write made past this wrapper (a spliced body) as the connection's activity.
    pub fn touch(&self) {
        self.activity.touch();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.touch();
            if buf.filled().len() > before {
                bump(&self.activity.reads);
                if !self.h2.is_off() {
                    let this = &mut *self;
                    this.h2.feed(&buf.filled()[before..]);
                    let proto = match this.h2.is_h2() {
                        None => 0,
                        Some(false) => 1,
                        Some(true) => 2,
                    };
                    this.activity.proto.store(proto, Ordering::Relaxed);
                    this.activity
                        .header_block_open
                        .store(this.h2.header_block_open(), Ordering::Relaxed);
                }
            }
        }
        if !self.done {
            if let Poll::Ready(Ok(())) = &r {
                let mut t = self.tracker.lock();
                t.feed(&buf.filled()[before..]);
                let stopped = t.is_stopped();
                drop(t);
                self.done = stopped;
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(input: &[u8], split: usize) -> (Vec<bool>, bool) {
        let mut t = FramingTracker::default();
        for chunk in input.chunks(split.max(1)) {
            t.feed(chunk);
        }
        let stopped = t.is_stopped();
        (std::iter::from_fn(|| t.next_verdict()).collect(), stopped)
    }

    #[test]
    fn tracks_keepalive_sequences_at_any_split() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
POST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /last HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in [1, 2, 3, 7, 64, 10_000] {
            let (v, stopped) = verdicts(stream, split);
            assert_eq!(v, vec![false, false, false, true, false], "split {split}");
            assert!(!stopped);
        }
    }

    #[test]
    fn body_bytes_that_look_like_heads_are_not_heads() {
        let body = b"GET /inner HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut stream = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        stream.extend_from_slice(body);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(verdicts(&stream, 5).0, vec![false, false]);
    }

    #[test]
    fn verdicts_do_not_depend_on_read_sizes_at_the_limits() {
        // The fuzzer's reproducer: a chunk-size line longer than the limit, then an ambiguous request.
        let input = include_bytes!("../../../fuzz/regressions/h1_framing/long-chunk-ext-split");
        let whole = verdicts(input, input.len());
        for split in [1, 7, 128, 1000, 4096] {
            assert_eq!(verdicts(input, split), whole, "split {split}");
        }
        let mut big_head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big_head.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        big_head.extend_from_slice(b"\r\n\r\n");
        let whole = verdicts(&big_head, big_head.len());
        for split in [100, 4096, MAX_HEAD - 10] {
            assert_eq!(verdicts(&big_head, split), whole, "split {split}");
        }
    }

    #[test]
    fn stops_on_upgrade_h2_and_garbage() {
        assert!(
            verdicts(
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nbinary",
                3
            )
            .1
        );
        assert!(verdicts(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 4).1);
        assert!(verdicts(b"\x00\x01garbage\r\n\r\n", 4).1);
        assert!(verdicts(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 4).1);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 7u64;
        for _ in 0..2000 {
            let len = (seed % 300) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let alphabet = b"GET /HTTP1.\r\n:0a;Content-Length:Transfer-Encoding chunked";
                v.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let _ = verdicts(&v, (seed % 13) as usize + 1);
        }
    }

    fn frame(ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `input` in pieces of `split` bytes and returns the open state after each piece.
    fn scan(input: &[u8], split: usize) -> H2Scan {
        let mut s = H2Scan::default();
        for c in input.chunks(split.max(1)) {
            s.feed(c);
        }
        s
    }

    #[test]
    fn h2_scan_follows_header_blocks_in_any_split() {
        let mut stream = H2_PREFACE.to_vec();
        stream.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        stream.extend(frame(0x1, 0x4 | 0x1, b"\x82\x84")); // HEADERS, END_HEADERS
        stream.extend(frame(0x0, 0x1, b"body")); // DATA
        let closed = stream.clone();
        stream.extend(frame(0x1, 0x1, b"\x82")); // HEADERS without END_HEADERS
        stream.extend(frame(0x9, 0, b"\x84")); // CONTINUATION
        let open = stream.clone();
        stream.extend(frame(0x9, 0x4, b"\x86")); // CONTINUATION, END_HEADERS
        for split in [1, 2, 3, 7, 9, 10, 64, 4096] {
            assert_eq!(scan(&closed, split).is_h2(), Some(true));
            assert!(!scan(&closed, split).header_block_open(), "split {split}");
            assert!(scan(&open, split).header_block_open(), "split {split}");
            assert!(!scan(&stream, split).header_block_open(), "split {split}");
        }
    }

    #[test]
    fn h2_scan_is_off_for_http1_and_undecided_on_a_partial_preface() {
        assert_eq!(scan(b"GET / HTTP/1.1\r\n", 3).is_h2(), Some(false));
        assert_eq!(scan(b"PRI * HTTP/2.0\r\n", 1).is_h2(), None);
        assert_eq!(scan(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n", 5).is_h2(), Some(false));
        let mut open = H2_PREFACE.to_vec();
        open.extend(frame(0x5, 0, &[0, 0, 0, 2])); // PUSH_PROMISE without END_HEADERS
        assert!(scan(&open, 1).header_block_open());
    }

    #[test]
    fn h2_scan_same_state_whole_or_split_on_random_frames() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let mut stream = H2_PREFACE.to_vec();
            for _ in 0..rng.usize(0..12) {
                let ty = [0x0, 0x1, 0x4, 0x5, 0x6, 0x8, 0x9, 0xff][rng.usize(0..8)];
                let payload: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
                stream.extend(frame(ty, rng.u8(..), &payload));
            }
            if rng.bool() {
                stream.truncate(rng.usize(0..=stream.len()));
            }
            let whole = scan(&stream, stream.len());
            let split = scan(&stream, rng.usize(1..17));
            assert_eq!(whole, split);
        }
    }
}
