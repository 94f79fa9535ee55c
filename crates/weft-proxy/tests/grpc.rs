//! gRPC through weft with a real tonic client and a real tonic (hand-wired) server: unary,
//! server-streaming, client-streaming and bidi calls, trailers, error statuses, and the proxy's own
//! trailers-only error when the upstream is down.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::codegen::{BoxFuture, BoxStream};
use tonic::metadata::MetadataMap;
use tonic::server::{ClientStreamingService, Grpc as ServerGrpc, ServerStreamingService, StreamingService};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;
use weft_proxy::Server;
use weft_test_support::*;

/// The one message type of the `test.Echo` service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(int64, tag = "2")]
    n: i64,
}

fn msg(text: &str, n: i64) -> Msg {
    Msg {
        text: text.to_string(),
        n,
    }
}

const ECHO: &str = "/test.Echo/Echo";
const COUNT: &str = "/test.Echo/Count";
const SUM: &str = "/test.Echo/Sum";
const CHAT: &str = "/test.Echo/Chat";

// ---------------------------------------------------------------------------------------------
// Server side: what tonic-build would generate, written by hand.

/// Unary `Echo`, served as a one-message stream so that it can end with custom trailing metadata
/// (`x-trailer: yes`), which tonic only emits from a stream's final status. On the wire this is
/// exactly a unary response: headers, one message, trailers.
struct EchoSvc;

impl ServerStreamingService<Msg> for EchoSvc {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            if m.text == "missing" {
                return Err(Status::not_found("no such thing: missing"));
            }
            let mut trailers = MetadataMap::new();
            trailers.insert("x-trailer", "yes".parse().unwrap());
            let done = Status::with_metadata(Code::Ok, "", trailers);
            let s = tokio_stream::iter(vec![Ok(m), Err(done)]);
            let mut resp = Response::new(Box::pin(s) as BoxStream<Msg>);
            resp.metadata_mut().insert("x-header", "h".parse().unwrap());
            Ok(resp)
        })
    }
}

/// `Count`: `n` messages numbered 1..=n, then OK — or, for text "abort", `Aborted` after them.
struct CountSvc;

impl ServerStreamingService<Msg> for CountSvc {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            let mut items: Vec<Result<Msg, Status>> = (1..=m.n).map(|i| Ok(msg("count", i))).collect();
            if m.text == "abort" {
                items.push(Err(Status::aborted("stopped after the count")));
            }
            Ok(Response::new(Box::pin(tokio_stream::iter(items)) as BoxStream<Msg>))
        })
    }
}

/// `Sum`: adds up every message's `n`; `text` of the answer is the number of messages.
struct SumSvc;

impl ClientStreamingService<Msg> for SumSvc {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut s = req.into_inner();
            let (mut sum, mut count) = (0i64, 0usize);
            while let Some(m) = s.message().await? {
                sum += m.n;
                count += 1;
            }
            Ok(Response::new(msg(&count.to_string(), sum)))
        })
    }
}

/// `Chat`: answers each message as it arrives with "echo:<text>".
struct ChatSvc;

impl StreamingService<Msg> for ChatSvc {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let s = req
                .into_inner()
                .map(|r| r.map(|m| msg(&format!("echo:{}", m.text), m.n)));
            Ok(Response::new(Box::pin(s) as BoxStream<Msg>))
        })
    }
}

async fn dispatch(req: http::Request<Incoming>) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let codec = ProstCodec::<Msg, Msg>::default;
    let resp = match req.uri().path() {
        ECHO => ServerGrpc::new(codec()).server_streaming(EchoSvc, req).await,
        COUNT => ServerGrpc::new(codec()).server_streaming(CountSvc, req).await,
        SUM => ServerGrpc::new(codec()).client_streaming(SumSvc, req).await,
        CHAT => ServerGrpc::new(codec()).streaming(ChatSvc, req).await,
        _ => Status::unimplemented("unknown method").into_http(),
    };
    Ok(resp)
}

/// Starts the `test.Echo` server (h2c) on an ephemeral port.
async fn grpc_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(dispatch))
                    .await;
            });
        }
    });
    addr
}

/// weft with listener `grpc` → cluster `echo` (h2 upstream at `up`) and listener `down` → cluster
/// `down` (an address nobody listens on).
fn proxy(up: SocketAddr) -> (Arc<Server>, SocketAddr, SocketAddr) {
    let dead = dead_addr();
    let yaml = format!(
        r#"
runtime: {{ concurrency: 1 }}
listeners:
  - name: grpc
    address: 127.0.0.1:0
    http:
      codec: auto
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: echo }}
  - name: down
    address: 127.0.0.1:0
    http:
      codec: auto
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: down }}
clusters:
  - name: echo
    protocol: http2
    endpoints: [{{ address: "{up}" }}]
  - name: down
    protocol: http2
    connect_timeout: 1s
    endpoints: [{{ address: "{dead}" }}]
"#
    );
    let server = start_proxy(&yaml);
    let a = server.listener_addr("grpc").unwrap();
    let d = server.listener_addr("down").unwrap();
    (server, a, d)
}

async fn client(addr: SocketAddr) -> tonic::client::Grpc<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("tonic client connects to weft");
    tonic::client::Grpc::new(ch)
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

async fn unary(g: &mut tonic::client::Grpc<Channel>, path: &'static str, m: Msg) -> Result<Response<Msg>, Status> {
    g.ready().await.unwrap();
    g.unary(Request::new(m), PathAndQuery::from_static(path), codec()).await
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unary_call_with_headers_and_trailing_metadata() {
    let up = grpc_server().await;
    let (_server, addr, _) = proxy(up);
    let mut g = client(addr).await;
    let resp = within("unary", unary(&mut g, ECHO, msg("hello", 7)))
        .await
        .expect("unary call through weft succeeds");
    assert_eq!(resp.get_ref(), &msg("hello", 7));
    assert_eq!(resp.metadata().get("x-header").map(|v| v.to_str().unwrap()), Some("h"));
    // The tonic client merges trailers into the response metadata.
    assert_eq!(
        resp.metadata().get("x-trailer").map(|v| v.to_str().unwrap()),
        Some("yes"),
        "custom trailing metadata must reach the client: {:?}",
        resp.metadata()
    );
}

/// A 5-byte gRPC frame header plus the encoded message.
fn grpc_frame(m: &Msg) -> Bytes {
    let body = m.encode_to_vec();
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(0);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

/// Looks at the actual HTTP/2 frames: the unary answer's status and custom metadata must be in the
/// trailers (HEADERS after DATA), not folded into the response headers.
#[tokio::test]
async fn unary_trailers_arrive_as_http2_trailers() {
    let up = grpc_server().await;
    let (_server, addr, _) = proxy(up);
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{ECHO}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(&msg("raw", 3))))
        .unwrap();
    let resp = within("raw h2 call", sender.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert!(
        !resp.headers().contains_key("grpc-status"),
        "not a trailers-only response: {:?}",
        resp.headers()
    );
    let collected = within("raw h2 body", resp.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("response has trailers");
    let mut data = collected.to_bytes();
    assert_eq!(data.get_u8(), 0, "uncompressed frame");
    let len = data.get_u32() as usize;
    assert_eq!(len, data.len());
    assert_eq!(Msg::decode(data).unwrap(), msg("raw", 3));
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    assert_eq!(trailers.get("x-trailer").map(|v| v.as_bytes()), Some(&b"yes"[..]));
}

#[tokio::test]
async fn server_error_status_arrives_intact() {
    let up = grpc_server().await;
    let (_server, addr, _) = proxy(up);
    let mut g = client(addr).await;
    let err = within("unary error", unary(&mut g, ECHO, msg("missing", 0)))
        .await
        .expect_err("the server answers NotFound");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "no such thing: missing");
    assert!(
        err.metadata().get("x-weft-reason").is_none(),
        "the upstream's own error, not weft's"
    );
}

#[tokio::test]
async fn server_streaming_call() {
    let up = grpc_server().await;
    let (_server, addr, _) = proxy(up);
    let mut g = client(addr).await;
    g.ready().await.unwrap();
    let resp = within(
        "count",
        g.server_streaming(Request::new(msg("", 50)), PathAndQuery::from_static(COUNT), codec()),
    )
    .await
    .expect("server-streaming call starts");
    let mut s = resp.into_inner();
    let mut got = Vec::new();
    for _ in 0..100 {
        match within("count message", s.message()).await.expect("stream ends OK") {
            Some(m) => got.push(m.n),
            None => break,
        }
    }
    assert_eq!(got, (1..=50).collect::<Vec<i64>>());
    let trailers = s.trailers().await.expect("trailers ok");
    assert!(trailers.is_some(), "a streaming response ends with trailers");
}

#[tokio::test]
async fn streaming_error_status_in_trailers_after_messages() {
    let up = grpc_server().await;
    let (_server, addr, _) = proxy(up);
    let mut g = client(addr).await;
    g.ready().await.unwrap();
    let resp = within(
        "count",
        g.server_streaming(Request::new(msg("abort", 3)), PathAndQuery::from_static(COUNT), codec()),
    )
    .await
    .expect("server-streaming call starts");
    let mut s = resp.into_inner();
    let mut got = Vec::new();
    let mut end = None;
    for _ in 0..10 {
        match within("count message", s.message()).await {
            Ok(Some(m)) => got.push(m.n),
            Ok(None) => break,
            Err(e) => {
                end = Some(e);
                break;
            }
        }
    }
    assert_eq!(got, vec![1, 2, 3]);
    let end = end.expect("the stream ends with the server's error status");
    assert_eq!(end.code(), Code::Aborted);
    assert_eq!(end.message(), "stopped after the count");
}

#[tokio::test]
async fn client_streaming_call() {
    let up = grpc_server().await;
    let (_server, addr, _) = proxy(up);
    let mut g = client(addr).await;
    g.ready().await.unwrap();
    let items: Vec<Msg> = (1..=100).map(|i| msg("x", i)).collect();
    let resp = within(
        "sum",
        g.client_streaming(
            Request::new(tokio_stream::iter(items)),
            PathAndQuery::from_static(SUM),
            codec(),
        ),
    )
    .await
    .expect("client-streaming call succeeds");
    assert_eq!(resp.get_ref(), &msg("100", 5050));
}

#[tokio::test]
async fn bidi_call_interleaves() {
    let up = grpc_server().await;
    let (_server, addr, _) = proxy(up);
    let mut g = client(addr).await;
    g.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    tx.send(msg("first", 1)).await.unwrap();
    let resp = within(
        "chat",
        g.streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static(CHAT),
            codec(),
        ),
    )
    .await
    .expect("bidi call starts");
    let mut s = resp.into_inner();
    // Each answer must arrive while the request stream is still open: send one, receive one.
    for i in 1..=5 {
        if i > 1 {
            tx.send(msg(&format!("m{i}"), i)).await.unwrap();
        }
        let m = within("chat answer", s.message())
            .await
            .expect("stream ok")
            .expect("an answer before the next message is sent");
        let want = if i == 1 {
            "echo:first".to_string()
        } else {
            format!("echo:m{i}")
        };
        assert_eq!(m, msg(&want, i));
    }
    drop(tx);
    let end = within("chat end", s.message()).await.expect("ends OK");
    assert!(end.is_none());
}

#[tokio::test]
async fn upstream_down_yields_unavailable() {
    let up = grpc_server().await;
    let (_server, _, down) = proxy(up);
    let mut g = client(down).await;
    let err = within("unary to a dead upstream", unary(&mut g, ECHO, msg("hello", 1)))
        .await
        .expect_err("no upstream");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        err.metadata().get("x-weft-reason").map(|v| v.to_str().unwrap()),
        Some("UF"),
        "{err:?}"
    );
    assert!(err.message().contains("upstream connect error"), "{err:?}");
}

/// The same trailers-only error for a streaming call (the status arrives in the response headers).
#[tokio::test]
async fn upstream_down_yields_unavailable_for_streams() {
    let up = grpc_server().await;
    let (_server, _, down) = proxy(up);
    let mut g = client(down).await;
    g.ready().await.unwrap();
    let items: Vec<Msg> = (1..=3).map(|i| msg("x", i)).collect();
    let err = within(
        "sum to a dead upstream",
        g.client_streaming(
            Request::new(tokio_stream::iter(items)),
            PathAndQuery::from_static(SUM),
            codec(),
        ),
    )
    .await
    .expect_err("no upstream");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

/// Many calls at once on one client connection (multiplexed over weft's upstream HTTP/2 pool),
/// each getting its own answer, including messages larger than the default HTTP/2 windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_connection() {
    let up = grpc_server().await;
    let (_server, addr, _) = proxy(up);
    let g = client(addr).await;
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        let mut g = g.clone();
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                // 1 MiB message each way.
                let text = "x".repeat(1024 * 1024);
                let r = unary(&mut g, ECHO, msg(&text, i)).await.expect("big unary");
                assert_eq!(r.get_ref().text.len(), text.len());
                assert_eq!(r.get_ref().n, i);
            } else if i % 4 == 1 {
                g.ready().await.unwrap();
                let mut s = g
                    .server_streaming(Request::new(msg("", i)), PathAndQuery::from_static(COUNT), codec())
                    .await
                    .expect("count")
                    .into_inner();
                let mut n = 0;
                for _ in 0..1000 {
                    match s.message().await.expect("count stream") {
                        Some(_) => n += 1,
                        None => break,
                    }
                }
                assert_eq!(n, i);
            } else {
                let r = unary(&mut g, ECHO, msg(&format!("call {i}"), i)).await.expect("unary");
                assert_eq!(r.get_ref(), &msg(&format!("call {i}"), i));
            }
        }));
    }
    for t in tasks {
        within("concurrent call", t).await.expect("call task");
    }
}
