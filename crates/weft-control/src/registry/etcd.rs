//! The etcd registry: services and their instances under a key prefix, watched.
//!
//! Layout under the prefix `P` (default `/weft/`), values JSON:
//!
//! | key | value |
//! |---|---|
//! | `P` `services/<name>` | optional: `{"port": 9080, "protocol": "grpc"}` (the service fields of the file registry except `name` and `endpoints`) |
//! | `P` `instances/<name>/<id>` | one endpoint: `{"address": "10.0.0.7:9080", "weight": 1, "labels": {...}, "locality": {...}, "priority": 0, "health": "healthy"}`, written with a lease by the instance |
//!
//! A service exists while it has a definition or at least one instance. An instance key attached to
//! a lease disappears when the lease expires (the instance died and stopped its keep-alives), and
//! with it the endpoint. A malformed instance is skipped with its reason (`/debug/registry`), the
//! others keep flowing; a malformed definition is rejected and the service's last good content
//! stays in effect.
//!
//! The registry lists the prefix once, then watches it from the listed revision + 1. A broken
//! connection resumes the watch from the last revision seen (no relist); only a compacted revision
//! forces a relist, which is diffed against what is known so only real changes go out. With a state
//! file, the known keys and their revision are also written to disk (at most once a second and at
//! shutdown), so a restarted control plane resumes its watch from there instead of relisting.

use super::{BoxFuture, Registry, RegistryEvent, SourceChange};
use crate::model::{parse_fragment, Fragment};
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub struct EtcdRegistry {
    /// `host:port` of etcd members.
    pub endpoints: Vec<String>,
    /// Key prefix, ending in `/`.
    pub prefix: String,
    /// Where the known keys and revision are kept across restarts (optional).
    pub state_file: Option<PathBuf>,
    /// Keys per request when listing (`?page=N`, default 2000).
    pub list_page: i64,
}

/// Why an `--registry etcd://...` value was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SpecError {
    NoEndpoints,
    BadEndpoint(String),
    BadOption(String),
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::NoEndpoints => write!(f, "no etcd endpoint (etcd://HOST:PORT[,HOST:PORT]/PREFIX/)"),
            SpecError::BadEndpoint(e) => write!(f, "etcd endpoint \"{e}\" is not HOST:PORT"),
            SpecError::BadOption(o) => write!(f, "bad option \"{o}\" (state=PATH, page=1..)"),
        }
    }
}

impl EtcdRegistry {
    /// `etcd://127.0.0.1:2379[,host:port...][/prefix/][?state=/var/lib/weft/etcd-state.json]`
    /// (the part after `etcd://`).
    pub fn parse(spec: &str) -> Result<EtcdRegistry, SpecError> {
        let (main, query) = spec.split_once('?').unwrap_or((spec, ""));
        let (hosts, prefix) = match main.find('/') {
            Some(i) => (&main[..i], &main[i..]),
            None => (main, "/weft/"),
        };
        let mut endpoints = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            match h.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
                    endpoints.push(h.to_string())
                }
                _ => return Err(SpecError::BadEndpoint(h.to_string())),
            }
        }
        if endpoints.is_empty() {
            return Err(SpecError::NoEndpoints);
        }
        let mut prefix = if prefix.is_empty() || prefix == "/" {
            "/weft/".to_string()
        } else {
            prefix.to_string()
        };
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let mut state_file = None;
        let mut list_page = LIST_PAGE;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("state", p)) if !p.is_empty() => state_file = Some(PathBuf::from(p)),
                Some(("page", n)) if n.parse::<i64>().is_ok_and(|n| n > 0) => {
                    list_page = n.parse().unwrap_or(LIST_PAGE)
                }
                _ => return Err(SpecError::BadOption(kv.to_string())),
            }
        }
        Ok(EtcdRegistry {
            endpoints,
            prefix,
            state_file,
            list_page,
        })
    }
}

/// What a key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'a> {
    Service(&'a str),
    Instance(&'a str, &'a str),
    Unknown,
}

pub fn classify(rest: &str) -> KeyKind<'_> {
    if let Some(name) = rest.strip_prefix("services/") {
        if !name.is_empty() && !name.contains('/') {
            return KeyKind::Service(name);
        }
    } else if let Some(r) = rest.strip_prefix("instances/") {
        if let Some((name, id)) = r.split_once('/') {
            if !name.is_empty() && !id.is_empty() {
                return KeyKind::Instance(name, id);
            }
        }
    }
    KeyKind::Unknown
}

/// The known keys (without the prefix) and the revision they are current at.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct State {
    prefix: String,
    revision: i64,
    kvs: BTreeMap<String, String>,
}

fn source_of(name: &str) -> String {
    format!("etcd:{name}")
}

/// Builds one service from the known keys: the change for its source and its skipped entries
/// (full key → reason).
pub fn build_service(
    prefix: &str,
    kvs: &BTreeMap<String, String>,
    name: &str,
) -> (SourceChange, BTreeMap<String, String>) {
    let source = source_of(name);
    let mut skipped = BTreeMap::new();
    let def_key = format!("services/{name}");
    let inst_prefix = format!("instances/{name}/");
    let instances: Vec<(&String, &String)> = kvs
        .range(inst_prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&inst_prefix))
        .collect();
    let def = kvs.get(&def_key);
    if def.is_none() && instances.is_empty() {
        return (SourceChange::Remove { source }, skipped);
    }
    let full_def_key = format!("{prefix}{def_key}");
    let mut svc = serde_json::Map::new();
    if let Some(text) = def {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => {
                for k in ["name", "endpoints"] {
                    if m.contains_key(k) {
                        let e = format!("{full_def_key}: field \"{k}\" is not allowed here (the name is the key's, endpoints are instances/{name}/<id> keys)");
                        return (
                            SourceChange::Invalid {
                                source,
                                errors: vec![e],
                            },
                            skipped,
                        );
                    }
                }
                svc = m;
            }
            Ok(_) => {
                let e = format!("{full_def_key}: not a JSON object");
                return (
                    SourceChange::Invalid {
                        source,
                        errors: vec![e],
                    },
                    skipped,
                );
            }
            Err(e) => {
                let e = format!("{full_def_key}: invalid JSON: {e}");
                return (
                    SourceChange::Invalid {
                        source,
                        errors: vec![e],
                    },
                    skipped,
                );
            }
        }
    }
    svc.insert("name".into(), serde_json::Value::String(name.to_string()));
    let doc = serde_json::json!({ "services": [serde_json::Value::Object(svc.clone())] });
    let base = match parse_fragment(&full_def_key, &doc.to_string()) {
        Ok(f) => f,
        Err(errors) => {
            let errors = errors.into_iter().map(|e| e.replace("services[0].", "")).collect();
            return (SourceChange::Invalid { source, errors }, skipped);
        }
    };
    let mut service = (*base.services[0]).clone();
    let mut seen: BTreeMap<std::net::SocketAddr, String> = BTreeMap::new();
    for (k, text) in instances {
        let full = format!("{prefix}{k}");
        let inst: serde_json::Value = match serde_json::from_str(text) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => {
                skipped.insert(full, "not a JSON object".into());
                continue;
            }
            Err(e) => {
                skipped.insert(full, format!("invalid JSON: {e}"));
                continue;
            }
        };
        let mut one = svc.clone();
        one.insert("endpoints".into(), serde_json::Value::Array(vec![inst]));
        let doc = serde_json::json!({ "services": [serde_json::Value::Object(one)] });
        match parse_fragment("", &doc.to_string()) {
            Ok(f) => {
                let ep = f.services[0].endpoints[0].clone();
                if let Some(other) = seen.get(&ep.address) {
                    skipped.insert(full, format!("duplicate endpoint {}: also {other}", ep.address));
                    continue;
                }
                seen.insert(ep.address, full);
                service.endpoints.push(ep);
            }
            Err(errors) => {
                let why: Vec<String> = errors
                    .iter()
                    .map(|e| {
                        e.trim_start_matches(": ")
                            .replace("services[0].endpoints[0].", "")
                            .replace("services[0].endpoints[0]", "instance")
                    })
                    .collect();
                skipped.insert(full, why.join("; "));
            }
        }
    }
    let fragment = Fragment {
        services: vec![std::sync::Arc::new(service)],
        ..Default::default()
    };
    (SourceChange::Upsert { source, fragment }, skipped)
}

struct Runner {
    reg: EtcdRegistry,
    state: State,
    /// Full key → reason, for every service.
    skipped: BTreeMap<String, String>,
    /// Keys under the prefix that are neither a service nor an instance (full key → reason).
    events: mpsc::Sender<RegistryEvent>,
    dirty: bool,
}

/// Keys per page when listing, by default.
const LIST_PAGE: i64 = 2000;

/// The end of the key range of everything starting with `prefix` (etcd's `--prefix`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn name_of(rest: &str) -> Option<&str> {
    match classify(rest) {
        KeyKind::Service(n) | KeyKind::Instance(n, _) => Some(n),
        KeyKind::Unknown => None,
    }
}

impl Runner {
    /// Rebuilds the named services and sends their changes. False when the catalog is gone.
    async fn emit(&mut self, names: BTreeSet<String>, unknown: &BTreeSet<String>) -> bool {
        if names.is_empty() && unknown.is_empty() {
            return true;
        }
        let mut changes = Vec::new();
        let before = self.skipped.clone();
        for k in unknown {
            let full = format!("{}{k}", self.reg.prefix);
            if self.state.kvs.contains_key(k) {
                self.skipped.insert(
                    full,
                    "unknown key (expected services/<name> or instances/<name>/<id>)".into(),
                );
            } else {
                self.skipped.remove(&full);
            }
        }
        for name in names {
            let p1 = format!("{}services/{name}", self.reg.prefix);
            let p2 = format!("{}instances/{name}/", self.reg.prefix);
            self.skipped.retain(|k, _| k != &p1 && !k.starts_with(&p2));
            let (change, skipped) = build_service(&self.reg.prefix, &self.state.kvs, &name);
            self.skipped.extend(skipped);
            changes.push(change);
        }
        super::publish(&self.events, changes, &self.skipped, &before).await
    }

    /// Replaces the known keys with a full listing; emits only what differs.
    async fn relist(&mut self, client: &mut Client) -> Result<bool, etcd_client::Error> {
        // In pages, all at the first page's revision: one response for a large registry would
        // exceed gRPC's 4 MiB message limit.
        let end = prefix_end(self.reg.prefix.as_bytes());
        let mut from = self.reg.prefix.as_bytes().to_vec();
        let mut rev = 0;
        let mut fresh = BTreeMap::new();
        let mut pages = 0;
        loop {
            pages += 1;
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(self.reg.list_page);
            if rev != 0 {
                opts = opts.with_revision(rev);
            }
            let resp = client.get(from.clone(), Some(opts)).await?;
            if rev == 0 {
                rev = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                if let Some(rest) = kv.key().strip_prefix(self.reg.prefix.as_bytes()) {
                    let (Ok(k), v) = (std::str::from_utf8(rest), kv.value()) else {
                        continue;
                    };
                    fresh.insert(k.to_string(), String::from_utf8_lossy(v).into_owned());
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        let mut names = BTreeSet::new();
        let mut unknown = BTreeSet::new();
        for (k, v) in self.state.kvs.iter().chain(fresh.iter()) {
            let same = self.state.kvs.get(k) == fresh.get(k);
            if !same || self.state.revision == 0 {
                let _ = v;
                match name_of(k) {
                    Some(n) => names.insert(n.to_string()),
                    None => unknown.insert(k.clone()),
                };
            }
        }
        tracing::info!(prefix = %self.reg.prefix, keys = fresh.len(), pages, revision = rev, changed_services = names.len(), "etcd registry listed");
        self.state.kvs = fresh;
        self.state.revision = rev;
        self.dirty = true;
        Ok(self.emit(names, &unknown).await)
    }

    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        let Some(path) = &self.reg.state_file else { return };
        self.dirty = false;
        let res = serde_json::to_vec(&self.state)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::files::write_atomic(path, &b, 0o644));
        if let Err(e) = res {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the etcd registry state file");
        }
    }

    fn load(&mut self) -> BTreeSet<String> {
        let Some(path) = &self.reg.state_file else {
            return BTreeSet::new();
        };
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeSet::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the etcd registry state file; listing");
                return BTreeSet::new();
            }
        };
        match serde_json::from_slice::<State>(&text) {
            Ok(s) if s.prefix == self.reg.prefix => {
                tracing::info!(file = %path.display(), revision = s.revision, keys = s.kvs.len(), "etcd registry state loaded; resuming the watch");
                self.state = s;
                self.state
                    .kvs
                    .keys()
                    .filter_map(|k| name_of(k))
                    .map(str::to_string)
                    .collect()
            }
            Ok(_) => {
                tracing::warn!(file = %path.display(), "etcd registry state file is for another prefix; listing");
                BTreeSet::new()
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "etcd registry state file unreadable; listing");
                BTreeSet::new()
            }
        }
    }

    /// One connection: list if needed, watch until the stream breaks. Returns Ok(false) to stop.
    async fn session(&mut self, synced: &mut bool, shutdown: &mut watch::Receiver<bool>) -> Result<bool, String> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let mut client = tokio::time::timeout(Duration::from_secs(5), Client::connect(&self.reg.endpoints, Some(opts)))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        // Where the store is now: the watch has caught up (first sync) once it reports this revision.
        let now = client
            .get(
                self.reg.prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(|e| e.to_string())?
            .header()
            .map_or(0, |h| h.revision());
        if self.state.revision == 0 && !self.relist(&mut client).await.map_err(|e| e.to_string())? {
            return Ok(false);
        }
        let mut stream = client
            .watch(
                self.reg.prefix.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(self.state.revision + 1)
                        .with_progress_notify(),
                ),
            )
            .await
            .map_err(|e| e.to_string())?;
        if self
            .events
            .send(RegistryEvent::Health {
                connected: true,
                error: None,
            })
            .await
            .is_err()
        {
            return Ok(false);
        }
        tracing::debug!(revision = self.state.revision, now, "etcd watch started");
        if !*synced {
            if self.state.revision >= now {
                *synced = true;
                if self.events.send(RegistryEvent::Synced).await.is_err() {
                    return Ok(false);
                }
            } else {
                stream.request_progress().await.map_err(|e| e.to_string())?;
            }
        }
        let mut persist = tokio::time::interval(Duration::from_secs(1));
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = persist.tick() => { self.persist(); continue; }
                _ = shutdown.changed() => return Ok(false),
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return Err("watch stream ended".into()),
                Err(e) => return Err(e.to_string()),
            };
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    revision = self.state.revision,
                    compacted = resp.compact_revision(),
                    "etcd watch revision compacted; relisting"
                );
                if !self.relist(&mut client).await.map_err(|e| e.to_string())? {
                    return Ok(false);
                }
                return Err("watch restarted after compaction".into());
            }
            if resp.canceled() {
                return Err(format!("watch canceled: {}", resp.cancel_reason()));
            }
            let mut names = BTreeSet::new();
            let mut unknown = BTreeSet::new();
            let mut rev = self.state.revision;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                rev = rev.max(kv.mod_revision());
                let Some(rest) = kv.key().strip_prefix(self.reg.prefix.as_bytes()) else {
                    continue;
                };
                let Ok(k) = std::str::from_utf8(rest) else { continue };
                match ev.event_type() {
                    EventType::Put => {
                        self.state
                            .kvs
                            .insert(k.to_string(), String::from_utf8_lossy(kv.value()).into_owned());
                    }
                    EventType::Delete => {
                        self.state.kvs.remove(k);
                    }
                }
                match name_of(k) {
                    Some(n) => names.insert(n.to_string()),
                    None => unknown.insert(k.to_string()),
                };
            }
            if resp.events().is_empty() {
                // A progress notification: every event up to the header's revision was delivered.
                if let Some(h) = resp.header() {
                    rev = rev.max(h.revision());
                }
            }
            if rev != self.state.revision {
                self.state.revision = rev;
                self.dirty = true;
            }
            if !self.emit(names, &unknown).await {
                return Ok(false);
            }
            if !*synced && self.state.revision >= now {
                *synced = true;
                if self.events.send(RegistryEvent::Synced).await.is_err() {
                    return Ok(false);
                }
            }
        }
    }
}

impl Registry for EtcdRegistry {
    fn describe(&self) -> String {
        format!("etcd {} prefix {}", self.endpoints.join(","), self.prefix)
    }

    fn run(self: Box<Self>, events: mpsc::Sender<RegistryEvent>, mut shutdown: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(async move {
            let mut r = Runner {
                state: State {
                    prefix: self.prefix.clone(),
                    ..Default::default()
                },
                reg: *self,
                skipped: BTreeMap::new(),
                events,
                dirty: false,
            };
            let names = r.load();
            if !names.is_empty() && !r.emit(names, &BTreeSet::new()).await {
                return;
            }
            let mut synced = false;
            let mut backoff = Duration::from_millis(100);
            let mut last_error: Option<String> = None;
            loop {
                let started = std::time::Instant::now();
                match r.session(&mut synced, &mut shutdown).await {
                    Ok(_) => {
                        r.persist();
                        return;
                    }
                    Err(e) => {
                        if last_error.as_ref() != Some(&e) {
                            tracing::warn!(registry = %r.reg.describe(), error = %e, revision = r.state.revision, "etcd unreachable; keeping the last state, reconnecting with backoff");
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
                r.persist();
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                // Jitter: up to a quarter of the delay, so replicas do not reconnect in lockstep.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() as u64);
                let jitter = Duration::from_nanos(nanos % (backoff.as_nanos() as u64 / 4 + 1));
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = shutdown.changed() => { r.persist(); return; }
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
    fn spec_parsing() {
        let r = EtcdRegistry::parse("127.0.0.1:2379,127.0.0.1:2380/mesh/prod?state=/tmp/s.json").unwrap();
        assert_eq!(r.endpoints, ["127.0.0.1:2379", "127.0.0.1:2380"]);
        assert_eq!(r.prefix, "/mesh/prod/");
        assert_eq!(r.state_file, Some(PathBuf::from("/tmp/s.json")));
        assert_eq!(r.list_page, LIST_PAGE);
        assert_eq!(EtcdRegistry::parse("127.0.0.1:2379").unwrap().prefix, "/weft/");
        assert_eq!(EtcdRegistry::parse("h:1?page=5").unwrap().list_page, 5);
        assert_eq!(
            EtcdRegistry::parse("h:1?page=0").err(),
            Some(SpecError::BadOption("page=0".into()))
        );
        assert_eq!(prefix_end(b"/weft/"), b"/weft0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(EtcdRegistry::parse("").err(), Some(SpecError::NoEndpoints));
        assert_eq!(
            EtcdRegistry::parse("host").err(),
            Some(SpecError::BadEndpoint("host".into()))
        );
        assert_eq!(
            EtcdRegistry::parse("h:1?x=y").err(),
            Some(SpecError::BadOption("x=y".into()))
        );
    }

    #[test]
    fn services_from_keys_skip_bad_instances() {
        let mut kvs = BTreeMap::new();
        kvs.insert(
            "services/echo".to_string(),
            r#"{"port": 9080, "protocol": "http"}"#.to_string(),
        );
        kvs.insert(
            "instances/echo/a".to_string(),
            r#"{"address": "127.0.0.1:1", "labels": {"version": "v1"}}"#.to_string(),
        );
        kvs.insert("instances/echo/b".to_string(), r#"{"address": "nope"}"#.to_string());
        kvs.insert("instances/echo/c".to_string(), "{".to_string());
        kvs.insert(
            "instances/echo/d".to_string(),
            r#"{"address": "127.0.0.1:1"}"#.to_string(),
        );
        kvs.insert(
            "instances/echo/e".to_string(),
            r#"{"address": "127.0.0.1:2", "colour": 1}"#.to_string(),
        );
        kvs.insert(
            "instances/echoes/x".to_string(),
            r#"{"address": "127.0.0.1:9"}"#.to_string(),
        );
        let (c, skipped) = build_service("/weft/", &kvs, "echo");
        let SourceChange::Upsert { source, fragment } = c else {
            panic!("{c:?}")
        };
        assert_eq!(source, "etcd:echo");
        let s = &fragment.services[0];
        assert_eq!((s.name.as_str(), s.port), ("echo", Some(9080)));
        assert_eq!(s.endpoints.len(), 1, "{skipped:?}");
        assert_eq!(s.endpoints[0].labels["version"], "v1");
        assert!(
            skipped["/weft/instances/echo/b"].contains("address: \"nope\" is not IP:port"),
            "{skipped:?}"
        );
        assert!(
            skipped["/weft/instances/echo/c"].contains("invalid JSON"),
            "{skipped:?}"
        );
        assert!(
            skipped["/weft/instances/echo/d"].contains("duplicate endpoint"),
            "{skipped:?}"
        );
        assert!(skipped["/weft/instances/echo/e"].contains("colour"), "{skipped:?}");
        assert_eq!(skipped.len(), 4);

        kvs.insert("services/echo".to_string(), r#"{"protocol": "smtp"}"#.to_string());
        let (c, _) = build_service("/weft/", &kvs, "echo");
        let SourceChange::Invalid { errors, .. } = c else {
            panic!("{c:?}")
        };
        assert!(
            errors[0].starts_with("/weft/services/echo: protocol: unknown protocol"),
            "{errors:?}"
        );
        let (c, _) = build_service("/weft/", &kvs, "gone");
        assert!(matches!(c, SourceChange::Remove { .. }));
        assert_eq!(classify("instances/a/b/c"), KeyKind::Instance("a", "b/c"));
        assert_eq!(classify("services/a/b"), KeyKind::Unknown);
        assert_eq!(classify("other"), KeyKind::Unknown);
    }
}
