//! Wires the xDS client to a running proxy: applies go to `Server::apply`, the first complete
//! configuration opens `/ready`, the admin API shows `/xds`, and a reloaded bootstrap file only
//! replaces the static part.

use std::sync::Arc;
use weft_config::Config;
use weft_proxy::server::AdminExtension;
use weft_proxy::Server;
use weft_xds_client::XdsClient;

struct AdminXds(Arc<XdsClient>);

impl AdminExtension for AdminXds {
    fn name(&self) -> &'static str {
        "xds"
    }
    fn status_json(&self) -> serde_json::Value {
        self.0.status_json()
    }
    fn prometheus(&self) -> String {
        self.0.prometheus()
    }
}

/// Starts the xDS client for `server` (started from `bootstrap`, which has an `xds` section).
pub fn attach(server: &Arc<Server>, mut bootstrap: Config) -> Result<Arc<XdsClient>, String> {
    // Tell the control plane where this proxy's admin API is (it scrapes /stats/prometheus for
    // its service graph) and which identity it holds, unless the bootstrap says so itself.
    let meta = &mut bootstrap.node.metadata;
    if let Some(admin) = server.admin_addr() {
        meta.entry("weft.admin".into()).or_insert_with(|| admin.to_string());
    }
    if let Some(id) = server.shared.tls.mesh.id() {
        meta.entry("weft.identity".into()).or_insert(id);
    }
    // Weak references: the server owns the client (through the reload hook and admin extension).
    let s = Arc::downgrade(server);
    let apply = Arc::new(move |cfg: Config| match s.upgrade() {
        Some(s) => s.apply(cfg).map_err(|e| e.to_string()),
        None => Err("the proxy is stopping".to_string()),
    });
    let shared = Arc::downgrade(&server.shared);
    let on_initialized = Arc::new(move || {
        if let Some(s) = shared.upgrade() {
            s.set_xds_initialized();
        }
    });
    let client = Arc::new(XdsClient::start(
        bootstrap,
        apply,
        on_initialized,
        server.control_handle(),
    )?);
    server.shared.add_admin_extension(Arc::new(AdminXds(client.clone())));
    let c = Arc::downgrade(&client);
    server
        .shared
        .set_discover(Box::new(move |host| c.upgrade()?.discover(host)));
    let s = Arc::downgrade(&server.shared);
    client.set_activity(Box::new(move |name| s.upgrade()?.cluster_activity(name)));
    let c = Arc::downgrade(&client);
    server.set_reload_hook(Arc::new(move |cfg| match c.upgrade() {
        Some(c) => c.set_static(cfg),
        None => Err("the xDS client is stopped".to_string()),
    }));
    Ok(client)
}
