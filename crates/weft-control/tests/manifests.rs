//! The Kubernetes manifests under deploy/kubernetes/: every file parses as YAML into the
//! Kubernetes type its `kind` names (k8s-openapi), the RBAC rules grant exactly what the registry
//! watches (no more verbs, no other resources), and the pieces refer to each other consistently
//! (service account, webhook service and port, injector flags).
#![cfg(feature = "kubernetes")]

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use weft_control::registry::kubernetes::{STATUS_VERBS, VERBS, WATCHED};

fn manifests() -> BTreeMap<String, String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let text = std::fs::read_to_string(&p).unwrap();
            out.insert(p.file_name().unwrap().to_string_lossy().into_owned(), text);
        }
    }
    out
}

fn parse<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> T {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn every_manifest_parses_and_rbac_is_exactly_what_the_registry_watches() {
    let files = manifests();
    assert!(files.len() >= 7, "{:?}", files.keys());
    let mut kinds = BTreeMap::new();
    let mut role = None;
    let mut binding = None;
    let mut deployment = None;
    let mut service = None;
    let mut webhook = None;
    let (mut ca_role, mut ca_binding) = (None, None);
    for (file, text) in &files {
        let v: serde_json::Value = parse(file, text);
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no kind"))
            .to_string();
        assert!(v["apiVersion"].is_string(), "{file}: no apiVersion");
        assert!(v["metadata"]["name"].is_string(), "{file}: no metadata.name");
        match kind.as_str() {
            "Namespace" => drop(parse::<Namespace>(file, text)),
            "ServiceAccount" => drop(parse::<ServiceAccount>(file, text)),
            "ClusterRole" => role = Some(parse::<ClusterRole>(file, text)),
            "ClusterRoleBinding" => binding = Some(parse::<ClusterRoleBinding>(file, text)),
            "Role" => ca_role = Some(parse::<k8s_openapi::api::rbac::v1::Role>(file, text)),
            "RoleBinding" => ca_binding = Some(parse::<k8s_openapi::api::rbac::v1::RoleBinding>(file, text)),
            "Deployment" => deployment = Some(parse::<Deployment>(file, text)),
            "Service" => service = Some(parse::<Service>(file, text)),
            "MutatingWebhookConfiguration" => webhook = Some(parse::<MutatingWebhookConfiguration>(file, text)),
            "CustomResourceDefinition" => {}
            other => panic!("{file}: unexpected kind {other}"),
        }
        kinds.insert(kind, file.clone());
    }

    // RBAC: (group, resource) → verbs, exactly the registry's.
    let role = role.expect("a ClusterRole");
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in role.rules.unwrap_or_default() {
        for g in r.api_groups.clone().unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                granted
                    .entry((g.clone(), res))
                    .or_default()
                    .extend(r.verbs.iter().cloned());
            }
        }
    }
    let verbs: BTreeSet<String> = VERBS.iter().map(|s| s.to_string()).collect();
    let mut wanted: BTreeMap<(String, String), BTreeSet<String>> = WATCHED
        .iter()
        .map(|(g, r)| ((g.to_string(), r.to_string()), verbs.clone()))
        .collect();
    // Every weft kind: watched, and its status written.
    let status_verbs: BTreeSet<String> = STATUS_VERBS.iter().map(|s| s.to_string()).collect();
    for k in weft_control::crd::KINDS {
        let plural = k.plural();
        assert!(
            WATCHED.contains(&("weft.dev", plural.as_str())),
            "{}: not in the registry's WATCHED",
            k.kind
        );
        wanted.insert(("weft.dev".into(), format!("{plural}/status")), status_verbs.clone());
    }
    assert_eq!(
        granted, wanted,
        "the ClusterRole must grant exactly list/watch on what the registry watches and get/patch/update on weft kinds' status"
    );

    // The binding gives that role to the Deployment's service account.
    let binding = binding.expect("a ClusterRoleBinding");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let d = deployment.expect("a Deployment");
    let ns = d.metadata.namespace.clone().unwrap();
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(2), "weft control runs as two replicas");
    let pod = spec.template.spec.unwrap();
    let sa = pod.service_account_name.clone().unwrap();
    let subjects = binding.subjects.unwrap();
    assert!(subjects
        .iter()
        .any(|s| s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(&ns)));

    // The container runs weft control with the Kubernetes registry and the injector, whose
    // certificate files come from a mounted volume.
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    let flag = |f: &str| args.iter().position(|a| a == f).map(|i| args[i + 1].clone());
    assert_eq!(args[0], "control");
    assert_eq!(flag("--registry").as_deref(), Some("kubernetes"));
    let cert = flag("--injector-cert").unwrap();
    let mounts = c.volume_mounts.clone().unwrap();
    assert!(
        mounts.iter().any(|m| cert.starts_with(&m.mount_path)),
        "{cert} not under a mount"
    );
    let injector_port: i32 = flag("--injector-listen")
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // The webhook points at the Service, whose port leads to the injector's port.
    let svc = service.expect("a Service");
    let wh = webhook.expect("a MutatingWebhookConfiguration");
    let hook = &wh.webhooks.unwrap()[0];
    let target = hook.client_config.service.clone().unwrap();
    assert_eq!(target.name, svc.metadata.name.clone().unwrap());
    assert_eq!(target.namespace, svc.metadata.namespace.clone().unwrap());
    assert_eq!(target.path.as_deref(), Some("/inject"));
    let svc_ports = svc.spec.clone().unwrap().ports.unwrap();
    let port = svc_ports
        .iter()
        .find(|p| Some(p.port) == target.port)
        .cloned()
        .expect("the webhook's port is a Service port");
    let named = port.target_port.unwrap();
    let container_port = c
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .find(|p| match &named {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n) => {
                p.name.as_deref() == Some(n.as_str())
            }
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => p.container_port == *i,
        })
        .expect("the Service's target port is a container port");
    assert_eq!(container_port.container_port, injector_port);
    assert_eq!(hook.admission_review_versions, vec!["v1".to_string()]);

    // Secure by default: no plaintext xDS beyond loopback; the CA in the Secret the Role names,
    // its key file from a mounted Secret; injected sidecars sent to the TLS port, through a
    // Service port that leads to it.
    assert!(!args.iter().any(|a| a == "--insecure-xds"), "{args:?}");
    let store = flag("--ca-store").expect("the CA in a shared store");
    let secret = store
        .split("secret=")
        .nth(1)
        .expect("the store names its Secret")
        .to_string();
    let key = flag("--ca-store-key").unwrap();
    assert!(
        mounts.iter().any(|m| key.starts_with(&m.mount_path)),
        "{key} not under a mount"
    );
    let ca_role = ca_role.expect("a Role for the CA's Secret");
    let rules = ca_role.rules.unwrap_or_default();
    let rule_of = |verb: &str| {
        rules
            .iter()
            .find(|r| r.verbs == [verb.to_string()])
            .unwrap_or_else(|| panic!("no {verb} rule"))
    };
    assert_eq!(
        rule_of("get").resource_names.as_deref(),
        Some(&[secret.clone()][..]),
        "get on the CA's Secret only"
    );
    assert_eq!(rules.len(), 2, "only get (by name) and create on secrets: {rules:?}");
    for r in &rules {
        assert_eq!(r.resources.as_deref(), Some(&["secrets".to_string()][..]));
    }
    assert_eq!(ca_role.metadata.namespace.as_deref(), Some(ns.as_str()));
    let ca_binding = ca_binding.expect("a RoleBinding for the CA's Role");
    assert_eq!(ca_binding.role_ref.name, ca_role.metadata.name.clone().unwrap());
    assert!(ca_binding
        .subjects
        .unwrap_or_default()
        .iter()
        .any(|s| s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(&ns)));
    let tls_port: i32 = flag("--xds-tls").unwrap().rsplit(':').next().unwrap().parse().unwrap();
    let sidecars_to = flag("--injector-xds-tls-address").expect("injected sidecars use the TLS port");
    let (host, port) = sidecars_to.rsplit_once(':').unwrap();
    let svc_name = svc.metadata.name.clone().unwrap();
    assert_eq!(host, format!("{svc_name}.{ns}.svc"));
    let svc_port = svc_ports
        .iter()
        .find(|p| p.port.to_string() == port)
        .expect("the TLS address's port is a Service port");
    let target = match svc_port.target_port.clone().unwrap() {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n) => {
            c.ports
                .clone()
                .unwrap()
                .into_iter()
                .find(|p| p.name.as_deref() == Some(n.as_str()))
                .unwrap()
                .container_port
        }
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i,
    };
    assert_eq!(target, tls_port, "the Service's TLS port leads to --xds-tls");
    assert_eq!(hook.side_effects, "None");
    let sel = hook.namespace_selector.clone().unwrap().match_labels.unwrap();
    assert_eq!(sel.get("sidecar.weft.dev/inject").map(String::as_str), Some("enabled"));
}

/// The CRD YAML under deploy/kubernetes/crds/ is what the Rust types generate (regenerate with
/// `WEFT_BLESS=1 cargo test -p weft-control --features kubernetes --test manifests`).
#[test]
fn committed_crds_match_the_rust_types() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/crds");
    let bless = std::env::var("WEFT_BLESS").is_ok_and(|v| v == "1");
    for (file, crd) in weft_control::crd::definitions() {
        let generated = format!(
            "# Generated from crates/weft-control/src/crd.rs: do not edit (see tests/manifests.rs).\n{}",
            serde_saphyr::to_string(&crd).unwrap()
        );
        let path = dir.join(&file);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            committed == generated,
            "{file} differs from what crd.rs generates: regenerate with WEFT_BLESS=1"
        );
        let parsed: CustomResourceDefinition = parse(&file, &committed);
        assert_eq!(parsed.spec.group, "weft.dev");
        assert_eq!(parsed, crd, "{file} does not read back as the generated CRD");
    }
}
