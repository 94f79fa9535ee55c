//! WebSocket through weft (HTTP/1.1 upgrade to an HTTP/1.1 upstream) with a real tokio-tungstenite
//! client and server.

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request as WsRequest, Response as WsResponse};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use weft_proxy::Server;
use weft_test_support::*;

/// What the echo server saw: the handshake request headers of each connection, and the close frame
/// each connection received from its peer (`None` in the list means: ended without a close frame).
#[derive(Clone, Default)]
struct WsSeen {
    handshakes: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    closes: Arc<Mutex<Vec<ClosedWith>>>,
}

/// The close frame's code and reason as the server received them (`None`: no close frame).
type ClosedWith = Option<(u16, String)>;

/// A WebSocket echo server: greets each client with "welcome", then echoes text and binary messages.
async fn ws_echo_server() -> (SocketAddr, WsSeen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = WsSeen::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let hs = s.handshakes.clone();
                #[allow(clippy::result_large_err)] // the error type is tungstenite's
                let cb = move |req: &WsRequest, resp: WsResponse| {
                    hs.lock().push((req.uri().to_string(), req.headers().clone()));
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                if ws.send(Message::text("welcome")).await.is_err() {
                    return;
                }
                let mut close = None;
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        if ws.send(m).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    if let Message::Close(f) = m {
                        close = Some(
                            f.map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((0, String::new())),
                        );
                        // tungstenite queues the close reply; keep polling so it is flushed.
                    }
                }
                s.closes.lock().push(close);
            });
        }
    });
    (addr, seen)
}

/// weft: `/ws` → the WebSocket echo server, everything else → a plain hyper upstream.
fn proxy(ws: SocketAddr, plain: SocketAddr) -> (Arc<Server>, SocketAddr) {
    let yaml = format!(
        r#"
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: /ws }}
                route: {{ cluster: ws }}
              - match: {{ prefix: / }}
                route: {{ cluster: plain }}
clusters:
  - name: ws
    endpoints: [{{ address: "{ws}" }}]
  - name: plain
    endpoints: [{{ address: "{plain}" }}]
"#
    );
    let server = start_proxy(&yaml);
    let addr = server.listener_addr("web").unwrap();
    (server, addr)
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

async fn next_msg(ws: &mut WebSocketStream<TcpStream>) -> Message {
    within("websocket message", ws.next())
        .await
        .expect("the connection is still open")
        .expect("a valid websocket message")
}

async fn connect(addr: SocketAddr, path: &str) -> WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(format!("ws://chat.test{path}"), stream),
    )
    .await
    .expect("the upgrade through weft succeeds");
    assert_eq!(resp.status(), 101);
    assert!(resp
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")));
    assert!(resp.headers().contains_key("sec-websocket-accept"));
    ws
}

#[tokio::test]
async fn websocket_echo_text_binary_and_clean_close() {
    let (ws_addr, seen) = ws_echo_server().await;
    let plain = named_upstream("plain").await;
    let (_server, addr) = proxy(ws_addr, plain.addr);

    let mut ws = connect(addr, "/ws/room?x=1").await;
    // The server speaks first: data flows upstream → client without the client sending anything.
    assert_eq!(next_msg(&mut ws).await, Message::text("welcome"));

    for i in 0..5 {
        let t = format!("text message {i}");
        ws.send(Message::text(t.clone())).await.unwrap();
        assert_eq!(next_msg(&mut ws).await, Message::text(t));
    }
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::binary(bin));
    // A large message (several frames' worth of TCP segments) in both directions.
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_msg(&mut ws).await {
        Message::Binary(b) => assert!(b[..] == big[..], "4 MiB binary echo differs"),
        other => panic!("expected binary, got {other:?}"),
    }

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The server's close reply comes back, then the stream ends.
    let mut got_close = None;
    for _ in 0..10 {
        match within("close", ws.next()).await {
            Some(Ok(Message::Close(f))) => got_close = Some(f),
            Some(Ok(other)) => panic!("unexpected message after close: {other:?}"),
            Some(Err(e)) => panic!("close was not clean: {e}"),
            None => break,
        }
    }
    let reply = got_close.expect("the server's close frame reaches the client");
    assert_eq!(reply.map(|f| f.code), Some(CloseCode::Normal));

    // The upstream saw the handshake and our close frame.
    for _ in 0..100 {
        if !seen.closes.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.closes.lock().clone(), vec![Some((1000, "bye".to_string()))]);
    let hs = seen.handshakes.lock().clone();
    assert_eq!(hs.len(), 1);
    let (uri, headers) = &hs[0];
    assert_eq!(uri, "/ws/room?x=1");
    assert_eq!(headers["host"], "chat.test");
    assert!(headers["upgrade"].as_bytes().eq_ignore_ascii_case(b"websocket"));
    assert!(headers.contains_key("sec-websocket-key"));
    assert_eq!(headers["sec-websocket-version"], "13");
}

#[tokio::test]
async fn several_websockets_at_once() {
    let (ws_addr, _seen) = ws_echo_server().await;
    let plain = named_upstream("plain").await;
    let (_server, addr) = proxy(ws_addr, plain.addr);
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut ws = connect(addr, "/ws").await;
        assert_eq!(next_msg(&mut ws).await, Message::text("welcome"));
        conns.push(ws);
    }
    // Interleave: each connection gets its own answers.
    for round in 0..3 {
        for (i, ws) in conns.iter_mut().enumerate() {
            ws.send(Message::text(format!("c{i} r{round}"))).await.unwrap();
        }
        for (i, ws) in conns.iter_mut().enumerate() {
            assert_eq!(next_msg(ws).await, Message::text(format!("c{i} r{round}")));
        }
    }
    for mut ws in conns {
        ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn plain_requests_on_the_same_listener_still_work() {
    let (ws_addr, _seen) = ws_echo_server().await;
    let plain = named_upstream("plain").await;
    let (_server, addr) = proxy(ws_addr, plain.addr);

    let mut ws = connect(addr, "/ws").await;
    assert_eq!(next_msg(&mut ws).await, Message::text("welcome"));

    // While a tunnel is open, ordinary keep-alive traffic on the same listener is unaffected.
    let mut c = H1Client::connect(addr).await;
    for _ in 0..3 {
        let got = within("plain request", c.get("/hello")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "hello from plain");
        assert_eq!(got.header("x-upstream"), Some("plain"));
    }
    assert_eq!(plain.hits(), 3);
    assert!(plain.last().headers.get("upgrade").is_none());

    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("still here"));
    ws.close(None).await.unwrap();
}

/// A request asking for an upgrade that the upstream declines gets the upstream's ordinary answer
/// and the connection stays usable for HTTP.
#[tokio::test]
async fn declined_upgrade_is_an_ordinary_response() {
    let (ws_addr, _seen) = ws_echo_server().await;
    let plain = named_upstream("plain").await;
    let (_server, addr) = proxy(ws_addr, plain.addr);
    let mut c = H1Client::connect(addr).await;
    let got = within(
        "declined upgrade",
        c.send(req(
            "GET",
            "/not-ws",
            "test.local",
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            "",
        )),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello from plain");
    let again = within("after declined upgrade", c.get("/again")).await;
    assert_eq!(again.status, 200);
    assert_eq!(plain.hits(), 2);
}
