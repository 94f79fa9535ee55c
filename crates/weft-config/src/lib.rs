//! weft's configuration: the YAML source format ([`raw`]), its validation with field-path errors
//! ([`validate`]), and the immutable model the proxy runs ([`model`]).
//!
//! Config flows one way: source (YAML file, command-line quick start, later xDS) → [`Config`] →
//! the proxy's running snapshot, swapped atomically.

pub mod admin;
pub mod authz;
pub mod duration;
pub mod errors;
pub mod grpc_log;
pub mod jwt;
pub mod log_format;
pub mod model;
pub mod raw;
pub mod rpc;
pub mod tls;
pub mod tracing;
pub mod typed;
pub mod validate;

pub use model::*;
pub use tracing::{OtlpProtocol, Propagator, TraceEndpoint, Tracing};
pub use validate::{from_yaml, validate_with, ConfigError, FieldError, ValidateOptions};

use std::net::SocketAddr;
use std::path::Path;

/// Reads and validates a YAML configuration file.
pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single("", format!("cannot read {}: {e}", path.display())))?;
    from_yaml(&text)
}

/// What `weft proxy --from A --to B` asks for.
#[derive(Clone, Debug)]
pub struct QuickStart {
    pub from: SocketAddr,
    pub to: String,
    pub tcp: bool,
    pub upstream_http2: bool,
    pub admin: Option<SocketAddr>,
    pub concurrency: Option<usize>,
    pub access_log: bool,
    /// The route timeout (`--timeout`); `None` keeps the default (15 s), zero disables it.
    pub route_timeout: Option<std::time::Duration>,
}

impl QuickStart {
    /// Builds the same model a file would, through the same validation.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let is_ip = self.to.parse::<SocketAddr>().is_ok();
        let access_log = if self.access_log {
            "\n    access_log: { path: stdout }"
        } else {
            ""
        };
        let timeout = match self.route_timeout {
            None => String::new(),
            Some(t) => format!(", timeout: {}ms", t.as_millis()),
        };
        let filter = if self.tcp {
            format!("  tcp_proxy:\n    cluster: upstream{access_log}\n")
        } else {
            format!(
                "  http:\n    route_config:\n      virtual_hosts:\n        - name: all\n          domains: [\"*\"]\n          routes:\n            - match: {{ prefix: / }}\n              route: {{ cluster: upstream{timeout} }}{access_log}\n"
            )
        };
        let yaml = format!(
            "listeners:\n- name: quickstart\n  address: \"{from}\"\n{filter}clusters:\n- name: upstream\n  type: {ty}\n  protocol: {proto}\n  endpoints:\n  - address: \"{to}\"\n{admin}runtime:\n  concurrency: {conc}\n",
            from = self.from,
            ty = if is_ip { "static" } else { "strict_dns" },
            proto = if self.upstream_http2 { "http2" } else { "http1" },
            to = self.to,
            admin = self
                .admin
                .map(|a| format!("admin:\n  address: \"{a}\"\n"))
                .unwrap_or_default(),
            conc = self.concurrency.unwrap_or(0),
        );
        from_yaml(&yaml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
admin: { address: "127.0.0.1:9901" }
listeners:
  - name: web
    address: 127.0.0.1:8080
    http:
      route_config:
        virtual_hosts:
          - name: api
            domains: ["api.example.com", "*.api.example.com"]
            routes:
              - match: { prefix: /v1/, methods: [GET, POST], headers: [{ name: x-canary, exact: "1" }] }
                route:
                  weighted_clusters: [{ name: a, weight: 90 }, { name: b, weight: 10 }]
                  retry_policy: { retry_on: [5xx, connect-failure], num_retries: 2, per_try_timeout: 500ms }
              - match: { path: /old }
                redirect: { path: /new, status: 301 }
          - name: rest
            domains: ["*"]
            routes:
              - direct_response: { status: 404, body: nothing here }
  - name: db
    address: 127.0.0.1:5433
    tcp_proxy: { cluster: b, idle_timeout: 1h }
clusters:
  - name: a
    lb_policy: ring_hash
    endpoints: [{ address: 127.0.0.1:9000, weight: 3 }, { address: "127.0.0.1:9001" }]
  - name: b
    connect_timeout: 250ms
    endpoints: [{ address: 127.0.0.1:9002 }]
"#;

    #[test]
    fn listener_direction_is_read_and_checked() {
        let c = from_yaml(&GOOD.replace(
            "    address: 127.0.0.1:5433\n",
            "    address: 127.0.0.1:5433\n    direction: outbound\n",
        ))
        .unwrap();
        assert_eq!(c.listeners[0].direction, Direction::Unspecified);
        assert_eq!(c.listeners[1].direction, Direction::Outbound);
        let e = from_yaml(&GOOD.replace(
            "    address: 127.0.0.1:5433\n",
            "    address: 127.0.0.1:5433\n    direction: sideways\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("listeners[1].direction: unknown value \"sideways\""), "{e}");
    }

    #[test]
    fn interception_fields_and_the_dns_block() {
        let c = from_yaml(&GOOD.replace(
            "    address: 127.0.0.1:5433\n",
            "    address: 127.0.0.1:5433\n    original_destination: true\n    transparent: true\n    bind_to_port: false\n",
        ))
        .unwrap();
        let (l0, l1) = (&c.listeners[0], &c.listeners[1]);
        assert!(!l0.original_destination && !l0.transparent && l0.bind_to_port);
        assert!(l1.original_destination && l1.transparent && !l1.bind_to_port);
        assert!(c.dns.is_none());
        let dns = "dns:\n  listen: 127.0.0.1:15053\n  upstream: 10.0.0.10\n  hosts: { Reviews.Mesh.: [10.0.0.7, \"fd00::7\"] }\n";
        let c = from_yaml(&format!("{GOOD}{dns}")).unwrap();
        let d = c.dns.unwrap();
        assert_eq!(d.upstream, Some("10.0.0.10:53".parse().unwrap()));
        assert_eq!(d.hosts["reviews.mesh"].len(), 2);
        assert_eq!(d.ttl, std::time::Duration::from_secs(30));
        let bad = "dns:\n  upstream: nope\n  ttl: 5x\n  hosts: { \"a..b\": [1.2.3.4], ok.mesh: [not-an-ip] }\n";
        let e = from_yaml(&format!("{GOOD}{bad}")).unwrap_err().to_string();
        for want in [
            "dns.listen",
            "dns.upstream: \"nope\" is not an IP:port address",
            "dns.ttl",
            "dns.hosts[\"a..b\"]: not a DNS name",
            "dns.hosts[\"ok.mesh\"]: \"not-an-ip\" is not an IP address",
        ] {
            assert!(e.contains(want), "{want} missing in {e}");
        }
    }

    #[test]
    fn accepts_a_full_config() {
        let c = from_yaml(GOOD).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            c.clusters[0].lb_policy,
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8 * 1024 * 1024
            }
        );
        let NetworkFilter::Http(h) = &c.listeners[0].filter_chains[0].filter else {
            panic!()
        };
        assert_eq!(
            h.route_config.virtual_hosts[0].domains[1],
            DomainMatch::Suffix(".api.example.com".into())
        );
        let RouteAction::Forward(f) = &h.route_config.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        assert_eq!(f.clusters.len(), 2);
        assert_eq!(f.retry_policy.as_ref().unwrap().num_retries, 2);
        assert!(f.retry_policy.as_ref().unwrap().retry_on.five_xx);
        assert_eq!(c.clusters[1].connect_timeout, std::time::Duration::from_millis(250));
    }

    #[test]
    fn errors_name_the_field_path() {
        let bad = GOOD.replace("lb_policy: ring_hash", "lb_policy: rr");
        let e = from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("clusters[0].lb_policy: unknown value \"rr\""), "{e}");

        let bad = GOOD.replace("{ cluster: b, idle_timeout: 1h }", "{ cluster: nope }");
        let e = from_yaml(&bad).unwrap_err().to_string();
        assert!(
            e.contains("listeners[1].tcp_proxy.cluster: unknown cluster \"nope\""),
            "{e}"
        );

        let bad = GOOD.replace("per_try_timeout: 500ms", "per_try_timeout: 500");
        let e = from_yaml(&bad).unwrap_err().to_string();
        assert!(
            e.contains("listeners[0].http.route_config.virtual_hosts[0].routes[0].route.retry_policy.per_try_timeout"),
            "{e}"
        );
    }

    #[test]
    fn non_loopback_admin_needs_the_explicit_opt_in() {
        for addr in ["0.0.0.0:9901", "[::]:9901", "192.0.2.10:9901"] {
            let yaml = GOOD.replace("127.0.0.1:9901", addr);
            let e = from_yaml(&yaml).expect_err(addr).to_string();
            assert!(e.starts_with("admin.address: "), "{e}");
            assert!(
                e.contains("admin.allow_non_loopback: true"),
                "the error names the opt-in: {e}"
            );
            let opted_in = yaml.replace(
                &format!("address: \"{addr}\" }}"),
                &format!("address: \"{addr}\", allow_non_loopback: true }}"),
            );
            let c = from_yaml(&opted_in).unwrap_or_else(|e| panic!("{e}\n{opted_in}"));
            assert!(c.admin.unwrap().allow_non_loopback);
        }
        let c = from_yaml(GOOD).unwrap();
        assert_eq!(c.admin, Some(Admin::new("127.0.0.1:9901".parse().unwrap())));
        let e = from_yaml(&GOOD.replace("9901\" }", "9901\", allow_non_loopback: yes please }")).unwrap_err();
        assert!(e.to_string().contains("allow_non_loopback"), "{e}");
    }

    #[test]
    fn collects_every_error() {
        let bad = GOOD
            .replace("lb_policy: ring_hash", "lb_policy: rr")
            .replace("127.0.0.1:9002", "nowhere");
        let e = from_yaml(&bad).unwrap_err();
        assert_eq!(e.errors.len(), 2, "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_location() {
        let bad = GOOD.replace("connect_timeout: 250ms", "conect_timeout: 250ms");
        let e = from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("conect_timeout"), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "[",
            "listeners: 5",
            "\u{0}\u{1}",
            "clusters: [{name: a, endpoints: [{address: 1}]}]",
        ] {
            let _ = from_yaml(text);
        }
    }

    #[test]
    fn quick_start_builds_the_same_model() {
        let q = QuickStart {
            from: "127.0.0.1:8080".parse().unwrap(),
            to: "127.0.0.1:9000".into(),
            tcp: false,
            upstream_http2: false,
            admin: Some("127.0.0.1:9901".parse().unwrap()),
            concurrency: Some(1),
            access_log: false,
            route_timeout: None,
        };
        let c = q.to_config().unwrap();
        assert_eq!(c.listeners[0].address.port(), 8080);
        assert_eq!(c.runtime.concurrency, Some(1));
        let q = QuickStart {
            tcp: true,
            to: "localhost:9000".into(),
            ..q
        };
        let c = q.to_config().unwrap();
        assert!(matches!(
            c.listeners[0].filter_chains[0].filter,
            NetworkFilter::TcpProxy(_)
        ));
        assert!(matches!(c.clusters[0].discovery, Discovery::StrictDns { .. }));
    }

    #[test]
    fn xds_section_and_node_metadata() {
        let c = from_yaml(
            r#"
node:
  id: reviews-1
  cluster: reviews
  zone: z1
  metadata: { weft.role: sidecar, weft.outbound: "127.0.0.1:15001" }
xds: { address: "control.mesh:18000" }
listeners:
  - name: out
    address: 127.0.0.1:15001
    tcp_proxy: { cluster: defined-later-by-the-control-plane }
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let x = c.xds.as_ref().unwrap();
        assert_eq!(x.address, "control.mesh:18000");
        assert_eq!(x.mode, XdsMode::AdsDelta);
        assert_eq!(x.initial_fetch_timeout, Some(std::time::Duration::from_secs(15)));
        assert_eq!(c.node.metadata.get("weft.role").map(String::as_str), Some("sidecar"));

        let e = from_yaml(
            "xds: { address: nowhere, mode: grpc, initial_fetch_timeout: 5, backoff_base: 2s, backoff_max: 1s }",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "xds.address: \"nowhere\" is not a host:port address",
            "xds.mode: unknown value \"grpc\"",
            "xds.initial_fetch_timeout: ",
            "xds.backoff_max: must not be less than xds.backoff_base",
        ] {
            assert!(e.contains(want), "{want} missing in:\n{e}");
        }
        // Without xds, a missing cluster is still an error.
        let e = from_yaml("listeners: [{ name: a, address: 127.0.0.1:1, tcp_proxy: { cluster: x } }]").unwrap_err();
        assert!(e.to_string().contains("unknown cluster \"x\""));
    }

    #[test]
    fn cidr_contains() {
        let r = CidrRange {
            address: "10.1.0.0".parse().unwrap(),
            prefix_len: 16,
        };
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(!r.contains("10.2.0.1".parse().unwrap()));
        let all = CidrRange {
            address: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
        };
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }
}

#[cfg(test)]
mod example_tests {
    /// The example in the README (kept in weft.example.yaml) must stay valid.
    #[test]
    fn readme_example_is_valid() {
        let text = include_str!("../../../weft.example.yaml");
        let cfg = crate::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.listeners.len(), 1);
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(text.trim_end()),
            "README's config example must match weft.example.yaml"
        );
    }
}
