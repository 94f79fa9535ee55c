//! Dubbo2 through weft with software nobody here wrote: sofa-rpc-node (with dubbo-remoting as its
//! protocol) as two providers that answer with their own name, and as the consumer. Checks
//! responses, routing by method and by argument value (which provider answered), attachments
//! (the consumer's `group`), the no-route error the real client raises, and concurrent calls
//! multiplexed over weft's upstream connection. Peers: `interop/install` (interop/rpc-node).

use std::net::SocketAddr;
use std::path::PathBuf;
use weft_test_support::peers::{interop_dir, interop_peer, tool};
use weft_test_support::*;

mod common;
use common::{clusters_yaml, node_consume, node_provider};

fn peer_script() -> Option<PathBuf> {
    interop_peer("rpc-node/node_modules/dubbo-remoting/package.json")?;
    interop_peer("rpc-node/node_modules/sofa-rpc-node/package.json")?;
    tool("node")?;
    Some(interop_dir().join("rpc-node/dubbo_peer.js"))
}

fn yaml(alpha: SocketAddr, beta: SocketAddr) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: dubbo-interop
    address: 127.0.0.1:0
    rpc:
      protocol: dubbo
      timeout: 2s
      routes:
        - name: vip
          match: {{ interface: org.example.Greeter, method: echo, arguments: [{{ index: 0, equals: vip }}] }}
          cluster: beta
        - name: who
          match: {{ interface: org.example.Greeter, method: whoami, group: HSF }}
          cluster: beta
        - name: rest
          match: {{ interface: org.example.Greeter, version: 1.0.0 }}
          cluster: alpha
{clusters}"#,
        clusters = clusters_yaml(&[("alpha", alpha), ("beta", beta)])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sofa_rpc_node_consumer_and_providers_through_weft() {
    let Some(script) = peer_script() else { return };
    let (_a, alpha) = node_provider(&script, "alpha");
    let (_b, beta) = node_provider(&script, "beta");
    let proxy = start_proxy(&yaml(alpha, beta));
    let addr = proxy.listener_addr("dubbo-interop").unwrap();

    let mut cmds = vec![
        serde_json::json!({"id": 1, "method": "echo", "args": ["vip"]}),
        serde_json::json!({"id": 2, "method": "echo", "args": ["plain"]}),
        serde_json::json!({"id": 3, "method": "whoami"}),
        serde_json::json!({"id": 4, "method": "nosuch"}),
    ];
    // Concurrent calls on the consumer's one connection, alternating between the providers.
    for i in 0..40 {
        let arg = if i % 2 == 0 { "vip".to_string() } else { format!("n{i}") };
        cmds.push(serde_json::json!({"id": 100 + i, "method": "echo", "args": [arg]}));
    }
    let script2 = script.clone();
    let out = tokio::task::spawn_blocking(move || node_consume(&script2, addr, &[], &cmds))
        .await
        .unwrap();
    assert_eq!(out.len(), 44, "{out:?}");
    assert_eq!(out[0]["ok"], "beta:vip", "argument routing: {out:?}");
    assert_eq!(out[1]["ok"], "alpha:plain", "{out:?}");
    assert_eq!(out[2]["ok"], "beta", "method + group attachment routing: {out:?}");
    // The provider's own error for an unknown method passes through.
    assert!(out[3]["err"].as_str().unwrap_or("").contains("nosuch"), "{out:?}");
    for (k, v) in out[4..].iter().enumerate() {
        let want = if k % 2 == 0 {
            "beta:vip".to_string()
        } else {
            format!("alpha:n{k}")
        };
        assert_eq!(v["ok"], serde_json::Value::String(want), "{v}");
    }

    // A service weft has no route for: the real client raises weft's SERVICE_NOT_FOUND message.
    let out = tokio::task::spawn_blocking(move || {
        node_consume(
            &script,
            addr,
            &["org.example.Missing"],
            &[serde_json::json!({"id": 1, "method": "echo", "args": ["x"]})],
        )
    })
    .await
    .unwrap();
    let err = out[0]["err"].as_str().unwrap_or_default();
    assert!(err.contains("no route for org.example.Missing.echo"), "{out:?}");

    let m = stats(&proxy).await;
    assert!(
        m.contains(r#"weft_rpc_requests_total{listener="dubbo-interop",method="echo",outcome="ok"} 42"#),
        "{m}"
    );
}
