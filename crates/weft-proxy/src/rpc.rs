//! Glue between the server and `weft-rpc`: RPC listeners' metrics on the admin API.

use crate::server::{AdminExtension, Shared};
use std::sync::Arc;

struct RpcAdmin;

impl AdminExtension for RpcAdmin {
    fn name(&self) -> &'static str {
        "rpc"
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::json!({ "metrics": "weft_rpc_* on /metrics" })
    }

    fn prometheus(&self) -> String {
        weft_rpc::metrics::global().encode()
    }
}

/// Adds the RPC metrics to the admin API once, when the first RPC listener is built.
pub fn ensure_admin(shared: &Shared) {
    let mut exts = shared.admin_extensions.lock();
    if !exts.iter().any(|e| e.name() == "rpc") {
        exts.push(Arc::new(RpcAdmin));
    }
}
