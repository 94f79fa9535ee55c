//! A minimal gRPC upstream for benchmarks: answers every unary call on h2c by echoing the request
//! message back with `grpc-status: 0`. Serves one core's worth of work with a single-threaded
//! runtime, like the nginx origin used for HTTP scenarios.
//!
//! Usage: `grpc-echo 127.0.0.1:PORT`

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;

type EchoBody = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn echo(req: hyper::Request<Incoming>) -> Result<hyper::Response<EchoBody>, Infallible> {
    let message = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    Ok(hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("static response parts are valid"))
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50051".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        eprintln!("grpc-echo listening on {addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1024)
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(echo))
                    .await;
            });
        }
    });
}
