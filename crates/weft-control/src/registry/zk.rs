//! The ZooKeeper registry, reading Dubbo's layouts ([`super::dubbo`]):
//!
//! - interface level: `/dubbo/<interface>/providers/<URL-encoded provider URL>` → service
//!   `<interface>` (source `zk:dubbo/<interface>`), one endpoint per provider node;
//! - application level (Dubbo 3): `/services/<application>/<instance>` with the instance's JSON →
//!   service `<application>` (source `zk:app/<application>`).
//!
//! Providers register ephemeral nodes: when a provider's session closes or expires ZooKeeper
//! deletes them and the endpoint goes. Changes arrive through persistent recursive watches on
//! `/dubbo` and `/services` (ZooKeeper 3.6+). While ZooKeeper is unreachable the last state keeps
//! serving; on reconnection (same session or a new one) everything is read again and only the
//! differences are applied.

use super::dubbo;
use super::{BoxFuture, Registry, RegistryEvent, SourceChange};
use crate::model::{Fragment, Protocol, Service};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use zookeeper_client as zkc;

pub struct ZkRegistry {
    /// `host:port[,host:port][/chroot]`
    pub connect: String,
    pub session_timeout: Duration,
}

impl ZkRegistry {
    /// The part after `zk://`.
    pub fn parse(spec: &str) -> Result<ZkRegistry, String> {
        let hosts = spec.split('/').next().unwrap_or("");
        if hosts.is_empty() {
            return Err("no ZooKeeper server (zk://HOST:PORT[,HOST:PORT][/chroot])".into());
        }
        for h in hosts.split(',') {
            match h.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {}
                _ => return Err(format!("ZooKeeper server \"{h}\" is not HOST:PORT")),
            }
        }
        Ok(ZkRegistry {
            connect: spec.trim_end_matches('/').to_string(),
            session_timeout: Duration::from_secs(10),
        })
    }
}

/// What is known: provider node names per interface, instance data per application.
#[derive(Default, Clone, PartialEq)]
struct Known {
    dubbo: BTreeMap<String, BTreeSet<String>>,
    apps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// One service from its provider nodes: the change and the skipped nodes (path → reason).
pub fn interface_service(interface: &str, nodes: &BTreeSet<String>) -> (SourceChange, BTreeMap<String, String>) {
    let source = format!("zk:dubbo/{interface}");
    let mut skipped = BTreeMap::new();
    if nodes.is_empty() {
        return (SourceChange::Remove { source }, skipped);
    }
    let mut eps = Vec::new();
    for n in nodes {
        let path = format!("/dubbo/{interface}/providers/{n}");
        match dubbo::provider(interface, n) {
            Ok(ep) => eps.push((path, ep)),
            Err(e) => {
                skipped.insert(path, e.to_string());
            }
        }
    }
    (assemble(interface, source, eps, &mut skipped), skipped)
}

pub fn app_service(app: &str, instances: &BTreeMap<String, Vec<u8>>) -> (SourceChange, BTreeMap<String, String>) {
    let source = format!("zk:app/{app}");
    let mut skipped = BTreeMap::new();
    if instances.is_empty() {
        return (SourceChange::Remove { source }, skipped);
    }
    let mut eps = Vec::new();
    for (n, data) in instances {
        let path = format!("/services/{app}/{n}");
        match dubbo::app_instance(app, data) {
            Ok(ep) => eps.push((path, ep)),
            Err(e) => {
                skipped.insert(path, e.to_string());
            }
        }
    }
    (assemble(app, source, eps, &mut skipped), skipped)
}

/// The service's protocol is the first (by path) valid entry's; entries of another protocol, or
/// repeating an address, are skipped.
fn assemble(
    name: &str,
    source: String,
    eps: Vec<(String, (crate::model::Endpoint, Protocol))>,
    skipped: &mut BTreeMap<String, String>,
) -> SourceChange {
    let protocol = eps.first().map_or(Protocol::Http, |(_, (_, p))| *p);
    let mut endpoints: Vec<crate::model::Endpoint> = Vec::new();
    let mut seen: BTreeMap<std::net::SocketAddr, String> = BTreeMap::new();
    for (path, (ep, p)) in eps {
        if p != protocol {
            skipped.insert(
                path,
                format!("protocol {p:?} differs from the service's {protocol:?} (from its first provider)"),
            );
            continue;
        }
        if let Some(other) = seen.get(&ep.address) {
            skipped.insert(path, format!("duplicate endpoint {}: also {other}", ep.address));
            continue;
        }
        seen.insert(ep.address, path);
        endpoints.push(ep);
    }
    let service = Service {
        name: name.to_string(),
        port: None,
        protocol,
        endpoints,
        dependencies: None,
        mtls: None,
        identities: Vec::new(),
        interfaces: Vec::new(),
    };
    SourceChange::Upsert {
        source,
        fragment: Fragment {
            services: vec![Arc::new(service)],
            ..Default::default()
        },
    }
}

async fn children(client: &zkc::Client, path: &str) -> Result<Vec<String>, zkc::Error> {
    match client.list_children(path).await {
        Ok(c) => Ok(c),
        Err(zkc::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

async fn read_interface(client: &zkc::Client, iface: &str) -> Result<BTreeSet<String>, zkc::Error> {
    Ok(children(client, &format!("/dubbo/{iface}/providers"))
        .await?
        .into_iter()
        .collect())
}

async fn read_app(client: &zkc::Client, app: &str) -> Result<BTreeMap<String, Vec<u8>>, zkc::Error> {
    let mut m = BTreeMap::new();
    for inst in children(client, &format!("/services/{app}")).await? {
        match client.get_data(&format!("/services/{app}/{inst}")).await {
            Ok((data, _)) => {
                m.insert(inst, data);
            }
            Err(zkc::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(m)
}

async fn read_all(client: &zkc::Client) -> Result<Known, zkc::Error> {
    let mut k = Known::default();
    for iface in children(client, "/dubbo").await? {
        let nodes = read_interface(client, &iface).await?;
        if !nodes.is_empty() {
            k.dubbo.insert(iface, nodes);
        }
    }
    for app in children(client, "/services").await? {
        let inst = read_app(client, &app).await?;
        if !inst.is_empty() {
            k.apps.insert(app, inst);
        }
    }
    Ok(k)
}

struct Runner {
    known: Known,
    skipped: BTreeMap<String, String>,
    events: mpsc::Sender<RegistryEvent>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Iface(String),
    App(String),
}

impl Runner {
    /// Replaces what is known with `fresh`, emitting the services that differ.
    async fn replace(&mut self, fresh: Known) -> bool {
        let mut changed = BTreeSet::new();
        for k in self.known.dubbo.keys().chain(fresh.dubbo.keys()) {
            if self.known.dubbo.get(k) != fresh.dubbo.get(k) {
                changed.insert(Key::Iface(k.clone()));
            }
        }
        for k in self.known.apps.keys().chain(fresh.apps.keys()) {
            if self.known.apps.get(k) != fresh.apps.get(k) {
                changed.insert(Key::App(k.clone()));
            }
        }
        self.known = fresh;
        self.emit(changed).await
    }

    async fn emit(&mut self, keys: BTreeSet<Key>) -> bool {
        if keys.is_empty() {
            return true;
        }
        let before = self.skipped.clone();
        let mut changes = Vec::new();
        let empty_n = BTreeSet::new();
        let empty_a = BTreeMap::new();
        for k in keys {
            let (change, skipped, prefix) = match &k {
                Key::Iface(i) => {
                    let (c, s) = interface_service(i, self.known.dubbo.get(i).unwrap_or(&empty_n));
                    (c, s, format!("/dubbo/{i}/"))
                }
                Key::App(a) => {
                    let (c, s) = app_service(a, self.known.apps.get(a).unwrap_or(&empty_a));
                    (c, s, format!("/services/{a}/"))
                }
            };
            self.skipped.retain(|p, _| !p.starts_with(&prefix));
            self.skipped.extend(skipped);
            changes.push(change);
        }
        super::publish(&self.events, changes, &self.skipped, &before).await
    }

    /// Applies one watch event; reads ZooKeeper where the path alone does not tell.
    async fn on_event(&mut self, client: &zkc::Client, ev: &zkc::WatchedEvent) -> Result<bool, zkc::Error> {
        let parts: Vec<&str> = ev.path.trim_start_matches('/').split('/').collect();
        let created = matches!(
            ev.event_type,
            zkc::EventType::NodeCreated | zkc::EventType::NodeDataChanged
        );
        let mut keys = BTreeSet::new();
        match parts.as_slice() {
            ["dubbo", iface, "providers", node] => {
                let set = self.known.dubbo.entry(iface.to_string()).or_default();
                if created {
                    set.insert(node.to_string());
                } else {
                    set.remove(*node);
                }
                if set.is_empty() {
                    self.known.dubbo.remove(*iface);
                }
                keys.insert(Key::Iface(iface.to_string()));
            }
            ["dubbo", iface, ..] if parts.len() <= 3 => {
                let nodes = read_interface(client, iface).await?;
                if nodes.is_empty() {
                    self.known.dubbo.remove(*iface);
                } else {
                    self.known.dubbo.insert(iface.to_string(), nodes);
                }
                keys.insert(Key::Iface(iface.to_string()));
            }
            ["services", app, inst] => {
                let app_map = self.known.apps.entry(app.to_string()).or_default();
                if created {
                    match client.get_data(&ev.path).await {
                        Ok((data, _)) => {
                            app_map.insert(inst.to_string(), data);
                        }
                        Err(zkc::Error::NoNode) => {
                            app_map.remove(*inst);
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    app_map.remove(*inst);
                }
                if app_map.is_empty() {
                    self.known.apps.remove(*app);
                }
                keys.insert(Key::App(app.to_string()));
            }
            ["services", app] => {
                let inst = read_app(client, app).await?;
                if inst.is_empty() {
                    self.known.apps.remove(*app);
                } else {
                    self.known.apps.insert(app.to_string(), inst);
                }
                keys.insert(Key::App(app.to_string()));
            }
            ["dubbo"] | ["services"] => {
                let fresh = read_all(client).await?;
                return Ok(self.replace(fresh).await);
            }
            _ => {}
        }
        Ok(self.emit(keys).await)
    }
}

fn terminal(s: zkc::SessionState) -> bool {
    matches!(
        s,
        zkc::SessionState::Expired | zkc::SessionState::Closed | zkc::SessionState::AuthFailed
    )
}

impl ZkRegistry {
    /// One ZooKeeper session. Err: it ended (unreachable, expired); Ok(false): stop.
    async fn session(
        &self,
        r: &mut Runner,
        synced: &mut bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, String> {
        let connect = zkc::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(Duration::from_secs(2))
            .connect(&self.connect);
        let client = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut states = client.state_watcher();
        let mut w_dubbo = client
            .watch("/dubbo", zkc::AddWatchMode::PersistentRecursive)
            .await
            .map_err(|e| e.to_string())?;
        let mut w_services = client
            .watch("/services", zkc::AddWatchMode::PersistentRecursive)
            .await
            .map_err(|e| e.to_string())?;
        let fresh = read_all(&client).await.map_err(|e| e.to_string())?;
        if !r.replace(fresh).await {
            return Ok(false);
        }
        if r.events
            .send(RegistryEvent::Health {
                connected: true,
                error: None,
            })
            .await
            .is_err()
        {
            return Ok(false);
        }
        if !*synced {
            *synced = true;
            if r.events.send(RegistryEvent::Synced).await.is_err() {
                return Ok(false);
            }
        }
        let mut connected = true;
        loop {
            let ev = tokio::select! {
                e = w_dubbo.changed() => e,
                e = w_services.changed() => e,
                s = states.changed() => {
                    if terminal(s) {
                        return Err(format!("session {s}"));
                    }
                    let now = matches!(s, zkc::SessionState::SyncConnected | zkc::SessionState::ConnectedReadOnly);
                    if now != connected {
                        connected = now;
                        if now {
                            // Back on the same session: read everything again, apply only differences.
                            let fresh = read_all(&client).await.map_err(|e| e.to_string())?;
                            if !r.replace(fresh).await {
                                return Ok(false);
                            }
                        }
                        let error = (!now).then(|| format!("session {s}"));
                        if r.events.send(RegistryEvent::Health { connected: now, error }).await.is_err() {
                            return Ok(false);
                        }
                    }
                    continue;
                }
                _ = shutdown.changed() => return Ok(false),
            };
            if ev.event_type == zkc::EventType::Session {
                if terminal(ev.session_state) {
                    return Err(format!("session {}", ev.session_state));
                }
                continue;
            }
            match r.on_event(&client, &ev).await {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Registry for ZkRegistry {
    fn describe(&self) -> String {
        format!("zookeeper {} (dubbo)", self.connect)
    }

    fn run(self: Box<Self>, events: mpsc::Sender<RegistryEvent>, mut shutdown: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(async move {
            let mut r = Runner {
                known: Known::default(),
                skipped: BTreeMap::new(),
                events,
            };
            let mut synced = false;
            let mut backoff = Duration::from_millis(100);
            let mut last_error: Option<String> = None;
            loop {
                let started = std::time::Instant::now();
                match self.session(&mut r, &mut synced, &mut shutdown).await {
                    Ok(_) => return,
                    Err(e) => {
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(registry = %self.describe(), error = %e, "ZooKeeper unreachable; keeping the last state, reconnecting with backoff");
                        }
                        if r.events
                            .send(RegistryEvent::Health {
                                connected: false,
                                error: Some(e.clone()),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        last_error = Some(e);
                    }
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() as u64);
                let jitter = Duration::from_nanos(nanos % (backoff.as_nanos() as u64 / 4 + 1));
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_and_app_services() {
        let mut nodes = BTreeSet::new();
        nodes.insert(dubbo::percent_encode(
            "rest://127.0.0.1:8081/a.B?side=provider&version=1",
        ));
        nodes.insert(dubbo::percent_encode(
            "rest://127.0.0.1:8082/a.B?side=provider&version=2",
        ));
        nodes.insert(dubbo::percent_encode("dubbo://127.0.0.1:20880/a.B?side=provider"));
        nodes.insert("garbage%".to_string());
        let (c, skipped) = interface_service("a.B", &nodes);
        let SourceChange::Upsert { source, fragment } = c else {
            panic!()
        };
        assert_eq!(source, "zk:dubbo/a.B");
        assert_eq!(fragment.services[0].endpoints.len(), 1, "{skipped:?}");
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped["/dubbo/a.B/providers/garbage%"].contains("bad percent-encoding"));
        let (c, _) = interface_service("a.B", &BTreeSet::new());
        assert!(matches!(c, SourceChange::Remove { .. }));
        let mut inst = BTreeMap::new();
        inst.insert(
            "10.0.0.1:1".to_string(),
            br#"{"name":"shop","address":"10.0.0.1","port":1}"#.to_vec(),
        );
        let (c, skipped) = app_service("shop", &inst);
        assert!(skipped.is_empty());
        let SourceChange::Upsert { fragment, .. } = c else {
            panic!()
        };
        assert_eq!(fragment.services[0].protocol, Protocol::Dubbo);
        assert!(ZkRegistry::parse("127.0.0.1:2181/x").is_ok());
        assert!(ZkRegistry::parse("").is_err());
        assert!(ZkRegistry::parse("h").is_err());
    }
}
