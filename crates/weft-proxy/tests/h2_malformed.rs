//! A malformed HTTP/2 request is a stream error, not a connection error (RFC 9113 §8.1.1, §8.2.1):
//! a header field with CR/LF/NUL in its value or an uppercase name resets that stream only, the
//! HPACK dynamic table stays in sync (invalid fields sent with incremental indexing keep their
//! slot), and a response in flight on the same connection completes. Frames are written by hand
//! because HTTP/2 clients refuse to send invalid fields. (weft carries a patched h2 for this, see
//! third_party/h2/PATCHED.md.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_test_support::*;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A hand-built HPACK header block (RFC 7541), strings without Huffman coding.
struct Block(Vec<u8>);

impl Block {
    /// `GET <path>` with `:scheme http` and `:authority h2.example`.
    fn get(path: &str) -> Block {
        // :method GET (static 2), :scheme http (static 6), :path (static name 4), :authority (1).
        Block(vec![0x82, 0x86])
            .name_ref(4, path.as_bytes())
            .name_ref(1, b"h2.example")
    }

    fn string(mut self, s: &[u8]) -> Block {
        assert!(s.len() < 127);
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s);
        self
    }

    /// Indexed field (static table 1..=61, dynamic table from 62, newest first).
    fn indexed(mut self, index: u8) -> Block {
        assert!(index < 127);
        self.0.push(0x80 | index);
        self
    }

    /// Literal without indexing, name and value as literals.
    fn literal(mut self, name: &[u8], value: &[u8]) -> Block {
        self.0.push(0x00);
        self.string(name).string(value)
    }

    /// Literal with incremental indexing (enters the dynamic table), name and value as literals.
    fn literal_indexed(mut self, name: &[u8], value: &[u8]) -> Block {
        self.0.push(0x40);
        self.string(name).string(value)
    }

    /// Literal without indexing, name taken from table entry `index`.
    fn name_ref(mut self, index: u8, value: &[u8]) -> Block {
        if index < 15 {
            self.0.push(index);
        } else {
            self.0.extend_from_slice(&[0x0f, index - 15]);
        }
        self.string(value)
    }
}

#[derive(Debug, PartialEq)]
enum Event {
    /// First octet of the header block (0x88 is `:status 200` from the static table) and
    /// END_STREAM.
    Headers(u8, bool),
    Data(Vec<u8>, bool),
    Reset(u32),
}

/// A raw h2c client connection.
struct Conn {
    io: TcpStream,
    events: HashMap<u32, Vec<Event>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let mut io = TcpStream::connect(addr).await.unwrap();
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        Conn {
            io,
            events: HashMap::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn request(&mut self, stream: u32, block: Block) {
        self.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &block.0))
            .await;
    }

    /// Reads one frame and records what it says about a stream; answers SETTINGS and PING;
    /// panics on GOAWAY (the point of these tests) and on EOF.
    async fn read_one(&mut self) {
        let mut head = [0u8; 9];
        self.io
            .read_exact(&mut head)
            .await
            .expect("connection still open (no GOAWAY, no close)");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (ty, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await.unwrap();
        let event = match ty {
            SETTINGS if flags & ACK == 0 => {
                self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                return;
            }
            PING if flags & ACK == 0 => {
                self.send(&frame(PING, ACK, 0, &payload)).await;
                return;
            }
            GOAWAY => {
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                panic!(
                    "GOAWAY error code {code:#x}, debug data {:?}; streams so far: {:?}",
                    String::from_utf8_lossy(&payload[8..]),
                    self.events
                );
            }
            HEADERS => Event::Headers(payload[0], flags & END_STREAM != 0),
            DATA => Event::Data(payload, flags & END_STREAM != 0),
            RST_STREAM => Event::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap())),
            // SETTINGS ACK, PING ACK, WINDOW_UPDATE, ...
            _ => return,
        };
        self.events.entry(stream).or_default().push(event);
    }

    fn done(&self, stream: u32) -> bool {
        self.events.get(&stream).is_some_and(|evs| {
            evs.iter()
                .any(|e| matches!(e, Event::Headers(_, true) | Event::Data(_, true) | Event::Reset(_)))
        })
    }

    /// Reads frames until every stream in `streams` has ended (END_STREAM or RST_STREAM).
    async fn until_done(&mut self, streams: &[u32]) {
        let wait = async {
            while !streams.iter().all(|s| self.done(*s)) {
                self.read_one().await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait).await.is_err() {
            panic!("streams {streams:?} did not all end: {:?}", self.events);
        }
    }

    fn assert_reset(&self, stream: u32) {
        assert_eq!(
            self.events.get(&stream),
            Some(&vec![Event::Reset(PROTOCOL_ERROR)]),
            "stream {stream} reset with PROTOCOL_ERROR, nothing else: {:?}",
            self.events
        );
    }

    /// `:status 200` and the body, complete.
    fn assert_ok(&self, stream: u32, body: &str) {
        let evs = self.events.get(&stream).map(Vec::as_slice).unwrap_or_default();
        assert!(
            matches!(evs.first(), Some(Event::Headers(0x88, false))),
            "stream {stream}: 200 first: {evs:?}"
        );
        let mut got = Vec::new();
        for e in &evs[1..] {
            match e {
                Event::Data(d, _) => got.extend_from_slice(d),
                other => panic!("stream {stream}: unexpected {other:?} in {evs:?}"),
            }
        }
        assert!(
            matches!(evs.last(), Some(Event::Data(_, true))),
            "stream {stream} ended: {evs:?}"
        );
        assert_eq!(String::from_utf8_lossy(&got), body, "stream {stream}");
    }
}

/// `/slow...` answers after a second, anything else at once; the body echoes the path and the
/// `x-probe` header the upstream received.
async fn slow_upstream() -> Upstream {
    upstream(|seen| async move {
        if seen.uri.path().starts_with("/slow") {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let probe = seen
            .headers
            .get("x-probe")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        text(200, &format!("{} {probe}", seen.uri.path()))
    })
    .await
}

#[tokio::test]
async fn h2_invalid_header_field_resets_only_its_stream() {
    let up = slow_upstream().await;
    let proxy = start_proxy(&app_yaml(up.addr, ""));
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = Conn::open(addr).await;

    // Stream 1: valid, its response takes a second.
    c.request(1, Block::get("/slow")).await;
    // Stream 3: CR LF in a value (literal without indexing).
    c.request(3, Block::get("/crlf").literal(b"x-probe", b"a\r\nb")).await;
    // Stream 5: uppercase name, with incremental indexing: dynamic table [62] "X-Upper: v".
    c.request(5, Block::get("/upper").literal_indexed(b"X-Upper", b"v"))
        .await;
    // Stream 7: NUL in a value, with incremental indexing: [62] "x-probe: a\0b", [63] "X-Upper: v".
    c.request(7, Block::get("/nul").literal_indexed(b"x-probe", b"a\0b"))
        .await;
    // Stream 9: the invalid "X-Upper: v" again, by index only.
    c.request(9, Block::get("/by-index").indexed(63)).await;
    // Stream 11: the name of entry 62 ("x-probe") with a valid value: a valid request, which
    // needs the table to hold exactly what the client put there.
    c.request(11, Block::get("/name-ref").name_ref(62, b"ok")).await;
    // Stream 13: plain valid request.
    c.request(13, Block::get("/after")).await;

    c.until_done(&[3, 5, 7, 9, 11, 13]).await;
    for s in [3, 5, 7, 9] {
        c.assert_reset(s);
    }
    c.assert_ok(11, "/name-ref ok");
    c.assert_ok(13, "/after ");
    assert!(
        !c.events.contains_key(&1),
        "stream 1 still in flight while the others were answered: {:?}",
        c.events
    );

    c.until_done(&[1]).await;
    c.assert_ok(1, "/slow ");

    // The connection is still usable.
    c.request(15, Block::get("/last")).await;
    c.until_done(&[15]).await;
    c.assert_ok(15, "/last ");

    let mut paths: Vec<String> = up.seen.lock().iter().map(|s| s.uri.path().to_string()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/after", "/last", "/name-ref", "/slow"],
        "malformed requests never reach the upstream"
    );
}

#[tokio::test]
async fn h2_invalid_header_field_in_continuation_frames() {
    let up = slow_upstream().await;
    let proxy = start_proxy(&app_yaml(up.addr, ""));
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = Conn::open(addr).await;

    c.request(1, Block::get("/slow")).await;

    // Stream 3: the block is split over HEADERS and two CONTINUATION frames. The HEADERS frame
    // ends right after the invalid field (the message is known to be malformed before the end of
    // the block); the CONTINUATION frames carry a valid field with incremental indexing, cut in
    // the middle: dynamic table [62] "x-probe: kept".
    let first = Block::get("/split").literal(b"x-bad", b"new\nline").0;
    let rest = Block(Vec::new()).literal_indexed(b"x-probe", b"kept").0;
    c.send(&frame(HEADERS, END_STREAM, 3, &first)).await;
    c.send(&frame(CONTINUATION, 0, 3, &rest[..5])).await;
    c.send(&frame(CONTINUATION, END_HEADERS, 3, &rest[5..])).await;
    // Stream 5 uses the entry added by the malformed block.
    c.request(5, Block::get("/uses-table").indexed(62)).await;

    c.until_done(&[3, 5]).await;
    c.assert_reset(3);
    c.assert_ok(5, "/uses-table kept");
    assert!(!c.events.contains_key(&1), "{:?}", c.events);
    c.until_done(&[1]).await;
    c.assert_ok(1, "/slow ");
    assert_eq!(up.hits(), 2);
}
