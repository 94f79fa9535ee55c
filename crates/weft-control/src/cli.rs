//! `weft control`: command-line entry point.

use crate::{ControlOptions, ControlPlane};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ControlArgs {
    #[command(subcommand)]
    pub sub: Option<ControlSub>,
    /// A registry; repeat the flag for several, merged with the first given winning conflicts:
    /// DIR (every *.yaml / *.yml file in it), etcd://HOST:PORT[,HOST:PORT][/PREFIX/][?state=FILE],
    /// zk://HOST:PORT[,HOST:PORT][/CHROOT] (Dubbo),
    /// kubernetes[?api=URL][&kubeconfig=PATH][&trust-domain=TD]. See docs/control.md.
    #[arg(long, required = true)]
    pub registry: Vec<String>,
    /// ADS (gRPC) listen address.
    /// Plaintext ADS (and CA) listen address. Loopback only, unless --insecure-xds is given too:
    /// anyone who reaches it receives the mesh's configuration. Use --xds-tls beyond one host.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds: SocketAddr,
    /// Allow a non-loopback --xds address (plaintext, unauthenticated: for local experiments and
    /// trusted networks only; see docs/security.md).
    #[arg(long)]
    pub insecure_xds: bool,
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
    /// Configuration scoping: `declared` (sidecars of a service with `dependencies` get only
    /// those), `on-demand` (also: weft sidecars of services without them start empty and ask for
    /// what their traffic needs), `off` (everyone gets the whole mesh). See docs/control.md.
    #[arg(long, default_value = "declared")]
    pub scoping: crate::server::Scoping,
    /// How often the live service graph (`/graph` on the admin API) scrapes every connected
    /// proxy's /stats/prometheus, e.g. 1s (at least 100ms); `off` scrapes nothing.
    #[arg(long, default_value = "1s", value_parser = parse_graph_interval)]
    pub graph_interval: GraphInterval,
    /// A directory for state that must outlive a restart: the endpoint drains of
    /// `POST /endpoints/drain` (`drains.json`, written atomically on every change, read at start).
    /// Without it, a restarted weft control has no drains.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Validate the registry directory and exit (0 when every file is valid).
    #[arg(long)]
    pub check: bool,
    /// Log filter, e.g. "info" or "weft_control=debug".
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
    /// The mesh CA (see docs/security.md). Boxed, like the injector's: it keeps the `weft`
    /// binary's subcommand enum small.
    #[command(flatten)]
    pub ca: Box<CaArgs>,
    /// The Kubernetes sidecar injector (see docs/control.md). Boxed: it keeps the `weft` binary's
    /// subcommand enum small.
    #[command(flatten)]
    pub injector: Box<InjectorArgs>,
}

/// `--graph-interval`: a duration of at least 100ms, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct GraphInterval(pub Option<Duration>);

pub fn parse_graph_interval(s: &str) -> Result<GraphInterval, String> {
    if s == "off" {
        return Ok(GraphInterval(None));
    }
    let d = weft_config::duration::parse(s).map_err(|e| format!("--graph-interval: {e}"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("--graph-interval: {s} is under 100ms (or say `off`)"));
    }
    Ok(GraphInterval(Some(d)))
}

/// The sidecar injector (a mutating admission webhook). Off unless --injector-listen is given.
#[derive(clap::Args, Debug)]
pub struct InjectorArgs {
    /// Serve the sidecar injector (`POST /inject`, AdmissionReview v1) over HTTPS here.
    #[arg(long, requires_all = ["injector_cert", "injector_key"])]
    pub injector_listen: Option<SocketAddr>,
    /// The injector's certificate chain (PEM); the webhook configuration's caBundle must verify it.
    #[arg(long, requires = "injector_listen")]
    pub injector_cert: Option<PathBuf>,
    /// The injector's private key (PKCS#8 PEM).
    #[arg(long, requires = "injector_listen")]
    pub injector_key: Option<PathBuf>,
    /// The image holding the `weft` binary, for the injected containers.
    #[arg(long, default_value = "weft:latest")]
    pub injector_image: String,
    /// Where injected sidecars reach weft control's xDS.
    #[arg(long, default_value = "weft-control.weft-system.svc:18000")]
    pub injector_xds_address: String,
    /// Where injected sidecars reach the CA; with the CA on (--ca-dir or --ca-store), pods also get a
    /// bootstrap token.
    #[arg(long)]
    pub injector_ca_address: Option<String>,
    /// Where injected sidecars reach weft control's TLS port (--xds-tls), e.g.
    /// `weft-control.weft-system.svc:15012`: they get their certificate and their configuration
    /// there, verifying weft control against the mesh root (given to each pod) and authenticating
    /// with their workload certificate. Replaces --injector-xds-address and --injector-ca-address.
    #[arg(long, requires_all = ["injector_listen", "ca_tls"], conflicts_with = "injector_ca_address")]
    pub injector_xds_tls_address: Option<String>,
}

/// The mesh CA (docs/security.md). Off unless --ca-dir or --ca-store is given.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("ca_on").multiple(false).args(["ca_dir", "ca_store"]))]
pub struct CaArgs {
    /// Run the mesh CA: its state lives here (a generated root on first start, the trust domain,
    /// the bootstrap-token key). Served on the --xds port as istio.v1.auth.IstioCertificateService.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Run the mesh CA with its state in a store shared by several replicas instead of --ca-dir:
    /// etcd://HOST:PORT[,HOST:PORT][/PREFIX/][?user=NAME&password-file=PATH] or
    /// kubernetes[?namespace=NS][&secret=NAME][&api=URL][&kubeconfig=PATH]. Created there at
    /// first start; private keys sealed with --ca-store-key. See docs/control.md.
    #[arg(long, requires = "ca_store_key")]
    pub ca_store: Option<String>,
    /// The key that seals the CA's private keys in --ca-store: a file of 32 random bytes, or
    /// their base64 (`head -c 32 /dev/urandom | base64`). The same file on every replica.
    #[arg(long, requires = "ca_store")]
    pub ca_store_key: Option<PathBuf>,
    /// Use this CA certificate (root or intermediate, PEM) instead of a generated root.
    #[arg(long, requires_all = ["ca_on", "ca_key"])]
    pub ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (PKCS#8 PEM).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The certificates above --ca-cert up to the root (PEM), when --ca-cert is an intermediate.
    #[arg(long, requires = "ca_cert")]
    pub ca_chain: Option<PathBuf>,
    /// Trust domain of workload identities (fixed at first start; default cluster.local).
    #[arg(long, requires = "ca_on")]
    pub trust_domain: Option<String>,
    /// Lifetime of workload certificates when the request names none (at least 10s).
    #[arg(long, default_value = "24h", value_parser = weft_config::duration::parse)]
    pub svid_ttl: Duration,
    /// The secure port: ADS and the CA API over TLS on this address, with a certificate the CA
    /// issues to itself. Proxies verify it against the mesh root and authenticate with their
    /// workload certificate; each receives only its own service's configuration.
    #[arg(long = "xds-tls", visible_alias = "ca-tls", requires = "ca_on")]
    pub ca_tls: Option<SocketAddr>,
    /// The longest lifetime a request may ask for.
    #[arg(long, default_value = "168h", value_parser = weft_config::duration::parse)]
    pub svid_max_ttl: Duration,
    /// Mesh mTLS between sidecars, for services whose registry entry sets no `mtls`: PERMISSIVE
    /// (inbound accepts mTLS and plaintext, callers' sidecars send mTLS), STRICT (inbound mTLS
    /// only) or DISABLE (plaintext). Needs --ca-dir or --ca-store.
    #[arg(long, default_value = "PERMISSIVE", value_parser = parse_mtls, requires = "ca_on")]
    pub mtls: crate::model::MtlsMode,
    /// Cipher suite families of the mesh mTLS contexts sent to sidecars: standard (default, no
    /// tls_params), sm (TLS_SM4_GCM_SM3 only: sidecars need --identity-key-type sm2 or both) or
    /// both (SM first, then the standard suites: sidecars need --identity-key-type both).
    #[arg(long, value_enum, default_value_t = crate::model::MtlsSuites::Standard, requires = "ca_on")]
    pub mtls_suites: crate::model::MtlsSuites,
    /// Also run an SM2 root (ShangMi, generated in --ca-dir at first use) and issue SM2
    /// certificates for CSRs whose key is SM2.
    #[arg(long, requires = "ca_on")]
    pub ca_sm2: bool,
}

fn parse_mtls(s: &str) -> Result<crate::model::MtlsMode, String> {
    crate::model::MtlsMode::parse(s).ok_or_else(|| format!("unknown mode {s:?} (STRICT, PERMISSIVE, DISABLE)"))
}

impl CaArgs {
    /// The CA's options (None: no CA). With --ca-store, `dir` is empty and unused.
    pub fn options(&self) -> Option<crate::ca::CaOptions> {
        if self.ca_dir.is_none() && self.ca_store.is_none() {
            return None;
        }
        let mut o = crate::ca::CaOptions::new(self.ca_dir.clone().unwrap_or_default());
        o.cert = self.ca_cert.clone();
        o.key = self.ca_key.clone();
        o.chain = self.ca_chain.clone();
        o.trust_domain = self.trust_domain.clone();
        o.svid_ttl = self.svid_ttl;
        o.svid_max_ttl = self.svid_max_ttl;
        o.sm2 = self.ca_sm2;
        Some(o)
    }
}

/// Loads the CA of `args`: from --ca-dir, or from --ca-store (created there at first start).
pub async fn load_ca(args: &CaArgs) -> Result<Option<crate::ca::Ca>, crate::ca::CaError> {
    let Some(o) = args.options() else { return Ok(None) };
    match (&args.ca_store, &args.ca_store_key) {
        (Some(spec), Some(key)) => {
            let store = crate::ca::store::CaStore::parse(spec)?;
            let kek = crate::ca::store::Kek::load(key)?;
            crate::ca::store::load_shared(&o, &store, &kek).await.map(Some)
        }
        (Some(_), None) => Err(crate::ca::CaError("--ca-store needs --ca-store-key".into())),
        _ => crate::ca::Ca::load(&o).map(Some),
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ControlSub {
    /// Mint a bootstrap token bound to one workload identity; prints it on stdout.
    Token(TokenArgs),
    /// Operate the mesh CA (root rollover).
    #[command(subcommand)]
    Ca(CaSub),
}

#[derive(clap::Subcommand, Debug)]
pub enum CaSub {
    /// Replace the CA's root with both roots trusted side by side: `prepare` (the next root joins
    /// the trust bundle), `activate` (it signs), `retire` (the previous root leaves the bundle),
    /// or `status`. The running weft control applies each step within a second. See
    /// docs/security.md, "Root rollover".
    Rollover(RolloverArgs),
}

#[derive(clap::Args, Debug)]
pub struct RolloverArgs {
    #[arg(value_enum)]
    pub step: crate::ca::rollover::Step,
    /// The CA directory of the weft control (its --ca-dir).
    #[arg(long, required_unless_present = "ca_store", conflicts_with = "ca_store")]
    pub ca_dir: Option<PathBuf>,
    /// A --ca-store CA: refused (root rollover works on a CA directory only, for now).
    #[arg(long)]
    pub ca_store: Option<String>,
    /// With `prepare`: the next CA's certificate (root or intermediate, PEM) instead of a generated
    /// root. Copied into the CA directory.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (PKCS#8 PEM). Copied into the CA directory (mode 0600).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The certificates above --ca-cert up to its root, when it is an intermediate.
    #[arg(long, requires = "ca_cert")]
    pub ca_chain: Option<PathBuf>,
    /// Take `activate` or `retire` although certificates that would break may still be valid.
    #[arg(long)]
    pub force: bool,
}

fn run_rollover(a: &RolloverArgs) -> i32 {
    let Some(dir) = &a.ca_dir else {
        eprintln!(
            "weft control ca rollover: --ca-store: root rollover of a CA kept in a store is not supported yet (it works on a --ca-dir CA); see docs/security.md"
        );
        return 2;
    };
    let next = a
        .ca_cert
        .as_ref()
        .zip(a.ca_key.as_ref())
        .map(|(c, k)| crate::ca::rollover::NextCa {
            cert: c.clone(),
            key: k.clone(),
            chain: a.ca_chain.clone(),
        });
    match crate::ca::rollover::step(dir, a.step, next.as_ref(), a.force, weft_identity::unix_now()) {
        Ok(msg) => {
            println!("{msg}");
            0
        }
        Err(e) => {
            eprintln!(
                "weft control ca rollover {}: {e}",
                format!("{:?}", a.step).to_lowercase()
            );
            1
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The CA directory of the weft control that will check the token.
    #[arg(long, required_unless_present = "ca_store", conflicts_with = "ca_store")]
    pub ca_dir: Option<PathBuf>,
    /// Or the --ca-store of the weft control replicas (the CA must exist there).
    #[arg(long, requires = "ca_store_key")]
    pub ca_store: Option<String>,
    /// The --ca-store-key of the replicas.
    #[arg(long, requires = "ca_store")]
    pub ca_store_key: Option<PathBuf>,
    /// NAMESPACE/SERVICE_ACCOUNT, e.g. default/reviews.
    #[arg(long)]
    pub identity: String,
    /// How long the token may be used to obtain a first certificate, e.g. 1h.
    #[arg(long, default_value = "1h", value_parser = weft_config::duration::parse)]
    pub ttl: Duration,
    /// Only when the CA directory is new: its trust domain.
    #[arg(long)]
    pub trust_domain: Option<String>,
}

fn run_token(a: &TokenArgs) -> i32 {
    let key = match (&a.ca_dir, &a.ca_store, &a.ca_store_key) {
        (Some(dir), _, _) => crate::ca::TokenKey::load_or_create(dir, a.trust_domain.as_deref()),
        (None, Some(spec), Some(kek)) => (|| {
            let store = crate::ca::store::CaStore::parse(spec)?;
            let kek = crate::ca::store::Kek::load(kek)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| crate::ca::CaError(e.to_string()))?;
            rt.block_on(crate::ca::store::load_tokens(&store, &kek))
        })(),
        _ => Err(crate::ca::CaError("--ca-dir, or --ca-store with --ca-store-key".into())),
    };
    let minted = key.and_then(|k| k.mint(&a.identity, a.ttl));
    match minted {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(e) => {
            eprintln!("weft control token: {e}");
            2
        }
    }
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
    if spec == "kubernetes" || spec.starts_with("kubernetes?") || spec.starts_with("kubernetes://") {
        #[cfg(feature = "kubernetes")]
        {
            let r = crate::registry::kubernetes::KubeRegistry::parse(spec).map_err(|e| err(e.to_string()))?;
            return Ok(Box::new(r));
        }
        #[cfg(not(feature = "kubernetes"))]
        return Err(err(
            "this build has no Kubernetes support (cargo feature `kubernetes`)".into()
        ));
    }
    if let Some((scheme, _)) = spec.split_once("://") {
        return Err(err(format!(
            "unknown registry scheme \"{scheme}\" (a directory, etcd://, zk://, kubernetes)"
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

#[cfg(feature = "kubernetes")]
type RunningInjector = Option<crate::injector::Injector>;
#[cfg(not(feature = "kubernetes"))]
type RunningInjector = Option<()>;

/// Starts the sidecar injector when --injector-listen is given.
async fn start_injector(
    a: &InjectorArgs,
    ca: Option<&std::sync::Arc<crate::ca::Ca>>,
) -> Result<RunningInjector, String> {
    let Some(listen) = a.injector_listen else {
        return Ok(None);
    };
    #[cfg(feature = "kubernetes")]
    {
        let read = |flag: &str, p: &Option<PathBuf>| -> Result<Vec<u8>, String> {
            let p = p
                .as_ref()
                .ok_or_else(|| format!("{flag} is required with --injector-listen"))?;
            std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
        };
        let cert = read("--injector-cert", &a.injector_cert)?;
        let key = read("--injector-key", &a.injector_key)?;
        let secure_xds = match (&a.injector_xds_tls_address, ca) {
            (Some(address), Some(ca)) => Some(crate::injector::SecureXds {
                address: address.clone(),
                root_pem: ca.root_pem(),
                ca: Some(ca.clone()),
            }),
            (Some(_), None) => {
                return Err("--injector-xds-tls-address needs the CA (--ca-dir or --ca-store) and --xds-tls".into())
            }
            (None, _) => None,
        };
        let tokens = match (ca, a.injector_ca_address.is_some() || secure_xds.is_some()) {
            (Some(ca), true) => Some((std::sync::Arc::new(ca.tokens.clone()), Duration::from_secs(3600))),
            _ => None,
        };
        let cfg = crate::injector::InjectorConfig {
            image: a.injector_image.clone(),
            xds_address: a.injector_xds_address.clone(),
            ca_address: a.injector_ca_address.clone(),
            tokens,
            secure_xds,
            ..Default::default()
        };
        let i = crate::injector::start(listen, &cert, &key, cfg)
            .await
            .map_err(|e| format!("--injector-listen {listen}: {e}"))?;
        Ok(Some(i))
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = (listen, ca);
        Err("--injector-listen: this build has no Kubernetes support (cargo feature `kubernetes`)".into())
    }
}

/// Runs the control plane until SIGINT/SIGTERM. Returns the process exit code.
pub fn run(args: ControlArgs) -> i32 {
    match &args.sub {
        Some(ControlSub::Token(t)) => return run_token(t),
        Some(ControlSub::Ca(CaSub::Rollover(r))) => return run_rollover(r),
        None => {}
    }
    if let Some(why) =
        weft_config::admin::loopback_refusal(args.admin, args.admin_allow_non_loopback, "--admin-allow-non-loopback")
    {
        eprintln!("weft control: --admin: {why}");
        return 2;
    }
    if !args.check && !weft_config::admin::is_loopback(args.xds.ip()) {
        if !args.insecure_xds {
            eprintln!(
                "weft control: --xds {}: plaintext xDS beyond loopback gives the mesh's configuration to anyone who reaches it; serve proxies on --xds-tls (with --ca-dir), or say --insecure-xds to accept that",
                args.xds
            );
            return 2;
        }
        eprintln!(
            "warning: --insecure-xds: plaintext, unauthenticated xDS on {}; anyone who reaches it receives the mesh's configuration",
            args.xds
        );
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
            if spec.contains("://") || spec == "kubernetes" || spec.starts_with("kubernetes?") {
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
        // The CA is loaded before anything listens: a bad CA file (or store) stops weft control here.
        let ca = match load_ca(&args.ca).await {
            Ok(ca) => ca.map(std::sync::Arc::new),
            Err(e) => {
                eprintln!("weft control: CA: {e}");
                return 1;
            }
        };
        let mut opts = ControlOptions::new(".");
        opts.registry = registry;
        opts.mesh_tls = ca.is_some().then_some(crate::model::MeshTls {
            default_mode: args.ca.mtls,
            suites: args.ca.mtls_suites,
        });
        opts.ca = ca.clone();
        opts.ca_tls = args.ca.ca_tls;
        opts.xds = args.xds;
        opts.admin = Some(args.admin);
        opts.debounce = args.debounce;
        opts.scoping = args.scoping;
        opts.graph.interval = args.graph_interval.0;
        opts.state_dir = args.state_dir.clone();
        let cp = match ControlPlane::start(opts).await {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("weft control: {e}");
                return 1;
            }
        };
        let _injector = match start_injector(&args.injector, ca.as_ref()).await {
            Ok(i) => i,
            Err(e) => {
                eprintln!("weft control: {e}");
                cp.stop().await;
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
