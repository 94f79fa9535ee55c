//! Dubbo2 frame decoding from arbitrary bytes: incremental decode, routing attributes, lazy
//! attachment/argument lookups, request-id rewrite and attachment writing. Must never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_rpc::codec::{Codec, FrameKind};
use weft_rpc::dubbo::Dubbo;

fuzz_target!(|data: &[u8]| {
    // Split the input in two reads to exercise the incremental path.
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut buf = BytesMut::from(&data[..cut]);
    let mut fed = false;
    for _ in 0..64 {
        match Dubbo.decode(&mut buf, 1 << 20) {
            Ok(Some(mut f)) => {
                if matches!(f.kind, FrameKind::Request | FrameKind::OneWay) {
                    if let Ok(info) = Dubbo.request_info(&f) {
                        let _ = info.service.get(&f.data);
                        let _ = info.method.get(&f.data);
                        for k in ["group", "interface", "version", ""] {
                            let _ = Dubbo.attachment(&f, &info, k);
                        }
                        for i in 0..3 {
                            let _ = Dubbo.argument(&f, &info, i);
                        }
                        Dubbo.set_request_id(&mut f, 42);
                        if Dubbo.set_attachments(&mut f, &info, &[("k", "v")]) {
                            // What we wrote must decode again.
                            let mut again = f.data.clone();
                            let g = Dubbo.decode(&mut again, u32::MAX).unwrap().unwrap();
                            let info = Dubbo.request_info(&g).unwrap();
                            assert!(Dubbo.attachment(&g, &info, "k").is_some());
                        }
                    }
                } else if f.kind == FrameKind::Heartbeat {
                    let _ = Dubbo.heartbeat_reply(&f);
                }
            }
            Ok(None) if !fed => {
                buf.extend_from_slice(&data[cut..]);
                fed = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
