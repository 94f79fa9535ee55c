//! A cluster's `service` (the Istio metrics' `destination_service*`): defaults, and bad values
//! refused with the field named.

fn yaml(service: &str) -> String {
    format!(
        "listeners:\n  - name: in\n    address: \"127.0.0.1:0\"\n    tcp_proxy: {{ cluster: c }}\nclusters:\n  - {{ name: c, endpoints: [{{ address: \"127.0.0.1:1\" }}], service: {service} }}\n"
    )
}

#[test]
fn cluster_service_defaults_and_errors() {
    let c = weft_config::from_yaml(&yaml("{ host: reviews.shop.svc.cluster.local }")).unwrap();
    let s = c.clusters[0].service.as_ref().unwrap();
    assert_eq!(
        (s.host.as_str(), s.name.as_str(), s.namespace.as_str()),
        ("reviews.shop.svc.cluster.local", "reviews", "")
    );
    let c = weft_config::from_yaml(&yaml("{ host: r, name: reviews, namespace: shop }")).unwrap();
    let s = c.clusters[0].service.as_ref().unwrap();
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("reviews", "shop"));
    for (bad, field) in [
        ("{ name: reviews }", "clusters[0].service.host"),
        ("{ host: \"\" }", "clusters[0].service.host"),
        ("{ host: r, namespace: \"a\\\"b\" }", "clusters[0].service.namespace"),
        ("{ host: r, ns: x }", "ns"),
    ] {
        let e = weft_config::from_yaml(&yaml(bad)).unwrap_err().to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}
