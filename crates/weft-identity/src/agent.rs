//! Keeps a workload's SVID fresh: first certificate with the bootstrap token, renewal with the
//! current SVID at half-life, retries with exponential backoff while the CA is unreachable (the
//! current certificate stays in use until it expires, and every failure is logged at ERROR and
//! counted), and publication of each new SVID through an [`ArcSwapOption`] (cheap reads on every
//! new TLS handshake) and a watch channel (for pushing it, e.g. over SDS).

use crate::client::{Auth, FetchError, Svid};
use crate::csr::KeyType;
use crate::spiffe::SpiffeId;
use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The CA: `host:port` or `http://host:port` (weft control's xDS address).
    pub ca_address: String,
    /// The bootstrap token file (`weft control token`). Read again whenever a token is needed, so
    /// it can be replaced while the agent runs.
    pub token_file: PathBuf,
    /// Requested certificate lifetime; None leaves it to the CA (`--svid-ttl`).
    pub ttl: Option<Duration>,
    /// Talk TLS to the CA (weft control's `--ca-tls` port), trusting these roots (PEM).
    pub ca_roots_pem: Option<String>,
    /// The key generated for each certificate (a new one at every renewal): ECDSA P-256 or SM2.
    pub key_type: KeyType,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl AgentConfig {
    pub fn new(ca_address: impl Into<String>, token_file: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            ca_address: ca_address.into(),
            token_file: token_file.into(),
            ttl: None,
            ca_roots_pem: None,
            key_type: KeyType::Ecdsa,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Metrics of the identity client (register them with [`IdentityMetrics::register`]).
#[derive(Default)]
pub struct IdentityMetrics {
    /// Certificates obtained (the first one included).
    pub issued: Counter,
    /// Failed attempts to obtain or renew.
    pub failures: Counter,
    /// Failed attempts since the last success (non-zero means: alarm).
    pub consecutive_failures: Gauge,
    /// Expiry of the current certificate, Unix seconds (0 before the first one).
    pub expiry: Gauge,
}

impl IdentityMetrics {
    /// Adds them under `weft_identity_*`.
    pub fn register(&self, reg: &mut prometheus_client::registry::Registry) {
        let r = reg.sub_registry_with_prefix("weft_identity");
        r.register(
            "certificates_issued",
            "Workload certificates obtained from the CA",
            self.issued.clone(),
        );
        r.register(
            "renew_failures",
            "Failed attempts to obtain or renew the workload certificate",
            self.failures.clone(),
        );
        r.register(
            "consecutive_failures",
            "Failed attempts since the last certificate was obtained (alarm when > 0)",
            self.consecutive_failures.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry of the current workload certificate (Unix time)",
            self.expiry.clone(),
        );
    }
}

/// Why the agent cannot start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// The running identity client. Dropping it stops the renewal task.
pub struct IdentityAgent {
    id: SpiffeId,
    current: Arc<ArcSwapOption<Svid>>,
    rx: watch::Receiver<Option<Arc<Svid>>>,
    pub metrics: Arc<IdentityMetrics>,
    task: JoinHandle<()>,
}

impl Drop for IdentityAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IdentityAgent {
    /// Reads the token file (for the identity it is bound to) and starts obtaining a certificate
    /// in the background on the current tokio runtime.
    pub fn start(cfg: AgentConfig) -> Result<IdentityAgent, StartError> {
        let token = std::fs::read_to_string(&cfg.token_file)
            .map_err(|e| StartError(format!("token file {}: {e}", cfg.token_file.display())))?;
        let id = crate::token::peek(&token)
            .map_err(|e| StartError(format!("token file {}: {e}", cfg.token_file.display())))?
            .id;
        let current = Arc::new(ArcSwapOption::empty());
        let (tx, rx) = watch::channel(None);
        let metrics = Arc::new(IdentityMetrics::default());
        let task = tokio::spawn(run(cfg, id.clone(), current.clone(), tx, metrics.clone()));
        Ok(IdentityAgent {
            id,
            current,
            rx,
            metrics,
            task,
        })
    }

    /// The identity this agent obtains certificates for.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The current SVID (None until the first one arrives). Lock-free: call it per handshake.
    pub fn current(&self) -> Option<Arc<Svid>> {
        self.current.load_full()
    }

    /// A receiver that sees every new SVID.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Svid>>> {
        self.rx.clone()
    }

    /// Waits for the first SVID, up to `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Option<Arc<Svid>> {
        let mut rx = self.rx.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(|v| v.is_some())).await;
        if let Ok(Ok(v)) = r {
            return v.clone();
        }
        None
    }
}

fn backoff(cfg: &AgentConfig, failures: u32) -> Duration {
    let exp = cfg
        .min_backoff
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let d = exp.min(cfg.max_backoff);
    // Up to 20% jitter, so that proxies cut off together do not retry in lockstep.
    d + d.mul_f64(fastrand_f64() * 0.2)
}

fn fastrand_f64() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b) as f64 / u32::MAX as f64
}

async fn run(
    cfg: AgentConfig,
    id: SpiffeId,
    current: Arc<ArcSwapOption<Svid>>,
    tx: watch::Sender<Option<Arc<Svid>>>,
    metrics: Arc<IdentityMetrics>,
) {
    let mut failures = 0u32;
    let mut force_token = false;
    loop {
        let cur = current.load_full();
        let now = crate::unix_now();
        let renewing = cur.as_ref().filter(|s| s.not_after > now + 1 && !force_token);
        // Over TLS, the CA is verified against the configured roots and, once a certificate was
        // obtained, the trust bundle that came with it: during a root rollover weft control's
        // certificate moves to the next root, which a --ca-root-file from before may not hold.
        let roots = cfg.ca_roots_pem.as_ref().map(|r| match &cur {
            Some(s) => format!("{}\n{}", r.trim_end(), s.roots_pem),
            None => r.clone(),
        });
        let call = |auth| async {
            crate::client::fetch_key(&cfg.ca_address, roots.as_deref(), &id, auth, cfg.ttl, cfg.key_type).await
        };
        let res = match renewing {
            Some(s) => call(Auth::Svid(s)).await,
            None => match std::fs::read_to_string(&cfg.token_file) {
                Ok(t) => call(Auth::Token(&t)).await,
                Err(e) => Err(FetchError::Local(format!(
                    "token file {}: {e}",
                    cfg.token_file.display()
                ))),
            },
        };
        match res {
            Ok(svid) => {
                let svid = Arc::new(svid);
                tracing::info!(
                    id = %id,
                    key = %cfg.key_type,
                    serial = %svid.serial,
                    expires_in_s = svid.not_after.saturating_sub(crate::unix_now()),
                    renewal = renewing.is_some(),
                    "workload certificate obtained"
                );
                metrics.issued.inc();
                metrics.consecutive_failures.set(0);
                metrics.expiry.set(svid.not_after as i64);
                failures = 0;
                force_token = false;
                let wait = svid.renew_at().saturating_sub(crate::unix_now()).max(1);
                current.store(Some(svid.clone()));
                tx.send_replace(Some(svid));
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(e) => {
                failures += 1;
                metrics.failures.inc();
                metrics.consecutive_failures.set(failures as i64);
                if e.is_auth() && renewing.is_some() {
                    // The CA no longer accepts this SVID (e.g. a new root): fall back to the token.
                    force_token = true;
                }
                let wait = backoff(&cfg, failures);
                match &cur {
                    Some(c) if c.not_after > now => tracing::error!(
                        id = %id,
                        key = %cfg.key_type,
                        error = %e,
                        failures,
                        expires_in_s = c.not_after - now,
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot renew the workload certificate; the current one stays in use until it expires"
                    ),
                    Some(_) => tracing::error!(
                        id = %id,
                        error = %e,
                        failures,
                        retry_in_ms = wait.as_millis() as u64,
                        "the workload certificate has EXPIRED and cannot be renewed"
                    ),
                    None => tracing::warn!(
                        id = %id,
                        error = %e,
                        failures,
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot obtain a workload certificate yet"
                    ),
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}
