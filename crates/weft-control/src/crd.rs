//! weft's custom resources, `weft.dev/v1alpha1`: `WeftRoute` (routing policy of one service, the
//! file registry's `routes` entry) and `WeftDestination` (destination policy, a subset of the file
//! registry's `destinations` entry). The CRD YAML under `deploy/kubernetes/crds/` is generated from
//! these types (`tests/manifests.rs` fails when it differs). A resource is validated exactly like
//! the same entry in a registry file; an invalid one is skipped with the reason.

use crate::model::{parse_fragment, Fragment};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Routing policy for one service: like a registry file's `routes` entry.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "WeftRoute",
    plural = "weftroutes",
    shortname = "wroute",
    namespaced,
    derive = "PartialEq"
)]
pub struct WeftRouteSpec {
    /// The weft service these routes apply to (`reviews.bookinfo`).
    pub service: String,
    /// Routes, first match wins.
    #[serde(default)]
    pub http: Vec<HttpRouteSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HttpRouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these matches selects the route (none: every request).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchSpec>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<DestinationRefSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
    /// A duration such as `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct MatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatchSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct StringMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct DestinationRefSpec {
    /// A weft service name.
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct RetriesSpec {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
}

/// Destination policy for one service: like a registry file's `destinations` entry (load
/// balancing, subsets, outlier detection, connect timeout).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "WeftDestination",
    plural = "weftdestinations",
    shortname = "wdest",
    namespaced,
    derive = "PartialEq"
)]
pub struct WeftDestinationSpec {
    /// The weft service this policy applies to (`reviews.bookinfo`).
    pub service: String,
    /// `round_robin`, `least_request`, `random`, ... (docs/control.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SubsetSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SubsetSpec {
    pub name: String,
    /// Endpoint (pod) labels the subset selects.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct OutlierSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Validates a spec as the file registry's `section` entry; errors name the resource (`what`).
fn to_fragment<T: Serialize>(what: &str, section: &str, spec: &T) -> Result<Fragment, String> {
    let v = serde_json::to_value(spec).map_err(|e| format!("{what}: {e}"))?;
    let doc = serde_json::json!({ section: [v] });
    // JSON is YAML: the same parser and checks as a registry file.
    parse_fragment(what, &doc.to_string()).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| e.replace(&format!("{section}[0]."), "spec."))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

impl WeftRoute {
    pub fn to_fragment(&self, what: &str) -> Result<Fragment, String> {
        to_fragment(what, "routes", &self.spec)
    }
}

impl WeftDestination {
    pub fn to_fragment(&self, what: &str) -> Result<Fragment, String> {
        to_fragment(what, "destinations", &self.spec)
    }
}

/// The CRDs, as (file name under `deploy/kubernetes/crds/`, CustomResourceDefinition).
pub fn definitions() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube::CustomResourceExt;
    vec![
        ("weftroutes.weft.dev.yaml", WeftRoute::crd()),
        ("weftdestinations.weft.dev.yaml", WeftDestination::crd()),
    ]
}
