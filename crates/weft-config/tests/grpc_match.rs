//! `match.grpc` (gRPC / Dubbo3 Triple routing by service, method, version, group and attachments):
//! what it turns into in the route model, and the errors that name its fields.

use weft_config::{from_yaml, HeaderMatcher, NetworkFilter, PathMatch, RouteMatch, StringRule};

fn config(m: &str) -> String {
    format!(
        r#"
listeners:
  - name: tri
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {m}
                route: {{ cluster: c }}
clusters:
  - name: c
    protocol: http2
    endpoints: [{{ address: 127.0.0.1:9 }}]
"#
    )
}

fn route_match(m: &str) -> RouteMatch {
    let cfg = from_yaml(&config(m)).unwrap_or_else(|e| panic!("{m}: {e}"));
    let NetworkFilter::Http(h) = &cfg.listeners[0].filter_chains[0].filter else {
        panic!("not http")
    };
    h.route_config.virtual_hosts[0].routes[0].match_.clone()
}

fn error(m: &str) -> String {
    from_yaml(&config(m)).expect_err(m).to_string()
}

fn exact(name: &str, v: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        rule: StringRule::Exact(v.into()),
        invert: false,
    }
}

fn grpc_only() -> HeaderMatcher {
    HeaderMatcher {
        name: "content-type".into(),
        rule: StringRule::Prefix("application/grpc".into()),
        invert: false,
    }
}

#[test]
fn service_method_version_group_and_attachments() {
    let m = route_match(
        "{ grpc: { service: org.apache.dubbo.samples.Greeter, method: sayHello, version: 2.0.0, group: blue, \
         attachments: { Lane: canary } }, headers: [{ name: x-user, exact: vip }] }",
    );
    assert_eq!(
        m.path,
        PathMatch::Exact("/org.apache.dubbo.samples.Greeter/sayHello".into())
    );
    assert_eq!(
        m.headers,
        vec![
            exact("x-user", "vip"),
            grpc_only(),
            exact("tri-service-version", "2.0.0"),
            exact("tri-service-group", "blue"),
            exact("lane", "canary"),
        ]
    );
}

#[test]
fn service_alone_is_a_prefix_and_empty_grpc_only_checks_content_type() {
    let m = route_match("{ grpc: { service: org.example.Greeter } }");
    assert_eq!(m.path, PathMatch::Prefix("/org.example.Greeter/".into()));
    assert_eq!(m.headers, vec![grpc_only()]);
    // Like Envoy's `RouteMatch.grpc: {}`: any gRPC request, with the path given beside it.
    let m = route_match("{ prefix: /api/, grpc: {} }");
    assert_eq!(m.path, PathMatch::Prefix("/api/".into()));
    assert_eq!(m.headers, vec![grpc_only()]);
}

#[test]
fn errors_name_the_field() {
    let e = error("{ path: /x, grpc: { service: a.B } }");
    assert!(
        e.contains("routes[0].match: give only one of prefix, path, regex, grpc.service"),
        "{e}"
    );
    let e = error("{ grpc: { service: a/B } }");
    assert!(
        e.contains("routes[0].match.grpc.service: \"a/B\" may not contain '/'"),
        "{e}"
    );
    let e = error("{ grpc: { service: \"\" } }");
    assert!(e.contains("routes[0].match.grpc.service: may not be empty"), "{e}");
    let e = error("{ grpc: { service: a.B, method: \"say hello\" } }");
    assert!(
        e.contains("routes[0].match.grpc.method: \"say hello\" may not contain"),
        "{e}"
    );
    let e = error("{ grpc: { method: sayHello } }");
    assert!(e.contains("routes[0].match.grpc.method: needs grpc.service"), "{e}");
    let e = error("{ grpc: { service: a.B, version: \"\" } }");
    assert!(e.contains("routes[0].match.grpc.version: may not be empty"), "{e}");
    let e = error("{ grpc: { service: a.B, group: \"a\\nb\" } }");
    assert!(
        e.contains("routes[0].match.grpc.group: \"a\\nb\" is not a valid header value"),
        "{e}"
    );
    let e = error("{ grpc: { service: a.B, attachments: { \"bad name\": x } } }");
    assert!(
        e.contains("routes[0].match.grpc.attachments.bad name: \"bad name\" is not a valid header name"),
        "{e}"
    );
    let e = error("{ grpc: { service: a.B, attachments: { tri-service-group: x } } }");
    assert!(
        e.contains("routes[0].match.grpc.attachments.tri-service-group: use grpc.version or grpc.group"),
        "{e}"
    );
    let e = error("{ grpc: { service: a.B, interface: x } }");
    assert!(e.contains("interface"), "{e}");
}
