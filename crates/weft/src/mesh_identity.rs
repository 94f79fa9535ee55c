//! `weft proxy`'s workload identity for mesh mTLS: from `weft control`'s CA (`--ca-address` and a
//! bootstrap token; the key is generated here and renewed at half-life) or from PEM files
//! (`--identity-cert-file` …, re-read when they change). Each new certificate or root bundle is
//! swapped into the proxy's `MeshIdentity` and applies to the next handshake.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weft_proxy::Server;
use weft_tls::MeshIdentity;

/// `--identity-key-type`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyTypes {
    #[default]
    Ecdsa,
    Sm2,
    Both,
}

impl KeyTypes {
    fn list(self) -> Vec<weft_identity::KeyType> {
        match self {
            KeyTypes::Ecdsa => vec![weft_identity::KeyType::Ecdsa],
            KeyTypes::Sm2 => vec![weft_identity::KeyType::Sm2],
            KeyTypes::Both => vec![weft_identity::KeyType::Ecdsa, weft_identity::KeyType::Sm2],
        }
    }
}

/// Before the configuration loads: tells the TLS layer which SVIDs the CA identity will hold, so a
/// mesh listener or cluster offering a suite family it cannot serve is refused naming its field.
pub fn declare(f: &IdentityFlags) {
    if f.ca_address.is_some() {
        let l = f.identity_key_type.list();
        weft_tls::mesh::declare_key_types(
            l.contains(&weft_identity::KeyType::Ecdsa),
            l.contains(&weft_identity::KeyType::Sm2),
        );
    }
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct IdentityFlags {
    /// Mesh identity from weft control's CA at this address (host:port, its xDS port).
    #[arg(long, requires = "identity_token_file")]
    pub ca_address: Option<String>,
    /// The bootstrap token (from `weft control token`) naming this workload's identity.
    #[arg(long, requires = "ca_address")]
    pub identity_token_file: Option<PathBuf>,
    /// Talk TLS to the CA, verifying it against this root (PEM).
    #[arg(long, requires = "ca_address")]
    pub ca_root_file: Option<PathBuf>,
    /// Requested certificate lifetime, e.g. 1h (default: the CA's --svid-ttl).
    #[arg(long, value_parser = weft_config::duration::parse, requires = "ca_address")]
    pub identity_ttl: Option<Duration>,
    /// Which workload certificates to keep from the CA: ecdsa (P-256, default), sm2 (an SM2 SVID
    /// from weft control --ca-sm2, for mesh listeners/clusters with tls.suites: [sm]) or both (two
    /// keys and certificates, renewed independently; a mesh listener serves either by ClientHello).
    #[arg(long, value_enum, default_value_t = KeyTypes::Ecdsa, requires = "ca_address")]
    pub identity_key_type: KeyTypes,
    /// Mesh identity from files instead: the SVID chain (PEM, leaf first)...
    #[arg(long, conflicts_with = "ca_address", requires_all = ["identity_key_file", "identity_roots_file"])]
    pub identity_cert_file: Option<PathBuf>,
    /// ...its private key...
    #[arg(long, requires = "identity_cert_file")]
    pub identity_key_file: Option<PathBuf>,
    /// ...and the mesh root bundle (every root trusted during a rollover).
    #[arg(long, requires = "identity_cert_file")]
    pub identity_roots_file: Option<PathBuf>,
}

/// How long `weft proxy` waits at start for its first certificate before serving anyway (mesh
/// handshakes fail, counted, until it arrives).
const FIRST_CERT_WAIT: Duration = Duration::from_secs(15);

fn read_files(f: &IdentityFlags) -> Result<(String, String, String), String> {
    let read = |flag: &str, p: &Option<PathBuf>| -> Result<String, String> {
        let p = p.as_ref().ok_or_else(|| format!("{flag} is required"))?;
        std::fs::read_to_string(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
    };
    Ok((
        read("--identity-cert-file", &f.identity_cert_file)?,
        read("--identity-key-file", &f.identity_key_file)?,
        read("--identity-roots-file", &f.identity_roots_file)?,
    ))
}

fn mtimes(f: &IdentityFlags) -> Vec<Option<std::time::SystemTime>> {
    [&f.identity_cert_file, &f.identity_key_file, &f.identity_roots_file]
        .iter()
        .map(|p| {
            p.as_ref()
                .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        })
        .collect()
}

/// The trust domain of the identity named by `--identity-token-file`, if readable (the
/// certificate itself may not have arrived yet).
pub fn trust_domain_hint(f: &IdentityFlags) -> Option<String> {
    let text = std::fs::read_to_string(f.identity_token_file.as_ref()?).ok()?;
    let claims = weft_identity::token::peek(&text).ok()?;
    Some(claims.id.trust_domain().to_string())
}

/// Starts keeping the proxy's mesh identity. Does nothing without identity flags.
pub fn attach(server: &Arc<Server>, f: &IdentityFlags) -> Result<(), String> {
    let mesh: Arc<MeshIdentity> = server.shared.tls.mesh.clone();
    if f.identity_cert_file.is_some() {
        let (c, k, r) = read_files(f)?;
        mesh.set_pem(&c, &k, &r)
            .map_err(|e| format!("--identity-cert-file: {e}"))?;
        tracing::info!(
            identity = mesh.id().unwrap_or_default(),
            "mesh identity loaded from files"
        );
        let flags = f.clone();
        let mesh = mesh.clone();
        server.control_handle().spawn(async move {
            let mut seen = mtimes(&flags);
            loop {
                tokio::time::sleep(weft_proxy::tls::FILE_POLL).await;
                let now = mtimes(&flags);
                if now == seen {
                    continue;
                }
                seen = now;
                match read_files(&flags).and_then(|(c, k, r)| mesh.set_pem(&c, &k, &r).map_err(|e| e.to_string())) {
                    Ok(()) => tracing::info!(
                        identity = mesh.id().unwrap_or_default(),
                        "mesh identity reloaded from files"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "mesh identity files refused; the current identity keeps serving")
                    }
                }
            }
        });
        return Ok(());
    }
    let (Some(addr), Some(token)) = (&f.ca_address, &f.identity_token_file) else {
        return Ok(());
    };
    let mut cfg = weft_identity::AgentConfig::new(addr.clone(), token.clone());
    cfg.ttl = f.identity_ttl;
    if let Some(root) = &f.ca_root_file {
        cfg.ca_roots_pem =
            Some(std::fs::read_to_string(root).map_err(|e| format!("--ca-root-file {}: {e}", root.display()))?);
    }
    // Fail now (exit 2) on an unreadable or invalid token, not in the background.
    let text = std::fs::read_to_string(token).map_err(|e| format!("--identity-token-file {}: {e}", token.display()))?;
    weft_identity::token::peek(&text).map_err(|e| format!("--identity-token-file {}: {e}", token.display()))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<weft_identity::KeyType>();
    let kinds = f.identity_key_type.list();
    for kind in kinds.iter().copied() {
        let mut cfg = cfg.clone();
        cfg.key_type = kind;
        let m = mesh.clone();
        let ready_tx = ready_tx.clone();
        server.control_handle().spawn(async move {
            let agent = match weft_identity::IdentityAgent::start(cfg) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, key = %kind, "mesh identity: cannot start");
                    return;
                }
            };
            let mut rx = agent.subscribe();
            loop {
                let svid = rx.borrow_and_update().clone();
                if let Some(s) = svid {
                    match m.set_pem(&s.chain_pem, &s.key_pem(), &s.roots_pem) {
                        Ok(()) => {
                            tracing::info!(identity = %s.id, key = %kind, serial = %s.serial, not_after = s.not_after, "mesh identity installed");
                            let _ = ready_tx.send(kind);
                        }
                        Err(e) => tracing::error!(error = %e, key = %kind, "mesh identity from the CA refused; the current one keeps serving"),
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    drop(ready_tx);
    let deadline = std::time::Instant::now() + FIRST_CERT_WAIT;
    let mut waiting = kinds;
    while !waiting.is_empty() {
        match ready_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(k) => waiting.retain(|w| *w != k),
            Err(_) => break,
        }
    }
    if !waiting.is_empty() {
        tracing::warn!(ca = %addr, missing = ?waiting, "no mesh certificate yet; mesh handshakes fail until one arrives (still retrying)");
    }
    Ok(())
}
