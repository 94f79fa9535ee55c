//! Arbitrary bytes as Envoy xDS resources (what a control plane could send): decode as a Listener,
//! RouteConfiguration, Cluster or ClusterLoadAssignment, convert to weft's model the way the xDS
//! client does, and validate. Bad input must give errors, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_config::raw::RawConfig;
use weft_xds_api::pb::envoy::config::{cluster::v3 as cl, endpoint::v3 as ep, listener::v3 as ls, route::v3 as rt};
use weft_xds_api::prost::Message;
use weft_xds_client::convert;

fn validate(raw: RawConfig) {
    let _ = weft_config::validate_with(
        raw,
        weft_config::ValidateOptions {
            allow_unknown_clusters: true,
            allow_empty_clusters: true,
            allow_empty_route_configs: true,
        },
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    match kind % 4 {
        0 => {
            if let Ok(l) = ls::Listener::decode(bytes) {
                if let Ok(Some(x)) = convert::listener(&l) {
                    validate(RawConfig {
                        listeners: vec![x.raw],
                        ..Default::default()
                    });
                }
            }
        }
        1 => {
            if let Ok(r) = rt::RouteConfiguration::decode(bytes) {
                let _ = convert::route_config(&r);
            }
        }
        2 => {
            if let Ok(c) = cl::Cluster::decode(bytes) {
                if let Ok(x) = convert::cluster(&c, true) {
                    validate(RawConfig {
                        clusters: vec![x.raw],
                        ..Default::default()
                    });
                }
            }
        }
        _ => {
            if let Ok(la) = ep::ClusterLoadAssignment::decode(bytes) {
                let _ = convert::load_assignment(&la);
            }
        }
    }
});
