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

/// `xds.tls` (mode mesh): the proxy's mesh identity as its client certificate, the control plane
/// verified against the mesh roots and, by default, as `spiffe://<td>/ns/weft-system/sa/weft-control`
/// in the proxy's own trust domain (from its certificate, or else from its bootstrap token's
/// identity: `trust_domain_hint`). Both are read at each handshake, so rotation applies.
fn tls_config(
    server: &Arc<Server>,
    t: &weft_config::model::XdsTls,
    trust_domain_hint: Option<String>,
) -> Result<Arc<weft_tls::rustls::ClientConfig>, String> {
    let mesh = server.shared.tls.mesh.clone();
    let sans = if t.subject_alt_names.is_empty() {
        let td = mesh
            .id()
            .and_then(|id| weft_identity::spiffe::SpiffeId::parse(&id).ok())
            .map(|id| id.trust_domain().to_string())
            .or(trust_domain_hint)
            .ok_or_else(|| {
                "xds.tls: mode mesh needs the proxy's mesh identity (--ca-address and --identity-token-file, or --identity-cert-file …)"
                    .to_string()
            })?;
        vec![format!("spiffe://{td}/ns/weft-system/sa/weft-control")]
    } else {
        t.subject_alt_names.clone()
    };
    weft_tls::client_config(
        weft_tls::Trust::Mesh(mesh.clone()),
        sans,
        weft_tls::ClientCert::Mesh(mesh),
        vec![b"h2".to_vec()],
        weft_tls::TlsVersion::V13,
        "xds.tls.",
    )
    .map_err(|e| e.to_string())
}

/// Starts the xDS client for `server` (started from `bootstrap`, which has an `xds` section).
/// `trust_domain_hint`: the trust domain of the identity the proxy is getting, if known before
/// its first certificate arrives.
pub fn attach(
    server: &Arc<Server>,
    mut bootstrap: Config,
    trust_domain_hint: Option<String>,
) -> Result<Arc<XdsClient>, String> {
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
    let tls = match bootstrap.xds.as_ref().and_then(|x| x.tls.as_ref()) {
        Some(t) => Some(tls_config(server, t, trust_domain_hint)?),
        None => None,
    };
    let client = Arc::new(XdsClient::start_with_tls(
        bootstrap,
        apply,
        on_initialized,
        server.control_handle(),
        tls,
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
