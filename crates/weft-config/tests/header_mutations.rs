//! Header mutations may not set a message's framing (`content-length`, `transfer-encoding`): the
//! proxy frames each message itself, and a length that is not the body's would let the next hop
//! read part of the body as another message.

fn yaml(field: &str, name: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    address: \"127.0.0.1:0\"\n    http:\n      route_config:\n        virtual_hosts:\n          - name: all\n            domains: [\"*\"]\n            routes:\n              - match: {{ prefix: / }}\n                route: {{ cluster: c }}\n                {field}: [{{ name: {name}, value: \"0\" }}]\nclusters:\n  - {{ name: c, endpoints: [{{ address: \"127.0.0.1:1\" }}] }}\n"
    )
}

#[test]
fn framing_fields_are_refused_naming_the_field() {
    for field in ["request_headers_to_add", "response_headers_to_add"] {
        for name in ["content-length", "Transfer-Encoding"] {
            let e = weft_config::from_yaml(&yaml(field, name)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("virtual_hosts[0].routes[0].{field}[0].name"))
                    && e.contains("frames each message itself"),
                "{field} {name}: {e}"
            );
        }
    }
}

#[test]
fn other_fields_are_accepted() {
    for field in ["request_headers_to_add", "response_headers_to_add"] {
        weft_config::from_yaml(&yaml(field, "x-length")).unwrap();
    }
}
