//! Service registries, and the catalog that turns their changes into validated snapshots.
//!
//! A [`Registry`] reports changes per *source* (a file here; a Kubernetes object or an etcd key
//! later) as parsed [`Fragment`]s, plus one [`RegistryEvent::Synced`] once it has delivered its
//! initial state. The [`Catalog`] merges the sources, rejects any change that would make the world
//! invalid (keeping that source's last good content), debounces bursts, and publishes snapshots.
//!
//! Several registries run at once through [`MultiRegistry`]: each one's sources carry its
//! precedence (the order of the `--registry` flags, first wins). When two registries define the same
//! service (or routes, destination policy, rate limit service) differently, the one given first wins
//! and the conflict is listed on `/debug/registry`, counted and logged ([`merge`]). A registry whose
//! store is unreachable reports [`RegistryEvent::Health`]; its last known state keeps serving and its
//! staleness is shown. Remote stores: [`etcd`], [`zk`] (ZooKeeper, Dubbo layouts; `zookeeper` feature).

pub mod dubbo;
pub mod etcd;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod merge;
#[cfg(feature = "zookeeper")]
pub mod zk;

use crate::metrics::Metrics;
use crate::model::{parse_fragment, Fragment, World};
use crate::translate::{build_snapshot, Snapshot};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// One change to one source.
// Upsert is the common variant and changes are rare (a registry edit), so boxing the fragment
// would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SourceChange {
    /// The source now holds this (shape-validated) content.
    Upsert { source: String, fragment: Fragment },
    /// The source is gone (file deleted).
    Remove { source: String },
    /// The source exists but could not be parsed; its last good content stays in effect.
    Invalid { source: String, errors: Vec<String> },
}

#[derive(Debug)]
pub enum RegistryEvent {
    /// Changes that belong together (one poll, one watch batch): validated as a unit so that a
    /// service and the routes referring to it may arrive in any order.
    Changes(Vec<SourceChange>),
    /// The initial state has been delivered in full. Nothing is served before this.
    Synced,
    /// A registry backed by a remote store reports losing or regaining it. While disconnected its
    /// last known state keeps serving; the time since it was last connected is its staleness.
    Health { connected: bool, error: Option<String> },
    /// The registry's complete current set of skipped (malformed) entries: entry (an etcd key, a
    /// ZooKeeper path) → the reason. The rest of the registry keeps flowing.
    Skipped(BTreeMap<String, String>),
    /// The names of a [`MultiRegistry`]'s members, in precedence order (sent first).
    Members(Vec<String>),
    /// An event of member `index` of a [`MultiRegistry`] (0 = highest precedence).
    Member { index: usize, event: Box<RegistryEvent> },
}

/// Sends one batch of changes, then the registry's skipped entries if they differ from `before`.
/// False when the receiver (the catalog) is gone.
pub(crate) async fn publish(
    events: &mpsc::Sender<RegistryEvent>,
    changes: Vec<SourceChange>,
    skipped: &BTreeMap<String, String>,
    before: &BTreeMap<String, String>,
) -> bool {
    if events.send(RegistryEvent::Changes(changes)).await.is_err() {
        return false;
    }
    skipped == before || events.send(RegistryEvent::Skipped(skipped.clone())).await.is_ok()
}

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of services and policies. Implementations run until `shutdown` turns true.
pub trait Registry: Send + 'static {
    fn describe(&self) -> String;
    fn run(self: Box<Self>, events: mpsc::Sender<RegistryEvent>, shutdown: watch::Receiver<bool>) -> BoxFuture;
}

/// Watches a directory of `*.yaml` / `*.yml` files by polling (mtime, size) — portable, no inotify
/// limits, and fast enough: a stat of a thousand files every 200 ms is negligible.
pub struct FileRegistry {
    pub dir: PathBuf,
    pub interval: Duration,
}

impl FileRegistry {
    pub fn new(dir: impl Into<PathBuf>) -> FileRegistry {
        FileRegistry {
            dir: dir.into(),
            interval: Duration::from_millis(200),
        }
    }
}

#[derive(Clone, PartialEq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    /// A swapped-in file (rename, ConfigMap symlink swap) is a new inode even when size and
    /// coarse mtime match.
    ino: u64,
    /// A file that failed to parse is re-read every poll: it may have been caught mid-write with a
    /// timestamp that will not move again.
    failed: bool,
}

fn scan(dir: &Path, known: &mut HashMap<String, Stamp>) -> Result<Vec<SourceChange>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut present = std::collections::HashSet::new();
    let mut changes = Vec::new();
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || name.starts_with('.') {
            continue;
        }
        // Follows symlinks: a Kubernetes ConfigMap volume is a directory of symlinks into `..data/`,
        // which is swapped atomically on update.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        present.insert(name.clone());
        let stamp = Stamp {
            mtime: meta.modified().ok(),
            len: meta.len(),
            ino: std::os::unix::fs::MetadataExt::ino(&meta),
            failed: false,
        };
        if known.get(&name).is_some_and(|s| !s.failed && *s == stamp) {
            continue;
        }
        let change = match std::fs::read_to_string(entry.path()) {
            Ok(text) => match parse_fragment(&name, &text) {
                Ok(fragment) => SourceChange::Upsert {
                    source: name.clone(),
                    fragment,
                },
                Err(errors) => SourceChange::Invalid {
                    source: name.clone(),
                    errors,
                },
            },
            Err(e) => SourceChange::Invalid {
                source: name.clone(),
                errors: vec![format!("{name}: {e}")],
            },
        };
        let failed = matches!(change, SourceChange::Invalid { .. });
        let was_failed_same = known
            .get(&name)
            .is_some_and(|s| s.failed && s.mtime == stamp.mtime && s.len == stamp.len);
        known.insert(name, Stamp { failed, ..stamp });
        // A still-broken, untouched file is not re-reported every poll.
        if !(failed && was_failed_same) {
            changes.push(change);
        }
    }
    known.retain(|name, _| {
        let keep = present.contains(name);
        if !keep {
            changes.push(SourceChange::Remove { source: name.clone() });
        }
        keep
    });
    Ok(changes)
}

impl Registry for FileRegistry {
    fn describe(&self) -> String {
        format!("file registry {}", self.dir.display())
    }

    fn run(self: Box<Self>, events: mpsc::Sender<RegistryEvent>, mut shutdown: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(async move {
            let mut known: HashMap<String, Stamp> = HashMap::new();
            let mut synced = false;
            let mut last_dir_error: Option<String> = None;
            loop {
                let dir = self.dir.clone();
                let mut k = std::mem::take(&mut known);
                let res = tokio::task::spawn_blocking(move || {
                    let r = scan(&dir, &mut k);
                    (r, k)
                })
                .await;
                match res {
                    Ok((Ok(changes), k)) => {
                        known = k;
                        if last_dir_error.take().is_some() {
                            tracing::info!(dir = %self.dir.display(), "registry directory readable again");
                        }
                        if !changes.is_empty() && events.send(RegistryEvent::Changes(changes)).await.is_err() {
                            return;
                        }
                        if !synced {
                            synced = true;
                            if events.send(RegistryEvent::Synced).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok((Err(e), k)) => {
                        // An unreadable directory is not "everything deleted": keep the last state and
                        // do not declare the first sync complete on nothing.
                        known = k;
                        // Logged once per distinct error, not every poll.
                        if last_dir_error.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, synced, "registry directory unreadable; keeping the last state");
                            last_dir_error = Some(e);
                        }
                    }
                    Err(_) => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

/// Runs several registries at once. Sources keep their names (each registry kind names its
/// sources distinctly: file names, `etcd:<service>`, `zk:dubbo/<interface>`, `zk:app/<app>`); the
/// catalog learns each source's precedence from the member that reported it. The first sync is
/// complete when every member has synced once.
pub struct MultiRegistry {
    pub members: Vec<Box<dyn Registry>>,
}

impl Registry for MultiRegistry {
    fn describe(&self) -> String {
        self.members.iter().map(|m| m.describe()).collect::<Vec<_>>().join(", ")
    }

    fn run(self: Box<Self>, events: mpsc::Sender<RegistryEvent>, shutdown: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(async move {
            let names: Vec<String> = self.members.iter().map(|m| m.describe()).collect();
            let n = names.len();
            if events.send(RegistryEvent::Members(names)).await.is_err() {
                return;
            }
            let (tx, mut rx) = mpsc::channel::<(usize, RegistryEvent)>(64);
            let mut tasks = Vec::new();
            for (index, m) in self.members.into_iter().enumerate() {
                let (mtx, mut mrx) = mpsc::channel(64);
                tasks.push(tokio::spawn(m.run(mtx, shutdown.clone())));
                let tx = tx.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(ev) = mrx.recv().await {
                        if tx.send((index, ev)).await.is_err() {
                            return;
                        }
                    }
                }));
            }
            drop(tx);
            let mut synced = vec![false; n];
            let mut all = false;
            while let Some((index, ev)) = rx.recv().await {
                let was_sync = matches!(ev, RegistryEvent::Synced);
                let wrapped = RegistryEvent::Member {
                    index,
                    event: Box::new(ev),
                };
                if events.send(wrapped).await.is_err() {
                    break;
                }
                if was_sync {
                    synced[index] = true;
                    if !all && synced.iter().all(|s| *s) {
                        all = true;
                        if events.send(RegistryEvent::Synced).await.is_err() {
                            break;
                        }
                    }
                }
            }
            for t in tasks {
                t.abort();
            }
        })
    }
}

/// One registry's state on `/debug/registry`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RegistryState {
    /// What it reads (`file registry ./registry`, `etcd registry 127.0.0.1:2379 prefix /weft/`).
    pub name: String,
    /// 0 is the highest: the order of the `--registry` flags.
    pub precedence: usize,
    pub synced: bool,
    /// False while its store is unreachable (its last known state keeps serving).
    pub connected: bool,
    /// Seconds since the store was last reachable; 0 while connected.
    pub stale_seconds: f64,
    pub last_error: Option<String>,
    /// Sources (services) it currently contributes.
    pub sources: usize,
    /// Malformed entries skipped, with the reason.
    pub skipped: BTreeMap<String, String>,
    #[serde(skip)]
    pub disconnected_since: Option<std::time::Instant>,
}

/// Registry state visible on `/debug/registry`.
#[derive(Default, Clone, serde::Serialize)]
pub struct RegistryStatus {
    /// One entry per registry, in precedence order.
    pub registries: Vec<RegistryState>,
    /// Names defined differently by two registries: the one with precedence is served.
    pub conflicts: Vec<merge::Conflict>,
    pub synced: bool,
    pub generation: u64,
    pub sources: Vec<String>,
    /// Current errors per source: the source's last good content (if any) is still in effect.
    pub errors: BTreeMap<String, Vec<String>>,
    pub last_error: Option<String>,
    pub services: usize,
    pub endpoints: usize,
}

/// Owns the merged registry state; publishes snapshots on a watch channel (None until first sync).
pub struct Catalog {
    /// `Arc`: applying a change copies the map, not the fragments.
    pub fragments: BTreeMap<String, Arc<Fragment>>,
    pub status: Arc<Mutex<RegistryStatus>>,
    pub out: watch::Sender<Option<Arc<Snapshot>>>,
    pub metrics: Arc<Metrics>,
    pub debounce: Duration,
    /// Source → precedence of the registry that reported it (absent = 0).
    pub precedence: HashMap<String, usize>,
    /// Endpoints taken out of rotation by the admin API ([`crate::drain`]).
    pub drains: Arc<crate::drain::Drains>,
    /// Mesh mTLS (with the CA), copied into every world built.
    pub mesh_tls: Option<crate::model::MeshTls>,
}

impl Catalog {
    pub fn new(
        status: Arc<Mutex<RegistryStatus>>,
        out: watch::Sender<Option<Arc<Snapshot>>>,
        metrics: Arc<Metrics>,
        debounce: Duration,
    ) -> Catalog {
        Catalog {
            fragments: BTreeMap::new(),
            status,
            out,
            metrics,
            debounce,
            precedence: HashMap::new(),
            drains: crate::drain::Drains::new(),
            mesh_tls: None,
        }
    }

    /// The fragments as served: lower-precedence definitions of names a higher-precedence
    /// registry defines are dropped ([`merge::resolve`]).
    fn effective<'a>(
        &self,
        fragments: &'a BTreeMap<String, Arc<Fragment>>,
    ) -> (
        std::borrow::Cow<'a, BTreeMap<String, Arc<Fragment>>>,
        Vec<merge::Conflict>,
    ) {
        merge::resolve(fragments, &self.precedence)
    }

    fn registry_state(status: &mut RegistryStatus, index: usize) -> &mut RegistryState {
        while status.registries.len() <= index {
            let precedence = status.registries.len();
            status.registries.push(RegistryState {
                name: format!("registry {precedence}"),
                precedence,
                connected: true,
                ..Default::default()
            });
        }
        &mut status.registries[index]
    }

    fn label(status: &RegistryStatus, index: usize) -> crate::metrics::RegistryLabel {
        crate::metrics::RegistryLabel {
            registry: status
                .registries
                .get(index)
                .map_or_else(|| format!("registry {index}"), |r| r.name.clone()),
        }
    }

    /// Registry-level events (health, skipped entries, member sync). Returns the changes to apply.
    fn member_event(&mut self, index: usize, ev: RegistryEvent) -> Option<Vec<SourceChange>> {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match ev {
            RegistryEvent::Changes(c) => {
                for ch in &c {
                    let source = match ch {
                        SourceChange::Upsert { source, .. }
                        | SourceChange::Remove { source }
                        | SourceChange::Invalid { source, .. } => source,
                    };
                    self.precedence.insert(source.clone(), index);
                }
                Self::registry_state(&mut st, index);
                return Some(c);
            }
            RegistryEvent::Synced => Self::registry_state(&mut st, index).synced = true,
            RegistryEvent::Health { connected, error } => {
                let r = Self::registry_state(&mut st, index);
                let was = r.connected;
                r.connected = connected;
                if let Some(e) = &error {
                    r.last_error = Some(e.clone());
                }
                if connected {
                    r.disconnected_since = None;
                    r.stale_seconds = 0.0;
                    if !was {
                        tracing::info!(registry = %r.name, "registry store reachable again; resyncing");
                    }
                } else if r.disconnected_since.is_none() {
                    r.disconnected_since = Some(std::time::Instant::now());
                    tracing::warn!(registry = %r.name, error = ?error, "registry store unreachable; its last known state keeps serving");
                }
                let label = Self::label(&st, index);
                self.metrics
                    .registry_connected
                    .get_or_create(&label)
                    .set(connected as i64);
            }
            RegistryEvent::Skipped(map) => {
                let r = Self::registry_state(&mut st, index);
                for (k, why) in &map {
                    if r.skipped.get(k) != Some(why) {
                        tracing::warn!(registry = %r.name, entry = %k, reason = %why, "registry entry skipped");
                    }
                }
                r.skipped = map;
                let n = r.skipped.len() as i64;
                let label = Self::label(&st, index);
                self.metrics.registry_skipped_entries.get_or_create(&label).set(n);
            }
            RegistryEvent::Members(names) => {
                // A MultiRegistry nested in the one ControlPlane::start wraps every registry in
                // renames the members: forget the outer names.
                self.metrics.registry_connected.clear();
                self.metrics.registry_stale_seconds.clear();
                self.metrics.registry_skipped_entries.clear();
                st.registries = names
                    .into_iter()
                    .enumerate()
                    .map(|(precedence, name)| RegistryState {
                        name,
                        precedence,
                        connected: true,
                        ..Default::default()
                    })
                    .collect();
                for i in 0..st.registries.len() {
                    let label = Self::label(&st, i);
                    self.metrics.registry_connected.get_or_create(&label).set(1);
                    self.metrics.registry_stale_seconds.get_or_create(&label).set(0);
                }
            }
            RegistryEvent::Member { index, event } => {
                drop(st);
                return self.member_event(index, *event);
            }
        }
        None
    }

    /// Once a second: staleness of disconnected registries.
    fn tick(&mut self) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..st.registries.len() {
            let stale = st.registries[i]
                .disconnected_since
                .map_or(0.0, |t| t.elapsed().as_secs_f64());
            // Tenths, truncated like the gauge's whole seconds: rounded, 0.96 s showed as 1.0 in
            // `/debug/registry` while the gauge still read 0.
            st.registries[i].stale_seconds = (stale * 10.0).floor() / 10.0;
            let label = Self::label(&st, i);
            self.metrics
                .registry_stale_seconds
                .get_or_create(&label)
                .set(stale as i64);
        }
    }

    fn record_conflicts(&self, conflicts: Vec<merge::Conflict>) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for c in &conflicts {
            if !st.conflicts.contains(c) && c.kept_precedence == c.dropped_precedence {
                // Only inside the Kubernetes registry ([`merge::tier`]).
                tracing::warn!(
                    kind = c.kind,
                    name = %c.name,
                    served_from = %c.kept,
                    dropped_from = %c.dropped,
                    "registry conflict: a weft custom resource and an Istio resource define the same name differently; the weft resource wins"
                );
            } else if !st.conflicts.contains(c) {
                tracing::warn!(
                    kind = c.kind,
                    name = %c.name,
                    served_from = %c.kept,
                    dropped_from = %c.dropped,
                    "registry conflict: the same name is defined differently by two registries; the one given first wins"
                );
            }
        }
        self.metrics.registry_conflicts.set(conflicts.len() as i64);
        for (i, r) in st.registries.iter_mut().enumerate() {
            r.sources = self
                .fragments
                .keys()
                .filter(|k| self.precedence.get(*k).copied().unwrap_or(0) == i)
                .count();
        }
        st.conflicts = conflicts;
    }

    /// Applies a batch: every changed source whose new content breaks the merged world is rejected
    /// (reverted to its previous content) and reported; the rest is accepted. Iterates because
    /// rejecting one source can break a reference from another changed source.
    fn apply(&mut self, changes: Vec<SourceChange>) -> bool {
        let mut candidate = self.fragments.clone();
        let mut changed: Vec<String> = Vec::new();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            match c {
                SourceChange::Upsert { source, fragment } => {
                    candidate.insert(source.clone(), Arc::new(fragment));
                    changed.push(source);
                }
                SourceChange::Remove { source } => {
                    candidate.remove(&source);
                    status.errors.remove(&source);
                }
                SourceChange::Invalid { source, errors } => {
                    for e in &errors {
                        tracing::warn!(source = %source, error = %e, "registry source rejected");
                    }
                    self.metrics.registry_errors.inc();
                    status.last_error = errors.first().cloned();
                    status.errors.insert(source, errors);
                }
            }
        }
        for _ in 0..=changed.len() {
            let (eff, _) = self.effective(&candidate);
            let (_, errs) = World::build(eff.iter().map(|(k, v)| (k.as_str(), &**v)));
            let bad: Vec<&String> = changed.iter().filter(|s| errs.contains_key(*s)).collect();
            if bad.is_empty() {
                break;
            }
            for s in bad {
                let e = errs[s].clone();
                for m in &e {
                    tracing::warn!(source = %s, error = %m, "registry source rejected");
                }
                self.metrics.registry_errors.inc();
                status.last_error = e.first().cloned();
                status.errors.insert(s.clone(), e);
                match self.fragments.get(s) {
                    Some(old) => candidate.insert(s.clone(), old.clone()),
                    None => candidate.remove(s),
                };
            }
            changed.retain(|s| !status.errors.contains_key(s));
        }
        for s in &changed {
            status.errors.remove(s);
        }
        // Compared per source, skipping unchanged Arcs: a deep compare of the world per change would
        // cost as much as the change itself at 100k endpoints.
        let differs = candidate.len() != self.fragments.len()
            || candidate.iter().any(|(k, v)| match self.fragments.get(k) {
                Some(old) => !Arc::ptr_eq(old, v) && **old != **v,
                None => true,
            });
        self.fragments = candidate;
        self.metrics.registry_invalid_sources.set(status.errors.len() as i64);
        differs
    }

    fn publish(&mut self) {
        let prev = self.out.borrow().clone();
        let generation = prev.as_ref().map_or(1, |p| p.generation + 1);
        let (eff, conflicts) = self.effective(&self.fragments);
        let (mut world, errs) = World::build(eff.iter().map(|(k, v)| (k.as_str(), &**v)));
        drop(eff);
        self.drains.apply(&mut world, generation);
        world.mesh_tls = self.mesh_tls.clone();
        self.record_conflicts(conflicts);
        for (s, e) in errs {
            // Only possible after a deletion broke another source's references: translation drops
            // the dangling references, and the error stays visible.
            tracing::warn!(source = %s, errors = ?e, "registry inconsistency after removal");
        }
        let started = std::time::Instant::now();
        let snap = build_snapshot(generation, Arc::new(world), prev.as_deref());
        let endpoints = snap.world.services.values().map(|s| s.endpoints.len()).sum();
        {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.synced = true;
            st.generation = generation;
            st.sources = self.fragments.keys().cloned().collect();
            st.services = snap.world.services.len();
            st.endpoints = endpoints;
        }
        self.metrics.snapshot_generation.set(generation as i64);
        self.metrics.services.set(snap.world.services.len() as i64);
        self.metrics.endpoints.set(endpoints as i64);
        // The first snapshot at INFO; later ones (one per registry change, many under churn) at
        // debug, counted in the periodic summary.
        self.metrics
            .activity
            .snapshots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if generation == 1 {
            tracing::info!(
                generation,
                services = snap.world.services.len(),
                endpoints,
                resources = snap.total(),
                took_ms = started.elapsed().as_millis() as u64,
                "first snapshot published"
            );
        } else {
            tracing::debug!(
                generation,
                services = snap.world.services.len(),
                endpoints,
                resources = snap.total(),
                took_ms = started.elapsed().as_millis() as u64,
                "snapshot published"
            );
        }
        self.out.send_replace(Some(Arc::new(snap)));
    }

    /// Runs until the registry's event channel closes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RegistryEvent>) {
        let mut synced = false;
        // Debounce: the first change arms a deadline, later ones ride along, so a burst (a deploy
        // touching many files) becomes one push, and a steady trickle still publishes on time.
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drains = self.drains.subscribe();
        loop {
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let d = deadline.filter(|_| synced).unwrap_or(far);
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = tokio::time::sleep_until(d), if deadline.is_some() && synced => {
                    self.publish();
                    deadline = None;
                    continue;
                }
                _ = tick.tick() => {
                    self.tick();
                    continue;
                }
                Ok(()) = drains.changed() => {
                    // A drain added or removed: published at once (it is waited for).
                    if synced {
                        self.publish();
                        deadline = None;
                    }
                    continue;
                }
            };
            let ev = match ev {
                Some(RegistryEvent::Synced) | None => ev,
                Some(other) => match self.member_event(0, other) {
                    Some(c) => Some(RegistryEvent::Changes(c)),
                    None => continue,
                },
            };
            match ev {
                None => return,
                Some(RegistryEvent::Changes(c)) => {
                    if self.apply(c) && deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + self.debounce);
                    }
                }
                Some(RegistryEvent::Synced) => {
                    if !synced {
                        synced = true;
                        self.publish();
                        deadline = None;
                    }
                }
                Some(_) => {}
            }
        }
    }
}
