//! OTLP trace requests (`ExportTraceServiceRequest`, opentelemetry-proto 1.x) encoded straight from
//! weft's [`TraceExchange`] records to protobuf bytes.
//!
//! Why by hand and not through prost's generated types: those own their data, so a span costs an
//! owned `String` for every attribute key and value, a `Vec<KeyValue>` and a `Span` struct before
//! prost walks it twice (`encoded_len`, then `encode_raw`). At a 100 % sampling ratio that was about
//! 31,000 instructions per traced request (`bench/instructions --obs`, docs/benchmarks.md), more
//! than the rest of the request. Here each field is written once into a reused buffer, attribute
//! keys are static, numbers and IPv4 addresses are formatted without `core::fmt`, and a span's body
//! is copied once behind its length. The message types stay the official ones: the unit tests
//! decode every shape of span with opentelemetry-proto's generated types and compare it with the
//! message built field by field from the same record (`reference`), and the integration tests send
//! to real collectors.
//!
//! Span shapes (names and attributes follow OpenTelemetry's semantic conventions; weft's own are
//! `weft.*`): an HTTP exchange gives a server span and, when forwarded, a client span; an RPC
//! request the same after the RPC conventions; a TCP session one server span.

use bytes::{BufMut, Bytes};
use std::net::{IpAddr, SocketAddr};
use weft_core::trace::{ClientSpan, RpcSpan, TcpSpan, TraceExchange};

const SPAN_KIND_SERVER: u64 = 2;
const SPAN_KIND_CLIENT: u64 = 3;
const STATUS_CODE_ERROR: u64 = 2;
/// `Span.flags`: bit 8 says whether bit 9 (the parent is remote) is known.
const FLAG_HAS_REMOTE_KNOWN: u32 = 0x100;
const FLAG_REMOTE_PARENT: u32 = 0x200;

/// An attribute value.
enum Val<'a> {
    Str(&'a [u8]),
    Int(i64),
    Bool(bool),
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A field key: (field number << 3) | wire type. Every field number here is below 16 or is 16
/// (two bytes, written by `varint`).
fn tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn len_field(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(buf, field, 2);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// A length-delimited field, omitted when empty (proto3 leaves default values out).
fn opt_len_field(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        len_field(buf, field, data);
    }
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, 1);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A `KeyValue` as field `field` of the enclosing message.
fn kv(buf: &mut Vec<u8>, field: u32, key: &str, v: Val<'_>) {
    let any_len = match v {
        Val::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        Val::Int(i) => 1 + varint_len(i as u64),
        Val::Bool(_) => 2,
    };
    let kv_len = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    tag(buf, field, 2);
    varint(buf, kv_len as u64);
    len_field(buf, 1, key.as_bytes());
    tag(buf, 2, 2);
    varint(buf, any_len as u64);
    match v {
        Val::Str(s) => len_field(buf, 1, s),
        Val::Int(i) => {
            tag(buf, 3, 0);
            varint(buf, i as u64);
        }
        Val::Bool(b) => {
            tag(buf, 2, 0);
            buf.push(u8::from(b));
        }
    }
}

/// An attribute key as it is written: field 1 of `KeyValue` (tag, length, bytes), padded to a
/// fixed size so that copying it is a few fixed-size moves, not a `memcpy` call.
struct Key {
    b: [u8; 48],
    n: usize,
}

const fn key(s: &str) -> Key {
    let k = s.as_bytes();
    assert!(k.len() <= 46);
    let mut b = [0u8; 48];
    b[0] = (1 << 3) | 2;
    b[1] = k.len() as u8;
    let mut i = 0;
    while i < k.len() {
        b[2 + i] = k[i];
        i += 1;
    }
    Key { b, n: k.len() + 2 }
}

/// A span attribute (`Span.attributes`, field 9) with a constant key.
fn attr_key(buf: &mut Vec<u8>, key: &Key, v: Val<'_>) {
    let any_len = match v {
        Val::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        Val::Int(i) => 1 + varint_len(i as u64),
        Val::Bool(_) => 2,
    };
    let kv_len = key.n + 1 + varint_len(any_len as u64) + any_len;
    buf.push((9 << 3) | 2);
    varint(buf, kv_len as u64);
    let at = buf.len();
    buf.extend_from_slice(&key.b);
    buf.truncate(at + key.n);
    buf.push((2 << 3) | 2);
    varint(buf, any_len as u64);
    match v {
        Val::Str(s) => len_field(buf, 1, s),
        Val::Int(i) => {
            buf.push(3 << 3);
            varint(buf, i as u64);
        }
        Val::Bool(b) => {
            buf.push(2 << 3);
            buf.push(u8::from(b));
        }
    }
}

macro_rules! attr {
    ($b:expr, $k:literal, $v:expr) => {{
        const K: Key = key($k);
        attr_key($b, &K, $v)
    }};
}

macro_rules! attr_str {
    ($b:expr, $k:literal, $v:expr) => {
        attr!($b, $k, Val::Str($v.as_bytes()))
    };
}

/// Decimal digits of `v` at the end of `out`; returns where they start.
fn decimal(out: &mut [u8; 20], mut v: u64) -> usize {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return i;
        }
    }
}

/// An IP address as text (IPv4 without `core::fmt`; IPv6, rare on this path, through it).
#[derive(Clone, Copy)]
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        let mut t = IpText { buf: [0; 45], len: 0 };
        match ip {
            IpAddr::V4(v4) => {
                let mut d = [0u8; 20];
                for (n, o) in v4.octets().into_iter().enumerate() {
                    if n > 0 {
                        t.buf[t.len] = b'.';
                        t.len += 1;
                    }
                    let at = decimal(&mut d, u64::from(o));
                    let digits = &d[at..];
                    t.buf[t.len..t.len + digits.len()].copy_from_slice(digits);
                    t.len += digits.len();
                }
            }
            IpAddr::V6(v6) => {
                let s = v6.to_string();
                t.buf[..s.len()].copy_from_slice(s.as_bytes());
                t.len = s.len();
            }
        }
        t
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The text of the last two addresses seen (a sidecar's spans name the same few hosts).
#[derive(Default)]
struct IpCache {
    slots: [Option<(IpAddr, IpText)>; 2],
    next: usize,
}

impl IpCache {
    fn get(&mut self, ip: IpAddr) -> IpText {
        for (a, t) in self.slots.iter().flatten() {
            if *a == ip {
                return *t;
            }
        }
        let t = IpText::new(ip);
        self.slots[self.next] = Some((ip, t));
        self.next = (self.next + 1) % 2;
        t
    }
}

/// `ip:port` (`[ip]:port` for IPv6), as `SocketAddr`'s `Display` writes it.
fn host_port(addr: SocketAddr, ip: &IpText, out: &mut Vec<u8>) {
    out.clear();
    if addr.is_ipv6() {
        out.push(b'[');
        out.extend_from_slice(ip.as_bytes());
        out.push(b']');
    } else {
        out.extend_from_slice(ip.as_bytes());
    }
    out.push(b':');
    let mut d = [0u8; 20];
    let at = decimal(&mut d, u64::from(addr.port()));
    out.extend_from_slice(&d[at..]);
}

/// Encodes batches of exchanges into `ExportTraceServiceRequest` bodies, reusing its buffers.
pub struct Encoder {
    /// The encoded `Resource` and `InstrumentationScope` (the same in every request).
    resource: Vec<u8>,
    scope: Vec<u8>,
    /// The batch's spans, each as field 2 of `ScopeSpans`.
    spans: Vec<u8>,
    /// One span's body while it is written.
    span: Vec<u8>,
    scratch: Vec<u8>,
    ips: IpCache,
    /// Spans in the current batch.
    count: u64,
}

impl Encoder {
    pub fn new(service_name: &str, instance: &str) -> Encoder {
        let mut resource = Vec::new();
        kv(&mut resource, 1, "service.name", Val::Str(service_name.as_bytes()));
        kv(&mut resource, 1, "service.instance.id", Val::Str(instance.as_bytes()));
        kv(&mut resource, 1, "telemetry.sdk.name", Val::Str(b"weft"));
        kv(&mut resource, 1, "telemetry.sdk.language", Val::Str(b"rust"));
        let mut scope = Vec::new();
        len_field(&mut scope, 1, b"weft");
        len_field(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
        Encoder {
            resource,
            scope,
            spans: Vec::new(),
            span: Vec::with_capacity(1024),
            scratch: Vec::with_capacity(64),
            ips: IpCache::default(),
            count: 0,
        }
    }

    /// The request for `batch`, and how many spans it holds.
    pub fn encode(&mut self, batch: &[Box<TraceExchange>]) -> (Bytes, u64) {
        self.spans.clear();
        self.count = 0;
        for x in batch {
            self.exchange(x);
        }
        let scope_field = 1 + varint_len(self.scope.len() as u64) + self.scope.len();
        let scope_spans_len = scope_field + self.spans.len();
        let resource_field = 1 + varint_len(self.resource.len() as u64) + self.resource.len();
        let resource_spans_len = resource_field + 1 + varint_len(scope_spans_len as u64) + scope_spans_len;
        let mut out = Vec::with_capacity(1 + varint_len(resource_spans_len as u64) + resource_spans_len);
        tag(&mut out, 1, 2);
        varint(&mut out, resource_spans_len as u64);
        len_field(&mut out, 1, &self.resource);
        tag(&mut out, 2, 2);
        varint(&mut out, scope_spans_len as u64);
        len_field(&mut out, 1, &self.scope);
        out.put_slice(&self.spans);
        (Bytes::from(out), self.count)
    }

    fn exchange(&mut self, x: &TraceExchange) {
        if let Some(rpc) = &x.rpc {
            return self.rpc(x, rpc);
        }
        if let Some(tcp) = &x.tcp {
            return self.tcp(x, tcp);
        }
        let method = x.method.as_str();
        // Server span.
        let error = x.status >= 500 || x.reason.is_some_and(|r| r != "DR");
        self.span.clear();
        self.ids(x);
        match &x.route {
            Some(r) => {
                tag(&mut self.span, 5, 2);
                varint(&mut self.span, (method.len() + 1 + r.len()) as u64);
                self.span.extend_from_slice(method.as_bytes());
                self.span.push(b' ');
                self.span.extend_from_slice(r.as_bytes());
            }
            None => len_field(&mut self.span, 5, method.as_bytes()),
        }
        tag(&mut self.span, 6, 0);
        varint(&mut self.span, SPAN_KIND_SERVER);
        fixed64_field(&mut self.span, 7, x.start_unix_nanos);
        fixed64_field(&mut self.span, 8, x.start_unix_nanos + x.server_nanos);
        let b = &mut self.span;
        attr_str!(b, "http.request.method", method);
        attr_str!(b, "url.path", x.uri.path());
        attr_str!(b, "url.scheme", "http");
        attr!(b, "http.response.status_code", Val::Int(i64::from(x.status)));
        peer(b, &mut self.ips, x.peer);
        if let Some(h) = x.host() {
            let (host, port) = split_host_port(h);
            if !host.is_empty() {
                attr_str!(b, "server.address", host);
            }
            if let Some(p) = port {
                attr!(b, "server.port", Val::Int(i64::from(p)));
            }
        }
        if let Some(q) = x.uri.query() {
            attr_str!(b, "url.query", q);
        }
        weft_attrs(b, x);
        status(b, error, x.reason);
        self.flags(x.parent.is_some(), x.sampled);
        self.finish_span();
        // Client span.
        if let Some(c) = &x.client {
            let b = &mut self.span;
            client_ids(b, x, c);
            len_field(b, 5, method.as_bytes());
            tag(b, 6, 0);
            varint(b, SPAN_KIND_CLIENT);
            fixed64_field(b, 7, c.start_unix_nanos);
            fixed64_field(b, 8, c.start_unix_nanos + c.nanos);
            attr_str!(b, "http.request.method", method);
            attr_str!(b, "url.path", x.uri.path());
            attr_str!(b, "weft.upstream.cluster", &c.cluster);
            attr!(b, "weft.attempts", Val::Int(i64::from(c.attempts)));
            upstream(b, &mut self.ips, &mut self.scratch, c.host);
            if let Some(st) = c.status {
                attr!(b, "http.response.status_code", Val::Int(i64::from(st)));
            }
            // The client span failed when no response came back (the reason says why) or it was a 4xx/5xx.
            let reason = if c.status.is_none() { x.reason } else { None };
            if let Some(r) = reason {
                attr_str!(b, "weft.reason", r);
            }
            status(b, c.status.is_none_or(|st| st >= 400), reason);
            self.flags(true, x.sampled);
            self.finish_span();
        }
    }

    fn rpc(&mut self, x: &TraceExchange, rpc: &RpcSpan) {
        let name_len = rpc.service.len() + 1 + rpc.method.len();
        // A one-way request has no response: no status code, and its client span failed only if
        // it could not be sent.
        let name = |b: &mut Vec<u8>| {
            tag(b, 5, 2);
            varint(b, name_len as u64);
            b.extend_from_slice(rpc.service.as_bytes());
            b.push(b'/');
            b.extend_from_slice(rpc.method.as_bytes());
        };
        let common = |b: &mut Vec<u8>| {
            attr_str!(b, "rpc.system", rpc.system);
            attr_str!(b, "rpc.service", &rpc.service);
            attr_str!(b, "rpc.method", &rpc.method);
            if rpc.one_way {
                attr!(b, "weft.one_way", Val::Bool(true));
            }
        };
        let mut d = [0u8; 20];
        self.span.clear();
        self.ids(x);
        let b = &mut self.span;
        name(b);
        tag(b, 6, 0);
        varint(b, SPAN_KIND_SERVER);
        fixed64_field(b, 7, x.start_unix_nanos);
        fixed64_field(b, 8, x.start_unix_nanos + x.server_nanos);
        common(b);
        peer(b, &mut self.ips, x.peer);
        if !rpc.one_way {
            let at = decimal(&mut d, u64::from(x.status));
            attr!(b, "rpc.response.status_code", Val::Str(&d[at..]));
        }
        weft_attrs(b, x);
        status(b, !rpc.ok || x.reason.is_some(), x.reason);
        self.flags(x.parent.is_some(), x.sampled);
        self.finish_span();
        if let Some(c) = &x.client {
            let b = &mut self.span;
            client_ids(b, x, c);
            name(b);
            tag(b, 6, 0);
            varint(b, SPAN_KIND_CLIENT);
            fixed64_field(b, 7, c.start_unix_nanos);
            fixed64_field(b, 8, c.start_unix_nanos + c.nanos);
            common(b);
            attr_str!(b, "weft.upstream.cluster", &c.cluster);
            upstream(b, &mut self.ips, &mut self.scratch, c.host);
            if let Some(st) = c.status {
                let at = decimal(&mut d, u64::from(st));
                attr!(b, "rpc.response.status_code", Val::Str(&d[at..]));
            }
            let reason = if c.status.is_none() { x.reason } else { None };
            if let Some(r) = reason {
                attr_str!(b, "weft.reason", r);
            }
            status(b, (c.status.is_none() && !rpc.one_way) || !rpc.upstream_ok, reason);
            self.flags(true, x.sampled);
            self.finish_span();
        }
    }

    fn tcp(&mut self, x: &TraceExchange, t: &TcpSpan) {
        self.span.clear();
        let b = &mut self.span;
        len_field(b, 1, &x.trace_id);
        len_field(b, 2, &x.server_span);
        tag(b, 5, 2);
        varint(b, (4 + t.cluster.len()) as u64);
        b.extend_from_slice(b"tcp ");
        b.extend_from_slice(t.cluster.as_bytes());
        tag(b, 6, 0);
        varint(b, SPAN_KIND_SERVER);
        fixed64_field(b, 7, x.start_unix_nanos);
        fixed64_field(b, 8, x.start_unix_nanos + x.server_nanos);
        attr_str!(b, "network.transport", "tcp");
        attr_str!(b, "weft.upstream.cluster", &t.cluster);
        attr!(b, "weft.bytes_received", Val::Int(t.bytes_received as i64));
        attr!(b, "weft.bytes_sent", Val::Int(t.bytes_sent as i64));
        attr!(b, "weft.attempts", Val::Int(i64::from(t.attempts)));
        peer(b, &mut self.ips, x.peer);
        if let Some(h) = t.host {
            let ip = self.ips.get(h.ip());
            attr!(b, "server.address", Val::Str(ip.as_bytes()));
            attr!(b, "server.port", Val::Int(i64::from(h.port())));
            host_port(h, &ip, &mut self.scratch);
            attr!(b, "weft.upstream.host", Val::Str(&self.scratch));
        }
        if let Some(r) = x.reason {
            attr_str!(b, "weft.reason", r);
        }
        if x.forced {
            attr!(b, "weft.force_sampled", Val::Bool(true));
        }
        status(b, x.reason.is_some(), x.reason);
        // A TCP session has no caller context: "remote parent" stays unset.
        self.flags(false, x.sampled);
        self.finish_span();
    }

    /// The server span's ids, `trace_state` and parent.
    fn ids(&mut self, x: &TraceExchange) {
        let b = &mut self.span;
        len_field(b, 1, &x.trace_id);
        len_field(b, 2, &x.server_span);
        if let Some(ts) = &x.tracestate {
            if ts.to_str().is_ok() {
                opt_len_field(b, 3, ts.as_bytes());
            }
        }
        if let Some(p) = &x.parent {
            len_field(b, 4, &p.span_id);
        }
    }

    fn flags(&mut self, remote_parent: bool, sampled: bool) {
        let remote = if remote_parent { FLAG_REMOTE_PARENT } else { 0 };
        // Field 16, wire type 5 (fixed32): a two-byte key.
        tag(&mut self.span, 16, 5);
        self.span
            .put_u32_le(FLAG_HAS_REMOTE_KNOWN | remote | u32::from(sampled));
    }

    /// Appends the span written in `span` to the batch.
    fn finish_span(&mut self) {
        len_field(&mut self.spans, 2, &self.span);
        self.span.clear();
        self.count += 1;
    }
}

/// The client span's ids: its own, the trace's, and the server span as its parent.
fn client_ids(b: &mut Vec<u8>, x: &TraceExchange, c: &ClientSpan) {
    len_field(b, 1, &x.trace_id);
    len_field(b, 2, &c.span_id);
    len_field(b, 4, &x.server_span);
}

/// The downstream peer: `network.peer.*` and `client.address`.
fn peer(b: &mut Vec<u8>, ips: &mut IpCache, p: SocketAddr) {
    let ip = ips.get(p.ip());
    attr!(b, "network.peer.address", Val::Str(ip.as_bytes()));
    attr!(b, "network.peer.port", Val::Int(i64::from(p.port())));
    attr!(b, "client.address", Val::Str(ip.as_bytes()));
}

/// The upstream host a client span reached (none when no connection was made).
fn upstream(b: &mut Vec<u8>, ips: &mut IpCache, scratch: &mut Vec<u8>, host: Option<SocketAddr>) {
    if let Some(h) = host {
        let ip = ips.get(h.ip());
        attr!(b, "server.address", Val::Str(ip.as_bytes()));
        attr!(b, "server.port", Val::Int(i64::from(h.port())));
        attr!(b, "network.peer.address", Val::Str(ip.as_bytes()));
        attr!(b, "network.peer.port", Val::Int(i64::from(h.port())));
        host_port(h, &ip, scratch);
        attr!(b, "weft.upstream.host", Val::Str(scratch));
    }
}

/// weft's own attributes of a server span: route, reason, forced sampling, the upstream cluster,
/// and the SkyWalking context it continued.
fn weft_attrs(b: &mut Vec<u8>, x: &TraceExchange) {
    if let Some(r) = &x.route {
        attr_str!(b, "weft.route", r);
    }
    if let Some(r) = x.reason {
        attr_str!(b, "weft.reason", r);
    }
    if x.forced {
        attr!(b, "weft.force_sampled", Val::Bool(true));
    }
    if let Some(c) = &x.client {
        attr_str!(b, "weft.upstream.cluster", &c.cluster);
    }
    if let Some(sw) = x.parent.as_ref().and_then(|p| p.sw8.as_deref()) {
        attr_str!(b, "skywalking.trace_id", &sw.trace_id);
        attr_str!(b, "skywalking.parent.segment_id", &sw.parent_segment);
        attr!(b, "skywalking.parent.span_id", Val::Int(i64::from(sw.parent_span)));
        attr_str!(b, "skywalking.parent.service", &sw.parent_service);
        attr_str!(b, "skywalking.parent.service_instance", &sw.parent_instance);
        attr_str!(b, "skywalking.parent.endpoint", &sw.parent_endpoint);
    }
}

/// `Span.status` (field 15): empty (unset) unless `error`; then code ERROR and the reason.
fn status(b: &mut Vec<u8>, error: bool, reason: Option<&str>) {
    if !error {
        b.extend_from_slice(&[15 << 3 | 2, 0]);
        return;
    }
    let msg = reason.unwrap_or("");
    let msg_len = if msg.is_empty() {
        0
    } else {
        1 + varint_len(msg.len() as u64) + msg.len()
    };
    tag(b, 15, 2);
    varint(b, (msg_len + 2) as u64);
    opt_len_field(b, 2, msg.as_bytes());
    tag(b, 3, 0);
    varint(b, STATUS_CODE_ERROR);
}

/// `host[:port]` or `[v6][:port]` → (host, port).
pub(crate) fn split_host_port(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (h, None),
        };
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}
