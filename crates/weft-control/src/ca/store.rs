//! The mesh CA shared by several weft control replicas through a store (`--ca-store`): etcd, or
//! (cargo feature `kubernetes`) a Kubernetes Secret.
//!
//! The store holds one record, `ca` (JSON), and with `--ca-sm2` a second one, `ca-sm2`:
//!
//! | record | fields |
//! |---|---|
//! | `ca` | `version` (1), `trust_domain`, `cert` (the issuing certificate, PEM, then any certificates above it), `chain` (`--ca-chain`, or null), `key` (sealed), `token_key` (sealed) |
//! | `ca-sm2` | `version` (1), `cert` (PEM), `key` (sealed) |
//!
//! In etcd the records are the keys `<prefix>ca` and `<prefix>ca-sm2` (prefix default `/weft-ca/`,
//! outside the registry's default `/weft/`, so etcd RBAC can grant the two apart);
//! in Kubernetes, the Secrets `<name>` and `<name>-sm2` (type Opaque, default `weft-ca`), data key
//! `ca.json`.
//!
//! A private key is never stored in clear: "sealed" is `v1:` then the hex of a random 12-byte
//! nonce followed by the AES-256-GCM ciphertext and tag, under the key-encryption key of
//! `--ca-store-key` (32 bytes), with the field's name as associated data (a sealed value moved to
//! another field does not open).
//!
//! At start a replica reads the record; when it is absent, the replica builds the CA (a generated
//! root, or `--ca-cert`/`--ca-key`; a new token key; `--trust-domain` or `cluster.local`) and
//! creates the record only if it still does not exist (etcd: a transaction on
//! `create_revision == 0`; Kubernetes: a create, 409 AlreadyExists when another replica was first).
//! The loser of that race reads the winner's record, so replicas started together share one CA.

use super::{sm, Ca, CaError, CaOptions, Material, Named, TokenKey, DEFAULT_TRUST_DOMAIN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default etcd key prefix of the CA records.
pub const DEFAULT_PREFIX: &str = "/weft-ca/";
/// The default Secret name (Kubernetes).
pub const DEFAULT_SECRET: &str = "weft-ca";
/// The data key of the record in a Secret.
pub const SECRET_DATA_KEY: &str = "ca.json";

/// Where the shared CA lives (`--ca-store`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaStore {
    /// `etcd://HOST:PORT[,HOST:PORT][/PREFIX/][?user=NAME&password-file=PATH]`
    Etcd {
        endpoints: Vec<String>,
        /// Ends in `/`.
        prefix: String,
        user: Option<String>,
        password_file: Option<PathBuf>,
    },
    /// `kubernetes[?namespace=NS][&secret=NAME][&api=URL][&kubeconfig=PATH]`
    Kubernetes {
        namespace: String,
        secret: String,
        api: Option<String>,
        kubeconfig: Option<PathBuf>,
    },
}

/// The namespace weft control runs in (its service account's), else `weft-system`.
fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weft-system".to_string())
}

impl CaStore {
    /// Parses a `--ca-store` value. Errors name the flag and the part at fault.
    pub fn parse(spec: &str) -> Result<CaStore, CaError> {
        let bad = |why: String| CaError(format!("--ca-store {spec}: {why}"));
        if let Some(rest) = spec.strip_prefix("etcd://") {
            let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (hosts, prefix) = match main.find('/') {
                Some(i) => (&main[..i], &main[i..]),
                None => (main, DEFAULT_PREFIX),
            };
            let mut endpoints = Vec::new();
            for h in hosts.split(',').filter(|h| !h.is_empty()) {
                match h.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
                        endpoints.push(h.to_string())
                    }
                    _ => return Err(bad(format!("etcd endpoint \"{h}\" is not HOST:PORT"))),
                }
            }
            if endpoints.is_empty() {
                return Err(bad("no etcd endpoint (etcd://HOST:PORT[,HOST:PORT][/PREFIX/])".into()));
            }
            let mut prefix = if prefix.is_empty() || prefix == "/" {
                DEFAULT_PREFIX.to_string()
            } else {
                prefix.to_string()
            };
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            let (mut user, mut password_file) = (None, None);
            for kv in query.split('&').filter(|s| !s.is_empty()) {
                match kv.split_once('=') {
                    Some(("user", u)) if !u.is_empty() => user = Some(u.to_string()),
                    Some(("password-file", p)) if !p.is_empty() => password_file = Some(PathBuf::from(p)),
                    _ => return Err(bad(format!("bad option \"{kv}\" (user=NAME, password-file=PATH)"))),
                }
            }
            if user.is_some() != password_file.is_some() {
                return Err(bad("user= and password-file= go together".into()));
            }
            return Ok(CaStore::Etcd {
                endpoints,
                prefix,
                user,
                password_file,
            });
        }
        if spec == "kubernetes" || spec.starts_with("kubernetes?") {
            let query = spec.strip_prefix("kubernetes").unwrap_or("").trim_start_matches('?');
            let (mut namespace, mut secret, mut api, mut kubeconfig) = (None, None, None, None);
            for kv in query.split('&').filter(|s| !s.is_empty()) {
                match kv.split_once('=') {
                    Some(("namespace", n)) if !n.is_empty() => namespace = Some(n.to_string()),
                    Some(("secret", n)) if !n.is_empty() && !n.contains('/') => secret = Some(n.to_string()),
                    Some(("api", u)) if u.starts_with("http://") || u.starts_with("https://") => {
                        api = Some(u.to_string())
                    }
                    Some(("kubeconfig", p)) if !p.is_empty() => kubeconfig = Some(PathBuf::from(p)),
                    _ => {
                        return Err(bad(format!(
                            "bad option \"{kv}\" (namespace=NS, secret=NAME, api=http(s)://HOST:PORT, kubeconfig=PATH)"
                        )))
                    }
                }
            }
            return Ok(CaStore::Kubernetes {
                namespace: namespace.unwrap_or_else(own_namespace),
                secret: secret.unwrap_or_else(|| DEFAULT_SECRET.to_string()),
                api,
                kubeconfig,
            });
        }
        Err(bad(
            "not etcd://HOST:PORT[/PREFIX/] or kubernetes[?namespace=NS&secret=NAME]".into(),
        ))
    }

    /// Where a record is, for messages: `etcd key /weft-ca/ca`, `Kubernetes Secret ns/weft-ca`.
    fn record_label(&self, record: &str) -> String {
        match self {
            CaStore::Etcd { prefix, .. } => format!("etcd key {prefix}{record}"),
            CaStore::Kubernetes { namespace, secret, .. } => {
                format!("Kubernetes Secret {namespace}/{}", self.secret_name(secret, record))
            }
        }
    }

    fn secret_name(&self, secret: &str, record: &str) -> String {
        match record.strip_prefix("ca") {
            Some("") => secret.to_string(),
            Some(rest) => format!("{secret}{rest}"),
            None => format!("{secret}-{record}"),
        }
    }

    /// "etcd" or "Kubernetes Secret NS/NAME" (what the wrong-key message names).
    fn kind(&self) -> String {
        match self {
            CaStore::Etcd { .. } => "etcd".into(),
            CaStore::Kubernetes { namespace, secret, .. } => format!("Kubernetes Secret {namespace}/{secret}"),
        }
    }

    async fn connect(&self) -> Result<Conn, CaError> {
        match self {
            CaStore::Etcd {
                endpoints,
                prefix,
                user,
                password_file,
            } => {
                let mut opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5));
                if let (Some(u), Some(p)) = (user, password_file) {
                    let password = std::fs::read_to_string(p)
                        .map_err(|e| CaError(format!("--ca-store password-file {}: {e}", p.display())))?;
                    opts = opts.with_user(u.clone(), password.trim_end_matches(['\r', '\n']).to_string());
                }
                let client = tokio::time::timeout(
                    Duration::from_secs(10),
                    etcd_client::Client::connect(endpoints, Some(opts)),
                )
                .await
                .map_err(|_| CaError(format!("--ca-store: etcd {} did not answer", endpoints.join(","))))?
                .map_err(|e| CaError(format!("--ca-store: etcd {}: {e}", endpoints.join(","))))?;
                Ok(Conn::Etcd {
                    client,
                    prefix: prefix.clone(),
                })
            }
            #[cfg(feature = "kubernetes")]
            CaStore::Kubernetes {
                namespace,
                secret,
                api,
                kubeconfig,
            } => {
                let reg = crate::registry::kubernetes::KubeRegistry {
                    api: api.clone(),
                    kubeconfig: kubeconfig.clone(),
                    trust_domain: String::new(),
                };
                let client = reg.client().await.map_err(|e| CaError(format!("--ca-store: {e}")))?;
                Ok(Conn::Kube {
                    api: kube::Api::namespaced(client, namespace),
                    secret: secret.clone(),
                })
            }
            #[cfg(not(feature = "kubernetes"))]
            CaStore::Kubernetes { .. } => Err(CaError(
                "--ca-store kubernetes: this build has no Kubernetes support (cargo feature `kubernetes`)".into(),
            )),
        }
    }
}

/// An open connection to the store (one, briefly, at start: the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Conn {
    Etcd {
        client: etcd_client::Client,
        prefix: String,
    },
    #[cfg(feature = "kubernetes")]
    Kube {
        api: kube::Api<k8s_openapi::api::core::v1::Secret>,
        secret: String,
    },
}

impl Conn {
    /// The record's value, None when absent.
    async fn get(&mut self, store: &CaStore, record: &str) -> Result<Option<Vec<u8>>, CaError> {
        let label = store.record_label(record);
        match self {
            Conn::Etcd { client, prefix } => {
                let r = client
                    .get(format!("{prefix}{record}"), None)
                    .await
                    .map_err(|e| CaError(format!("--ca-store: reading {label}: {e}")))?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            }
            #[cfg(feature = "kubernetes")]
            Conn::Kube { api, secret } => {
                let name = store.secret_name(secret, record);
                let s = api
                    .get_opt(&name)
                    .await
                    .map_err(|e| CaError(format!("--ca-store: reading {label}: {e}")))?;
                let Some(s) = s else { return Ok(None) };
                let v = s
                    .data
                    .and_then(|mut d| d.remove(SECRET_DATA_KEY))
                    .ok_or_else(|| CaError(format!("{label}: no data key {SECRET_DATA_KEY}")))?;
                Ok(Some(v.0))
            }
        }
    }

    /// Creates the record unless it exists. false: another replica created it first.
    async fn create(&mut self, store: &CaStore, record: &str, value: Vec<u8>) -> Result<bool, CaError> {
        let label = store.record_label(record);
        match self {
            Conn::Etcd { client, prefix } => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let key = format!("{prefix}{record}");
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then(vec![TxnOp::put(key, value, None)]);
                let r = client
                    .txn(txn)
                    .await
                    .map_err(|e| CaError(format!("--ca-store: creating {label}: {e}")))?;
                Ok(r.succeeded())
            }
            #[cfg(feature = "kubernetes")]
            Conn::Kube { api, secret } => {
                use k8s_openapi::api::core::v1::Secret;
                let s = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(store.secret_name(secret, record)),
                        labels: Some([("app.kubernetes.io/managed-by".to_string(), "weft-control".to_string())].into()),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some([(SECRET_DATA_KEY.to_string(), k8s_openapi::ByteString(value))].into()),
                    ..Default::default()
                };
                match api.create(&kube::api::PostParams::default(), &s).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(st)) if st.code == 409 => Ok(false),
                    Err(e) => Err(CaError(format!("--ca-store: creating {label}: {e}"))),
                }
            }
        }
    }
}

/// The key-encryption key (`--ca-store-key`): seals the private keys kept in the store.
pub struct Kek {
    key: LessSafeKey,
    file: String,
}

impl Kek {
    /// Reads the key file: 32 bytes, or the base64 of 32 bytes. Errors name the file.
    pub fn load(path: &Path) -> Result<Kek, CaError> {
        let shown = path.display().to_string();
        let e = |what: String| CaError(format!("--ca-store-key {shown}: {what}"));
        let raw = std::fs::read(path).map_err(|err| e(err.to_string()))?;
        super::warn_if_readable_by_others(path);
        let bytes = if raw.len() == 32 {
            raw
        } else {
            std::str::from_utf8(&raw)
                .ok()
                .and_then(|t| weft_core::trace::base64_decode(t.trim().as_bytes()))
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    e(format!(
                        "not a key: expected 32 random bytes or their base64 (`head -c 32 /dev/urandom | base64`), found {} bytes",
                        raw.len()
                    ))
                })?
        };
        Kek::from_bytes(&bytes, shown)
    }

    /// A key from its 32 bytes; `file` names it in messages.
    pub fn from_bytes(bytes: &[u8], file: impl Into<String>) -> Result<Kek, CaError> {
        let file = file.into();
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| CaError(format!("--ca-store-key {file}: not a 32-byte key")))?;
        Ok(Kek {
            key: LessSafeKey::new(key),
            file,
        })
    }

    /// Seals `plain` for `field` of a record whose public part is summed up by `context`
    /// ([`binding`]): the ciphertext opens only as that field of that record.
    fn seal(&self, field: &str, context: &str, plain: &[u8]) -> Result<String, CaError> {
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| CaError("no system randomness".into()))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(field, context).as_bytes()),
                &mut buf,
            )
            .map_err(|_| CaError(format!("sealing {field}")))?;
        let mut out = nonce.to_vec();
        out.extend(buf);
        Ok(format!("v1:{}", weft_identity::hex::encode(&out)))
    }

    fn open(
        &self,
        store: &CaStore,
        record: &str,
        field: &str,
        context: &str,
        sealed: &str,
    ) -> Result<Vec<u8>, CaError> {
        let label = store.record_label(record);
        let bytes = sealed
            .strip_prefix("v1:")
            .and_then(weft_identity::hex::decode)
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or_else(|| CaError(format!("{label}: field {field} is not a sealed value (v1:HEX)")))?;
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CaError(format!("{label}: {field}: bad nonce")))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(field, context).as_bytes()), &mut buf)
            .map_err(|_| {
                CaError(format!(
                    "cannot decrypt the CA in {}: wrong key file? (--ca-store-key {}; {label}, field {field}; or the record was changed by someone without the key)",
                    store.kind(),
                    self.file
                ))
            })?;
        Ok(plain.to_vec())
    }
}

fn aad(field: &str, context: &str) -> String {
    format!("weft-ca v1 {field}\n{context}")
}

/// What a sealed value is bound to: the record's trust domain and the SHA-256 of its certificates.
/// Someone who can write the store but has no key file cannot change the trust domain, swap in
/// another certificate, or move a sealed key from another record, without the open failing.
fn binding(trust_domain: &str, cert: &str, chain: Option<&str>) -> String {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(cert.as_bytes());
    h.update(b"\n--chain--\n");
    h.update(chain.unwrap_or_default().as_bytes());
    format!("{trust_domain}\n{}", weft_identity::hex::encode(h.finish().as_ref()))
}

/// The `ca` record.
#[derive(serde::Serialize, serde::Deserialize)]
struct CaRecord {
    version: u32,
    trust_domain: String,
    cert: String,
    chain: Option<String>,
    key: String,
    token_key: String,
}

/// The `ca-sm2` record.
#[derive(serde::Serialize, serde::Deserialize)]
struct SmRecord {
    version: u32,
    cert: String,
    key: String,
}

/// Reads `record`, or creates it from `fresh()` when absent (only if it is still absent: the
/// loser of a race reads the winner's).
async fn get_or_create<T: serde::Serialize + serde::de::DeserializeOwned>(
    conn: &mut Conn,
    store: &CaStore,
    record: &str,
    fresh: impl FnOnce() -> Result<T, CaError>,
) -> Result<T, CaError> {
    let label = store.record_label(record);
    let parse = |v: Vec<u8>| -> Result<T, CaError> {
        serde_json::from_slice(&v).map_err(|e| CaError(format!("{label}: not a weft CA record: {e}")))
    };
    if let Some(v) = conn.get(store, record).await? {
        return parse(v);
    }
    let rec = fresh()?;
    let value = serde_json::to_vec(&rec).map_err(|e| CaError(e.to_string()))?;
    if conn.create(store, record, value).await? {
        tracing::info!(record = %label, "stored a new mesh CA record");
        return Ok(rec);
    }
    tracing::info!(record = %label, "another replica stored the mesh CA record first; using it");
    match conn.get(store, record).await? {
        Some(v) => parse(v),
        None => Err(CaError(format!("{label}: created by another replica, then gone"))),
    }
}

fn first_cert_der(n: &Named) -> Result<Vec<u8>, CaError> {
    Ok(super::parse_cert(n)?.remove(0))
}

/// A CA record built from the flags: `--ca-cert`/`--ca-key`/`--ca-chain`, or a generated root.
fn fresh_record(opts: &CaOptions, kek: &Kek) -> Result<CaRecord, CaError> {
    let td = opts.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN);
    let tokens = TokenKey::generate(td)?;
    let (cert, key, chain) = match (&opts.cert, &opts.key) {
        (Some(c), Some(k)) => (
            Named::file(c)?,
            Named::file(k)?,
            opts.chain.as_deref().map(Named::file).transpose()?,
        ),
        (Some(_), None) => return Err(CaError("--ca-cert needs --ca-key".into())),
        (None, Some(_)) => return Err(CaError("--ca-key needs --ca-cert".into())),
        (None, None) => {
            let (cert, key) = super::generate_root(td)?;
            let n = |label: &str, text| Named {
                label: label.into(),
                text,
            };
            (n("generated root", cert), n("generated root key", key), None)
        }
    };
    // Checked before anything is stored: a bad --ca-cert never reaches the other replicas.
    Ca::from_material(
        Material {
            tokens: tokens.clone(),
            cert: cert.clone(),
            key: key.clone(),
            chain: chain.clone(),
        },
        opts,
        None,
    )?;
    let ctx = binding(td, &cert.text, chain.as_ref().map(|c| c.text.as_str()));
    Ok(CaRecord {
        version: 1,
        trust_domain: td.to_string(),
        cert: cert.text,
        chain: chain.map(|c| c.text),
        key: kek.seal("key", &ctx, key.text.as_bytes())?,
        token_key: kek.seal("token_key", &ctx, tokens.key_bytes())?,
    })
}

/// Loads the CA from `store`, creating it there on first start. `opts.dir` is not used.
pub async fn load_shared(opts: &CaOptions, store: &CaStore, kek: &Kek) -> Result<Ca, CaError> {
    Ca::check_ttls(opts)?;
    let mut conn = store.connect().await?;
    let rec: CaRecord = get_or_create(&mut conn, store, "ca", || fresh_record(opts, kek)).await?;
    let label = store.record_label("ca");
    if rec.version != 1 {
        return Err(CaError(format!(
            "{label}: record version {} (this weft knows 1)",
            rec.version
        )));
    }
    if let Some(flag) = opts.trust_domain.as_deref().filter(|f| *f != rec.trust_domain) {
        return Err(CaError(format!(
            "--trust-domain {flag:?} differs from the trust domain {:?} of the CA in {label}; drop the flag, or use another store prefix/Secret",
            rec.trust_domain
        )));
    }
    let stored_cert = Named {
        label: format!("{label} (cert)"),
        text: rec.cert.clone(),
    };
    if let Some(c) = &opts.cert {
        if first_cert_der(&Named::file(c)?)? != first_cert_der(&stored_cert)? {
            return Err(CaError(format!(
                "--ca-cert {} is not the CA certificate stored in {label}; drop --ca-cert/--ca-key (the stored CA is used), or use another store prefix/Secret",
                c.display()
            )));
        }
    }
    let ctx = binding(&rec.trust_domain, &rec.cert, rec.chain.as_deref());
    let key = kek.open(store, "ca", "key", &ctx, &rec.key)?;
    let token_key = open_token_key(store, kek, &rec)?;
    let key_pem = String::from_utf8(key).map_err(|_| CaError(format!("{label}: key is not PEM")))?;
    let sm = if opts.sm2 {
        let td = rec.trust_domain.clone();
        let s: SmRecord = get_or_create(&mut conn, store, "ca-sm2", || {
            let (cert, key) = sm::SmCa::generate(&td)?;
            let ctx = binding(&td, &cert, None);
            Ok(SmRecord {
                version: 1,
                key: kek.seal("sm2_key", &ctx, key.as_bytes())?,
                cert,
            })
        })
        .await?;
        let sm_label = store.record_label("ca-sm2");
        let key = kek.open(store, "ca-sm2", "sm2_key", &binding(&td, &s.cert, None), &s.key)?;
        Some(sm::SmCa::from_pem(
            &Named {
                label: format!("{sm_label} (cert)"),
                text: s.cert,
            },
            &Named {
                label: format!("{sm_label} (key)"),
                text: String::from_utf8(key).map_err(|_| CaError(format!("{sm_label}: key is not PEM")))?,
            },
        )?)
    } else {
        None
    };
    Ca::from_material(
        Material {
            tokens: TokenKey::from_parts(rec.trust_domain.clone(), token_key),
            cert: stored_cert,
            key: Named {
                label: format!("{label} (key)"),
                text: key_pem,
            },
            chain: rec.chain.map(|text| Named {
                label: format!("{label} (chain)"),
                text,
            }),
        },
        opts,
        sm,
    )
}

/// The bootstrap-token key of the CA in `store` (`weft control token --ca-store`). The CA must
/// exist there already (a weft control created it).
pub async fn load_tokens(store: &CaStore, kek: &Kek) -> Result<TokenKey, CaError> {
    let mut conn = store.connect().await?;
    let label = store.record_label("ca");
    let v = conn.get(store, "ca").await?.ok_or_else(|| {
        CaError(format!(
            "{label}: no CA there yet (start weft control with this --ca-store first)"
        ))
    })?;
    let rec: CaRecord =
        serde_json::from_slice(&v).map_err(|e| CaError(format!("{label}: not a weft CA record: {e}")))?;
    if rec.version != 1 {
        return Err(CaError(format!(
            "{label}: record version {} (this weft knows 1)",
            rec.version
        )));
    }
    let key = open_token_key(store, kek, &rec)?;
    Ok(TokenKey::from_parts(rec.trust_domain, key))
}

/// The record's token key, checked as `weft control` and `weft control token` both need it.
fn open_token_key(store: &CaStore, kek: &Kek, rec: &CaRecord) -> Result<Vec<u8>, CaError> {
    let ctx = binding(&rec.trust_domain, &rec.cert, rec.chain.as_deref());
    let key = kek.open(store, "ca", "token_key", &ctx, &rec.token_key)?;
    if key.len() < 32 {
        return Err(CaError(format!(
            "{}: token_key is shorter than 32 bytes",
            store.record_label("ca")
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_name_the_part() {
        assert_eq!(
            CaStore::parse("etcd://127.0.0.1:2379").unwrap(),
            CaStore::Etcd {
                endpoints: vec!["127.0.0.1:2379".into()],
                prefix: DEFAULT_PREFIX.into(),
                user: None,
                password_file: None
            }
        );
        let s = CaStore::parse("etcd://a:1,b:2/mesh/ca?user=weft&password-file=/p").unwrap();
        assert!(
            matches!(s, CaStore::Etcd { ref prefix, ref user, .. } if prefix == "/mesh/ca/" && user.as_deref() == Some("weft"))
        );
        let s = CaStore::parse("kubernetes?namespace=mesh&secret=ca").unwrap();
        assert!(
            matches!(s, CaStore::Kubernetes { ref namespace, ref secret, .. } if namespace == "mesh" && secret == "ca")
        );
        assert_eq!(s.record_label("ca-sm2"), "Kubernetes Secret mesh/ca-sm2");
        for (spec, part) in [
            ("etcd://", "no etcd endpoint"),
            ("etcd:///p", "no etcd endpoint"),
            ("etcd://host/p", "\"host\" is not HOST:PORT"),
            ("etcd://h:1?user=u", "go together"),
            ("etcd://h:1?bogus=1", "bad option \"bogus=1\""),
            ("kubernetes?secret=a/b", "bad option \"secret=a/b\""),
            ("zk://h:1", "not etcd://"),
        ] {
            let e = CaStore::parse(spec).unwrap_err().0;
            assert!(
                e.starts_with(&format!("--ca-store {spec}: ")) && e.contains(part),
                "{spec}: {e}"
            );
        }
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_field() {
        let store = CaStore::parse("etcd://127.0.0.1:1").unwrap();
        let k = Kek::from_bytes(&[7u8; 32], "k1").unwrap();
        let sealed = k.seal("key", "td\nabc", b"secret pem").unwrap();
        assert!(!sealed.contains(&weft_identity::hex::encode(b"secret pem")));
        assert_eq!(k.open(&store, "ca", "key", "td\nabc", &sealed).unwrap(), b"secret pem");
        // Bound to its record: another trust domain or certificate does not open it.
        assert!(k.open(&store, "ca", "key", "evil\nabc", &sealed).is_err());
        // Another field's associated data: refused.
        assert!(k.open(&store, "ca", "token_key", "td\nabc", &sealed).is_err());
        let other = Kek::from_bytes(&[8u8; 32], "k2").unwrap();
        let e = other.open(&store, "ca", "key", "td\nabc", &sealed).unwrap_err().0;
        assert!(
            e.starts_with("cannot decrypt the CA in etcd: wrong key file? (--ca-store-key k2"),
            "{e}"
        );
    }

    #[test]
    fn key_files_are_32_bytes_or_their_base64() {
        let dir = std::env::temp_dir().join(format!("weft-kek-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw");
        std::fs::write(&raw, [1u8; 32]).unwrap();
        Kek::load(&raw).unwrap();
        let b64 = dir.join("b64");
        // base64 of 32 bytes of 0x01, as `base64` prints it.
        std::fs::write(&b64, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
        Kek::load(&b64).unwrap();
        assert_eq!(
            weft_core::trace::base64_decode(b"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").unwrap(),
            vec![1u8; 32]
        );
        let short = dir.join("short");
        std::fs::write(&short, "abc").unwrap();
        let e = Kek::load(&short).err().unwrap().0;
        assert!(
            e.contains(&short.display().to_string()) && e.contains("found 3 bytes"),
            "{e}"
        );
        let missing = dir.join("missing");
        let e = Kek::load(&missing).err().unwrap().0;
        assert!(e.starts_with(&format!("--ca-store-key {}: ", missing.display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
