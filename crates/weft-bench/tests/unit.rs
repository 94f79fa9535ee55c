//! Unit tests of the parsing, scheduling and framing helpers.

use std::time::{Duration, Instant};

use weft_bench::grpc::{decode_frames, encode_frame, FrameError};
use weft_bench::{parse_duration, parse_header, parse_target, BenchArgs, Protocol, Schedule};

#[test]
fn duration_parsing() {
    assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
    assert_eq!(parse_duration("100ns").unwrap(), Duration::from_nanos(100));
    assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    assert_eq!(parse_duration(" 0.25 ").unwrap(), Duration::from_millis(250));
    for bad in ["", "s", "10x", "-1s", "1.2.3s", "ms10", "10 s s", "abc"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn header_parsing() {
    let h = parse_header("X-Test: hello world ").unwrap();
    assert_eq!(h.name.as_str(), "x-test");
    assert_eq!(h.value, "hello world");
    let h = parse_header("authorization:Bearer a:b").unwrap();
    assert_eq!(h.name.as_str(), "authorization");
    assert_eq!(h.value, "Bearer a:b");
    let h = parse_header("x-empty:").unwrap();
    assert_eq!(h.value, "");
    for bad in ["no-colon", ": value", "bad name: v", "x: a\nb"] {
        assert!(parse_header(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn cli_flags_parse() {
    let a = BenchArgs::try_parse_from([
        "http://127.0.0.1:8080/x",
        "-c",
        "4",
        "--streams",
        "8",
        "-d",
        "2s",
        "-n",
        "100",
        "--rate",
        "250.5",
        "-m",
        "POST",
        "-H",
        "a: 1",
        "-H",
        "b: 2",
        "--body-size",
        "32",
        "--timeout",
        "750ms",
        "--warmup",
        "1s",
        "--json",
        "--threads",
        "1",
        "--h2",
    ])
    .unwrap();
    assert_eq!(a.connections, 4);
    assert_eq!(a.streams, 8);
    assert_eq!(a.duration, Some(Duration::from_secs(2)));
    assert_eq!(a.requests, Some(100));
    assert_eq!(a.rate, Some(250.5));
    assert_eq!(a.method, "POST");
    assert_eq!(a.headers.len(), 2);
    assert_eq!(a.body_size, 32);
    assert_eq!(a.timeout, Duration::from_millis(750));
    assert_eq!(a.warmup, Some(Duration::from_secs(1)));
    assert!(a.json && a.h2);
    assert_eq!(a.threads, Some(1));
    assert!(!a.http1 && !a.insecure && a.cacert.is_none() && a.sni.is_none());

    let t = BenchArgs::try_parse_from([
        "https://127.0.0.1:8443/",
        "--http1",
        "--cacert",
        "/tmp/ca.pem",
        "--sni",
        "api.example",
    ])
    .unwrap();
    assert!(t.http1 && !t.insecure);
    assert_eq!(t.cacert.as_deref(), Some(std::path::Path::new("/tmp/ca.pem")));
    assert_eq!(t.sni.as_deref(), Some("api.example"));
    assert!(
        BenchArgs::try_parse_from(["https://x/", "--insecure"])
            .unwrap()
            .insecure
    );

    let d = BenchArgs::new("tcp://127.0.0.1:9");
    assert_eq!(d.connections, 10);
    assert_eq!(d.streams, 1);
    assert_eq!(d.timeout, Duration::from_secs(10));
    assert!(d.rate.is_none() && d.duration.is_none() && !d.json);
    assert!(BenchArgs::try_parse_from(["http://x/", "-d", "soon"]).is_err());
    assert!(BenchArgs::try_parse_from(["http://x/", "-H", "nocolon"]).is_err());
}

#[test]
fn target_parsing() {
    let t = parse_target("http://127.0.0.1:8080/a?b=1", false, None).unwrap();
    assert_eq!(t.protocol, Protocol::Http1);
    assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
    assert_eq!(t.path, "/a?b=1");
    assert_eq!(t.request_uri().unwrap().to_string(), "/a?b=1");
    let t = parse_target("http://localhost/", true, None).unwrap();
    assert_eq!((t.protocol, t.port), (Protocol::Http2, 80));
    assert_eq!(t.request_uri().unwrap().to_string(), "http://localhost/");
    let t = parse_target("h2c://127.0.0.1:81", false, None).unwrap();
    assert_eq!((t.protocol, t.path.as_str()), (Protocol::Http2, "/"));
    let t = parse_target("http://127.0.0.1:81", false, Some("/pkg.Svc/Do")).unwrap();
    assert_eq!((t.protocol, t.path.as_str()), (Protocol::Grpc, "/pkg.Svc/Do"));
    let t = parse_target("tcp://127.0.0.1:7", false, None).unwrap();
    assert_eq!((t.protocol, t.port), (Protocol::Tcp, 7));
    let t = parse_target("https://example.test/x", false, None).unwrap();
    assert!(t.tls);
    assert_eq!((t.protocol, t.port), (Protocol::Http1, 443));
    assert_eq!(t.request_uri().unwrap().to_string(), "/x");
    let t = parse_target("https://example.test:8443/x", true, None).unwrap();
    assert_eq!((t.protocol, t.port, t.tls), (Protocol::Http2, 8443, true));
    assert_eq!(t.request_uri().unwrap().to_string(), "https://example.test:8443/x");
    let t = parse_target("https://[::1]:8443/", false, Some("/a.B/C")).unwrap();
    assert_eq!((t.protocol, t.host.as_str(), t.tls), (Protocol::Grpc, "::1", true));
    assert_eq!(t.request_uri().unwrap().to_string(), "https://[::1]:8443/a.B/C");
    let t = parse_target("grpcs://example.test", false, Some("/a.B/C")).unwrap();
    assert_eq!((t.protocol, t.port, t.tls), (Protocol::Grpc, 443, true));
    assert!(parse_target("grpcs://example.test", false, None).is_err());
    assert!(!parse_target("http://x/", false, None).unwrap().tls);
    let e = parse_target("h2://127.0.0.1/", false, None).unwrap_err();
    assert!(e.contains("https://"), "{e}");
    assert!(parse_target("tcp://127.0.0.1", false, None).is_err());
    assert!(parse_target("ftp://127.0.0.1/", false, None).is_err());
    assert!(parse_target("127.0.0.1:80", false, None).is_err());
    assert!(parse_target("http://x/", false, Some("noslash")).is_err());
    assert!(parse_target("http://x/", false, Some("/a/b/c")).is_err());
}

#[test]
fn rate_schedule_arithmetic() {
    let base = Instant::now();
    // 1000 req/s over 4 workers: each worker every 4 ms, staggered by 1 ms.
    let workers = 4;
    let scheds: Vec<Schedule> = (0..workers).map(|i| Schedule::new(base, 1000.0, workers, i)).collect();
    assert_eq!(scheds[0].interval(), Duration::from_millis(4));
    assert_eq!(scheds[0].at(0), base);
    assert_eq!(scheds[1].at(0), base + Duration::from_millis(1));
    assert_eq!(scheds[3].at(2), base + Duration::from_millis(11));
    // All slots together form one evenly spaced sequence.
    let mut all: Vec<Duration> = scheds
        .iter()
        .flat_map(|s| (0..250).map(move |k| s.offset_of(k)))
        .collect();
    all.sort();
    for (n, d) in all.iter().enumerate() {
        assert_eq!(*d, Duration::from_millis(n as u64));
    }
    // Slots in a window: rate × duration in total.
    let total: u64 = scheds.iter().map(|s| s.slots_before(Duration::from_secs(4))).sum();
    assert_eq!(total, 4000);
    assert_eq!(scheds[0].slots_before(Duration::ZERO), 0);
    assert_eq!(scheds[0].slots_before(Duration::from_nanos(1)), 1);
    assert_eq!(scheds[1].slots_before(Duration::from_millis(1)), 0);
    assert_eq!(scheds[1].slots_before(Duration::from_millis(5)), 1);
    // Fractional rates: 3 req/s over 2 workers for 10 s.
    let s: Vec<Schedule> = (0..2).map(|i| Schedule::new(base, 3.0, 2, i)).collect();
    let total: u64 = s.iter().map(|s| s.slots_before(Duration::from_secs(10))).sum();
    assert_eq!(total, 30);
    assert_eq!(s[1].at(1), base + Duration::from_nanos(1_000_000_000));
    // Large counts stay exact enough.
    let s = Schedule::new(base, 100_000.0, 1, 0);
    assert_eq!(s.offset_of(360_000_000), Duration::from_secs(3600));
}

#[test]
fn grpc_frame_encode_decode() {
    let f = encode_frame(b"hello");
    assert_eq!(&f[..], &[0, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
    let empty = encode_frame(b"");
    assert_eq!(&empty[..], &[0, 0, 0, 0, 0]);
    let mut two = f.to_vec();
    two.extend_from_slice(&empty);
    let big = vec![7u8; 70_000];
    two.extend_from_slice(&encode_frame(&big));
    let frames = decode_frames(&two).unwrap();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].payload, b"hello");
    assert!(!frames[0].compressed);
    assert_eq!(frames[1].payload, b"");
    assert_eq!(frames[2].payload.len(), 70_000);
    assert_eq!(decode_frames(&[]).unwrap().len(), 0);
    assert_eq!(decode_frames(&f[..3]), Err(FrameError::Truncated));
    assert_eq!(decode_frames(&f[..8]), Err(FrameError::Truncated));
    assert_eq!(decode_frames(&[2, 0, 0, 0, 0]), Err(FrameError::BadFlag(2)));
    assert!(decode_frames(&[1, 0, 0, 0, 1, 9]).unwrap()[0].compressed);
}
