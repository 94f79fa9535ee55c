//! Dubbo2 and SOFARPC Bolt targets: two-way calls multiplexed by request id over shared
//! connections, framed with weft-rpc's codecs (the codec-only build of that crate).
//!
//! A connection has a writer task (which batches what the stream workers queued into one write)
//! and a reader task (which decodes responses and hands each to the worker waiting on its id,
//! answers heartbeats and stops new calls on a go-away). A call that times out is forgotten: its
//! late answer is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use weft_rpc::bolt::{self, Bolt};
use weft_rpc::codec::{Codec, Frame, FrameKind};
use weft_rpc::dubbo::{self, Dubbo};
use weft_rpc::hessian;

use crate::parse::{BoltVersion, Protocol, RpcTarget};
use crate::stats::ErrorKind;

/// Largest response frame accepted (a larger one closes the connection: an I/O error for the
/// calls on it).
const MAX_FRAME: u32 = 64 << 20;

static DUBBO: Dubbo = Dubbo;
static BOLT: Bolt = Bolt;

fn codec_of(p: Protocol) -> &'static dyn Codec {
    match p {
        Protocol::Bolt => &BOLT,
        _ => &DUBBO,
    }
}

/// The request every call sends, built once with id 0; each call gets a copy with its own id.
#[derive(Debug)]
pub(crate) struct RpcTemplate {
    protocol: Protocol,
    frame: Bytes,
    /// Bolt ids are 32 bits.
    id_mask: u64,
}

impl RpcTemplate {
    /// A two-way call of `target.interface`/`target.method` with one hessian2 string argument of
    /// `payload` bytes, and `attachments` (Dubbo attachments, Bolt headers).
    pub fn new(
        protocol: Protocol,
        target: &RpcTarget,
        payload: usize,
        attachments: &[(String, String)],
        timeout: Duration,
    ) -> RpcTemplate {
        let mut arg = Vec::with_capacity(payload + 3);
        hessian::write_string(&mut arg, &"x".repeat(payload));
        let timeout_ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        let timeout_text = timeout_ms.to_string();
        let user: Vec<(&str, &str)> = attachments.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (frame, id_mask) = match protocol {
            Protocol::Bolt => {
                let unique = target.unique_name();
                let mut headers = vec![
                    ("service", unique.as_str()),
                    ("sofa_head_target_service", unique.as_str()),
                    ("sofa_head_method_name", target.method.as_str()),
                ];
                headers.extend_from_slice(&user);
                let content = sofa_request(&target.method, &unique, &arg);
                let v2 = match target.bolt {
                    BoltVersion::V1 => None,
                    BoltVersion::V2 => Some((1, 0)),
                    BoltVersion::V2Crc => Some((1, bolt::SWITCH_CRC)),
                };
                (
                    bolt::encode_request(v2, 0, true, timeout_ms, &headers, &content),
                    u64::from(u32::MAX),
                )
            }
            _ => {
                let mut atts = vec![
                    ("path", target.interface.as_str()),
                    ("interface", target.interface.as_str()),
                ];
                if let Some(v) = &target.version {
                    atts.push(("version", v));
                }
                if let Some(g) = &target.group {
                    atts.push(("group", g));
                }
                atts.push(("timeout", &timeout_text));
                atts.extend_from_slice(&user);
                (
                    dubbo::encode_request(
                        0,
                        true,
                        &target.interface,
                        target.version.as_deref().unwrap_or(""),
                        &target.method,
                        "Ljava/lang/String;",
                        &arg,
                        &atts,
                    ),
                    u64::MAX,
                )
            }
        };
        RpcTemplate {
            protocol,
            frame,
            id_mask,
        }
    }

    fn codec(&self) -> &'static dyn Codec {
        codec_of(self.protocol)
    }

    /// The request with id `id` (a copy; Bolt v2's CRC is recomputed by the codec).
    fn request(&self, id: u64) -> Bytes {
        let mut f = Frame {
            kind: FrameKind::Request,
            id: 0,
            status: 0,
            data: BytesMut::from(&self.frame[..]),
        };
        self.codec().set_request_id(&mut f, id);
        f.data.freeze()
    }
}

/// A hessian2 `SofaRequest` as SOFARPC writes it (target app, method, unique service name, an
/// empty request-properties map), then the arguments.
fn sofa_request(method: &str, unique: &str, args: &[u8]) -> Vec<u8> {
    let mut c = vec![b'C'];
    hessian::write_string(&mut c, bolt::REQUEST_CLASS);
    hessian::write_int(&mut c, 4);
    for f in ["targetAppName", "methodName", "targetServiceUniqueName", "requestProps"] {
        hessian::write_string(&mut c, f);
    }
    c.push(0x60);
    c.push(b'N');
    hessian::write_string(&mut c, method);
    hessian::write_string(&mut c, unique);
    c.extend_from_slice(b"HZ");
    c.extend_from_slice(args);
    c
}

/// What the reader task and the callers share.
struct Inner {
    pending: parking_lot::Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    /// The connection failed or closed: every pending call has been failed.
    closed: AtomicBool,
    /// The peer sent a go-away: no new calls here (answers still arrive).
    draining: AtomicBool,
}

impl Inner {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders fails the waiting calls.
        self.pending.lock().clear();
    }
}

/// One multiplexed connection.
pub(crate) struct RpcConn {
    inner: Arc<Inner>,
    tx: mpsc::UnboundedSender<Bytes>,
    next_id: AtomicU64,
    tasks: [tokio::task::AbortHandle; 2],
}

impl Drop for RpcConn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RpcConn {
    async fn connect(addr: SocketAddr, protocol: Protocol) -> Result<RpcConn, ErrorKind> {
        let s = TcpStream::connect(addr).await.map_err(|_| ErrorKind::Connect)?;
        s.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
        let (mut r, mut w) = s.into_split();
        let inner = Arc::new(Inner {
            pending: parking_lot::Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let wi = inner.clone();
        let writer = tokio::spawn(async move {
            let mut batch = BytesMut::new();
            while let Some(b) = rx.recv().await {
                // Everything queued meanwhile goes out in the same write.
                batch.extend_from_slice(&b);
                while let Ok(b) = rx.try_recv() {
                    batch.extend_from_slice(&b);
                    if batch.len() >= 256 << 10 {
                        break;
                    }
                }
                if w.write_all(&batch).await.is_err() {
                    break;
                }
                batch.clear();
            }
            wi.close();
        });
        let ri = inner.clone();
        let rtx = tx.clone();
        let codec = codec_of(protocol);
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(16 << 10);
            'read: loop {
                loop {
                    match codec.decode(&mut buf, MAX_FRAME) {
                        Ok(Some(f)) => match f.kind {
                            FrameKind::Response => {
                                let waiter = ri.pending.lock().remove(&f.id);
                                if let Some(w) = waiter {
                                    let _ = w.send(f);
                                }
                            }
                            FrameKind::Heartbeat => {
                                let _ = rtx.send(codec.heartbeat_reply(&f));
                            }
                            FrameKind::GoAway => ri.draining.store(true, Ordering::Release),
                            _ => {}
                        },
                        Ok(None) => break,
                        Err(_) => break 'read,
                    }
                }
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            ri.close();
        });
        Ok(RpcConn {
            inner,
            tx,
            next_id: AtomicU64::new(1),
            tasks: [writer.abort_handle(), reader.abort_handle()],
        })
    }

    fn usable(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire) && !self.inner.draining.load(Ordering::Acquire)
    }
}

/// A connection slot shared by the stream workers of one `-c` connection; reopened when the
/// connection closes.
pub(crate) struct RpcShared {
    slot: tokio::sync::Mutex<Option<Arc<RpcConn>>>,
}

impl RpcShared {
    /// Open the connection (within `timeout`); on failure the first call reconnects and counts
    /// the error.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, timeout: Duration) -> RpcShared {
        let conn = tokio::time::timeout(timeout, RpcConn::connect(addr, protocol)).await;
        RpcShared {
            slot: tokio::sync::Mutex::new(conn.ok().and_then(Result::ok).map(Arc::new)),
        }
    }

    async fn conn(&self, addr: SocketAddr, protocol: Protocol) -> Result<Arc<RpcConn>, ErrorKind> {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.usable() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let c = Arc::new(RpcConn::connect(addr, protocol).await?);
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// One stream worker's view of its connection.
pub(crate) struct RpcClient<'a> {
    shared: &'a RpcShared,
    conn: Option<Arc<RpcConn>>,
    /// The id of the call in flight (forgotten when it times out).
    in_flight: Option<u64>,
}

/// A call's answer.
pub(crate) struct RpcAnswer {
    pub status: u16,
    pub ok: bool,
    pub bytes: u64,
}

impl<'a> RpcClient<'a> {
    pub fn new(shared: &'a RpcShared) -> RpcClient<'a> {
        RpcClient {
            shared,
            conn: None,
            in_flight: None,
        }
    }

    pub fn on_timeout(&mut self) {
        if let (Some(c), Some(id)) = (&self.conn, self.in_flight.take()) {
            c.inner.pending.lock().remove(&id);
        }
    }

    pub async fn call(&mut self, addr: SocketAddr, tpl: &RpcTemplate) -> Result<RpcAnswer, ErrorKind> {
        if self.conn.as_ref().is_none_or(|c| !c.usable()) {
            self.conn = None;
            self.conn = Some(self.shared.conn(addr, tpl.protocol).await?);
        }
        let conn = self.conn.as_ref().expect("connected");
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed) & tpl.id_mask;
        let (otx, orx) = oneshot::channel();
        conn.inner.pending.lock().insert(id, otx);
        // Closed before the insert: nobody will answer (close() clears under the same lock).
        if conn.inner.closed.load(Ordering::Acquire) || conn.tx.send(tpl.request(id)).is_err() {
            conn.inner.pending.lock().remove(&id);
            self.conn = None;
            return Err(ErrorKind::Io);
        }
        self.in_flight = Some(id);
        let answer = orx.await;
        self.in_flight = None;
        match answer {
            Ok(f) => {
                let codec = tpl.codec();
                Ok(RpcAnswer {
                    status: f.status,
                    ok: codec.status_ok(f.status),
                    bytes: f.data.len() as u64,
                })
            }
            Err(_) => {
                self.conn = None;
                Err(ErrorKind::Io)
            }
        }
    }
}
