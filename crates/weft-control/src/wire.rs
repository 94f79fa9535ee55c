//! The ADS service on the wire: tonic decodes the proxies' requests, and this module encodes the
//! responses itself.
//!
//! Why not the generated server: tonic's response encoder keeps one buffer per stream and reuses
//! it, so every stream holds on to the capacity of the largest burst it ever sent (its initial
//! push) for as long as it lives. With ten thousand connected proxies that retained memory was most
//! of the control plane's RSS (1.4 GiB, measured with `bench/xds-scale`). Here each response is
//! encoded into an allocation of exactly its size, handed to HTTP/2, and freed once written: an
//! idle stream holds no response bytes at all.

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::codec::{Codec, Streaming};
use tonic::Status;

/// The gRPC service name the proxies call.
pub const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request message accepted from a proxy.
pub const MAX_REQUEST: usize = 16 << 20;

/// Which ADS method a request calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Sotw,
    Delta,
}

impl Method {
    pub fn of_path(path: &str) -> Option<Method> {
        match path {
            SOTW_PATH => Some(Method::Sotw),
            DELTA_PATH => Some(Method::Delta),
            _ => None,
        }
    }
}

/// The proxy's requests of one stream, decoded by tonic (length-prefixed protobuf, size-limited).
pub fn requests<M>(body: tonic::body::Body) -> Streaming<M>
where
    M: prost::Message + Default + Send + 'static,
{
    // The encoder half of this codec is never used: responses are encoded by [`frame`].
    let mut codec = tonic_prost::ProstCodec::<(), M>::default();
    Streaming::new_request(codec.decoder(), body, None, Some(MAX_REQUEST))
}

// ------------------------------------------------------------------------------------------------
// Responses, encoded straight from the shared resources
// ------------------------------------------------------------------------------------------------
//
// A response is written field by field from the snapshot's resource bytes into its one frame
// allocation, instead of first copying every resource into a prost message and then encoding that:
// one copy per byte sent, not two. The field numbers are those of
// `envoy.service.discovery.v3.{DiscoveryResponse, DeltaDiscoveryResponse, Resource}` and
// `google.protobuf.Any`; the unit tests decode the frames with the generated types.

/// One resource of a response.
pub struct Item<'a> {
    pub name: &'a str,
    /// Its version (Delta only).
    pub version: u64,
    pub type_url: &'a str,
    pub value: &'a [u8],
}

fn field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(len as u64) + len
}

fn put_field(buf: &mut BytesMut, tag: u32, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    put_header(buf, tag, bytes.len());
    buf.put_slice(bytes);
}

fn put_header(buf: &mut BytesMut, tag: u32, len: usize) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(len as u64, buf);
}

/// A message field is written even when empty (presence matters for `resource`).
fn message_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(len as u64) + len
}

fn any_len(it: &Item<'_>) -> usize {
    field_len(1, it.type_url.len()) + field_len(2, it.value.len())
}

fn put_any(buf: &mut BytesMut, it: &Item<'_>) {
    put_field(buf, 1, it.type_url.as_bytes());
    put_field(buf, 2, it.value);
}

fn hex16(v: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

fn begin(len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    buf
}

/// A `DiscoveryResponse` frame.
pub fn sotw_frame(version: &str, type_url: &str, nonce: &str, items: &[Item<'_>]) -> Bytes {
    let mut len = field_len(1, version.len()) + field_len(4, type_url.len()) + field_len(5, nonce.len());
    for it in items {
        len += message_len(2, any_len(it));
    }
    let mut buf = begin(len);
    put_field(&mut buf, 1, version.as_bytes());
    for it in items {
        put_header(&mut buf, 2, any_len(it));
        put_any(&mut buf, it);
    }
    put_field(&mut buf, 4, type_url.as_bytes());
    put_field(&mut buf, 5, nonce.as_bytes());
    debug_assert_eq!(buf.len(), 5 + len);
    buf.freeze()
}

fn resource_len(it: &Item<'_>) -> usize {
    field_len(3, it.name.len()) + field_len(1, 16) + message_len(2, any_len(it))
}

/// A `DeltaDiscoveryResponse` frame.
pub fn delta_frame(version: &str, type_url: &str, nonce: &str, items: &[Item<'_>], removed: &[String]) -> Bytes {
    let mut len = field_len(1, version.len()) + field_len(4, type_url.len()) + field_len(5, nonce.len());
    for it in items {
        len += message_len(2, resource_len(it));
    }
    for r in removed {
        len += message_len(6, r.len());
    }
    let mut buf = begin(len);
    put_field(&mut buf, 1, version.as_bytes());
    for it in items {
        put_header(&mut buf, 2, resource_len(it));
        put_field(&mut buf, 3, it.name.as_bytes());
        put_field(&mut buf, 1, &hex16(it.version));
        put_header(&mut buf, 2, any_len(it));
        put_any(&mut buf, it);
    }
    put_field(&mut buf, 4, type_url.as_bytes());
    put_field(&mut buf, 5, nonce.as_bytes());
    for r in removed {
        // An empty name is still an entry of the repeated field.
        put_header(&mut buf, 6, r.len());
        buf.put_slice(r.as_bytes());
    }
    debug_assert_eq!(buf.len(), 5 + len);
    buf.freeze()
}

/// The response: HTTP 200 with gRPC headers, then every frame the stream's task sends, then
/// `grpc-status: 0` once the task ends (it ends when the proxy goes away or on shutdown).
/// When the task set `status` before ending, the trailers carry it instead (e.g. a stream refused
/// after its first request).
pub fn response(rx: mpsc::Receiver<Bytes>, status: Arc<OnceLock<Status>>) -> http::Response<tonic::body::Body> {
    let mut res = http::Response::new(tonic::body::Body::new(FrameBody { rx: Some(rx), status }));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    res
}

/// A gRPC error as a trailers-only response.
pub fn error(status: Status) -> http::Response<tonic::body::Body> {
    status.into_http()
}

struct FrameBody {
    /// `None` once the trailers have been sent.
    rx: Option<mpsc::Receiver<Bytes>>,
    status: Arc<OnceLock<Status>>,
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) => {
                self.rx = None;
                let mut trailers = http::HeaderMap::new();
                match self.status.get() {
                    Some(s) => {
                        // (Status's own header encoding is private; a trailers-only response
                        // carries the same headers.)
                        let h = s.clone().into_http::<()>().into_parts().0.headers;
                        for name in ["grpc-status", "grpc-message"] {
                            if let Some(v) = h.get(name) {
                                trailers.insert(name, v.clone());
                            }
                        }
                    }
                    None => {
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    }
                }
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use weft_xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse, Resource};
    use weft_xds_api::pb::google::protobuf::Any;

    fn items() -> Vec<(String, u64, Vec<u8>)> {
        vec![
            ("a".into(), 0x0123_4567_89ab_cdef, vec![1, 2, 3]),
            ("outbound|80||b".into(), u64::MAX, vec![]),
            ("c".into(), 7, vec![9; 300]),
        ]
    }

    fn decode<M: prost::Message + Default>(f: &Bytes) -> M {
        assert_eq!(f[0], 0);
        assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize, f.len() - 5);
        M::decode(&f[5..]).unwrap()
    }

    #[test]
    fn delta_frame_decodes_to_the_same_message() {
        let own = items();
        let its: Vec<Item<'_>> = own
            .iter()
            .map(|(n, v, b)| Item {
                name: n,
                version: *v,
                type_url: "type.googleapis.com/x",
                value: b,
            })
            .collect();
        let removed = vec!["gone".to_string(), String::new()];
        let f = delta_frame("00ff", "type.googleapis.com/x", "12", &its, &removed);
        let got: DeltaDiscoveryResponse = decode(&f);
        let want = DeltaDiscoveryResponse {
            system_version_info: "00ff".into(),
            type_url: "type.googleapis.com/x".into(),
            nonce: "12".into(),
            removed_resources: removed,
            resources: own
                .iter()
                .map(|(n, v, b)| Resource {
                    name: n.clone(),
                    version: format!("{v:016x}"),
                    resource: Some(Any {
                        type_url: "type.googleapis.com/x".into(),
                        value: b.clone(),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(got, want);
        // An empty response is a valid message too.
        let empty: DeltaDiscoveryResponse = decode(&delta_frame("", "t", "1", &[], &[]));
        assert_eq!(empty.type_url, "t");
        assert!(empty.resources.is_empty());
    }

    #[test]
    fn sotw_frame_decodes_to_the_same_message() {
        let own = items();
        let its: Vec<Item<'_>> = own
            .iter()
            .map(|(n, v, b)| Item {
                name: n,
                version: *v,
                type_url: "type.googleapis.com/y",
                value: b,
            })
            .collect();
        let got: DiscoveryResponse = decode(&sotw_frame("v1", "type.googleapis.com/y", "3", &its));
        let want = DiscoveryResponse {
            version_info: "v1".into(),
            type_url: "type.googleapis.com/y".into(),
            nonce: "3".into(),
            resources: own
                .iter()
                .map(|(_, _, b)| Any {
                    type_url: "type.googleapis.com/y".into(),
                    value: b.clone(),
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn body_ends_with_ok_trailers() {
        let (tx, rx) = mpsc::channel(2);
        tx.send(Bytes::from_static(b"\0\0\0\0\0")).await.unwrap();
        drop(tx);
        let mut body = response(rx, Arc::new(OnceLock::new())).into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), 5);
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(last.into_trailers().unwrap()["grpc-status"], "0");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_status_set_by_the_task_ends_the_body() {
        let (tx, rx) = mpsc::channel(2);
        let status = Arc::new(OnceLock::new());
        let mut body = response(rx, status.clone()).into_body();
        status.set(Status::permission_denied("not yours")).unwrap();
        drop(tx);
        let t = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(t["grpc-status"], "7");
        assert_eq!(t["grpc-message"], "not%20yours"); // percent-encoded, as gRPC says
    }
}
