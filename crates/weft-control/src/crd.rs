//! weft's custom resources, `weft.dev/v1alpha1`: `WeftRoute` (routing policy of one service, the
//! file registry's `routes` entry), `WeftDestination` (destination policy, a `destinations`
//! entry) and `WeftAuthorization` (an `authorization` entry). Their specs are the file parser's own
//! types (`model.rs`'s `RawRoutes`, `RawDestination`, `RawMeshAuthz`), so they carry every field of
//! those entries and cannot drift from the file format. The CRD YAML under
//! `deploy/kubernetes/crds/` is generated from these types (`tests/manifests.rs` fails when it
//! differs). A resource is validated exactly like the same entry in a registry file; an invalid one
//! is skipped with the reason. Every kind has a status subresource: the Kubernetes registry writes
//! the outcome of that validation into it ([`WeftStatus`]).

use crate::model::{parse_fragment, Fragment};
/// Destination policy for one service: a registry file's `destinations` entry, every field of it
/// (kind `WeftDestination`, short name `wdest`); the type is the file parser's own.
pub use crate::model::{RawDestination as WeftDestinationSpec, WeftDestination};
/// Authorization policy: a registry file's `authorization` entry (kind `WeftAuthorization`, short
/// name `wauthz`); the type is the file parser's own.
pub use crate::model::{RawMeshAuthz as WeftAuthorizationSpec, WeftAuthorization};
/// Routing policy for one service: a registry file's `routes` entry, every field of it (kind
/// `WeftRoute`, short name `wroute`); the type is the file parser's own.
pub use crate::model::{RawRoutes as WeftRouteSpec, WeftRoute};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the Kubernetes registry writes into a weft resource's status: the outcome of validating
/// its `spec`, as the usual Kubernetes condition list.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeftStatus {
    /// The `metadata.generation` last validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: `True` (published) or `False` (reason `Invalid`, the message says why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<WeftCondition>,
}

/// One condition, in the shape of Kubernetes' `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeftCondition {
    /// `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// `Accepted` or `Invalid`.
    #[serde(default)]
    pub reason: String,
    /// Why (for `Invalid`: every error with its field path, `spec.http[0].timeout: …`).
    #[serde(default)]
    pub message: String,
    /// The `metadata.generation` the condition is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    #[serde(default)]
    pub last_transition_time: String,
}

/// The condition type the registry writes.
pub const ACCEPTED: &str = "Accepted";

impl WeftStatus {
    /// The status a resource should carry after validation at `generation` (`Ok`: published;
    /// `Err`: the reason), starting from the one it `carries`: other conditions are kept, and so is
    /// `lastTransitionTime` while `status` does not change. `now`: the time to stamp a transition.
    pub fn after_validation(
        carries: Option<&WeftStatus>,
        generation: Option<i64>,
        outcome: Result<(), &str>,
        now: impl FnOnce() -> String,
    ) -> WeftStatus {
        let mut s = carries.cloned().unwrap_or_default();
        let (status, reason, message) = match outcome {
            Ok(()) => ("True", "Accepted", "valid: published".to_string()),
            Err(why) => ("False", "Invalid", why.to_string()),
        };
        let old = s.conditions.iter().position(|c| c.type_ == ACCEPTED);
        let last_transition_time = match old.map(|i| &s.conditions[i]) {
            Some(c) if c.status == status && !c.last_transition_time.is_empty() => c.last_transition_time.clone(),
            _ => now(),
        };
        let c = WeftCondition {
            type_: ACCEPTED.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        };
        match old {
            Some(i) => s.conditions[i] = c,
            None => s.conditions.push(c),
        }
        s.observed_generation = generation;
        s
    }
}

/// Validates a spec (JSON) as the file registry's `section` entry; errors name the resource
/// (`what`), their paths start at `spec.`.
pub fn validate(what: &str, section: &str, spec: &serde_json::Value) -> Result<Fragment, String> {
    let doc = serde_json::json!({ section: [spec] });
    // JSON is YAML: the same parser and checks as a registry file.
    parse_fragment(what, &doc.to_string()).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| locate_unknown_field(&e.replace(&format!("{section}[0]."), "spec."), spec))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// A parse error of the one-line JSON (`error: line 1 column 84: unknown field `ipBlock`, …`)
/// says where by column, which means nothing to whoever wrote the resource: name the field's
/// path in the spec instead (`spec.rules[0].from[0].ipBlock: unknown field …`).
fn locate_unknown_field(e: &str, spec: &serde_json::Value) -> String {
    fn find(v: &serde_json::Value, key: &str, path: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, c) in o {
                    let p = format!("{path}.{k}");
                    if k == key {
                        out.push(p.clone());
                    }
                    find(c, key, p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    find(c, key, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    if !e.contains("error: line 1 column ") {
        return e.to_string();
    }
    // A parse error's first line (then comes a snippet of the JSON, pointing at the column).
    let e = e.lines().next().unwrap_or_default();
    let Some(at) = e.find("error: line 1 column ") else {
        return e.to_string();
    };
    let rest = &e[at..];
    let Some(msg_at) = rest
        .find(": ")
        .and_then(|i| rest[i + 2..].find(": ").map(|j| i + 2 + j + 2))
    else {
        return e.to_string();
    };
    let msg = &rest[msg_at..];
    let Some(field) = msg.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) else {
        return e.to_string();
    };
    let mut paths = Vec::new();
    find(spec, field, "spec".into(), &mut paths);
    if paths.is_empty() {
        return e.to_string();
    }
    format!("{}{}: {msg}", &e[..at], paths.join(", "))
}

type Crd = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// One weft custom resource kind: what the Kubernetes registry watches, validates (as an entry of
/// the registry file's `section`) and writes the status of.
pub struct WeftKind {
    /// `WeftRoute`.
    pub kind: &'static str,
    /// The registry file's section its spec is an entry of (`routes`).
    pub section: &'static str,
    /// Its CRD (generated from the Rust type).
    pub crd: fn() -> Crd,
    /// Group, version, plural: what its API paths are made of.
    pub resource: fn() -> kube::core::ApiResource,
}

macro_rules! weft_kind {
    ($t:ty, $section:literal) => {
        WeftKind {
            kind: stringify!($t),
            section: $section,
            crd: crd_of::<$t>,
            resource: <$t as kube::CustomResourceExt>::api_resource,
        }
    };
}

/// Every weft kind: adding one is one line here (and its list/watch in the registry's RBAC).
pub const KINDS: &[WeftKind] = &[
    weft_kind!(WeftRoute, "routes"),
    weft_kind!(WeftDestination, "destinations"),
    weft_kind!(WeftAuthorization, "authorization"),
];

/// The CRD of `K`, its schema made to keep every field: each object node of `spec` gets
/// `x-kubernetes-preserve-unknown-fields`, so the API server stores what was written (a field
/// spelled another accepted way, `dryRun`, `ipBlocks`, or a typo) and weft's validation, not the
/// API server's pruning, decides: an unknown field is refused with its path in the resource's
/// status instead of silently dropped (an authorization rule losing a condition would match
/// more). `additionalProperties: false` (from `deny_unknown_fields`) is not allowed in a CRD
/// schema and goes.
fn crd_of<K: kube::CustomResourceExt>() -> Crd {
    /// One schema node of the spec (and, through `properties`, `items`, `additionalProperties`,
    /// `anyOf`/`oneOf`/`allOf`, all below it).
    fn walk(v: &mut serde_json::Value) {
        let Some(o) = v.as_object_mut() else { return };
        if o.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) {
            o.remove("additionalProperties");
        }
        // No defaults: the API server would add `ip_blocks: []` beside a written `ipBlocks`, a
        // duplicate field to weft's parser. weft applies its own defaults.
        o.remove("default");
        if o.get("type").and_then(|t| t.as_str()) == Some("object") && !o.contains_key("additionalProperties") {
            o.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        }
        if let Some(p) = o.get_mut("properties").and_then(|p| p.as_object_mut()) {
            p.values_mut().for_each(walk);
        }
        for k in ["items", "additionalProperties"] {
            if let Some(c) = o.get_mut(k) {
                walk(c);
            }
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            if let Some(a) = o.get_mut(k).and_then(|a| a.as_array_mut()) {
                a.iter_mut().for_each(walk);
            }
        }
    }
    let mut crd = K::crd();
    for v in &mut crd.spec.versions {
        if let Some(schema) = v.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            let mut json = serde_json::to_value(&*schema).expect("a schema is JSON");
            if let Some(spec) = json.pointer_mut("/properties/spec") {
                walk(spec);
            }
            *schema = serde_json::from_value(json).expect("still a schema");
        }
    }
    crd
}

impl WeftKind {
    /// `weftroutes`.
    pub fn plural(&self) -> String {
        (self.resource)().plural
    }

    /// The registry entry a resource `namespace/name` with this spec stands for. A resource
    /// speaks for its own namespace's services only — otherwise anyone allowed to create one in
    /// their namespace could re-route, mirror or open up another team's service — except in
    /// [`ROOT_NAMESPACE`], whose resources may apply mesh-wide (Istio's root namespace):
    /// `spec.service` must be a service of the namespace (`<name>.<namespace>`), and an
    /// authorization policy's `namespace` is the resource's. Authorization policy names are
    /// `<spec.name, else the resource's name>.<namespace>`: unique in the mesh, so that no
    /// namespace can take another's policy name first.
    pub fn spec_of(&self, namespace: &str, name: &str, spec: &serde_json::Value) -> Result<serde_json::Value, String> {
        let mut spec = spec.clone();
        let Some(o) = spec.as_object_mut() else {
            return Ok(spec); // validation says what is wrong with it
        };
        if namespace != ROOT_NAMESPACE {
            if let Some(svc) = o.get("service").and_then(|v| v.as_str()) {
                if !svc.ends_with(&format!(".{namespace}")) {
                    return Err(format!(
                        "spec.service: {svc:?} is not a service of namespace {namespace} (a {} applies to its own namespace's services; mesh-wide ones go in {ROOT_NAMESPACE})",
                        self.kind
                    ));
                }
            }
            if self.section == "authorization" {
                match o.get("namespace").and_then(|v| v.as_str()) {
                    Some(ns) if ns != namespace => {
                        return Err(format!(
                            "spec.namespace: {ns:?} is not the resource's namespace {namespace} (mesh-wide policies go in {ROOT_NAMESPACE})"
                        ))
                    }
                    _ => {
                        o.insert("namespace".into(), namespace.into());
                    }
                }
            }
        }
        if self.section == "authorization" {
            let base = o.get("name").and_then(|v| v.as_str()).unwrap_or(name).to_string();
            o.insert("name".into(), format!("{base}.{namespace}").into());
        }
        Ok(spec)
    }
}

/// The namespace whose weft resources may apply to any service, or mesh-wide (where weft
/// control runs, as Istio's root namespace).
pub const ROOT_NAMESPACE: &str = "weft-system";

/// The kind named `kind`.
pub fn kind(kind: &str) -> Option<&'static WeftKind> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// Validates a weft resource as JSON (any kind in [`KINDS`]): its spec as the registry file's
/// entry. Errors name the resource (`what`).
pub fn validate_object(what: &str, obj: &serde_json::Value) -> Result<Fragment, String> {
    let k = obj["kind"]
        .as_str()
        .and_then(kind)
        .ok_or_else(|| format!("{what}: kind {} is not a weft kind", obj["kind"]))?;
    let md = &obj["metadata"];
    let spec = k
        .spec_of(
            md["namespace"].as_str().unwrap_or("default"),
            md["name"].as_str().unwrap_or_default(),
            &obj["spec"],
        )
        .map_err(|e| format!("{what}: {e}"))?;
    validate(what, k.section, &spec)
}

/// The CRDs, as (file name under `deploy/kubernetes/crds/`, CustomResourceDefinition).
pub fn definitions() -> Vec<(String, Crd)> {
    KINDS
        .iter()
        .map(|k| {
            let crd = (k.crd)();
            (format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default()), crd)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_their_types() {
        for k in KINDS {
            let r = (k.resource)();
            assert_eq!(r.kind, k.kind);
            assert_eq!(r.group, "weft.dev");
            let crd = (k.crd)();
            let v = &crd.spec.versions[0];
            assert!(
                v.subresources.as_ref().is_some_and(|s| s.status.is_some()),
                "{}: no status subresource",
                k.kind
            );
            // A structural schema: no references, every node typed, no `additionalProperties: false`.
            let schema = serde_json::to_value(v.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
            fn check(kind: &str, path: &str, v: &serde_json::Value) {
                let o = v.as_object().unwrap();
                assert!(!o.contains_key("$ref"), "{kind}: {path}: $ref");
                assert_ne!(o.get("additionalProperties"), Some(&false.into()), "{kind}: {path}");
                assert!(
                    o.contains_key("type")
                        || o.contains_key("x-kubernetes-int-or-string")
                        || o.contains_key("x-kubernetes-preserve-unknown-fields"),
                    "{kind}: {path}: no type: {v}"
                );
                for (k, child) in o.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
                    check(kind, &format!("{path}.{k}"), child);
                }
                if let Some(items) = o.get("items") {
                    check(kind, &format!("{path}[]"), items);
                }
                if let Some(a) = o.get("additionalProperties").filter(|a| a.is_object()) {
                    check(kind, &format!("{path}{{}}"), a);
                }
            }
            check(k.kind, "", &schema);
            assert_eq!(
                schema["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"], true,
                "{}",
                k.kind
            );
            assert!(
                !serde_json::to_string(&schema["properties"]["spec"])
                    .unwrap()
                    .contains("\"default\""),
                "{}: a default in the spec",
                k.kind
            );
        }
    }

    #[test]
    fn parse_errors_name_the_field_path_in_one_line() {
        let spec = serde_json::json!({"service": "a.b", "http": [{"route": [{"destination": "a.b"}], "timout": "1s"}]});
        let e = validate("WeftRoute ns/x", "routes", &spec).unwrap_err();
        assert!(
            e.starts_with("WeftRoute ns/x: spec.http[0].timout: unknown field `timout`"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let spec = serde_json::json!({"service": "a.b", "http": "all"});
        let e = validate("WeftRoute ns/x", "routes", &spec).unwrap_err();
        assert!(e.contains("expected sequence") && !e.contains('\n'), "{e}");
        let spec = serde_json::json!({"service": "a.b", "http": [{"timeout": "soon"}]});
        let e = validate("WeftRoute ns/x", "routes", &spec).unwrap_err();
        assert!(e.contains("WeftRoute ns/x: spec.http[0].timeout: \"soon\""), "{e}");
    }

    #[test]
    fn status_keeps_the_transition_time_while_the_outcome_holds() {
        let now = || "2026-12-05T10:00:00Z".to_string();
        let later = || "2026-12-05T11:00:00Z".to_string();
        let bad = WeftStatus::after_validation(None, Some(1), Err("spec.http[0].timeout: bad"), now);
        assert_eq!(bad.observed_generation, Some(1));
        let c = &bad.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Accepted", "False", "Invalid")
        );
        assert_eq!(c.message, "spec.http[0].timeout: bad");
        // The same outcome again: nothing changes, not even the time.
        assert_eq!(
            WeftStatus::after_validation(Some(&bad), Some(1), Err("spec.http[0].timeout: bad"), later),
            bad
        );
        let good = WeftStatus::after_validation(Some(&bad), Some(2), Ok(()), later);
        assert_eq!(good.conditions.len(), 1);
        assert_eq!(good.conditions[0].status, "True");
        assert_eq!(good.conditions[0].observed_generation, Some(2));
        assert_eq!(good.conditions[0].last_transition_time, "2026-12-05T11:00:00Z");
    }
}
