//! Endpoint drains: a control-plane-side override that takes one endpoint of one service out of
//! every proxy's load balancing, whatever registry the endpoint comes from.
//!
//! Used by `weft intercept` (switching an instance's traffic interception on or off without losing
//! a request): drain the instance, wait until every connected proxy has ACKed a configuration
//! without it ([`Drains::status`]), switch, restore. A drain is not written to any registry: it
//! lives in the control plane's memory and, with `--state-dir`, in `drains.json` there
//! ([`Drains::load`]), written atomically (a temporary file renamed over it) on every change and
//! read back at start, so a restarted control plane keeps an instance out of rotation.
//!
//! Every add or removal bumps an *epoch*; the catalog publishes a snapshot for it and records the
//! snapshot generation that first reflected that epoch. A caller that made a change at epoch E
//! knows every proxy has it once the applied epoch is at least E and every proxy's stream is at
//! that generation or later with everything it was sent ACKed.

use crate::model::World;
use crate::server::Shared;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// One drained endpoint.
#[derive(Clone, Debug)]
struct Entry {
    since: SystemTime,
    /// The endpoint was in the registry's service when the last snapshot was built.
    registered: bool,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<(String, SocketAddr), Entry>,
    epoch: u64,
    /// (epoch, generation): the snapshot generation that first reflected `epoch`.
    applied: Option<(u64, u64)>,
}

/// The drains of one control plane (shared by the admin API and the catalog).
pub struct Drains {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// `drains.json` in `--state-dir`: every change is written there.
    file: Option<PathBuf>,
}

impl Default for Drains {
    fn default() -> Drains {
        Drains {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
            file: None,
        }
    }
}

/// The file of the drains in a state directory.
pub const STATE_FILE: &str = "drains.json";

/// Why a drain request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum DrainError {
    /// A query parameter is missing or malformed (its name, then why).
    BadParam(&'static str, String),
    UnknownService(String),
    UnknownEndpoint {
        service: String,
        address: SocketAddr,
    },
    /// No snapshot yet (the registry's first sync is not complete).
    NotSynced,
    /// The change could not be written to the state file (and was not made).
    Persist(String),
}

impl std::fmt::Display for DrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrainError::BadParam(p, why) => write!(f, "query parameter `{p}`: {why}"),
            DrainError::UnknownService(s) => write!(f, "no service \"{s}\" in the registry"),
            DrainError::UnknownEndpoint { service, address } => {
                write!(f, "service \"{service}\" has no endpoint {address} in the registry")
            }
            DrainError::NotSynced => write!(f, "the registry's first sync is not complete"),
            DrainError::Persist(why) => write!(f, "{why}"),
        }
    }
}

impl Drains {
    pub fn new() -> Arc<Drains> {
        Arc::new(Drains::default())
    }

    /// The drains kept in `dir` (`--state-dir`): the ones `dir/drains.json` lists (none when it
    /// does not exist yet; `dir` is created), and every later change written there. A file that
    /// cannot be read or parsed is an error naming the file and the entry: weft control does not
    /// start rather than silently put drained instances back.
    pub fn load(dir: &Path) -> Result<Arc<Drains>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("--state-dir {}: {e}", dir.display()))?;
        let file = dir.join(STATE_FILE);
        let mut inner = Inner::default();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let shown = file.display();
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| format!("{shown}: not JSON: {e}"))?;
                let list = v["drains"]
                    .as_array()
                    .ok_or_else(|| format!("{shown}: `drains` is not a list"))?;
                for (i, d) in list.iter().enumerate() {
                    let service = d["service"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| format!("{shown}: drains[{i}].service: missing"))?;
                    let address: SocketAddr = d["address"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .ok_or_else(|| format!("{shown}: drains[{i}].address: not IP:port"))?;
                    let since = d["since_unix"].as_u64().unwrap_or(0);
                    inner.entries.insert(
                        (service.to_string(), address),
                        Entry {
                            since: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(since),
                            registered: true,
                        },
                    );
                }
                if !inner.entries.is_empty() {
                    inner.epoch = 1;
                    tracing::info!(file = %shown, drains = inner.entries.len(), "endpoint drains restored");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", file.display())),
        }
        let epoch = inner.epoch;
        Ok(Arc::new(Drains {
            inner: Mutex::new(inner),
            changed: watch::channel(epoch).0,
            file: Some(file),
        }))
    }

    /// Writes `entries` to the state file, if there is one: a temporary file in the same
    /// directory, synced, then renamed over the old one, so a crash leaves the old or the new list,
    /// never half of one.
    fn persist(&self, entries: &BTreeMap<(String, SocketAddr), Entry>) -> Result<(), DrainError> {
        let Some(file) = &self.file else { return Ok(()) };
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|((service, address), e)| {
                serde_json::json!({
                    "service": service,
                    "address": address.to_string(),
                    "since_unix": e.since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                })
            })
            .collect();
        let body = serde_json::to_vec_pretty(&serde_json::json!({ "drains": list }))
            .map_err(|e| DrainError::Persist(e.to_string()))?;
        crate::files::write_atomic(file, &body, 0o644)
            .map_err(|e| DrainError::Persist(format!("cannot write {}: {e}", file.display())))
    }

    /// Changes to the set: the catalog publishes a snapshot for each.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self, inner: &mut Inner) -> u64 {
        inner.epoch += 1;
        let e = inner.epoch;
        self.changed.send_replace(e);
        e
    }

    /// Drains `address` of `service`. The endpoint must be in the current snapshot (or drained
    /// already: draining twice is not an error). Returns the epoch to wait for.
    pub fn add(&self, shared: &Shared, service: &str, address: SocketAddr) -> Result<u64, DrainError> {
        let mut inner = self.inner.lock();
        let key = (service.to_string(), address);
        if inner.entries.contains_key(&key) {
            return Ok(inner.epoch);
        }
        let snap = shared.snapshots.borrow().clone().ok_or(DrainError::NotSynced)?;
        let svc = snap
            .world
            .services
            .get(service)
            .ok_or_else(|| DrainError::UnknownService(service.to_string()))?;
        if !svc.endpoints.iter().any(|e| e.address == address) {
            return Err(DrainError::UnknownEndpoint {
                service: service.to_string(),
                address,
            });
        }
        inner.entries.insert(
            key.clone(),
            Entry {
                since: SystemTime::now(),
                registered: true,
            },
        );
        if let Err(e) = self.persist(&inner.entries) {
            inner.entries.remove(&key);
            return Err(e);
        }
        Ok(self.bump(&mut inner))
    }

    /// Puts the endpoint back (a no-op when it was not drained). Returns the epoch to wait for and
    /// whether it was drained. A state file that cannot be written is an error (the endpoint
    /// stays drained, in memory and on disk alike).
    pub fn remove(&self, service: &str, address: SocketAddr) -> Result<(u64, bool), DrainError> {
        let mut inner = self.inner.lock();
        let key = (service.to_string(), address);
        let Some(entry) = inner.entries.remove(&key) else {
            return Ok((inner.epoch, false));
        };
        if let Err(e) = self.persist(&inner.entries) {
            inner.entries.insert(key, entry);
            return Err(e);
        }
        Ok((self.bump(&mut inner), true))
    }

    /// Takes the drained endpoints out of `world` (built for snapshot `generation`).
    pub fn apply(&self, world: &mut World, generation: u64) {
        let mut inner = self.inner.lock();
        for ((service, address), entry) in inner.entries.iter_mut() {
            entry.registered = false;
            if let Some(svc) = world.services.get_mut(service) {
                if svc.endpoints.iter().any(|e| e.address == *address) {
                    entry.registered = true;
                    Arc::make_mut(svc).endpoints.retain(|e| e.address != *address);
                }
            }
        }
        let epoch = inner.epoch;
        if inner.applied.is_none_or(|(e, _)| e < epoch) {
            inner.applied = Some((epoch, generation));
        }
    }

    /// JSON for `GET /endpoints/drains`: the drains, and whether every connected proxy has ACKed
    /// a configuration reflecting `epoch` (default: the current one).
    pub fn status(&self, shared: &Shared, epoch: Option<u64>) -> serde_json::Value {
        let (entries, current, applied) = {
            let inner = self.inner.lock();
            (inner.entries.clone(), inner.epoch, inner.applied)
        };
        let want = epoch.unwrap_or(current);
        let generation = applied.filter(|(e, _)| *e >= want).map(|(_, g)| g);
        let proxies = crate::server::ack_progress(shared, generation.unwrap_or(u64::MAX));
        let pending: Vec<&serde_json::Value> = proxies.iter().filter(|p| p["acked"] == false).collect();
        let converged = generation.is_some() && pending.is_empty();
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|((service, address), e)| {
                serde_json::json!({
                    "service": service,
                    "address": address.to_string(),
                    "since_unix": e.since.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "registered": e.registered,
                })
            })
            .collect();
        serde_json::json!({
            "epoch": current,
            "waiting_for_epoch": want,
            "generation": generation,
            "converged": converged,
            "proxies": proxies.len(),
            "pending": pending,
            "drains": list,
        })
    }
}

/// The `service` and `address` (and optional `epoch`) of a query string such as
/// `service=reviews&address=10.0.0.7%3A8080`; percent-encoding and `+` are decoded.
pub fn parse_query(query: &str) -> Result<(String, SocketAddr, Option<u64>), DrainError> {
    let (mut service, mut address, mut epoch) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)
            .ok_or_else(|| DrainError::BadParam("query", format!("bad percent-encoding in \"{pair}\"")))?;
        match k {
            "service" => service = Some(v),
            "address" => address = Some(v),
            "epoch" => epoch = Some(v),
            _ => {}
        }
    }
    let service = service
        .filter(|s| !s.is_empty())
        .ok_or_else(|| DrainError::BadParam("service", "missing".into()))?;
    let address = address.ok_or_else(|| DrainError::BadParam("address", "missing".into()))?;
    let address: SocketAddr = address
        .parse()
        .map_err(|_| DrainError::BadParam("address", format!("\"{address}\" is not IP:port")))?;
    let epoch = epoch
        .map(|e| {
            e.parse::<u64>()
                .map_err(|_| DrainError::BadParam("epoch", format!("\"{e}\" is not a number")))
        })
        .transpose()?;
    Ok((service, address, epoch))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded_and_checked() {
        assert_eq!(
            parse_query("service=reviews&address=10.0.0.7%3A8080").unwrap(),
            ("reviews".into(), "10.0.0.7:8080".parse().unwrap(), None)
        );
        assert_eq!(
            parse_query("address=%5Bfd00%3A%3A2%5D:80&service=a+b&epoch=7").unwrap(),
            ("a b".into(), "[fd00::2]:80".parse().unwrap(), Some(7))
        );
        assert_eq!(
            parse_query("address=1.2.3.4:5").unwrap_err(),
            DrainError::BadParam("service", "missing".into())
        );
        let e = parse_query("service=s&address=nope").unwrap_err().to_string();
        assert_eq!(e, "query parameter `address`: \"nope\" is not IP:port");
        assert!(parse_query("service=s&address=%zz").is_err());
        assert!(parse_query("service=s&address=1.2.3.4:5&epoch=x").is_err());
        assert!(parse_query("service=%").is_err());
    }
}
