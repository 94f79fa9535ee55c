//! The `protocol: auto` classifier on arbitrary first bytes: never panics, decides on any
//! prefix, and agrees with the codecs: bytes it calls Dubbo or Bolt are not refused by that
//! codec as a wrong magic number.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_rpc::bolt::Bolt;
use weft_rpc::codec::{Codec, DecodeError};
use weft_rpc::dubbo::Dubbo;
use weft_rpc::sniff::{classify, Sniffed, SNIFF_LEN};

fuzz_target!(|data: &[u8]| {
    let first = &data[..data.len().min(SNIFF_LEN)];
    let s = classify(first);
    let codec: Option<&dyn Codec> = match s {
        Sniffed::Dubbo => Some(&Dubbo),
        Sniffed::Bolt => Some(&Bolt),
        _ => None,
    };
    if let Some(c) = codec {
        let r = c.decode(&mut BytesMut::from(data), 1 << 20);
        assert!(!matches!(r, Err(DecodeError::BadMagic)), "{s:?} but bad magic");
    }
});
