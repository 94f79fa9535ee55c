//! Request authentication: the `jwt_authn` block of an HTTP connection manager (Envoy's
//! `envoy.filters.http.jwt_authn`, `JwtAuthentication`).
//!
//! ```yaml
//! jwt_authn:
//!   providers:
//!     auth0:
//!       issuer: https://issuer.example.com/        # the token's `iss` must equal it (optional)
//!       audiences: [bookstore]                      # one must be in the token's `aud` (optional)
//!       local_jwks: {filename: /etc/weft/jwks.json} # or {inline_string: '{"keys": [...]}'}
//!       remote_jwks:                                # or fetched from a cluster, cached, refreshed
//!         http_uri: {uri: "http://idp.example.com/.well-known/jwks.json", cluster: idp, timeout: 1s}
//!         cache_duration: 600s
//!       from_headers: [{name: x-jwt, value_prefix: "Bearer "}]  # default: authorization: Bearer
//!       from_params: [access_token]                             # default: access_token
//!       forward: false                              # false: the token is removed before forwarding
//!       forward_payload_header: x-jwt-payload       # the payload (base64url) for the app
//!       claim_to_headers: [{header_name: x-jwt-sub, claim_name: sub}]  # before routing
//!       clock_skew_seconds: 60
//!   rules:                                          # the first whose match fits the path decides
//!     - match: {prefix: /api}
//!       requires: {provider_name: auth0}
//!     - match: {prefix: /public}
//!       requires: {requires_any: {requirements: [{provider_name: auth0}, {allow_missing: {}}]}}
//! ```
//!
//! Requirements as Envoy's: `provider_name` (a valid token from that provider), `requires_any`,
//! `requires_all`, `allow_missing` (no token is fine, an invalid one is not) and
//! `allow_missing_or_failed` (never rejects; valid tokens still yield claims). A request no rule
//! matches is not checked.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Raw (YAML / xDS) form
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtAuthn {
    pub providers: BTreeMap<String, RawJwtProvider>,
    pub rules: Vec<RawJwtRule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtProvider {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub local_jwks: Option<RawDataSource>,
    pub remote_jwks: Option<RawRemoteJwks>,
    pub from_headers: Vec<RawJwtHeader>,
    pub from_params: Vec<String>,
    pub forward: Option<bool>,
    pub forward_payload_header: Option<String>,
    pub claim_to_headers: Vec<RawClaimToHeader>,
    pub clock_skew_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDataSource {
    pub filename: Option<String>,
    pub inline_string: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRemoteJwks {
    pub http_uri: Option<RawHttpUri>,
    pub cache_duration: Option<crate::typed::RawDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttpUri {
    pub uri: Option<String>,
    pub cluster: Option<String>,
    pub timeout: Option<crate::typed::RawDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtHeader {
    pub name: Option<String>,
    pub value_prefix: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClaimToHeader {
    pub header_name: Option<String>,
    pub claim_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtRule {
    #[serde(rename = "match")]
    pub matcher: Option<RawJwtMatch>,
    pub requires: Option<RawJwtRequirement>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtMatch {
    pub prefix: Option<String>,
    pub path: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtRequirement {
    pub provider_name: Option<String>,
    pub requires_any: Option<RawJwtRequirements>,
    pub requires_all: Option<RawJwtRequirements>,
    pub allow_missing: Option<RawEmpty>,
    pub allow_missing_or_failed: Option<RawEmpty>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwtRequirements {
    pub requirements: Vec<RawJwtRequirement>,
}

/// `{}` (Envoy's `google.protobuf.Empty`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmpty {}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JwtAuthn {
    pub providers: Vec<JwtProvider>,
    pub rules: Vec<JwtRule>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JwtProvider {
    pub name: String,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Where tokens are looked for (never empty: defaults filled in).
    pub from_headers: Vec<JwtHeader>,
    pub from_params: Vec<String>,
    pub forward: bool,
    /// Lowercase.
    pub forward_payload_header: Option<String>,
    pub claim_to_headers: Vec<ClaimToHeader>,
    pub clock_skew_seconds: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum JwksSource {
    /// A JWKS document (read from the file when the configuration was loaded, or inline).
    Local(String),
    Remote(RemoteJwks),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RemoteJwks {
    pub cluster: String,
    /// The request's `:authority` (from the URI).
    pub authority: String,
    /// The request's path and query (from the URI).
    pub path: String,
    /// An `https://` URI: the fetch is refused unless the cluster originates TLS (never sent in
    /// plaintext by mistake).
    pub https: bool,
    #[serde(serialize_with = "crate::model::ser_dur")]
    pub timeout: Duration,
    #[serde(serialize_with = "crate::model::ser_dur")]
    pub cache_duration: Duration,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JwtHeader {
    /// Lowercase.
    pub name: String,
    pub value_prefix: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClaimToHeader {
    /// Lowercase.
    pub header_name: String,
    /// Nested claims are written `a.b`.
    pub claim_name: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JwtRule {
    pub matcher: JwtMatch,
    pub requires: JwtRequirement,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum JwtMatch {
    Prefix(String),
    Path(String),
}

impl JwtMatch {
    /// `path` without its query.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            JwtMatch::Prefix(p) => path.starts_with(p.as_str()),
            JwtMatch::Path(p) => path == p,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum JwtRequirement {
    /// Index into `providers`.
    Provider(usize),
    Any(Vec<JwtRequirement>),
    All(Vec<JwtRequirement>),
    AllowMissing,
    AllowMissingOrFailed,
}

/// Envoy's default clock skew.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
/// Envoy's default JWKS cache duration (`cache_duration` unset): 10 minutes.
pub const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

use crate::errors::ConfigError;

/// Validates a `jwt_authn` block. Local JWKS files are read here: a missing or malformed one
/// refuses the configuration, naming the field.
pub fn validate(
    path: &str,
    raw: &RawJwtAuthn,
    clusters: &HashSet<String>,
    allow_unknown_clusters: bool,
) -> (Option<JwtAuthn>, ConfigError) {
    let mut errs = ConfigError::default();
    let mut providers = Vec::new();
    if raw.providers.is_empty() {
        errs.add(format!("{path}.providers"), "needs at least one provider");
    }
    for (name, p) in &raw.providers {
        let pp = format!("{path}.providers.{name}");
        if let Some(p) = provider(&mut errs, &pp, name, p, clusters, allow_unknown_clusters) {
            providers.push(p);
        }
    }
    let names: Vec<&str> = raw.providers.keys().map(String::as_str).collect();
    let mut rules = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        let rp = format!("{path}.rules[{i}]");
        let matcher = match &r.matcher {
            None => {
                errs.add(format!("{rp}.match"), "is required");
                None
            }
            Some(m) => match (&m.prefix, &m.path) {
                (Some(p), None) if p.starts_with('/') => Some(JwtMatch::Prefix(p.clone())),
                (None, Some(p)) if p.starts_with('/') => Some(JwtMatch::Path(p.clone())),
                (Some(_), Some(_)) | (None, None) => {
                    errs.add(format!("{rp}.match"), "needs exactly one of prefix, path");
                    None
                }
                _ => {
                    errs.add(format!("{rp}.match"), "must start with '/'");
                    None
                }
            },
        };
        let requires = match &r.requires {
            None => {
                errs.add(format!("{rp}.requires"), "is required");
                None
            }
            Some(q) => requirement(&mut errs, &format!("{rp}.requires"), q, &names),
        };
        if let (Some(matcher), Some(requires)) = (matcher, requires) {
            rules.push(JwtRule { matcher, requires });
        }
    }
    if errs.is_empty() {
        (Some(JwtAuthn { providers, rules }), errs)
    } else {
        (None, errs)
    }
}

fn header_name(errs: &mut ConfigError, path: &str, v: &str) -> Option<String> {
    match http::HeaderName::from_bytes(v.as_bytes()) {
        Ok(h) if !v.starts_with(':') => Some(h.as_str().to_string()),
        _ => {
            errs.add(path.to_string(), format!("\"{v}\" is not a valid header name"));
            None
        }
    }
}

fn dur(errs: &mut ConfigError, path: &str, v: &Option<crate::typed::RawDuration>, default: Duration) -> Duration {
    match v {
        None => default,
        Some(s) => match s.get() {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.add(path.to_string(), "must be greater than zero");
                default
            }
            Err(e) => {
                errs.add(path.to_string(), e);
                default
            }
        },
    }
}

/// Checks a JWKS document's shape: a JSON object with a non-empty `keys` array whose keys have
/// the members their `kty` needs (the key material itself is decoded by the proxy).
pub fn check_jwks(text: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not a JWKS (JSON): {e}"))?;
    let keys = v
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWKS: no \"keys\" array")?;
    if keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    for (i, k) in keys.iter().enumerate() {
        let needs: &[&str] = match k.get("kty").and_then(|t| t.as_str()) {
            None => return Err(format!("keys[{i}] has no \"kty\"")),
            Some("RSA") => &["n", "e"],
            Some("EC") => &["crv", "x", "y"],
            Some("OKP") => &["crv", "x"],
            Some("oct") => &["k"],
            Some(o) => return Err(format!("keys[{i}]: unsupported kty \"{o}\" (RSA, EC, OKP, oct)")),
        };
        for m in needs {
            if k.get(*m).and_then(|v| v.as_str()).is_none_or(str::is_empty) {
                return Err(format!("keys[{i}] ({}) has no \"{m}\"", k["kty"]));
            }
        }
    }
    Ok(())
}

fn provider(
    errs: &mut ConfigError,
    pp: &str,
    name: &str,
    p: &RawJwtProvider,
    clusters: &HashSet<String>,
    allow_unknown_clusters: bool,
) -> Option<JwtProvider> {
    let before = errs.len();
    let jwks = match (&p.local_jwks, &p.remote_jwks) {
        (Some(_), Some(_)) | (None, None) => {
            errs.add(pp.to_string(), "needs exactly one of local_jwks, remote_jwks");
            None
        }
        (Some(l), None) => {
            let lp = format!("{pp}.local_jwks");
            let text = match (&l.filename, &l.inline_string) {
                (Some(f), None) => match std::fs::read_to_string(f) {
                    Ok(t) => Some((t, format!("{lp}.filename"))),
                    Err(e) => {
                        errs.add(format!("{lp}.filename"), format!("cannot read {f}: {e}"));
                        None
                    }
                },
                (None, Some(s)) => Some((s.clone(), format!("{lp}.inline_string"))),
                _ => {
                    errs.add(lp, "needs exactly one of filename, inline_string");
                    None
                }
            };
            text.and_then(|(t, fp)| match check_jwks(&t) {
                Ok(()) => Some(JwksSource::Local(t)),
                Err(e) => {
                    errs.add(fp, e);
                    None
                }
            })
        }
        (None, Some(r)) => {
            let rp = format!("{pp}.remote_jwks");
            match &r.http_uri {
                None => {
                    errs.add(format!("{rp}.http_uri"), "is required");
                    None
                }
                Some(u) => {
                    let up = format!("{rp}.http_uri");
                    let uri = match u.uri.as_deref().map(str::parse::<http::Uri>) {
                        None => {
                            errs.add(format!("{up}.uri"), "is required");
                            None
                        }
                        Some(Ok(uri))
                            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
                        {
                            Some(uri)
                        }
                        Some(Ok(_)) => {
                            errs.add(
                                format!("{up}.uri"),
                                "must be an absolute http:// or https:// URI (TLS comes from the cluster's tls block)",
                            );
                            None
                        }
                        Some(Err(e)) => {
                            errs.add(format!("{up}.uri"), format!("invalid URI: {e}"));
                            None
                        }
                    };
                    let cluster = match &u.cluster {
                        None => {
                            errs.add(format!("{up}.cluster"), "is required");
                            None
                        }
                        Some(c) if !allow_unknown_clusters && !clusters.contains(c) => {
                            errs.add(format!("{up}.cluster"), format!("unknown cluster \"{c}\""));
                            None
                        }
                        Some(c) => Some(c.clone()),
                    };
                    let timeout = dur(errs, &format!("{up}.timeout"), &u.timeout, Duration::from_secs(1));
                    let cache_duration = dur(
                        errs,
                        &format!("{rp}.cache_duration"),
                        &r.cache_duration,
                        DEFAULT_CACHE_DURATION,
                    );
                    match (uri, cluster) {
                        (Some(uri), Some(cluster)) => Some(JwksSource::Remote(RemoteJwks {
                            cluster,
                            authority: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                            path: uri.path_and_query().map_or("/".into(), |p| p.to_string()),
                            https: uri.scheme_str() == Some("https"),
                            timeout,
                            cache_duration,
                        })),
                        _ => None,
                    }
                }
            }
        }
    };
    let mut from_headers = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        let hp = format!("{pp}.from_headers[{i}]");
        match &h.name {
            None => errs.add(format!("{hp}.name"), "is required"),
            Some(n) => {
                if let Some(name) = header_name(errs, &format!("{hp}.name"), n) {
                    from_headers.push(JwtHeader {
                        name,
                        value_prefix: h.value_prefix.clone().unwrap_or_default(),
                    });
                }
            }
        }
    }
    let mut from_params = p.from_params.clone();
    for (i, q) in from_params.iter().enumerate() {
        if q.is_empty() || q.contains(['&', '=', '#']) {
            errs.add(format!("{pp}.from_params[{i}]"), "is not a query parameter name");
        }
    }
    if from_headers.is_empty() && from_params.is_empty() {
        // Envoy's default locations.
        from_headers.push(JwtHeader {
            name: "authorization".into(),
            value_prefix: "Bearer ".into(),
        });
        from_params.push("access_token".into());
    }
    let forward_payload_header = p
        .forward_payload_header
        .as_deref()
        .and_then(|h| header_name(errs, &format!("{pp}.forward_payload_header"), h));
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        let cp = format!("{pp}.claim_to_headers[{i}]");
        let h = match &c.header_name {
            None => {
                errs.add(format!("{cp}.header_name"), "is required");
                None
            }
            Some(h) => header_name(errs, &format!("{cp}.header_name"), h),
        };
        let claim = match c.claim_name.as_deref() {
            None | Some("") => {
                errs.add(format!("{cp}.claim_name"), "is required");
                None
            }
            Some(c) => Some(c.to_string()),
        };
        if let (Some(header_name), Some(claim_name)) = (h, claim) {
            claim_to_headers.push(ClaimToHeader {
                header_name,
                claim_name,
            });
        }
    }
    let clock_skew_seconds = match p.clock_skew_seconds {
        None => DEFAULT_CLOCK_SKEW_SECONDS,
        Some(s) if s <= 3600 => s,
        Some(_) => {
            errs.add(format!("{pp}.clock_skew_seconds"), "must be at most 3600");
            0
        }
    };
    if p.audiences.iter().any(String::is_empty) {
        errs.add(format!("{pp}.audiences"), "must not contain an empty audience");
    }
    if p.issuer.as_deref() == Some("") {
        errs.add(format!("{pp}.issuer"), "must not be empty");
    }
    if errs.len() != before {
        return None;
    }
    Some(JwtProvider {
        name: name.to_string(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks: jwks?,
        from_headers,
        from_params,
        forward: p.forward.unwrap_or(false),
        forward_payload_header,
        claim_to_headers,
        clock_skew_seconds,
    })
}

fn requirement(errs: &mut ConfigError, path: &str, r: &RawJwtRequirement, names: &[&str]) -> Option<JwtRequirement> {
    let set = [
        r.provider_name.is_some(),
        r.requires_any.is_some(),
        r.requires_all.is_some(),
        r.allow_missing.is_some(),
        r.allow_missing_or_failed.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        errs.add(
            path.to_string(),
            "needs exactly one of provider_name, requires_any, requires_all, allow_missing, allow_missing_or_failed",
        );
        return None;
    }
    let list = |errs: &mut ConfigError, f: &str, l: &RawJwtRequirements| -> Option<Vec<JwtRequirement>> {
        if l.requirements.len() < 2 {
            errs.add(format!("{path}.{f}.requirements"), "needs at least two requirements");
            return None;
        }
        let before = errs.len();
        let v: Vec<JwtRequirement> = l
            .requirements
            .iter()
            .enumerate()
            .filter_map(|(i, q)| requirement(errs, &format!("{path}.{f}.requirements[{i}]"), q, names))
            .collect();
        (errs.len() == before).then_some(v)
    };
    if let Some(n) = &r.provider_name {
        match names.iter().position(|p| p == n) {
            Some(i) => Some(JwtRequirement::Provider(i)),
            None => {
                errs.add(format!("{path}.provider_name"), format!("unknown provider \"{n}\""));
                None
            }
        }
    } else if let Some(l) = &r.requires_any {
        list(errs, "requires_any", l).map(JwtRequirement::Any)
    } else if let Some(l) = &r.requires_all {
        list(errs, "requires_all", l).map(JwtRequirement::All)
    } else if r.allow_missing.is_some() {
        Some(JwtRequirement::AllowMissing)
    } else {
        Some(JwtRequirement::AllowMissingOrFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}"#;

    fn parse(yaml: &str) -> (Option<JwtAuthn>, ConfigError) {
        let raw: RawJwtAuthn = serde_saphyr::from_str(yaml).unwrap();
        let clusters: HashSet<String> = ["idp".to_string()].into();
        validate("j", &raw, &clusters, false)
    }

    #[test]
    fn providers_and_rules() {
        let y = format!(
            "providers:\n  a: {{issuer: i, audiences: [x], local_jwks: {{inline_string: '{JWKS}'}}}}\n  b: {{remote_jwks: {{http_uri: {{uri: 'http://idp/jwks', cluster: idp}}, cache_duration: 5s}}, from_headers: [{{name: X-Tok}}], forward: true}}\nrules:\n  - {{match: {{prefix: /api}}, requires: {{provider_name: b}}}}\n  - {{match: {{path: /p}}, requires: {{requires_any: {{requirements: [{{provider_name: a}}, {{allow_missing: {{}}}}]}}}}}}\n"
        );
        let (j, errs) = parse(&y);
        assert!(errs.is_empty(), "{errs:?}");
        let j = j.unwrap();
        assert_eq!(j.providers[0].from_headers[0].name, "authorization");
        assert_eq!(j.providers[0].from_params, vec!["access_token"]);
        assert_eq!(j.providers[1].from_headers[0].name, "x-tok");
        assert!(j.providers[1].from_params.is_empty());
        match &j.providers[1].jwks {
            JwksSource::Remote(r) => {
                assert_eq!((r.authority.as_str(), r.path.as_str()), ("idp", "/jwks"));
                assert_eq!(r.cache_duration, Duration::from_secs(5));
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(j.rules[0].requires, JwtRequirement::Provider(1));
        assert_eq!(
            j.rules[1].requires,
            JwtRequirement::Any(vec![JwtRequirement::Provider(0), JwtRequirement::AllowMissing])
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("providers: {a: {}}", "j.providers.a"),
            ("providers: {a: {local_jwks: {inline_string: '{}'}}}", "j.providers.a.local_jwks.inline_string"),
            (
                "providers: {a: {local_jwks: {filename: /nonexistent/jwks.json}}}",
                "j.providers.a.local_jwks.filename",
            ),
            (
                "providers: {a: {remote_jwks: {http_uri: {uri: 'http://x/', cluster: nope}}}}",
                "j.providers.a.remote_jwks.http_uri.cluster",
            ),
            (
                "providers: {a: {remote_jwks: {http_uri: {uri: '/rel', cluster: idp}}}}",
                "j.providers.a.remote_jwks.http_uri.uri",
            ),
            (
                &format!("providers: {{a: {{local_jwks: {{inline_string: '{JWKS}'}}}}}}\nrules: [{{match: {{prefix: /}}, requires: {{provider_name: zz}}}}]"),
                "j.rules[0].requires.provider_name",
            ),
            (
                &format!("providers: {{a: {{local_jwks: {{inline_string: '{JWKS}'}}, forward_payload_header: 'bad header'}}}}"),
                "j.providers.a.forward_payload_header",
            ),
            ("providers: {}", "j.providers"),
        ];
        for (y, field) in cases {
            let (j, errs) = parse(y);
            assert!(j.is_none(), "{y}");
            assert!(errs.errors.iter().any(|e| e.path == field), "{y}: {errs:?}");
        }
    }
}
