//! Distributed tracing on the request path: trace context extraction and injection (W3C
//! `traceparent`/`tracestate`, B3 single and multi header, SkyWalking `sw8`), the sampling decision,
//! and the compact record of one traced exchange ([`TraceExchange`]) handed to the exporter.
//!
//! Why weft's own record and not the OpenTelemetry SDK's span on the hot path: an SDK span carries a
//! `Vec<KeyValue>` of attributes built per request (string keys and formatted values), a mutex-guarded
//! span processor and a `SpanData` copy at end. Here a traced exchange costs one boxed struct of plain
//! fields (ids, times, the request's method/URI/host handles, which are reference counted, and the
//! outcome); attribute names, value formatting and the OTLP protobuf are produced by the exporter
//! task (`weft-telemetry`), off the request path. The record travels through a bounded queue whose
//! `try_send` never blocks: when the queue is full the record is dropped and counted.
//!
//! Sampling is decided at the head, once per exchange: a parent's decision (sampled flag of the
//! incoming context) is followed; a new trace is sampled when its trace id falls under the ratio
//! (the same id gives the same answer in every weft of the trace). Force-sample on error: the record
//! of an unsampled exchange is kept until its exit; if the exchange failed with a weft reason code
//! (or a 5xx), it is exported anyway, marked `weft.force_sampled=true`. The upstream has already been
//! told "not sampled", so such a trace holds this proxy's spans only — the failing hop's.
//!
//! An unsampled exchange costs little (most requests, at a 1 % ratio): no wall-clock read (span start
//! times are derived at export from the monotonic clock), no string copies, and upstream it carries
//! only the "not sampled" decision: `traceparent` with flags `00` (left exactly as received when the
//! caller's own `traceparent` already said so), B3 in its deny-only forms `b3: 0` and
//! `x-b3-sampled: 0` (the B3 specification's "deny" encoding; ids the caller sent in B3 pass
//! unchanged), and `sw8` with its sample flag `0`.

use crate::flags::Reason;
use crate::shard::Counter;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use weft_config::{Propagator, Tracing};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub const SW8: HeaderName = HeaderName::from_static("sw8");

/// The SkyWalking side of a context that arrived in `sw8`: kept to write the next `sw8` upstream
/// with the same SkyWalking trace id, and exported as span attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sw8Context {
    /// SkyWalking's trace id as sent (any string; mapped to a 16-byte id for OTLP).
    pub trace_id: String,
    pub parent_segment: String,
    pub parent_span: i32,
    pub parent_service: String,
    pub parent_instance: String,
    pub parent_endpoint: String,
    pub target_address: String,
}

/// A trace context extracted from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The upstream caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
    pub format: Propagator,
    pub sw8: Option<Box<Sw8Context>>,
}

/// Extracts the first valid context, trying `propagators` in order. Malformed headers are ignored
/// (the request starts a new trace), as the W3C recommendation asks.
/// When another format wins but an `sw8` of the same trace came too, its SkyWalking context is
/// kept, so that the SkyWalking trace id (any string) travels on unchanged.
pub fn extract(headers: &HeaderMap, propagators: &[Propagator]) -> Option<Parent> {
    extract_decision(headers, propagators).ok()
}

/// [`extract`], or when no context came: `Err(true)` if the caller sent B3's deny-only form (`b3: 0`,
/// or `x-b3-sampled: 0` without ids) in a configured format — "not sampled", to be followed.
pub fn extract_decision(headers: &HeaderMap, propagators: &[Propagator]) -> Result<Parent, bool> {
    Found::scan(headers).decide(propagators)
}

/// The trace-context headers of a request, found in one pass over its headers (cheaper than a
/// hashed look-up per name: most requests carry none of them).
#[derive(Default)]
struct Found<'a> {
    /// `traceparent`, `b3`, `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`, `sw8`,
    /// `tracestate`: the first value of each.
    values: [Option<&'a HeaderValue>; 8],
}

impl<'a> Found<'a> {
    fn index(name: &str) -> Option<usize> {
        Some(match name {
            "traceparent" => 0,
            "b3" => 1,
            "x-b3-traceid" => 2,
            "x-b3-spanid" => 3,
            "x-b3-sampled" => 4,
            "x-b3-flags" => 5,
            "sw8" => 6,
            "tracestate" => 7,
            _ => return None,
        })
    }

    fn scan(headers: &'a HeaderMap) -> Found<'a> {
        let mut f = Found::default();
        for (name, value) in headers {
            if let Some(i) = Found::index(name.as_str()) {
                f.values[i].get_or_insert(value);
            }
        }
        f
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.values[Found::index(key)?].and_then(|v| v.to_str().ok())
    }

    /// [`extract_decision`] over what was found; most requests carry no context, and then there
    /// is nothing to parse.
    fn decide(&self, propagators: &[Propagator]) -> Result<Parent, bool> {
        if self.values[..7].iter().all(Option::is_none) {
            return Err(false);
        }
        extract_decision_by(|k| self.get(k), propagators)
    }
}

/// [`extract`] over any key/value carrier (an RPC request's attachments or header map): `get`
/// returns the value of a lower-case key.
pub fn extract_by<S: AsRef<str>>(get: impl Fn(&str) -> Option<S>, propagators: &[Propagator]) -> Option<Parent> {
    extract_decision_by(get, propagators).ok()
}

/// [`extract_decision`] over any key/value carrier.
pub fn extract_decision_by<S: AsRef<str>>(
    get: impl Fn(&str) -> Option<S>,
    propagators: &[Propagator],
) -> Result<Parent, bool> {
    let b = |k: &str| get(k);
    let mut deny = false;
    let found = propagators.iter().find_map(|p| match p {
        Propagator::W3c => b("traceparent").and_then(|v| parse_traceparent(v.as_ref().as_bytes())),
        Propagator::B3 => b("b3").and_then(|v| {
            deny |= v.as_ref() == "0";
            parse_b3_single(v.as_ref().as_bytes())
        }),
        Propagator::B3multi => {
            let Some(t) = b("x-b3-traceid") else {
                // The decision alone: `x-b3-sampled: 0`, or the single-header `b3: 0` that B3
                // readers look for first (and that weft writes alone when it lists both formats).
                deny |=
                    b("x-b3-sampled").is_some_and(|v| v.as_ref() == "0") || b("b3").is_some_and(|v| v.as_ref() == "0");
                return None;
            };
            let trace_id = b3_trace_id(t.as_ref().as_bytes())?;
            let span_id = parse_hex::<8>(b("x-b3-spanid")?.as_ref().as_bytes()).filter(|s| *s != [0; 8])?;
            let sampled = if b("x-b3-flags").is_some_and(|v| v.as_ref() == "1") {
                Some(true)
            } else {
                match b("x-b3-sampled") {
                    None => None,
                    Some(v) => b3_sampled(v.as_ref().as_bytes())?,
                }
            };
            Some(Parent {
                trace_id,
                span_id,
                sampled,
                format: Propagator::B3multi,
                sw8: None,
            })
        }
        Propagator::Sw8 => b("sw8").and_then(|v| parse_sw8(v.as_ref().as_bytes())),
    });
    let Some(mut parent) = found else {
        return Err(deny);
    };
    if parent.sw8.is_none() && propagators.contains(&Propagator::Sw8) {
        if let Some(sw) = b("sw8").and_then(|v| parse_sw8(v.as_ref().as_bytes())) {
            if sw.trace_id == parent.trace_id {
                parent.sw8 = sw.sw8;
            }
        }
    }
    Ok(parent)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of exactly `N` bytes; `None` for any other length or character.
fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (hex_val(s[2 * i])? << 4) | hex_val(s[2 * i + 1])?;
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The two lower-case hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
}

/// Lower-case hex of `bytes` into `out[at..]` (which must hold `2 * bytes.len()`).
fn hex_into(out: &mut [u8], at: usize, bytes: &[u8]) {
    for (pair, b) in out[at..at + 2 * bytes.len()].chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[*b as usize]);
    }
}

fn hex16(id: &TraceId) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex_into(&mut out, 0, id);
    out
}

fn hex8(id: &SpanId) -> [u8; 16] {
    let mut out = [0u8; 16];
    hex_into(&mut out, 0, id);
    out
}

/// A W3C `traceparent` value: `00-<trace id>-<span id>-<flags>`.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> [u8; 55] {
    let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut v, 3, trace_id);
    hex_into(&mut v, 36, span_id);
    if sampled {
        v[54] = b'1';
    }
    v
}

pub fn hex(bytes: &[u8]) -> String {
    let mut v = Vec::with_capacity(bytes.len() * 2);
    write_hex(&mut v, bytes);
    String::from_utf8(v).unwrap_or_default()
}

/// `version-traceid-parentid-flags` (W3C Trace Context level 1; a higher version may append
/// fields after another `-`).
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 {
        return None;
    }
    let version = parse_hex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = parse_hex::<16>(&v[3..35]).filter(|t| *t != [0; 16])?;
    let span_id = parse_hex::<8>(&v[36..52]).filter(|s| *s != [0; 8])?;
    let flags = parse_hex::<1>(&v[53..55])?[0];
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        format: Propagator::W3c,
        sw8: None,
    })
}

/// A B3 trace id: 16 or 32 hex digits (a 64-bit id is left-padded with zeros).
fn b3_trace_id(s: &[u8]) -> Option<TraceId> {
    let id = match s.len() {
        32 => parse_hex::<16>(s)?,
        16 => {
            let low = parse_hex::<8>(s)?;
            let mut t = [0u8; 16];
            t[8..].copy_from_slice(&low);
            t
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

fn b3_sampled(s: &[u8]) -> Option<Option<bool>> {
    match s {
        b"1" | b"d" | b"true" => Some(Some(true)),
        b"0" | b"false" => Some(Some(false)),
        _ => None,
    }
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`. A sampling-only value (`0`, `1`, `d`)
/// carries no context to continue and is ignored.
pub fn parse_b3_single(v: &[u8]) -> Option<Parent> {
    let mut it = v.split(|b| *b == b'-');
    let trace_id = b3_trace_id(it.next()?)?;
    let span_id = parse_hex::<8>(it.next()?).filter(|s| *s != [0; 8])?;
    let sampled = match it.next() {
        None => None,
        Some(s) => b3_sampled(s)?,
    };
    if let Some(p) = it.next() {
        parse_hex::<8>(p)?;
    }
    if it.next().is_some() {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        format: Propagator::B3,
        sw8: None,
    })
}

pub fn parse_b3_multi(h: &HeaderMap) -> Option<Parent> {
    let trace_id = b3_trace_id(h.get(&B3_TRACE_ID)?.as_bytes())?;
    let span_id = parse_hex::<8>(h.get(&B3_SPAN_ID)?.as_bytes()).filter(|s| *s != [0; 8])?;
    let debug = h.get(&B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = if debug {
        Some(true)
    } else {
        match h.get(&B3_SAMPLED) {
            None => None,
            Some(v) => b3_sampled(v.as_bytes())?,
        }
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        format: Propagator::B3multi,
        sw8: None,
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard Base64 with padding (RFC 4648 §4), what SkyWalking's agents write.
pub fn base64_encode(input: &[u8], out: &mut Vec<u8>) {
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63]);
        out.push(B64[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 { B64[n as usize & 63] } else { b'=' });
    }
}

/// Decodes standard Base64 (padding optional); `None` on any invalid character or length.
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let trimmed = match input {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        all => all,
    };
    if trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    for chunk in trimmed.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

fn b64_text(s: &[u8]) -> Option<String> {
    String::from_utf8(base64_decode(s)?).ok()
}

/// FNV-1a over `s` from `basis`: maps SkyWalking's string ids onto fixed-size OTLP ids.
fn fnv(basis: u64, s: &[u8]) -> u64 {
    s.iter()
        .fold(basis, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The 16-byte id of a SkyWalking trace id: itself when it is 32 hex digits, else a hash of it.
pub fn sw8_trace_id(s: &str) -> TraceId {
    if let Some(t) = parse_hex::<16>(s.as_bytes()) {
        return t;
    }
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325, s.as_bytes()).to_be_bytes());
    t[8..].copy_from_slice(&fnv(0x8422_2325_cbf2_9ce4, s.as_bytes()).to_be_bytes());
    t
}

/// The 8-byte id of a SkyWalking span (segment id and span id within it).
pub fn sw8_span_id(segment: &str, span: i32) -> SpanId {
    if span == 0 {
        if let Some(s) = parse_hex::<8>(segment.as_bytes()) {
            return s;
        }
    }
    let h = fnv(0xcbf2_9ce4_8422_2325, segment.as_bytes());
    (h ^ (span as u32 as u64)).to_be_bytes()
}

/// `sw8: sample-traceId-segmentId-spanId-service-instance-endpoint-target`, the ids and names in
/// Base64 (SkyWalking cross-process propagation headers protocol v3).
pub fn parse_sw8(v: &[u8]) -> Option<Parent> {
    let f: Vec<&[u8]> = v.split(|b| *b == b'-').collect();
    if f.len() != 8 {
        return None;
    }
    let sampled = match f[0] {
        b"1" => true,
        b"0" => false,
        _ => return None,
    };
    let trace = b64_text(f[1]).filter(|s| !s.is_empty())?;
    let segment = b64_text(f[2]).filter(|s| !s.is_empty())?;
    let span: i32 = std::str::from_utf8(f[3]).ok()?.parse().ok().filter(|s| *s >= 0)?;
    let sw = Sw8Context {
        trace_id: trace,
        parent_segment: segment,
        parent_span: span,
        parent_service: b64_text(f[4])?,
        parent_instance: b64_text(f[5])?,
        parent_endpoint: b64_text(f[6])?,
        target_address: b64_text(f[7])?,
    };
    Some(Parent {
        trace_id: sw8_trace_id(&sw.trace_id),
        span_id: sw8_span_id(&sw.parent_segment, sw.parent_span),
        sampled: Some(sampled),
        format: Propagator::Sw8,
        sw8: Some(Box::new(sw)),
    })
}

/// Whether a new trace with this id is sampled at `ratio`: the id's low 8 bytes under the ratio's
/// share of the 64-bit range (OpenTelemetry's TraceIdRatioBased idea; every weft agrees on an id).
pub fn ratio_sampled(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 11; // 53 bits: exact in an f64
    (x as f64) < ratio * (1u64 << 53) as f64
}

/// Counters of one connection manager's tracer.
#[derive(Clone, Default)]
pub struct TraceCounters {
    /// Exchanges sampled (by the parent's decision or the ratio).
    pub sampled: Counter,
    /// Unsampled exchanges exported because they failed.
    pub forced: Counter,
    /// Records dropped because the export queue was full.
    pub dropped: Counter,
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans lost to a failed, refused or timed-out export.
    pub export_failed: Counter,
}

/// The receiving end of a tracer's queue, for the exporter task: the records, and a signal raised
/// once a batch's worth is waiting. The exporter is meant to wake on that signal or on its batch
/// timer and then drain the queue with `try_recv`, not to await each record: a wake-up per record
/// cost more than the record's encoding.
pub struct TraceReceiver {
    pub rx: tokio::sync::mpsc::Receiver<Box<TraceExchange>>,
    pub batch_ready: Arc<tokio::sync::Notify>,
}

impl TraceReceiver {
    pub fn try_recv(&mut self) -> Result<Box<TraceExchange>, tokio::sync::mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }
}

/// One connection manager's tracing: its settings and the exporter queue.
pub struct Tracer {
    pub config: Arc<Tracing>,
    /// SkyWalking "service instance" written in `sw8` (the node id).
    pub instance: String,
    pub counters: TraceCounters,
    tx: tokio::sync::mpsc::Sender<Box<TraceExchange>>,
    batch_ready: Arc<tokio::sync::Notify>,
    /// Records that make a batch (`batch_size`, at most the queue's size).
    batch: usize,
}

impl Tracer {
    /// A tracer and the receiving end of its queue (bounded by `max_queue_size`).
    pub fn new(config: Arc<Tracing>, instance: String, counters: TraceCounters) -> (Tracer, TraceReceiver) {
        let queue = config.max_queue_size.max(1) as usize;
        let (tx, rx) = tokio::sync::mpsc::channel(queue);
        let batch_ready = Arc::new(tokio::sync::Notify::new());
        let batch = (config.batch_size.max(1) as usize).min(queue);
        (
            Tracer {
                config,
                instance,
                counters,
                tx,
                batch_ready: batch_ready.clone(),
                batch,
            },
            TraceReceiver { rx, batch_ready },
        )
    }

    /// Starts tracing an exchange: extracts the caller's context and decides sampling. The
    /// request's host is the URI's authority or, without one, its `host` header (a reference-counted
    /// handle, not a copy).
    pub fn start(&self, method: &Method, uri: &Uri, headers: &HeaderMap, peer: SocketAddr) -> Box<TraceExchange> {
        let found = Found::scan(headers);
        let parent = found.decide(&self.config.propagators);
        let w3c_parent = parent.as_ref().is_ok_and(|p| p.format == Propagator::W3c);
        let mut ex = self.begin(parent, method.clone(), uri.clone(), peer);
        if uri.authority().is_none() {
            ex.host = headers.get(http::header::HOST).cloned();
        }
        if w3c_parent {
            ex.tracestate = found.values[7].cloned();
        }
        ex.b3_flags = found.values[5].is_some();
        ex
    }

    /// Starts tracing an RPC request: `get` reads the request's attachments (or header map) for
    /// the caller's context.
    pub fn start_rpc<S: AsRef<str>>(
        &self,
        get: impl Fn(&str) -> Option<S>,
        peer: SocketAddr,
        rpc: RpcSpan,
    ) -> Box<TraceExchange> {
        let parent = extract_decision_by(&get, &self.config.propagators);
        let tracestate = parent
            .as_ref()
            .ok()
            .and_then(|_| get("tracestate"))
            .and_then(|v| HeaderValue::from_str(v.as_ref()).ok());
        let mut ex = self.begin(parent, Method::POST, Uri::default(), peer);
        ex.tracestate = tracestate;
        ex.rpc = Some(Box::new(rpc));
        ex
    }

    /// Starts tracing a TCP proxy session (a new trace: TCP carries no context).
    pub fn start_tcp(&self, peer: SocketAddr) -> Box<TraceExchange> {
        self.begin(Err(false), Method::GET, Uri::default(), peer)
    }

    /// A TCP session's end; `reason` set when no upstream connection was made.
    pub fn finish_tcp(&self, mut ex: Box<TraceExchange>, span: TcpSpan, reason: Option<Reason>) {
        ex.tcp = Some(Box::new(span));
        self.export(ex, reason.is_some(), 0, reason.map(Reason::code), None);
    }

    /// `parent`: the caller's context, or whether the caller said "not sampled" without one.
    fn begin(&self, parent: Result<Parent, bool>, method: Method, uri: Uri, peer: SocketAddr) -> Box<TraceExchange> {
        let (trace_id, sampled) = match &parent {
            Ok(p) => (
                p.trace_id,
                p.sampled
                    .unwrap_or_else(|| ratio_sampled(&p.trace_id, self.config.sampling_ratio)),
            ),
            Err(deny) => {
                let t = random_trace_id();
                (t, !deny && ratio_sampled(&t, self.config.sampling_ratio))
            }
        };
        let parent = parent.ok();
        if sampled {
            self.counters.sampled.inc();
        }
        Box::new(TraceExchange {
            trace_id,
            server_span: random_span_id(),
            sampled,
            forced: false,
            start_unix_nanos: 0,
            start: Instant::now(),
            server_nanos: 0,
            method,
            uri,
            host: None,
            tracestate: None,
            peer,
            parent,
            client: None,
            status: 0,
            reason: None,
            route: None,
            rpc: None,
            tcp: None,
            b3_flags: false,
        })
    }

    /// The exchange's exit: exports it if sampled, or if it failed and force-sampling is on.
    /// Never blocks: a full queue drops the record and counts it.
    pub fn finish(&self, ex: Box<TraceExchange>, status: u16, reason: Option<Reason>, route: Option<&str>) {
        let failed = status >= 500 || reason.is_some_and(|r| r != Reason::DirectResponse);
        self.export(ex, failed, status, reason.map(Reason::code), route);
    }

    /// An RPC request's exit: `status` is the protocol's own code (`ok` says whether it means
    /// success), `reason` weft's reason code of a local reply.
    pub fn finish_rpc(
        &self,
        mut ex: Box<TraceExchange>,
        ok: bool,
        status: u16,
        reason: Option<&'static str>,
        route: Option<&str>,
    ) {
        if let Some(r) = &mut ex.rpc {
            r.ok = ok;
        }
        self.export(ex, !ok || reason.is_some(), status, reason, route);
    }

    fn export(
        &self,
        mut ex: Box<TraceExchange>,
        failed: bool,
        status: u16,
        reason: Option<&'static str>,
        route: Option<&str>,
    ) {
        if !ex.sampled {
            if !(failed && self.config.force_sample_on_error) {
                return;
            }
            ex.forced = true;
            self.counters.forced.inc();
        }
        // Wall-clock start times, derived from the monotonic clock now rather than read per request.
        let now_unix = unix_nanos(SystemTime::now());
        let now = Instant::now();
        ex.server_nanos = now.saturating_duration_since(ex.start).as_nanos() as u64;
        ex.start_unix_nanos = now_unix.saturating_sub(ex.server_nanos);
        if let Some(c) = &mut ex.client {
            c.start_unix_nanos = now_unix.saturating_sub(now.saturating_duration_since(c.start).as_nanos() as u64);
        }
        ex.status = status;
        ex.reason = reason;
        ex.route = route.map(str::to_string);
        match self.tx.try_send(ex) {
            Ok(()) => {
                if self.tx.max_capacity() - self.tx.capacity() >= self.batch {
                    self.batch_ready.notify_one();
                }
            }
            Err(_) => {
                self.counters.dropped.inc();
            }
        }
    }
}

/// What an exchange needs for its spans; boxed once per traced request.
pub struct TraceExchange {
    pub trace_id: TraceId,
    pub server_span: SpanId,
    pub sampled: bool,
    /// Exported because it failed although not sampled.
    pub forced: bool,
    /// Set when the exchange is exported (derived from `start`).
    pub start_unix_nanos: u64,
    pub start: Instant,
    /// The server span's duration (request received → response headers sent).
    pub server_nanos: u64,
    pub method: Method,
    pub uri: Uri,
    /// The `host` header, kept only when `uri` has no authority (see [`TraceExchange::host`]).
    pub host: Option<HeaderValue>,
    pub tracestate: Option<HeaderValue>,
    pub peer: SocketAddr,
    pub parent: Option<Parent>,
    pub client: Option<ClientSpan>,
    pub status: u16,
    pub reason: Option<&'static str>,
    pub route: Option<String>,
    /// Set for an RPC request (Dubbo, Bolt): its spans follow OpenTelemetry's RPC conventions, and
    /// `method`/`uri`/`host` are unused.
    pub rpc: Option<Box<RpcSpan>>,
    /// Set for a TCP proxy session: one span, and `method`/`uri`/`host` are unused.
    pub tcp: Option<Box<TcpSpan>>,
    /// The request carried `x-b3-flags` (removed upstream when B3 multi-header is injected).
    pub b3_flags: bool,
}

/// What a TCP proxy session's span says besides the common fields.
#[derive(Clone, Debug, Default)]
pub struct TcpSpan {
    pub cluster: String,
    /// The upstream host connected to (or the last one tried).
    pub host: Option<SocketAddr>,
    /// Bytes received from the client.
    pub bytes_received: u64,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    pub attempts: u32,
}

/// What an RPC request's spans say besides the common fields.
#[derive(Clone, Debug, Default)]
pub struct RpcSpan {
    /// OpenTelemetry's `rpc.system`: `apache_dubbo`, `sofarpc`.
    pub system: &'static str,
    pub service: String,
    pub method: String,
    /// Whether the final status means success (set at the exit).
    pub ok: bool,
    /// Whether the upstream's response meant success (set when it arrived; for a one-way request,
    /// whether it was handed to an upstream connection).
    pub upstream_ok: bool,
    /// A one-way request: no response comes, so both spans end when it has been sent upstream,
    /// and carry no status code.
    pub one_way: bool,
}

/// The client span: one per forwarded request, covering all of its attempts (retries are counted
/// in `weft.attempts`, and the host is the last one tried).
#[derive(Clone, Debug)]
pub struct ClientSpan {
    pub span_id: SpanId,
    /// Set when the exchange is exported (derived from `start`).
    pub start_unix_nanos: u64,
    pub start: Instant,
    pub nanos: u64,
    pub cluster: Arc<str>,
    pub host: Option<SocketAddr>,
    pub attempts: u32,
    /// The upstream's status code, when a response arrived.
    pub status: Option<u16>,
}

impl TraceExchange {
    /// The request's host (`host:port` or `host`): the URI's authority, else the `host` header.
    pub fn host(&self) -> Option<&str> {
        match self.uri.authority() {
            Some(a) => Some(a.as_str()),
            None => self.host.as_ref().and_then(|h| h.to_str().ok()),
        }
    }

    fn client_span(&mut self, cluster: &Arc<str>) -> SpanId {
        let span_id = random_span_id();
        self.client = Some(ClientSpan {
            span_id,
            start_unix_nanos: 0,
            start: Instant::now(),
            nanos: 0,
            cluster: cluster.clone(),
            host: None,
            attempts: 0,
            status: None,
        });
        span_id
    }

    /// Starts the client span of a request forwarded to `cluster`, and writes its context into the
    /// upstream request's headers in every configured format.
    pub fn start_client(&mut self, tracer: &Tracer, cluster: &Arc<str>, headers: &mut HeaderMap) {
        let span_id = self.client_span(cluster);
        if !self.sampled {
            return self.deny(tracer, span_id, cluster, headers);
        }
        // Every value in one buffer, each header a slice of it: one allocation, not one per header.
        let mut buf = bytes::BytesMut::with_capacity(256);
        let mut parts: [Option<(HeaderName, usize, usize)>; 8] = Default::default();
        let mut n = 0;
        let mut remove_flags = false;
        for p in &tracer.config.propagators {
            self.inject(
                *p,
                span_id,
                tracer,
                cluster,
                self.uri.path(),
                &mut |name, v| match name {
                    Some(name) => {
                        let start = buf.len();
                        buf.extend_from_slice(v);
                        if let Some(slot) = parts.get_mut(n) {
                            *slot = Some((name, start, buf.len()));
                            n += 1;
                        }
                    }
                    None => remove_flags = true,
                },
            );
        }
        let all = buf.freeze();
        for (name, start, end) in parts.into_iter().flatten() {
            headers.insert(name, generated(all.slice(start..end)));
        }
        if remove_flags {
            headers.remove(&B3_FLAGS);
        }
    }

    /// Starts the client span of an RPC request forwarded to `cluster`, and returns its context as
    /// (key, value) pairs to write into the request's attachments (or header map), one per key of
    /// every configured format.
    pub fn start_rpc_client(&mut self, tracer: &Tracer, cluster: &Arc<str>) -> Vec<(HeaderName, String)> {
        let span_id = self.client_span(cluster);
        let endpoint = match &self.rpc {
            Some(r) => format!("{}.{}", r.service, r.method),
            None => String::new(),
        };
        let mut out = Vec::with_capacity(4);
        if !self.sampled {
            // As `deny` does for HTTP: the decision only.
            for p in &tracer.config.propagators {
                match p {
                    Propagator::W3c if self.w3c_passes() => {}
                    Propagator::W3c => {
                        let tp = traceparent(&self.trace_id, &span_id, false);
                        out.push((TRACEPARENT, String::from_utf8_lossy(&tp).into_owned()));
                    }
                    Propagator::B3 => out.push((B3, "0".to_string())),
                    Propagator::B3multi if tracer.config.propagators.contains(&Propagator::B3) => {}
                    Propagator::B3multi => out.push((B3_SAMPLED, "0".to_string())),
                    Propagator::Sw8 => self.inject(*p, span_id, tracer, cluster, &endpoint, &mut |name, v| {
                        if let (Some(name), Ok(v)) = (name, std::str::from_utf8(v)) {
                            out.push((name, v.to_string()));
                        }
                    }),
                }
            }
            return out;
        }
        for p in &tracer.config.propagators {
            self.inject(*p, span_id, tracer, cluster, &endpoint, &mut |name, v| {
                if let (Some(name), Ok(v)) = (name, std::str::from_utf8(v)) {
                    out.push((name, v.to_string()));
                }
            });
        }
        out
    }

    /// Whether an unsampled exchange leaves the caller's `traceparent` as it came: it already says
    /// "not sampled".
    fn w3c_passes(&self) -> bool {
        self.parent
            .as_ref()
            .is_some_and(|p| p.format == Propagator::W3c && p.sampled == Some(false))
    }

    /// The upstream context of an unsampled exchange: the "not sampled" decision in each format,
    /// with as little work as possible (see the module's documentation).
    fn deny(&self, tracer: &Tracer, span_id: SpanId, cluster: &str, headers: &mut HeaderMap) {
        for p in &tracer.config.propagators {
            match p {
                Propagator::W3c => {
                    if !self.w3c_passes() {
                        put(headers, TRACEPARENT, &traceparent(&self.trace_id, &span_id, false));
                    }
                }
                Propagator::B3 => {
                    headers.insert(B3, HeaderValue::from_static("0"));
                }
                // With `b3` listed too, `b3: 0` alone says it: B3 readers of the multi-header
                // format (Brave, OpenTelemetry's B3 propagator, Envoy, weft) read the single
                // header first.
                Propagator::B3multi if tracer.config.propagators.contains(&Propagator::B3) => {}
                Propagator::B3multi => {
                    headers.insert(B3_SAMPLED, HeaderValue::from_static("0"));
                }
                Propagator::Sw8 => self.inject(*p, span_id, tracer, cluster, self.uri.path(), &mut |name, v| {
                    if let Some(name) = name {
                        put(headers, name, v)
                    }
                }),
            }
        }
    }

    /// Ends the client span (the response's headers arrived, or the last attempt failed).
    pub fn end_client(&mut self, host: Option<SocketAddr>, attempts: u32, status: Option<u16>) {
        if let Some(c) = &mut self.client {
            c.nanos = c.start.elapsed().as_nanos() as u64;
            c.host = host;
            c.attempts = attempts;
            c.status = status;
        }
    }

    /// Writes the context of `span_id` in format `p` through `h` (`None` as the name: remove
    /// `x-b3-flags`).
    fn inject(
        &self,
        p: Propagator,
        span_id: SpanId,
        tracer: &Tracer,
        cluster: &str,
        endpoint: &str,
        h: &mut dyn FnMut(Option<HeaderName>, &[u8]),
    ) {
        let flag = if self.sampled { b'1' } else { b'0' };
        match p {
            Propagator::W3c => {
                h(Some(TRACEPARENT), &traceparent(&self.trace_id, &span_id, self.sampled));
                // `tracestate` passes through as received (weft adds no entry of its own).
            }
            Propagator::B3 => {
                let mut b = [b'-'; 68];
                b[..32].copy_from_slice(&hex16(&self.trace_id));
                b[33..49].copy_from_slice(&hex8(&span_id));
                b[50] = flag;
                b[52..].copy_from_slice(&hex8(&self.server_span));
                h(Some(B3), &b);
            }
            Propagator::B3multi => {
                h(Some(B3_TRACE_ID), &hex16(&self.trace_id));
                h(Some(B3_SPAN_ID), &hex8(&span_id));
                h(Some(B3_PARENT_SPAN_ID), &hex8(&self.server_span));
                h(Some(B3_SAMPLED), &[flag]);
                if self.b3_flags {
                    h(None, &[]);
                }
            }
            Propagator::Sw8 => {
                let mut v = Vec::with_capacity(128);
                v.push(flag);
                v.push(b'-');
                match self.parent.as_ref().and_then(|p| p.sw8.as_ref()) {
                    Some(sw) => base64_encode(sw.trace_id.as_bytes(), &mut v),
                    None => base64_encode(hex(&self.trace_id).as_bytes(), &mut v),
                }
                v.push(b'-');
                // This proxy's segment is its server span; the exit span is span 1 in it.
                base64_encode(hex(&self.server_span).as_bytes(), &mut v);
                v.extend_from_slice(b"-1-");
                base64_encode(tracer.config.service_name.as_bytes(), &mut v);
                v.push(b'-');
                base64_encode(tracer.instance.as_bytes(), &mut v);
                v.push(b'-');
                base64_encode(endpoint.as_bytes(), &mut v);
                v.push(b'-');
                base64_encode(cluster.as_bytes(), &mut v);
                h(Some(SW8), &v);
            }
        }
    }
}

/// Inserts a value weft wrote itself (see [`generated`]).
fn put(h: &mut HeaderMap, name: HeaderName, v: &[u8]) {
    h.insert(name, generated(bytes::Bytes::copy_from_slice(v)));
}

/// A header value of bytes weft wrote itself: hex digits, `-`, `0`/`1` and Base64, all visible
/// ASCII. Not validated again: that pass was a tenth of an unsampled request's tracing cost.
fn generated(v: bytes::Bytes) -> HeaderValue {
    debug_assert!(v.iter().all(|b| (0x21..0x7f).contains(b)), "{v:?}");
    // SAFETY: `from_maybe_shared_unchecked` requires bytes valid in a header value; every caller
    // passes visible ASCII it formatted itself (hex, '-', flags, Base64), never received bytes.
    unsafe { HeaderValue::from_maybe_shared_unchecked(v) }
}

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn random_trace_id() -> TraceId {
    loop {
        let t = fastrand::u128(..).to_be_bytes();
        if t != [0; 16] {
            return t;
        }
    }
}

fn random_span_id() -> SpanId {
    loop {
        let s = fastrand::u64(..).to_be_bytes();
        if s != [0; 8] {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert_eq!(p.sampled, Some(true));
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(parse_traceparent(unsampled.as_bytes()).unwrap().sampled, Some(false));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A future version may append fields.
        let future = format!("01{}-abc", &TP[2..]);
        assert!(parse_traceparent(future.as_bytes()).is_some());
    }

    #[test]
    fn b3() {
        let p = parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").unwrap();
        assert_eq!(hex(&p.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(hex(&p.span_id), "e457b5a2e4d86bd1");
        assert_eq!(p.sampled, Some(true));
        let p = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert_eq!(hex(&p.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(p.sampled, None);
        assert_eq!(
            parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d").unwrap().sampled,
            Some(true)
        );
        for bad in [
            "0",
            "1",
            "d",
            "abc-def",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz",
        ] {
            assert!(parse_b3_single(bad.as_bytes()).is_none(), "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            B3_TRACE_ID,
            HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
        );
        h.insert(B3_SPAN_ID, HeaderValue::from_static("a2fb4a1d1a96d312"));
        h.insert(B3_SAMPLED, HeaderValue::from_static("0"));
        let p = parse_b3_multi(&h).unwrap();
        assert_eq!(p.sampled, Some(false));
        h.insert(B3_FLAGS, HeaderValue::from_static("1"));
        assert_eq!(parse_b3_multi(&h).unwrap().sampled, Some(true));
    }

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "abcd", "service-a", "/path/to?x"] {
            let mut e = Vec::new();
            base64_encode(s.as_bytes(), &mut e);
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes());
        }
        let mut e = Vec::new();
        base64_encode(b"hello", &mut e);
        assert_eq!(e, b"aGVsbG8=");
        assert!(base64_decode(b"a").is_none());
        assert!(base64_decode(b"a*bc").is_none());
    }

    fn b64(s: &str) -> String {
        let mut v = Vec::new();
        base64_encode(s.as_bytes(), &mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn sw8() {
        let h = format!(
            "1-{}-{}-3-{}-{}-{}-{}",
            b64("a1b2c3.51.17000000000000001"),
            b64("seg.1"),
            b64("frontend"),
            b64("frontend@host"),
            b64("/api"),
            b64("reviews:9080")
        );
        let p = parse_sw8(h.as_bytes()).unwrap();
        let sw = p.sw8.as_ref().unwrap();
        assert_eq!(sw.trace_id, "a1b2c3.51.17000000000000001");
        assert_eq!(sw.parent_span, 3);
        assert_eq!(sw.parent_service, "frontend");
        assert_eq!(p.trace_id, sw8_trace_id("a1b2c3.51.17000000000000001"));
        assert_eq!(p.sampled, Some(true));
        assert!(parse_sw8(b"1-a-b-c").is_none());
        assert!(parse_sw8(h.replacen('1', "2", 1).as_bytes()).is_none());
        // A hex trace id maps onto itself.
        assert_eq!(
            hex(&sw8_trace_id("4bf92f3577b34da6a3ce929d0e0e4736")),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn ratio() {
        let mut hits = 0;
        for _ in 0..10_000 {
            if ratio_sampled(&random_trace_id(), 0.1) {
                hits += 1;
            }
        }
        assert!((700..1300).contains(&hits), "{hits}");
        assert!(ratio_sampled(&[0; 16], 1.0));
        assert!(!ratio_sampled(&[0xff; 16], 0.0));
    }

    fn tracer(ratio: f64, props: Vec<Propagator>) -> (Tracer, TraceReceiver) {
        let cfg = Tracing {
            endpoint: weft_config::TraceEndpoint::Address("127.0.0.1:1".into()),
            protocol: weft_config::OtlpProtocol::Grpc,
            sampling_ratio: ratio,
            force_sample_on_error: true,
            service_name: "svc".into(),
            propagators: props,
            max_queue_size: 2,
            batch_size: 1,
            export_timeout: std::time::Duration::from_secs(1),
            http_path: "/v1/traces".into(),
        };
        Tracer::new(Arc::new(cfg), "node-1".into(), TraceCounters::default())
    }

    #[test]
    fn rpc_context_from_and_into_attachments() {
        let (t, mut rx) = tracer(0.0, vec![Propagator::W3c, Propagator::B3multi, Propagator::Sw8]);
        let props: std::collections::HashMap<&str, &str> = [
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]
        .into();
        let peer: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let span = RpcSpan {
            system: "sofarpc",
            service: "S".into(),
            method: "m".into(),
            ..RpcSpan::default()
        };
        let mut ex = t.start_rpc(|k| props.get(k).copied(), peer, span);
        assert!(ex.sampled, "b3 said sampled (the ratio is 0)");
        assert_eq!(hex(&ex.trace_id), "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(hex(&ex.parent.as_ref().unwrap().span_id), "a2fb4a1d1a96d312");
        let kvs = ex.start_rpc_client(&t, &Arc::from("c"));
        let get = |k: &str| kvs.iter().find(|(n, _)| n.as_str() == k).map(|(_, v)| v.clone());
        let client = ex.client.as_ref().unwrap().span_id;
        let tp = parse_traceparent(get("traceparent").unwrap().as_bytes()).unwrap();
        assert_eq!((tp.trace_id, tp.span_id), (ex.trace_id, client));
        assert_eq!(get("x-b3-spanid").unwrap(), hex(&client));
        assert_eq!(get("x-b3-parentspanid").unwrap(), hex(&ex.server_span));
        let sw = parse_sw8(get("sw8").unwrap().as_bytes()).unwrap();
        assert_eq!(sw.sw8.unwrap().parent_endpoint, "S.m");
        // What a caller's next hop reads back is this context.
        let again = extract_by(get, &[Propagator::W3c]).unwrap();
        assert_eq!(again.span_id, client);
        ex.end_client(Some(peer), 1, None);
        t.finish_rpc(ex, false, 31, Some("UT"), Some("r"));
        let got = rx.try_recv().unwrap();
        assert_eq!(
            (got.status, got.reason, got.route.as_deref()),
            (31, Some("UT"), Some("r"))
        );
        assert!(!got.rpc.as_ref().unwrap().ok);
    }

    #[test]
    fn continue_inject_and_queue() {
        let all = vec![Propagator::W3c, Propagator::B3, Propagator::B3multi, Propagator::Sw8];
        let (t, mut rx) = tracer(0.0, all);
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        let peer: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let uri: Uri = "/a/b?c".parse().unwrap();
        let mut ex = t.start(&Method::GET, &uri, &h, peer);
        assert!(ex.sampled, "the parent's decision wins over the ratio");
        let mut up = HeaderMap::new();
        ex.start_client(&t, &Arc::from("backend"), &mut up);
        let client = ex.client.as_ref().unwrap().span_id;
        let p = parse_traceparent(up[&TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(p.trace_id, ex.trace_id);
        assert_eq!(p.span_id, client);
        let b = parse_b3_single(up[&B3].as_bytes()).unwrap();
        assert_eq!((b.trace_id, b.span_id), (ex.trace_id, client));
        let m = parse_b3_multi(&up).unwrap();
        assert_eq!((m.trace_id, m.span_id, m.sampled), (ex.trace_id, client, Some(true)));
        let s = parse_sw8(up[&SW8].as_bytes()).unwrap();
        assert_eq!(s.trace_id, ex.trace_id);
        assert_eq!(s.sw8.unwrap().parent_endpoint, "/a/b");
        ex.end_client(Some(peer), 1, Some(200));
        t.finish(ex, 200, None, Some("r"));
        assert!(rx.try_recv().is_ok());

        // A caller's `x-b3-flags` does not travel on (the debug flag is carried as sampled).
        let mut hf = h.clone();
        hf.insert(B3_FLAGS, HeaderValue::from_static("1"));
        let mut exf = t.start(&Method::GET, &uri, &hf, peer);
        exf.start_client(&t, &Arc::from("backend"), &mut hf);
        assert!(!hf.contains_key(&B3_FLAGS) && hf.contains_key(&B3_TRACE_ID));

        // Unsampled: upstream hears the decision only, in every format.
        let mut ex = t.start(&Method::GET, &uri, &HeaderMap::new(), peer);
        assert!(!ex.sampled);
        let mut up = HeaderMap::new();
        ex.start_client(&t, &Arc::from("backend"), &mut up);
        let p = parse_traceparent(up[&TRACEPARENT].as_bytes()).unwrap();
        assert_eq!((p.trace_id, p.sampled), (ex.trace_id, Some(false)));
        assert_eq!(up[&B3].as_bytes(), b"0");
        assert!(!up.contains_key(&B3_SAMPLED), "b3: 0 says it for both B3 formats");
        assert!(!up.contains_key(&B3_TRACE_ID) && !up.contains_key(&B3_SPAN_ID));
        assert_eq!(parse_sw8(up[&SW8].as_bytes()).unwrap().sampled, Some(false));
        // ... which the next hop follows, whichever format it reads (the ratio here is 1).
        let (t1, _rx1) = tracer(1.0, vec![Propagator::B3]);
        assert!(!t1.start(&Method::GET, &uri, &up, peer).sampled, "b3: 0");
        let (t1, _rx1) = tracer(1.0, vec![Propagator::B3multi]);
        assert!(
            !t1.start(&Method::GET, &uri, &up, peer).sampled,
            "b3: 0, read by b3multi"
        );
        let mut multi = HeaderMap::new();
        multi.insert(B3_SAMPLED, HeaderValue::from_static("0"));
        assert!(!t1.start(&Method::GET, &uri, &multi, peer).sampled, "x-b3-sampled: 0");
        assert!(t1.start(&Method::GET, &uri, &HeaderMap::new(), peer).sampled);
        // Listed alone, b3multi writes its own deny.
        let mut ex1 = t1.start(&Method::GET, &uri, &up, peer);
        let mut up1 = HeaderMap::new();
        ex1.start_client(&t1, &Arc::from("backend"), &mut up1);
        assert_eq!(up1[&B3_SAMPLED].as_bytes(), b"0");
        let kv = |k: &str| match k {
            "b3" => Some("0"),
            _ => None,
        };
        let (t1, _rx1) = tracer(1.0, vec![Propagator::W3c, Propagator::B3]);
        let mut rx_ex = t1.start_rpc(kv, peer, RpcSpan::default());
        assert!(!rx_ex.sampled, "an RPC attachment b3=0");
        let kvs = rx_ex.start_rpc_client(&t1, &Arc::from("c"));
        assert_eq!(kvs.len(), 2);
        assert!(kvs.iter().any(|(k, v)| *k == B3 && v == "0"));
        // A caller's own unsampled traceparent passes unchanged.
        let tp00 = TP.replace("-01", "-00");
        let mut h0 = HeaderMap::new();
        h0.insert(TRACEPARENT, HeaderValue::from_str(&tp00).unwrap());
        let mut ex0 = t.start(&Method::GET, &uri, &h0, peer);
        assert!(!ex0.sampled);
        let mut up = h0.clone();
        ex0.start_client(&t, &Arc::from("backend"), &mut up);
        assert_eq!(up[&TRACEPARENT], tp00.as_str());

        // Unsampled and fine: nothing exported; unsampled and failed: forced.
        let ex = t.start(&Method::GET, &uri, &HeaderMap::new(), peer);
        assert!(!ex.sampled);
        t.finish(ex, 200, None, None);
        assert!(rx.try_recv().is_err());
        let ex = t.start(&Method::GET, &uri, &HeaderMap::new(), peer);
        t.finish(ex, 503, Some(Reason::UpstreamConnectFailure), None);
        let got = rx.try_recv().unwrap();
        assert!(got.forced);
        assert!(got.start_unix_nanos > 1_700_000_000_000_000_000, "derived at export");
        assert_eq!(got.reason, Some("UF"));
        // A full queue drops and counts, never blocks.
        for _ in 0..5 {
            let ex = t.start(&Method::GET, &uri, &h, peer);
            t.finish(ex, 200, None, None);
        }
        assert_eq!(t.counters.dropped.get(), 3);
    }
}

/// The tracers' metric families (per listener), registered with the process registry once.
#[derive(Default)]
pub struct TraceMetrics {
    sampled: prometheus_client::metrics::family::Family<crate::stats::ListenerLabel, Counter>,
    forced: prometheus_client::metrics::family::Family<crate::stats::ListenerLabel, Counter>,
    dropped: prometheus_client::metrics::family::Family<crate::stats::ListenerLabel, Counter>,
    exported: prometheus_client::metrics::family::Family<crate::stats::ListenerLabel, Counter>,
    export_failed: prometheus_client::metrics::family::Family<crate::stats::ListenerLabel, Counter>,
}

impl TraceMetrics {
    pub(crate) fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register("tracing_sampled", "Exchanges sampled for tracing", self.sampled.clone());
        r.register(
            "tracing_force_sampled",
            "Unsampled exchanges exported because they failed",
            self.forced.clone(),
        );
        r.register(
            "tracing_dropped",
            "Traced exchanges dropped because the export queue was full",
            self.dropped.clone(),
        );
        r.register(
            "tracing_exported_spans",
            "Spans the trace collector accepted",
            self.exported.clone(),
        );
        r.register(
            "tracing_export_failed_spans",
            "Spans lost to a failed, refused or timed-out export",
            self.export_failed.clone(),
        );
    }

    /// The counters of the tracer of `listener`'s connection manager.
    pub fn counters(&self, listener: &str) -> TraceCounters {
        let l = crate::stats::ListenerLabel {
            listener: listener.to_string(),
        };
        TraceCounters {
            sampled: self.sampled.get_or_create(&l).clone(),
            forced: self.forced.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            exported: self.exported.get_or_create(&l).clone(),
            export_failed: self.export_failed.get_or_create(&l).clone(),
        }
    }
}
