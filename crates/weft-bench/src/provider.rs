//! A fast Dubbo2 + Bolt echo provider for benchmarks and tests (the `rpc-echo` example runs it).
//!
//! Each connection speaks the protocol of its first byte (`0xda`: Dubbo2, `1`/`2`: Bolt v1/v2, an
//! ASCII letter: HTTP/1.1, whose every request is answered `200` with its own body, so that an
//! HTTP/1.1 run at the same payload can be compared with the RPC ones on the same upstream). A
//! call's first argument is echoed back as its result, copied as hessian2 bytes without decoding
//! it (Dubbo: a `RESPONSE_VALUE`; Bolt: a `SofaResponse` whose `appResponse` is the argument, in
//! the version and CRC switch of the request). Method `fail` is answered with an error status
//! (Dubbo 70 `SERVICE_ERROR`, Bolt 2 `SERVER_EXCEPTION`), method `hang` never; heartbeats are
//! answered. Every answer decoded from one read goes out in one write.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_rpc::bolt::{self, Bolt};
use weft_rpc::codec::{Codec, Frame, FrameKind};
use weft_rpc::dubbo::{self, Dubbo};
use weft_rpc::hessian::{self, Reader};

const MAX_FRAME: u32 = 64 << 20;
const RESPONSE_CLASS_FIELDS: [&str; 4] = ["isError", "errorMsg", "appResponse", "responseProps"];

/// Serves on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(connection(s));
    }
}

/// Binds `addr` and serves it on a new task; returns the bound address.
pub async fn spawn(addr: &str) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((a, tokio::spawn(serve(l))))
}

async fn connection(mut s: TcpStream) {
    let mut first = [0u8; 1];
    let codec: &dyn Codec = match s.peek(&mut first).await {
        Ok(1) => match first[0] {
            0xda => &Dubbo,
            1 | 2 => &Bolt,
            b'A'..=b'Z' => return http_echo(s).await,
            _ => return,
        },
        _ => return,
    };
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut out = BytesMut::with_capacity(16 << 10);
    loop {
        loop {
            match codec.decode(&mut buf, MAX_FRAME) {
                Ok(Some(f)) => answer(codec, &f, &mut out),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// HTTP/1.1 keep-alive: every request answered `200` with its body.
async fn http_echo(s: TcpStream) {
    use http_body_util::{BodyExt, Full};
    let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
        .await;
}

/// The raw hessian2 bytes of the first value at `at`, if any.
fn first_value(data: &[u8], at: usize, skip_before: bool) -> Option<&[u8]> {
    let mut r = Reader::at(data, at);
    if skip_before {
        r.skip().ok()?;
    }
    let a = r.pos();
    r.skip().ok()?;
    Some(&data[a..r.pos()])
}

fn answer(codec: &dyn Codec, f: &Frame, out: &mut BytesMut) {
    match f.kind {
        FrameKind::Heartbeat => {
            out.put_slice(&codec.heartbeat_reply(f));
            return;
        }
        FrameKind::Request => {}
        _ => return,
    }
    let Ok(info) = codec.request_info(f) else {
        return;
    };
    let method = info.method.get(&f.data);
    let method = method.as_deref().unwrap_or("");
    if method == "hang" {
        return;
    }
    let fail = method == "fail";
    if codec.name() == "dubbo" {
        if fail {
            let mut msg = Vec::new();
            hessian::write_string(&mut msg, "rpc-echo: fail() always fails");
            out.put_slice(&dubbo::frame(dubbo::HESSIAN2, dubbo::status::SERVICE_ERROR, f.id, &msg));
            return;
        }
        let arg = if info.arg_count == 0 {
            None
        } else {
            first_value(&f.data, info.args_start as usize, false)
        };
        let arg = arg.unwrap_or(b"N");
        out.put_slice(&dubbo::encode_response(f.id, arg));
    } else {
        let v2 = (f.data[0] == bolt::PROTOCOL_V2).then(|| (f.data[1], f.data[11]));
        if fail {
            let mut msg = Vec::new();
            hessian::write_string(&mut msg, "rpc-echo: fail() always fails");
            out.put_slice(&bolt::encode_response(
                v2,
                f.id as u32,
                bolt::status::SERVER_EXCEPTION,
                &msg,
            ));
            return;
        }
        // The content is the SofaRequest object, then the arguments.
        let content = bolt::content(f).unwrap_or_default();
        let arg = first_value(content, 0, true).unwrap_or(b"N");
        let mut c = Vec::with_capacity(arg.len() + 96);
        c.push(b'C');
        hessian::write_string(&mut c, bolt::RESPONSE_CLASS);
        hessian::write_int(&mut c, RESPONSE_CLASS_FIELDS.len() as i32);
        for name in RESPONSE_CLASS_FIELDS {
            hessian::write_string(&mut c, name);
        }
        c.push(0x60);
        c.push(b'F');
        c.push(b'N');
        c.extend_from_slice(arg);
        c.push(b'N');
        out.put_slice(&bolt::encode_response(v2, f.id as u32, bolt::status::SUCCESS, &c));
    }
}
