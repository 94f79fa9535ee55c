//! Cookie hash policies: the plain `cookie: NAME` form, and the map form whose `ttl` makes the
//! proxy generate the cookie; bad values refused naming the field.

use std::time::Duration;
use weft_config::{CookieAttribute, CookieGen, HashPolicy, NetworkFilter, RouteAction};

fn yaml(policy: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    address: \"127.0.0.1:0\"\n    http:\n      route_config:\n        virtual_hosts:\n          - name: all\n            domains: [\"*\"]\n            routes:\n              - match: {{ prefix: / }}\n                route: {{ cluster: c, hash_policy: [{{ cookie: {policy} }}] }}\nclusters:\n  - {{ name: c, lb_policy: ring_hash, endpoints: [{{ address: \"127.0.0.1:1\" }}] }}\n"
    )
}

fn policy(p: &str) -> HashPolicy {
    let c = weft_config::from_yaml(&yaml(p)).unwrap();
    let NetworkFilter::Http(h) = &c.listeners[0].filter_chains[0].filter else {
        panic!("an http listener")
    };
    let RouteAction::Forward(f) = &h.route_config.virtual_hosts[0].routes[0].action else {
        panic!("a forward route")
    };
    f.hash_policy[0].clone()
}

fn refused(p: &str) -> String {
    weft_config::from_yaml(&yaml(p)).unwrap_err().to_string()
}

#[test]
fn plain_and_generating_forms() {
    assert_eq!(
        policy("session"),
        HashPolicy::Cookie {
            name: "session".into(),
            terminal: false,
            generate: None
        }
    );
    assert_eq!(policy("{ name: session }"), policy("session"));
    assert_eq!(
        policy("{ name: s, ttl: 1h, path: /, attributes: [{ name: SameSite, value: Strict }, { name: Secure }] }"),
        HashPolicy::Cookie {
            name: "s".into(),
            terminal: false,
            generate: Some(Box::new(CookieGen {
                ttl: Duration::from_secs(3600),
                path: Some("/".into()),
                attributes: vec![
                    CookieAttribute {
                        name: "SameSite".into(),
                        value: Some("Strict".into())
                    },
                    CookieAttribute {
                        name: "Secure".into(),
                        value: None
                    },
                ],
            })),
        }
    );
    let HashPolicy::Cookie { generate: Some(g), .. } = policy("{ name: s, ttl: 0s }") else {
        panic!("a generating policy")
    };
    // ttl 0: a session cookie (no Max-Age).
    assert_eq!(g.set_cookie("s", "00ff"), "s=\"00ff\"; HttpOnly");
}

#[test]
fn bad_cookie_policies_name_the_field() {
    let hp = "listeners[0].http.route_config.virtual_hosts[0].routes[0].route.hash_policy[0].cookie";
    for (p, field, why) in [
        ("{ ttl: 1h }", "name", "is required"),
        ("{ name: \"a b\", ttl: 1h }", "name", "not a valid cookie name"),
        ("{ name: s, ttl: soon }", "ttl", ""),
        ("{ name: s, ttl: 1h, path: \"/a;b\" }", "path", "without ';'"),
        ("{ name: s, path: / }", "path", "has no effect without ttl"),
        (
            "{ name: s, attributes: [{ name: Secure }] }",
            "attributes",
            "no effect without ttl",
        ),
        (
            "{ name: s, ttl: 1h, attributes: [{ value: x }] }",
            "attributes[0].name",
            "is required",
        ),
        (
            "{ name: s, ttl: 1h, attributes: [{ name: \"a=b\" }] }",
            "attributes[0].name",
            "not a valid",
        ),
        (
            "{ name: s, ttl: 1h, attributes: [{ name: a, value: \"x;y\" }] }",
            "attributes[0].value",
            "without ';'",
        ),
    ] {
        let e = refused(p);
        assert!(e.contains(&format!("{hp}.{field}")) && e.contains(why), "{p}: {e}");
    }
    let e = refused("{ name: s, max_age: 1h }");
    assert!(e.contains("max_age"), "{e}");
}

/// A header hash policy's name and a subset `tag_header` are parsed once, into header names
/// (lower-cased), and a name that is not one is refused naming the field.
#[test]
fn header_names_are_parsed_once_and_refused_when_invalid() {
    let with = |policy: &str, subsets: &str| {
        yaml("x")
            .replace("[{ cookie: x }]", policy)
            .replace("endpoints:", &format!("{subsets}endpoints:"))
    };
    let c = weft_config::from_yaml(&with(
        "[{ header: X-User }]",
        "subsets: { tag_header: X-Tag, tag_label: tag }, ",
    ))
    .unwrap();
    let NetworkFilter::Http(h) = &c.listeners[0].filter_chains[0].filter else {
        panic!("an http listener")
    };
    let RouteAction::Forward(f) = &h.route_config.virtual_hosts[0].routes[0].action else {
        panic!("a forward route")
    };
    assert_eq!(
        f.hash_policy,
        vec![HashPolicy::Header {
            name: http::HeaderName::from_static("x-user"),
            terminal: false
        }]
    );
    let tag = c.clusters[0].subsets.as_ref().and_then(|s| s.tag_header.clone());
    assert_eq!(tag, Some(http::HeaderName::from_static("x-tag")));

    let e = weft_config::from_yaml(&with("[{ header: \"bad name\" }]", ""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hash_policy[0].header: \"bad name\" is not a valid header name"),
        "{e}"
    );
    let e = weft_config::from_yaml(&with(
        "[{ header: x-user }]",
        "subsets: { tag_header: \"a b\", tag_label: tag }, ",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("subsets.tag_header: \"a b\" is not a valid header name"),
        "{e}"
    );
}
