//! `rpc` in a filter chain of `filter_chains` (what an xDS `dubbo_proxy` filter becomes): next to
//! other chains, with a match; `auto` only as the listener's shorthand; one filter per chain.

use weft_config::{from_yaml, NetworkFilter};

fn config(chains: &str) -> String {
    format!(
        r#"
listeners:
  - name: mixed
    address: 127.0.0.1:0
    filter_chains:
{chains}
clusters:
  - name: c
    endpoints: [{{ address: 127.0.0.1:9 }}]
"#
    )
}

#[test]
fn an_rpc_chain_sits_next_to_other_chains() {
    let cfg = from_yaml(&config(
        r#"      - name: dubbo
        match: { destination_port: 20880 }
        rpc: { protocol: dubbo, routes: [{ match: { interface: org.example.Greeter }, cluster: c }] }
      - name: rest
        tcp_proxy: { cluster: c }"#,
    ))
    .unwrap();
    let chains = &cfg.listeners[0].filter_chains;
    assert_eq!(chains.len(), 2);
    let NetworkFilter::Rpc(r) = &chains[0].filter else {
        panic!("{:?}", chains[0].filter)
    };
    assert_eq!(r.routes[0].match_.interface.as_deref(), Some("org.example.Greeter"));
    assert_eq!(chains[0].match_.destination_port, Some(20880));
    assert!(matches!(chains[1].filter, NetworkFilter::TcpProxy(_)));
}

#[test]
fn auto_and_two_filters_in_one_chain_are_refused() {
    let e = from_yaml(&config(r#"      - rpc: { protocol: auto, routes: [{ cluster: c }] }"#))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "listeners[0].filter_chains[0].rpc.protocol: auto is only supported in the listener's rpc shorthand"
        ),
        "{e}"
    );
    let e = from_yaml(&config(
        r#"      - { rpc: { routes: [{ cluster: c }] }, tcp_proxy: { cluster: c } }"#,
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("listeners[0].filter_chains[0]: a filter chain holds one of http, tcp_proxy and rpc"),
        "{e}"
    );
    let e = from_yaml(&config(r#"      - { rpc: { routes: [{ cluster: nope }] } }"#))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listeners[0].filter_chains[0].rpc.routes[0].cluster: unknown cluster \"nope\""),
        "{e}"
    );
}
