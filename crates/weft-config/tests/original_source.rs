//! `original_source` on clusters: accepted on original_dst clusters, refused (naming the field)
//! elsewhere.

fn yaml(cluster: &str) -> String {
    format!(
        "listeners:\n  - name: in\n    address: \"127.0.0.1:0\"\n    tcp_proxy: {{ cluster: c }}\nclusters:\n  - {cluster}\n"
    )
}

#[test]
fn original_source_needs_an_original_dst_cluster() {
    let ok = weft_config::from_yaml(&yaml("{ name: c, type: original_dst, original_source: true }")).unwrap();
    assert!(ok.clusters[0].original_source);
    let off = weft_config::from_yaml(&yaml("{ name: c, type: original_dst }")).unwrap();
    assert!(!off.clusters[0].original_source);
    let e = weft_config::from_yaml(&yaml(
        "{ name: c, original_source: true, endpoints: [{ address: \"127.0.0.1:1\" }] }",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("clusters[0].original_source") && e.contains("only an original_dst cluster"),
        "{e}"
    );
    let e = weft_config::from_yaml(&yaml("{ name: c, type: original_dst, original_source: 3 }"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("original_source"), "{e}");
}

#[test]
fn original_source_mark_needs_original_source_on_the_listener() {
    let listener = |extra: &str| {
        format!(
            "listeners:\n  - name: in\n    address: \"127.0.0.1:0\"\n    {extra}\n    tcp_proxy: {{ cluster: c }}\nclusters:\n  - {{ name: c, type: original_dst }}\n"
        )
    };
    let ok = weft_config::from_yaml(&listener("original_source: true\n    original_source_mark: 1337")).unwrap();
    assert!(ok.listeners[0].original_source);
    assert_eq!(ok.listeners[0].original_source_mark, 1337);
    let plain = weft_config::from_yaml(&listener("original_source: true")).unwrap();
    assert_eq!(plain.listeners[0].original_source_mark, 0);
    let e = weft_config::from_yaml(&listener("original_source_mark: 7"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listeners[0].original_source_mark") && e.contains("needs original_source: true"),
        "{e}"
    );
}
