//! SOFARPC Bolt through two weft sidecars with software nobody here wrote: a sofa-rpc-node Bolt
//! consumer → weft (client sidecar) → weft (server sidecar) → two sofa-rpc-node Bolt providers that
//! answer with their own name. Checks responses, a provider's exception reaching the consumer,
//! request properties (attachments) routed on and delivered, heartbeats answered by the sidecar,
//! 50 concurrent multiplexed calls, routing by method (which provider answered), weft's timeout
//! and no-route replies as the real client reports them, and Bolt v2 frames with CRC32.
//! Peers: `interop/install` (interop/rpc-node).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use weft_test_support::peers::{interop_dir, interop_peer, tool};
use weft_test_support::*;

mod common;
use common::{clusters_yaml, node_consume};
use weft_test_support::peers::node_provider;

fn peer_script() -> Option<PathBuf> {
    interop_peer("rpc-node/node_modules/sofa-bolt-node/package.json")?;
    interop_peer("rpc-node/node_modules/sofa-rpc-node/package.json")?;
    tool("node")?;
    Some(interop_dir().join("rpc-node/bolt_peer.js"))
}

/// The consumer's sidecar: everything for the Greeter to the server sidecar, `slow` with a 300ms
/// timeout.
fn client_yaml(remote: SocketAddr) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: bolt-out
    address: 127.0.0.1:0
    rpc:
      protocol: bolt
      timeout: 2s
      routes:
        - name: slow
          match: {{ interface: org.example.Greeter, method: slow }}
          cluster: remote
          timeout: 300ms
        - name: greeter
          match: {{ interface: org.example.Greeter }}
          cluster: remote
{clusters}"#,
        clusters = clusters_yaml(&[("remote", remote)])
    )
}

/// The providers' sidecar: `whoami` and requests with request property lane=blue to beta, the
/// rest of version 1.0.0 to alpha.
fn server_yaml(alpha: SocketAddr, beta: SocketAddr) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: bolt-in
    address: 127.0.0.1:0
    rpc:
      protocol: bolt
      timeout: 2s
      routes:
        - name: who
          match: {{ interface: org.example.Greeter, method: whoami }}
          cluster: beta
        - name: lane
          match: {{ interface: org.example.Greeter, attachments: {{ lane: blue }} }}
          cluster: beta
        - name: rest
          match: {{ interface: org.example.Greeter, version: 1.0.0 }}
          cluster: alpha
{clusters}"#,
        clusters = clusters_yaml(&[("alpha", alpha), ("beta", beta)])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sofa_rpc_node_bolt_through_two_sidecars() {
    let Some(script) = peer_script() else { return };
    let (_a, alpha) = node_provider(&script, "alpha");
    let (_b, beta) = node_provider(&script, "beta");
    let server_side = start_proxy(&server_yaml(alpha, beta));
    let inbound = server_side.listener_addr("bolt-in").unwrap();
    let client_side = start_proxy(&client_yaml(inbound));
    let outbound = client_side.listener_addr("bolt-out").unwrap();

    let mut cmds = vec![
        serde_json::json!({"id": 1, "method": "echo", "args": ["hi"]}),
        serde_json::json!({"id": 2, "method": "whoami"}),
        serde_json::json!({"id": 3, "method": "fail", "args": ["now"]}),
        serde_json::json!({"id": 4, "method": "prop", "args": ["lane"], "props": {"lane": "blue"}}),
        serde_json::json!({"id": 5, "method": "prop", "args": ["lane"], "props": {"lane": "green"}}),
        serde_json::json!({"id": 6, "heartbeat": true}),
        serde_json::json!({"id": 7, "method": "slow", "args": [2000], "timeout": 5000}),
    ];
    // 50 concurrent calls on the consumer's one connection, alternating between the providers.
    for i in 0..50 {
        if i % 2 == 0 {
            cmds.push(serde_json::json!({"id": 100 + i, "method": "echo", "args": [format!("n{i}")]}));
        } else {
            cmds.push(serde_json::json!({"id": 100 + i, "method": "whoami"}));
        }
    }
    let s = script.clone();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || node_consume(&s, outbound, &[], &cmds))
        .await
        .unwrap();
    assert_eq!(out.len(), 57, "{out:?}");
    assert_eq!(out[0]["ok"], "alpha:hi", "{out:?}");
    assert_eq!(out[1]["ok"], "beta", "routing by method: {out:?}");
    let err = out[2]["err"].as_str().unwrap_or_default();
    assert!(err.contains("alpha refuses: now"), "the provider's exception: {out:?}");
    assert_eq!(
        out[3]["ok"], "beta:blue",
        "routed on, and delivered, a request property: {out:?}"
    );
    assert_eq!(out[4]["ok"], "alpha:green", "{out:?}");
    assert_eq!(out[5]["ok"], "ack 6", "heartbeat answered: {out:?}");
    let err = out[6]["err"].as_str().unwrap_or_default();
    assert!(err.contains("timeout"), "weft's timeout reply: {out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "timed out by weft, not by the client"
    );
    for (k, v) in out[7..].iter().enumerate() {
        let want = if k % 2 == 0 {
            format!("alpha:n{k}")
        } else {
            "beta".to_string()
        };
        assert_eq!(v["ok"], serde_json::Value::String(want), "{v}");
    }

    // Bolt v2 with CRC32 from the same library, through both sidecars.
    let mut cmds = Vec::new();
    for i in 0..20 {
        cmds.push(serde_json::json!({"id": i, "method": "echo", "args": [format!("c{i}")]}));
    }
    cmds.push(serde_json::json!({"id": 20, "method": "whoami"}));
    let s = script.clone();
    let out = tokio::task::spawn_blocking(move || node_consume(&s, outbound, &["v2crc"], &cmds))
        .await
        .unwrap();
    assert_eq!(out.len(), 21, "{out:?}");
    for (i, v) in out[..20].iter().enumerate() {
        assert_eq!(v["ok"], serde_json::Value::String(format!("alpha:c{i}")), "{v}");
    }
    assert_eq!(out[20]["ok"], "beta", "{out:?}");

    // A service neither sidecar routes: the real client reports weft's NO_PROCESSOR message.
    let out = tokio::task::spawn_blocking(move || {
        node_consume(
            &script,
            outbound,
            &["v1", "org.example.Missing"],
            &[serde_json::json!({"id": 1, "method": "echo", "args": ["x"]})],
        )
    })
    .await
    .unwrap();
    let err = out[0]["err"].as_str().unwrap_or_default();
    assert!(err.contains("no route for org.example.Missing.echo"), "{out:?}");

    let m = stats(&client_side).await;
    for want in [
        r#"weft_rpc_heartbeats_total{listener="bolt-out"} 1"#,
        r#"weft_rpc_local_replies_total{listener="bolt-out",reason="UT"} 1"#,
        r#"weft_rpc_local_replies_total{listener="bolt-out",reason="NR"} 1"#,
    ] {
        assert!(m.contains(want), "{want}\n{m}");
    }
    let m = stats(&server_side).await;
    assert!(
        m.contains(r#"weft_rpc_requests_total{listener="bolt-in",method="whoami",outcome="ok"} 27"#),
        "{m}"
    );
}
