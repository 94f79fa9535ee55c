//! Access-log format strings (`weft_config::log_format`): text and JSON formats compile or are
//! refused without a panic, and a compiled format formats an entry (with arbitrary header values)
//! into one line: valid JSON for a JSON format, exactly one newline for a text format.
//!
//! Input: byte 0 picks text (even) or JSON (odd); the rest, split at the first NUL, is the format
//! (for JSON: `key=value` pairs separated by `\n`) and the header value every header slot gets.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};
use weft_config::log_format::{FormatKind, LogFormat};
use weft_core::log_format::{write, LogEntry};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (fmt, value) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let Ok(fmt) = std::str::from_utf8(fmt) else { return };
    let compiled = if mode % 2 == 0 {
        LogFormat::text(fmt).ok()
    } else {
        let pairs: Vec<(&str, &str)> = fmt.split('\n').filter_map(|l| l.split_once('=')).collect();
        LogFormat::json(pairs).ok()
    };
    let Some(f) = compiled else { return };
    let hv = HeaderValue::from_bytes(value).ok();
    let req: Vec<Option<HeaderValue>> = f.req_headers.iter().map(|_| hv.clone()).collect();
    let resp: Vec<Option<HeaderValue>> = f.resp_headers.iter().map(|_| hv.clone()).collect();
    let text = std::str::from_utf8(value).ok();
    let e = LogEntry {
        start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        duration: Duration::from_millis(3),
        protocol: Some("HTTP/1.1"),
        method: text,
        path: text,
        authority: None,
        scheme: Some("http"),
        req_headers: &req,
        resp_headers: &resp,
        response_code: 200,
        reason: None,
        attempts: 1,
        bytes_received: 1,
        bytes_sent: 2,
        upstream_host: None,
        upstream_cluster: text,
        upstream_local: None,
        downstream_local: None,
        downstream_remote: "127.0.0.1:1".parse().unwrap(),
        peer_identity: None,
        requested_server_name: text,
        route_name: text,
        details: text,
    };
    let mut out = Vec::new();
    write(&f, &e, &mut out);
    assert_eq!(out.last(), Some(&b'\n'));
    match f.kind {
        FormatKind::Json(_) => {
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
            serde_json::from_slice::<serde_json::Value>(&out).expect("valid JSON");
        }
        FormatKind::Text(_) => {}
    }
});
