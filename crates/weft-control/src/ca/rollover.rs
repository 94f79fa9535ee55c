//! Root rollover: replacing the CA's root while both roots are trusted side by side, in three
//! steps taken by `weft control ca rollover prepare|activate|retire --ca-dir DIR`:
//!
//! 1. **prepare**: a next CA (a generated root, or the operator's `--ca-cert`/`--ca-key`) joins
//!    the trust bundle every answer carries; the current CA still signs.
//! 2. **activate**: the next CA signs new SVIDs (and weft control's own TLS certificate); both
//!    roots stay trusted, and SVIDs of the previous one still renew.
//! 3. **retire**: the previous root leaves the bundle.
//!
//! The command writes the CA directory (`rollover.json`, the next CA's files); the running weft
//! control polls `rollover.json` every second and applies a change without a restart; a restart
//! resumes the phase. A step is refused while it is unsafe (see [`step`]) unless forced.

use super::{err, read, write_new, CaError, Named, Signer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The phase, the CA files and the times of a rollover, in the CA directory.
pub const STATE_FILE: &str = "rollover.json";
/// The current trust bundle (every trusted root, PEM), written by weft control when it loads the
/// CA and when it applies a step: the file to distribute as `--ca-root-file`.
pub const BUNDLE_FILE: &str = "trust-bundle.pem";
/// weft control's `--svid-max-ttl` in seconds, written at start: the command's timing rule. A
/// second line `lowered-from <s> until <unix>` keeps a larger previous value in force until every
/// certificate issued under it has expired.
pub const MAX_TTL_FILE: &str = "svid-max-ttl";
/// What weft control last applied of `rollover.json` (phase, since, when), written by weft
/// control: a step is allowed only after weft control applied the one before it.
pub const APPLIED_FILE: &str = "rollover-applied.json";
/// Taken (`flock`) by the command for a whole step, so two steps never interleave.
const LOCK_FILE: &str = "rollover.lock";
/// How often weft control looks at `rollover.json`.
pub const POLL: Duration = Duration::from_secs(1);
/// Added to the longest SVID lifetime in the timing rule: the poll interval, and clock skew.
pub const SLACK: Duration = Duration::from_secs(5);
/// `--svid-max-ttl`'s default, when weft control never wrote [`MAX_TTL_FILE`].
const DEFAULT_MAX_TTL_S: u64 = 7 * 24 * 3600;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// One root (no rollover in progress).
    #[default]
    Idle,
    /// Both roots trusted, the current CA signs.
    Prepared,
    /// Both roots trusted, the next CA signs.
    Active,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Prepared => "prepared",
            Phase::Active => "active",
        }
    }

    /// For the `weft_control_ca_rollover_phase` gauge: 0 idle, 1 prepared, 2 active.
    pub fn number(self) -> i64 {
        self as i64
    }
}

/// A CA's files, by name in the CA directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    pub cert: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

impl CaFiles {
    pub fn paths(&self, dir: &Path) -> (PathBuf, PathBuf, Option<PathBuf>) {
        (
            dir.join(&self.cert),
            dir.join(&self.key),
            self.chain.as_ref().map(|c| dir.join(c)),
        )
    }

    fn names(&self) -> impl Iterator<Item = &String> {
        [&self.cert, &self.key].into_iter().chain(self.chain.as_ref())
    }
}

/// `rollover.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub phase: Phase,
    /// When the phase began, Unix seconds.
    #[serde(default)]
    pub since: u64,
    /// The longest SVID lifetime (seconds) when the phase began.
    #[serde(default)]
    pub max_ttl_s: u64,
    /// The number of the last CA made by `prepare` (names its files: `ca-<n>-cert.pem`).
    #[serde(default)]
    pub generation: u32,
    /// The CA that signs outside a rollover, once a rollover completed (None: `--ca-cert`, or
    /// `root-cert.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CaFiles>,
    /// The next CA, while prepared or active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<CaFiles>,
}

impl State {
    /// Parses `rollover.json`'s text ("" when absent: idle). Errors name the file and field.
    pub fn parse(dir: &Path, text: &str) -> Result<State, CaError> {
        let path = dir.join(STATE_FILE);
        if text.trim().is_empty() {
            return Ok(State::default());
        }
        let s: State = serde_json::from_str(text).map_err(|e| err(&path, e))?;
        for (field, f) in [("current", &s.current), ("next", &s.next)] {
            for name in f.iter().flat_map(|f| f.names()) {
                if name.is_empty() || name.contains('/') || name.starts_with('.') {
                    return Err(err(
                        &path,
                        format!("{field}: {name:?} is not a file name in the CA directory"),
                    ));
                }
            }
        }
        if s.phase != Phase::Idle && s.next.is_none() {
            return Err(err(
                &path,
                format!("phase {}: the \"next\" CA is missing", s.phase.name()),
            ));
        }
        Ok(s)
    }

    fn save(&self, dir: &Path) -> Result<(), CaError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| CaError(e.to_string()))?;
        write_atomic(&dir.join(STATE_FILE), format!("{text}\n").as_bytes(), 0o644)
    }
}

/// `rollover.json`'s text, "" when there is none.
pub fn read_state_text(dir: &Path) -> Result<String, CaError> {
    let p = dir.join(STATE_FILE);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(err(&p, e)),
    }
}

/// [`crate::files::write_atomic`], its error naming the file.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    crate::files::write_atomic(path, contents, mode).map_err(|e| err(path, e))
}

/// Records weft control's `--svid-max-ttl` for the command's timing rule (a WARN if it cannot).
pub fn record_max_ttl(dir: &Path, max_ttl: Duration) {
    let p = dir.join(MAX_TTL_FILE);
    let now = weft_identity::unix_now();
    let new = max_ttl.as_secs();
    // Lowered since the last start: certificates issued under the larger value stay valid for up
    // to that long, so the timing rule keeps using it until then.
    let old = std::fs::read_to_string(&p)
        .ok()
        .map(|t| MaxTtl::parse(&t))
        .unwrap_or_default();
    let kept = [
        (old.current, now.saturating_add(old.current)),
        old.lowered.unwrap_or_default(),
    ]
    .into_iter()
    .filter(|&(ttl, until)| ttl > new && until > now)
    .max_by_key(|&(ttl, _)| ttl);
    let text = match kept {
        Some((ttl, until)) => format!("{new}\nlowered-from {ttl} until {until}\n"),
        None => format!("{new}\n"),
    };
    if std::fs::read_to_string(&p).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    if let Err(e) = write_atomic(&p, text.as_bytes(), 0o644) {
        tracing::warn!(error = %e, "cannot record --svid-max-ttl for `weft control ca rollover`");
    }
}

/// Writes the trust bundle file when it changed (a WARN if it cannot).
pub fn write_bundle(dir: &Path, bundle_pem: &str) {
    let p = dir.join(BUNDLE_FILE);
    if std::fs::read_to_string(&p).ok().as_deref() == Some(bundle_pem) {
        return;
    }
    if let Err(e) = write_atomic(&p, bundle_pem.as_bytes(), 0o644) {
        tracing::warn!(error = %e, "cannot write the trust bundle file");
    }
}

/// A `ca-<n>-cert.pem` made by `prepare` in `dir`, if any.
pub(crate) fn made_ca_file(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        (n.starts_with("ca-") && n.ends_with("-cert.pem")).then_some(n)
    })
}

/// [`MAX_TTL_FILE`]'s contents.
#[derive(Default)]
struct MaxTtl {
    current: u64,
    /// A larger value in force before, and until when certificates issued under it may live.
    lowered: Option<(u64, u64)>,
}

impl MaxTtl {
    fn parse(text: &str) -> MaxTtl {
        let mut lines = text.lines();
        let current = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_TTL_S);
        let lowered = lines.next().and_then(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("lowered-from"), Some(ttl), Some("until"), Some(until)) => {
                    Some((ttl.parse().ok()?, until.parse().ok()?))
                }
                _ => None,
            }
        });
        MaxTtl { current, lowered }
    }
}

/// The longest lifetime an unexpired certificate may have been issued with, at `now`: weft
/// control's `--svid-max-ttl`, or a larger one it had before while certificates issued under it
/// may still be valid. Values beyond ten years are taken as ten years (a corrupt file must not
/// make the rule wrap around).
fn read_max_ttl(dir: &Path, now: u64) -> u64 {
    const CAP: u64 = 10 * 365 * 24 * 3600;
    let m = std::fs::read_to_string(dir.join(MAX_TTL_FILE))
        .map(|t| MaxTtl::parse(&t))
        .unwrap_or(MaxTtl {
            current: DEFAULT_MAX_TTL_S,
            lowered: None,
        });
    let lowered = m.lowered.filter(|&(_, until)| until > now).map_or(0, |(ttl, _)| ttl);
    m.current.max(lowered).min(CAP)
}

/// [`APPLIED_FILE`]: what weft control applied, and when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub phase: Phase,
    pub since: u64,
    pub applied_at: u64,
}

/// Records that weft control applied `state` (a WARN if it cannot: the command then refuses the
/// next step until forced).
pub fn record_applied(dir: &Path, state: &State) {
    let p = dir.join(APPLIED_FILE);
    if read_applied(dir).is_some_and(|a| a.phase == state.phase && a.since == state.since) {
        return;
    }
    let a = Applied {
        phase: state.phase,
        since: state.since,
        applied_at: weft_identity::unix_now(),
    };
    let text = serde_json::to_string(&a).unwrap_or_default();
    if let Err(e) = write_atomic(&p, format!("{text}\n").as_bytes(), 0o644) {
        tracing::warn!(error = %e, "cannot record the applied rollover phase for `weft control ca rollover`");
    }
}

fn read_applied(dir: &Path) -> Option<Applied> {
    let t = std::fs::read_to_string(dir.join(APPLIED_FILE)).ok()?;
    serde_json::from_str(&t).ok()
}

/// When weft control applied the current phase (Unix seconds), or an error saying it has not.
fn applied_at(dir: &Path, state: &State) -> Result<u64, String> {
    match read_applied(dir) {
        Some(a) if a.phase == state.phase && a.since == state.since => Ok(a.applied_at),
        _ => Err(format!(
            "weft control has not applied `{}` yet (is it running with --ca-dir {}, a version that follows {STATE_FILE}, and able to read the next CA's files? Its log says why not)",
            match state.phase {
                Phase::Prepared => "prepare",
                _ => "activate",
            },
            dir.display()
        )),
    }
}

/// When the step after the current phase becomes safe, counting from when weft control applied
/// the phase if that was later than the command's time plus [`SLACK`] (it could not apply it at
/// once: an unreadable key, weft control down).
fn allowed_at(dir: &Path, state: &State, max_ttl: u64) -> Result<u64, String> {
    let applied = applied_at(dir, state)?;
    let from = if applied > state.since.saturating_add(SLACK.as_secs()) {
        applied
    } else {
        state.since
    };
    let shifted = State {
        since: from,
        ..state.clone()
    };
    Ok(next_step_at(&shifted, max_ttl).unwrap_or(from))
}

/// A rollover step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// Add a next CA to the trust bundle (the current one still signs).
    Prepare,
    /// Sign with the next CA; both roots stay trusted.
    Activate,
    /// Drop the previous root from the bundle.
    Retire,
    /// Print the phase and when the next step is allowed.
    Status,
}

/// The operator's CA for `prepare` (instead of a generated root).
pub struct NextCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: Option<PathBuf>,
}

fn utc(unix: u64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| t.format(&::time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// When the step after the current phase becomes safe (Unix seconds): every SVID issued before
/// the phase began has expired by then. None when idle.
pub fn next_step_at(state: &State, max_ttl_now: u64) -> Option<u64> {
    (state.phase != Phase::Idle).then(|| {
        state
            .since
            .saturating_add(state.max_ttl_s.max(max_ttl_now))
            .saturating_add(SLACK.as_secs())
    })
}

/// Takes `step` on the CA directory `dir` at time `now` (Unix seconds). Returns what to tell the
/// operator; an unsafe step is an error that says why and until when (unless `force`).
pub fn step(dir: &Path, step: Step, next: Option<&NextCa>, force: bool, now: u64) -> Result<String, CaError> {
    let td_path = dir.join("trust-domain");
    if !td_path.exists() {
        return Err(err(
            dir,
            "not a CA directory (no trust-domain in it): give weft control's --ca-dir",
        ));
    }
    let trust_domain = read(&td_path)?.trim().to_string();
    // One step at a time: held until this function returns.
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| err(&lock_path, e))?;
    lock.lock().map_err(|e| err(&lock_path, e))?;
    let mut state = State::parse(dir, &read_state_text(dir)?)?;
    let max_ttl = read_max_ttl(dir, now);
    if next.is_some() && step != Step::Prepare {
        return Err(CaError("--ca-cert/--ca-key only go with `prepare`".into()));
    }
    let wait_msg = |at: u64| format!("wait {}s (until {}), or say --force", at.saturating_sub(now), utc(at));
    match step {
        Step::Status => {
            let mut s = format!("phase: {}", state.phase.name());
            if state.phase != Phase::Idle {
                s.push_str(&format!(" since {}", utc(state.since)));
            }
            if let Some(n) = &state.next {
                s.push_str(&format!("\nnext CA: {}", n.cert));
            }
            if let Some(c) = &state.current {
                s.push_str(&format!("\ncurrent CA: {}", c.cert));
            }
            if state.phase != Phase::Idle {
                match applied_at(dir, &state) {
                    Ok(t) => s.push_str(&format!("\napplied by weft control at {}", utc(t))),
                    Err(e) => s.push_str(&format!("\nnot applied: {e}")),
                }
            }
            if let Some(at) = next_step_at(&state, max_ttl) {
                let at = allowed_at(dir, &state, max_ttl).unwrap_or(at);
                let what = if state.phase == Phase::Prepared {
                    "activate"
                } else {
                    "retire"
                };
                s.push_str(&format!(
                    "\n{what} allowed from {} ({})",
                    utc(at),
                    if now >= at {
                        "now".to_string()
                    } else {
                        format!("in {}s", at - now)
                    }
                ));
            }
            Ok(s)
        }
        Step::Prepare => {
            if state.phase != Phase::Idle {
                return Err(CaError(format!(
                    "prepare refused: a rollover is already {} (since {}); finish it first ({})",
                    state.phase.name(),
                    utc(state.since),
                    if state.phase == Phase::Prepared {
                        "activate, then retire"
                    } else {
                        "retire"
                    }
                )));
            }
            let mut generation = state.generation.max(1) + 1;
            while dir.join(format!("ca-{generation}-cert.pem")).exists()
                || dir.join(format!("ca-{generation}-key.pem")).exists()
            {
                generation += 1;
            }
            let name = |what: &str| format!("ca-{generation}-{what}.pem");
            let files = match next {
                Some(n) => {
                    // Checked first (names the file at fault), then copied in: the CA directory holds
                    // every CA it uses.
                    let (c, k) = (Named::file(&n.cert)?, Named::file(&n.key)?);
                    let ch = n.chain.as_deref().map(Named::file).transpose()?;
                    let signer = Signer::from_named(&c, &k, ch.as_ref())?;
                    refuse_known_root(dir, &signer.root_der, &n.cert)?;
                    write_new(&dir.join(name("key")), k.text.as_bytes(), 0o600)?;
                    write_new(&dir.join(name("cert")), c.text.as_bytes(), 0o644)?;
                    if let Some(ch) = &ch {
                        write_new(&dir.join(name("chain")), ch.text.as_bytes(), 0o644)?;
                    }
                    CaFiles {
                        cert: name("cert"),
                        key: name("key"),
                        chain: ch.map(|_| name("chain")),
                    }
                }
                None => {
                    let (cert, key) =
                        super::generate_root_named(&trust_domain, &format!("weft mesh root CA {generation}"))?;
                    write_new(&dir.join(name("key")), key.as_bytes(), 0o600)?;
                    write_new(&dir.join(name("cert")), cert.as_bytes(), 0o644)?;
                    CaFiles {
                        cert: name("cert"),
                        key: name("key"),
                        chain: None,
                    }
                }
            };
            state = State {
                phase: Phase::Prepared,
                since: now,
                max_ttl_s: max_ttl,
                generation,
                current: state.current,
                next: Some(files.clone()),
            };
            state.save(dir)?;
            let at = next_step_at(&state, max_ttl).unwrap_or(now);
            Ok(format!(
                "prepared: the next CA ({}) is trusted next to the current one, which still signs; weft control applies it within {}s (and writes {BUNDLE_FILE}, the bundle to hand out as --ca-root-file). Workloads get the new bundle at their next renewal. `activate` is allowed from {} (--svid-max-ttl {max_ttl}s after now: every certificate issued before this step has expired by then).",
                files.cert,
                POLL.as_secs(),
                utc(at)
            ))
        }
        Step::Activate => {
            match state.phase {
                Phase::Prepared => {}
                Phase::Idle => {
                    return Err(CaError(
                        "activate refused: no rollover is prepared; run `prepare` first".into(),
                    ))
                }
                Phase::Active => {
                    return Err(CaError(format!(
                        "activate refused: already active since {}; the next step is `retire`",
                        utc(state.since)
                    )))
                }
            }
            let at = match allowed_at(dir, &state, max_ttl) {
                Ok(at) => at,
                Err(e) if !force => return Err(CaError(format!("activate refused: {e}; or say --force"))),
                Err(_) => now,
            };
            if now < at && !force {
                return Err(CaError(format!(
                    "activate refused: certificates issued before `prepare` ({}) may be valid until {} (--svid-max-ttl {}s), and their holders may trust only the current root, so they would refuse peers with certificates from the next one; {}",
                    utc(state.since),
                    utc(at.saturating_sub(SLACK.as_secs())),
                    max_ttl.max(state.max_ttl_s),
                    wait_msg(at)
                )));
            }
            state.phase = Phase::Active;
            state.since = now;
            state.max_ttl_s = max_ttl;
            state.save(dir)?;
            let at = next_step_at(&state, max_ttl).unwrap_or(now);
            Ok(format!(
                "activated{}: new certificates (and weft control's TLS certificate) are signed by the next CA; both roots stay trusted and certificates of the previous one still renew. `retire` is allowed from {}.",
                if force { " (forced)" } else { "" },
                utc(at)
            ))
        }
        Step::Retire => {
            match state.phase {
                Phase::Active => {}
                Phase::Idle => return Err(CaError("retire refused: no rollover is in progress".into())),
                Phase::Prepared => return Err(CaError(
                    "retire refused: the rollover is only prepared (the previous root still signs); `activate` first"
                        .into(),
                )),
            }
            let at = match allowed_at(dir, &state, max_ttl) {
                Ok(at) => at,
                Err(e) if !force => return Err(CaError(format!("retire refused: {e}; or say --force"))),
                Err(_) => now,
            };
            if now < at && !force {
                return Err(CaError(format!(
                    "retire refused: certificates signed by the previous root before `activate` ({}) may be unexpired until {}; peers would refuse them once the root leaves the bundle; {}",
                    utc(state.since),
                    utc(at.saturating_sub(SLACK.as_secs())),
                    wait_msg(at)
                )));
            }
            let previous = state.current.clone();
            state = State {
                phase: Phase::Idle,
                since: now,
                max_ttl_s: max_ttl,
                generation: state.generation,
                current: state.next.take(),
                next: None,
            };
            state.save(dir)?;
            // The previous CA's files in the directory are kept, renamed, for the record (delete
            // them once you no longer need them). With --ca-cert, its files are not touched.
            let old = previous.unwrap_or(CaFiles {
                cert: "root-cert.pem".into(),
                key: "root-key.pem".into(),
                chain: None,
            });
            let mut kept = Vec::new();
            for n in old.names() {
                let from = dir.join(n);
                if from.exists() {
                    let to = dir.join(format!("retired-{now}-{n}"));
                    std::fs::rename(&from, &to).map_err(|e| err(&from, e))?;
                    kept.push(to.file_name().unwrap_or_default().to_string_lossy().into_owned());
                }
            }
            Ok(format!(
                "retired{}: the previous root left the trust bundle; the CA in {} signs.{}",
                if force { " (forced)" } else { "" },
                state.current.as_ref().map_or("?", |c| c.cert.as_str()),
                if kept.is_empty() {
                    String::new()
                } else {
                    format!(" The previous CA's files are kept as {}.", kept.join(", "))
                }
            ))
        }
    }
}

/// Refuses a next CA whose root is already in the bundle (a rollover to the same root).
fn refuse_known_root(dir: &Path, root_der: &[u8], cert: &Path) -> Result<(), CaError> {
    let Ok(bundle) = std::fs::read_to_string(dir.join(BUNDLE_FILE)) else {
        return Ok(());
    };
    let ders = weft_identity::client::parse_pem_certs(&[bundle]).unwrap_or_default();
    if ders.iter().any(|d| d == root_der) {
        return Err(err(
            cert,
            "its root is the one in use already; a rollover needs a new root",
        ));
    }
    Ok(())
}

/// Applies rollover steps to the running CA: polls `rollover.json`, and on a change reloads the
/// CA, writes the bundle file and refreshes the metrics. Until `shutdown`.
pub async fn watch(
    ca: Arc<super::Ca>,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(dir) = ca.dir().map(Path::to_path_buf) else {
        return;
    };
    {
        let (c, d) = (ca.clone(), dir.clone());
        let _ = tokio::task::spawn_blocking(move || write_bundle(&d, &c.root_pem())).await;
    }
    metrics.ca.set_roots(&ca);
    // A change that cannot be applied is tried again at every poll, logged once per distinct error.
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let (c, d) = (ca.clone(), dir.clone());
        let r = tokio::task::spawn_blocking(move || {
            let r = c.reload();
            if let Ok(true) = r {
                write_bundle(&d, &c.root_pem());
            }
            r
        })
        .await;
        match r {
            Ok(Ok(true)) => {
                last_error.clear();
                let (phase, since) = ca.phase();
                tracing::info!(phase = phase.name(), since, "CA: root rollover step applied");
                metrics.ca.set_roots(&ca);
            }
            Ok(Ok(false)) => last_error.clear(),
            Ok(Err(e)) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::error!(error = %e, "CA: cannot apply the change of rollover.json (tried again every second); the current CA state stays in use");
                    last_error = e;
                }
            }
            Err(e) => tracing::error!(error = %e, "CA: reload task failed"),
        }
    }
}

/// `/debug/ca`: the phase, since when, the roots, and when the next step is allowed.
pub fn status_json(ca: &super::Ca) -> serde_json::Value {
    let (phase, since) = ca.phase();
    let state = ca
        .dir()
        .and_then(|d| read_state_text(d).ok().map(|t| (d.to_path_buf(), t)))
        .and_then(|(d, t)| State::parse(&d, &t).ok());
    let next_step_at = state
        .as_ref()
        .filter(|s| s.phase == phase)
        .and_then(|s| next_step_at(s, ca.svid_max_ttl.as_secs()));
    serde_json::json!({
        "trust_domain": ca.trust_domain(),
        "phase": phase.name(),
        "phase_since": since,
        "next_step": match phase { Phase::Idle => None, Phase::Prepared => Some("activate"), Phase::Active => Some("retire") },
        "next_step_allowed_at": next_step_at,
        "rollover_supported": ca.dir().is_some(),
        "roots": ca.roots(),
    })
}
