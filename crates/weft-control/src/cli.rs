//! `weft control`: command-line entry point.

use crate::{ControlOptions, ControlPlane};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ControlArgs {
    /// A registry; repeat the flag for several, merged with the first given winning conflicts:
    /// DIR (every *.yaml / *.yml file in it), etcd://HOST:PORT[,HOST:PORT][/PREFIX/][?state=FILE],
    /// zk://HOST:PORT[,HOST:PORT][/CHROOT] (Dubbo). See docs/control.md.
    #[arg(long, required = true)]
    pub registry: Vec<String>,
    /// ADS (gRPC) listen address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds: SocketAddr,
    /// Admin HTTP listen address (/ready, /metrics, /debug/...). Loopback only, unless
    /// --admin-allow-non-loopback is given too.
    #[arg(long, default_value = "127.0.0.1:18001")]
    pub admin: SocketAddr,
    /// Allow a non-loopback --admin address (the admin API has no authentication; see docs/security.md).
    #[arg(long)]
    pub admin_allow_non_loopback: bool,
    /// Debounce window for registry changes, e.g. 100ms.
    #[arg(long, default_value = "100ms", value_parser = weft_config::duration::parse)]
    pub debounce: Duration,
    /// Validate the registry directory and exit (0 when every file is valid).
    #[arg(long)]
    pub check: bool,
    /// Log filter, e.g. "info" or "weft_control=debug".
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
}

/// Validates every file in `dir` like the running control plane would. Returns the errors.
pub fn check_dir(dir: &std::path::Path) -> Result<usize, Vec<String>> {
    let mut errors = Vec::new();
    let mut frags = std::collections::BTreeMap::new();
    let rd = std::fs::read_dir(dir).map_err(|e| vec![format!("{}: {e}", dir.display())])?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || name.starts_with('.') {
            continue;
        }
        match std::fs::read_to_string(e.path()) {
            Ok(t) => match crate::model::parse_fragment(&name, &t) {
                Ok(f) => {
                    frags.insert(name, f);
                }
                Err(es) => errors.extend(es),
            },
            Err(err) => errors.push(format!("{name}: {err}")),
        }
    }
    let (world, errs) = crate::model::World::build(frags.iter().map(|(k, v)| (k.as_str(), v)));
    errors.extend(errs.into_values().flatten());
    if errors.is_empty() {
        Ok(world.services.len())
    } else {
        Err(errors)
    }
}

/// A `--registry` value that cannot be used.
#[derive(Debug)]
pub struct RegistrySpecError {
    pub spec: String,
    pub reason: String,
}

impl std::fmt::Display for RegistrySpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--registry {}: {}", self.spec, self.reason)
    }
}

/// One `--registry` value: a directory, `etcd://...` or `zk://...`.
pub fn registry_from_spec(spec: &str) -> Result<Box<dyn crate::registry::Registry>, RegistrySpecError> {
    let err = |reason: String| RegistrySpecError {
        spec: spec.to_string(),
        reason,
    };
    if let Some(rest) = spec.strip_prefix("etcd://") {
        let r = crate::registry::etcd::EtcdRegistry::parse(rest).map_err(|e| err(e.to_string()))?;
        return Ok(Box::new(r));
    }
    if let Some(rest) = spec.strip_prefix("zk://") {
        #[cfg(feature = "zookeeper")]
        {
            let r = crate::registry::zk::ZkRegistry::parse(rest).map_err(err)?;
            return Ok(Box::new(r));
        }
        #[cfg(not(feature = "zookeeper"))]
        {
            let _ = rest;
            return Err(err(
                "this build has no ZooKeeper support (cargo feature `zookeeper`)".into()
            ));
        }
    }
    if let Some((scheme, _)) = spec.split_once("://") {
        return Err(err(format!(
            "unknown registry scheme \"{scheme}\" (a directory, etcd://, zk://)"
        )));
    }
    let dir = spec.strip_prefix("file:").unwrap_or(spec);
    Ok(Box::new(crate::registry::FileRegistry::new(dir)))
}

/// The registries of the `--registry` flags, in precedence order (one, or a MultiRegistry).
pub fn registries(specs: &[String]) -> Result<Box<dyn crate::registry::Registry>, RegistrySpecError> {
    let mut members = Vec::new();
    for s in specs {
        members.push(registry_from_spec(s)?);
    }
    if members.len() == 1 {
        return Ok(members.remove(0));
    }
    Ok(Box::new(crate::registry::MultiRegistry { members }))
}

/// Runs the control plane until SIGINT/SIGTERM. Returns the process exit code.
pub fn run(args: ControlArgs) -> i32 {
    if let Some(why) =
        weft_config::admin::loopback_refusal(args.admin, args.admin_allow_non_loopback, "--admin-allow-non-loopback")
    {
        eprintln!("weft control: --admin: {why}");
        return 2;
    }
    if args.check {
        if !weft_config::admin::is_loopback(args.admin.ip()) {
            eprintln!(
                "warning: the admin API ({}) is exposed beyond loopback (explicitly allowed); it has no authentication",
                args.admin
            );
        }
        let mut code = 0;
        for spec in &args.registry {
            if spec.contains("://") {
                if let Err(e) = registry_from_spec(spec) {
                    eprintln!("weft control: {e}");
                    return 2;
                }
                println!("{spec}: not checked (only directories are validated offline; a running control plane lists malformed entries on /debug/registry)");
                continue;
            }
            let dir = PathBuf::from(spec.strip_prefix("file:").unwrap_or(spec));
            match check_dir(&dir) {
                Ok(n) => println!("registry OK: {n} services"),
                Err(es) => {
                    for e in es {
                        eprintln!("{e}");
                    }
                    code = 1;
                }
            }
        }
        return code;
    }
    let registry = match registries(&args.registry) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft control: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft control: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let mut opts = ControlOptions::new(".");
        opts.registry = registry;
        opts.xds = args.xds;
        opts.admin = Some(args.admin);
        opts.debounce = args.debounce;
        let cp = match ControlPlane::start(opts).await {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("weft control: {e}");
                return 1;
            }
        };
        tracing::info!(xds = %cp.xds_addr(), admin = ?cp.admin_addr(), "weft control running");
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                tracing::error!("cannot install signal handlers");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("stopping");
        cp.stop().await;
        0
    })
}
