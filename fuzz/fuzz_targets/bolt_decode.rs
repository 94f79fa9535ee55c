//! SOFARPC Bolt frame decoding from arbitrary bytes: incremental decode (v1, v2, CRC32 checks),
//! routing attributes from headers and from hessian2 (final or draft) content, lazy
//! attachment/argument lookups, request-id rewrite and header writing, replies. Must never panic;
//! what the proxy rewrites or writes must decode again (a CRC it recomputed must check).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_rpc::bolt::{self, Bolt};
use weft_rpc::codec::{Codec, FrameKind, LocalReply};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut buf = BytesMut::from(&data[..cut]);
    let mut fed = false;
    for _ in 0..64 {
        match Bolt.decode(&mut buf, 1 << 20) {
            Ok(Some(mut f)) => match f.kind {
                FrameKind::Request | FrameKind::OneWay => {
                    let Ok(info) = Bolt.request_info(&f) else { continue };
                    let _ = info.service.get(&f.data);
                    let _ = info.version.get(&f.data);
                    let _ = info.method.get(&f.data);
                    for k in ["service", "sofa_head_method_name", "lane", ""] {
                        let _ = Bolt.attachment(&f, &info, k);
                    }
                    for i in 0..3 {
                        let _ = Bolt.argument(&f, &info, i);
                    }
                    Bolt.set_request_id(&mut f, 0x1_2345_6789);
                    let mut again = f.data.clone();
                    let g = Bolt.decode(&mut again, u32::MAX).unwrap().unwrap();
                    assert_eq!(g.id, 0x2345_6789);
                    if Bolt.set_attachments(&mut f, &info, &[("k", "v")]) {
                        let mut again = f.data.clone();
                        let g = Bolt.decode(&mut again, u32::MAX).unwrap().unwrap();
                        let info = Bolt.request_info(&g).unwrap();
                        assert!(Bolt.attachment(&g, &info, "k").is_some());
                    }
                }
                FrameKind::Heartbeat => {
                    let mut r = BytesMut::from(&Bolt.heartbeat_reply(&f)[..]);
                    let g = Bolt.decode(&mut r, u32::MAX).unwrap().unwrap();
                    assert_eq!(g.kind, FrameKind::HeartbeatResponse);
                }
                FrameKind::Response => {
                    let _ = bolt::error_message(&f);
                    let _ = bolt::content(&f);
                }
                _ => {}
            },
            Ok(None) if !fed => {
                buf.extend_from_slice(&data[cut..]);
                fed = true;
            }
            Ok(None) => break,
            Err(e) => {
                if let Some(id) = e.reply_to() {
                    let mut r = BytesMut::from(&Bolt.local_reply(id, LocalReply::BadRequest, &e.to_string())[..]);
                    let g = Bolt.decode(&mut r, u32::MAX).unwrap().unwrap();
                    assert!(bolt::error_message(&g).is_some());
                }
                break;
            }
        }
    }
});
