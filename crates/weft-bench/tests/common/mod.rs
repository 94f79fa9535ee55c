//! In-test servers on 127.0.0.1 for exercising `weft bench`: the generic ones (status, stalling,
//! TCP echo) come from `weft_test_support::threaded`; the gRPC echo needs `weft_bench::grpc`.
#![allow(dead_code, unused_imports)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use weft_test_support::threaded::{drain, http_server, ThreadServer};
pub use weft_test_support::threaded::{h1_stall_server, status_server, tcp_echo_server, Proto};

/// HTTP/2 gRPC-ish server: echoes the request message in one gRPC frame,
/// then trailers with `grpc-status: <status>`.
pub fn grpc_server(status: u32) -> ThreadServer {
    http_server(
        Proto::H2,
        Arc::new(move |req, _| {
            Box::pin(async move {
                let ct_ok = req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v == "application/grpc");
                let te_ok = req.headers().get("te").is_some_and(|v| v == "trailers");
                let path_ok = req.uri().path() == "/test.Echo/Say";
                let body = drain(req).await;
                let frames = weft_bench::grpc::decode_frames(&body);
                let (code, reply) = match frames {
                    Ok(f) if ct_ok && te_ok && path_ok && f.len() == 1 => {
                        (status, weft_bench::grpc::encode_frame(f[0].payload))
                    }
                    _ => (3, Bytes::new()), // INVALID_ARGUMENT
                };
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from(code));
                let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                    vec![Ok(Frame::data(reply)), Ok(Frame::trailers(trailers))];
                let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
                let mut r = Response::new(body);
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                r
            })
        }),
    )
}

/// Parse bench args from a command line string split on whitespace.
pub fn args(line: &str) -> weft_bench::BenchArgs {
    let mut a = weft_bench::BenchArgs::try_parse_from(line.split_whitespace())
        .unwrap_or_else(|e| panic!("bad args {line:?}: {e}"));
    a.no_progress = true;
    a
}
