//! Service registries, and the catalog that turns their changes into validated snapshots.
//!
//! A [`Registry`] reports changes per *source* (a file here; a Kubernetes object or an etcd key
//! later) as parsed [`Fragment`]s, plus one [`RegistryEvent::Synced`] once it has delivered its
//! initial state. The [`Catalog`] merges the sources, rejects any change that would make the world
//! invalid (keeping that source's last good content), debounces bursts, and publishes snapshots.

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

/// Registry state visible on `/debug/registry`.
#[derive(Default, Clone, serde::Serialize)]
pub struct RegistryStatus {
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
}

impl Catalog {
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
            let (_, errs) = World::build(candidate.iter().map(|(k, v)| (k.as_str(), &**v)));
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
        let (world, errs) = World::build(self.fragments.iter().map(|(k, v)| (k.as_str(), &**v)));
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
        loop {
            let ev = match deadline {
                Some(d) if synced => tokio::select! {
                    ev = rx.recv() => ev,
                    _ = tokio::time::sleep_until(d) => {
                        self.publish();
                        deadline = None;
                        continue;
                    }
                },
                _ => rx.recv().await,
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
            }
        }
    }
}
