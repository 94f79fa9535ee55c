//! Deterministic merging of several registries.
//!
//! Every source (a file, an etcd service, a Dubbo interface) belongs to one registry, and each
//! registry has a precedence: the order of the `--registry` flags, the first given winning. For each
//! name (a service; the routes, the destination policy of a service; the rate limit service block)
//! the registry with the highest precedence that defines it is served; definitions of the same name
//! in registries of lower precedence are dropped. A dropped definition that differs from the served
//! one is a [`Conflict`] (listed on `/debug/registry`, counted, logged); an identical one is not.
//! Within one registry a name defined twice stays an error, as before (`World::build`), with one
//! exception: in the Kubernetes registry, Istio's VirtualServices and DestinationRules rank below
//! weft's own WeftRoutes and WeftDestinations ([`tier`]), so a WeftRoute for a service wins over a
//! VirtualService for it, and a difference is a conflict like one between two registries.

use crate::model::{Fragment, Service};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A name defined by two registries with different definitions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    /// `service`, `routes`, `destination` or `rate_limit_service`.
    pub kind: &'static str,
    pub name: String,
    /// The source that is served (from the registry with precedence) ...
    pub kept: String,
    pub kept_precedence: usize,
    /// ... and the one whose definition was dropped.
    pub dropped: String,
    pub dropped_precedence: usize,
}

/// The rank of a source inside its registry: 1 for sources translated from Istio resources (they
/// yield to weft's own definitions of the same name in the same registry), 0 for the rest.
pub fn tier(source: &str) -> usize {
    usize::from(source.starts_with("k8s:virtualservice/") || source.starts_with("k8s:destinationrule/"))
}

/// (registry precedence, [`tier`]): lower ranks win.
type Rank = (usize, usize);

/// Services compare equal regardless of the order endpoints were listed or discovered in.
fn same_service(a: &Service, b: &Service) -> bool {
    if a.name != b.name || a.port != b.port || a.protocol != b.protocol || a.endpoints.len() != b.endpoints.len() {
        return false;
    }
    let mut ea: Vec<_> = a.endpoints.iter().collect();
    let mut eb: Vec<_> = b.endpoints.iter().collect();
    ea.sort_by_key(|e| e.address);
    eb.sort_by_key(|e| e.address);
    ea == eb
}

/// The fragments to serve, and the conflicts. Borrowed unchanged when every source has the same
/// precedence (one registry: the common case costs nothing).
pub fn resolve<'a>(
    fragments: &'a BTreeMap<String, Arc<Fragment>>,
    precedence: &HashMap<String, usize>,
) -> (Cow<'a, BTreeMap<String, Arc<Fragment>>>, Vec<Conflict>) {
    let prec = |s: &str| precedence.get(s).copied().unwrap_or(0);
    let rank = |s: &str| (prec(s), tier(s));
    let mut levels: Vec<(usize, usize)> = fragments.keys().map(|k| rank(k)).collect();
    levels.sort_unstable();
    levels.dedup();
    if levels.len() <= 1 {
        return (Cow::Borrowed(fragments), Vec::new());
    }
    // Sources in precedence order, then by name: the first definition seen of a name wins.
    let mut order: Vec<(&String, &Arc<Fragment>)> = fragments.iter().collect();
    order.sort_by_key(|(k, _)| (rank(k), k.as_str()));
    // (kind, name) → (rank, source, index into that source's list)
    let mut owner: HashMap<(u8, &str), (Rank, &str, usize)> = HashMap::new();
    let mut conflicts = Vec::new();
    let mut out: BTreeMap<String, Arc<Fragment>> = BTreeMap::new();
    for (src, f) in order {
        let p = rank(src);
        let mut drop_svc = Vec::new();
        let mut drop_route = Vec::new();
        let mut drop_dest = Vec::new();
        let mut drop_rls = false;
        for (i, s) in f.services.iter().enumerate() {
            match owner.get(&(0, s.name.as_str())) {
                Some(&(op, osrc, oi)) if op < p => {
                    drop_svc.push(i);
                    if !same_service(&fragments[osrc].services[oi], s) {
                        conflicts.push(conflict("service", &s.name, osrc, op.0, src, p.0));
                    }
                }
                Some(_) => {}
                None => {
                    owner.insert((0, s.name.as_str()), (p, src.as_str(), i));
                }
            }
        }
        for (i, r) in f.routes.iter().enumerate() {
            match owner.get(&(1, r.service.as_str())) {
                Some(&(op, osrc, oi)) if op < p => {
                    drop_route.push(i);
                    if fragments[osrc].routes[oi] != *r {
                        conflicts.push(conflict("routes", &r.service, osrc, op.0, src, p.0));
                    }
                }
                Some(_) => {}
                None => {
                    owner.insert((1, r.service.as_str()), (p, src.as_str(), i));
                }
            }
        }
        for (i, d) in f.destinations.iter().enumerate() {
            match owner.get(&(2, d.service.as_str())) {
                Some(&(op, osrc, oi)) if op < p => {
                    drop_dest.push(i);
                    if fragments[osrc].destinations[oi] != *d {
                        conflicts.push(conflict("destination", &d.service, osrc, op.0, src, p.0));
                    }
                }
                Some(_) => {}
                None => {
                    owner.insert((2, d.service.as_str()), (p, src.as_str(), i));
                }
            }
        }
        if let Some(r) = &f.rate_limit_service {
            match owner.get(&(3, "")) {
                Some(&(op, osrc, _)) if op < p => {
                    drop_rls = true;
                    if fragments[osrc].rate_limit_service.as_ref() != Some(r) {
                        conflicts.push(conflict(
                            "rate_limit_service",
                            "rate_limit_service",
                            osrc,
                            op.0,
                            src,
                            p.0,
                        ));
                    }
                }
                Some(_) => {}
                None => {
                    owner.insert((3, ""), (p, src.as_str(), 0));
                }
            }
        }
        if drop_svc.is_empty() && drop_route.is_empty() && drop_dest.is_empty() && !drop_rls {
            out.insert(src.clone(), f.clone());
            continue;
        }
        let keep = |drop: &[usize], i: usize| !drop.contains(&i);
        let g = Fragment {
            services: f
                .services
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(&drop_svc, *i))
                .map(|(_, s)| s.clone())
                .collect(),
            routes: f
                .routes
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(&drop_route, *i))
                .map(|(_, s)| s.clone())
                .collect(),
            destinations: f
                .destinations
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(&drop_dest, *i))
                .map(|(_, s)| s.clone())
                .collect(),
            rate_limit_service: if drop_rls { None } else { f.rate_limit_service.clone() },
            authorization: f.authorization.clone(),
            telemetry: f.telemetry.clone(),
        };
        out.insert(src.clone(), Arc::new(g));
    }
    (Cow::Owned(out), conflicts)
}

fn conflict(kind: &'static str, name: &str, kept: &str, kp: usize, dropped: &str, dp: usize) -> Conflict {
    Conflict {
        kind,
        name: name.to_string(),
        kept: kept.to_string(),
        kept_precedence: kp,
        dropped: dropped.to_string(),
        dropped_precedence: dp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_fragment;

    fn frag(text: &str) -> Arc<Fragment> {
        Arc::new(parse_fragment("t", text).unwrap())
    }

    #[test]
    fn higher_precedence_wins_and_differences_are_conflicts() {
        let mut f = BTreeMap::new();
        f.insert(
            "a.yaml".to_string(),
            frag("services: [{name: echo, endpoints: [{address: 127.0.0.1:1}]}, {name: same, endpoints: [{address: 127.0.0.1:3}]}]"),
        );
        f.insert(
            "etcd:echo".to_string(),
            frag("services: [{name: echo, endpoints: [{address: 127.0.0.1:2}]}]"),
        );
        f.insert(
            "etcd:same".to_string(),
            frag("services: [{name: same, endpoints: [{address: 127.0.0.1:3}]}]"),
        );
        f.insert(
            "etcd:only".to_string(),
            frag("services: [{name: only, endpoints: [{address: 127.0.0.1:4}]}]"),
        );
        let mut p = HashMap::new();
        p.insert("etcd:echo".to_string(), 1);
        p.insert("etcd:same".to_string(), 1);
        p.insert("etcd:only".to_string(), 1);
        let (eff, conflicts) = resolve(&f, &p);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].name, "echo");
        assert_eq!(conflicts[0].kept, "a.yaml");
        assert_eq!(conflicts[0].dropped, "etcd:echo");
        assert!(eff["etcd:echo"].services.is_empty());
        assert!(
            eff["etcd:same"].services.is_empty(),
            "identical duplicate dropped silently"
        );
        assert_eq!(eff["etcd:only"].services.len(), 1);
        let (w, errs) = crate::model::World::build(eff.iter().map(|(k, v)| (k.as_str(), &**v)));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(w.services["echo"].endpoints[0].address.port(), 1);
        // Swapping the precedence swaps the winner.
        p.insert("a.yaml".to_string(), 2);
        let (eff, conflicts) = resolve(&f, &p);
        assert_eq!(conflicts[0].kept, "etcd:echo");
        let (w, _) = crate::model::World::build(eff.iter().map(|(k, v)| (k.as_str(), &**v)));
        assert_eq!(w.services["echo"].endpoints[0].address.port(), 2);
    }

    #[test]
    fn a_weft_route_wins_over_an_istio_virtual_service_in_the_same_registry() {
        let mut f = BTreeMap::new();
        f.insert(
            "k8s:shop/echo".to_string(),
            frag("services: [{name: echo.shop, endpoints: [{address: 127.0.0.1:1}]}]"),
        );
        f.insert(
            "k8s:weftroute/shop/echo".to_string(),
            frag("routes: [{service: echo.shop, http: [{route: [{destination: echo.shop}], timeout: 1s}]}]"),
        );
        f.insert(
            "k8s:virtualservice/shop/echo".to_string(),
            frag("routes: [{service: echo.shop, http: [{route: [{destination: echo.shop}], timeout: 2s}]}]"),
        );
        let (eff, conflicts) = resolve(&f, &HashMap::new());
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].kind, "routes");
        assert_eq!(conflicts[0].kept, "k8s:weftroute/shop/echo");
        assert_eq!(conflicts[0].dropped, "k8s:virtualservice/shop/echo");
        let (w, errs) = crate::model::World::build(eff.iter().map(|(k, v)| (k.as_str(), &**v)));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            w.routes["echo.shop"].http[0].timeout,
            Some(std::time::Duration::from_secs(1))
        );
    }

    #[test]
    fn one_registry_is_borrowed() {
        let mut f = BTreeMap::new();
        f.insert("a".to_string(), frag("services: [{name: x}]"));
        let (eff, c) = resolve(&f, &HashMap::new());
        assert!(matches!(eff, Cow::Borrowed(_)));
        assert!(c.is_empty());
    }
}
