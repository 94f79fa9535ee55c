//! Dubbo2 through weft with software nobody here wrote: sofa-rpc-node (with dubbo-remoting as its
//! protocol) as two providers that answer with their own name, and three consumers: sofa-rpc-node,
//! dubbo2.js (npm) and dubbo-ssl-python (PyPI), each connected straight to weft. Checks responses,
//! routing by method, by argument value and by attachment (which provider answered), attachments
//! delivered, the errors the real clients raise for weft's own replies (no route, timeout), and
//! concurrent calls multiplexed over weft's upstream connection. Peers: `interop/install`
//! (interop/rpc-node, interop/dubbo2-js, interop/.venv-dubbo2).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use weft_test_support::peers::{interop_dir, interop_peer, tool};
use weft_test_support::*;

mod common;
use common::{clusters_yaml, consume, node_consume, serve_conn};
use weft_test_support::peers::node_provider;

fn peer_script() -> Option<PathBuf> {
    interop_peer("rpc-node/node_modules/dubbo-remoting/package.json")?;
    interop_peer("rpc-node/node_modules/sofa-rpc-node/package.json")?;
    tool("node")?;
    Some(interop_dir().join("rpc-node/dubbo_peer.js"))
}

/// Listener `name` (metrics are per process and labelled by listener: one name per test).
fn yaml(name: &str, alpha: SocketAddr, beta: SocketAddr) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: {name}
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
        - name: int
          match: {{ interface: org.example.Greeter, method: echo, arguments: [{{ index: 0, equals: "42" }}] }}
          cluster: beta
        - name: long
          match: {{ interface: org.example.Greeter, method: echo, arguments: [{{ index: 0, equals: "1099511627776" }}] }}
          cluster: beta
        - name: bool
          match: {{ interface: org.example.Greeter, method: echo, arguments: [{{ index: 0, equals: "true" }}] }}
          cluster: beta
        - name: second
          match: {{ interface: org.example.Greeter, arguments: [{{ index: 1, equals: second }}] }}
          cluster: beta
        - name: lane-blue
          match: {{ interface: org.example.Greeter, attachments: {{ lane: blue }} }}
          cluster: beta
        - name: slow
          match: {{ interface: org.example.Greeter, method: slow }}
          cluster: alpha
          timeout: 300ms
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
    let proxy = start_proxy(&yaml("dubbo-interop", alpha, beta));
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

/// The interop/dubbo2-js consumer script, and the providers' script.
fn dubbo2_js() -> Option<(PathBuf, PathBuf)> {
    interop_peer("dubbo2-js/node_modules/dubbo2.js/package.json")?;
    let providers = peer_script()?;
    Some((interop_dir().join("dubbo2-js/consumer.js"), providers))
}

/// The `.venv-dubbo2` Python (with dubbo-ssl-python) and the providers' script.
fn dubbo_ssl_python() -> Option<(PathBuf, PathBuf)> {
    let python = interop_peer(".venv-dubbo2/bin/python")?;
    let providers = peer_script()?;
    Some((python, providers))
}

/// The calls both consumers make (group `HSF`): ids 1-14 one of each kind, 100-139 at once,
/// alternating between the providers. Arguments other than strings are written by each client's
/// own encoder (see the consumer scripts): an int, a long, a boolean, a double, an object with
/// its class definition, a String[].
fn consumer_calls() -> Vec<serde_json::Value> {
    let point = serde_json::json!({"object": "org.example.Point", "fields": {"x": 1, "y": "two"}});
    let mut cmds = vec![
        serde_json::json!({"id": 1, "method": "echo", "args": ["vip"]}),
        serde_json::json!({"id": 2, "method": "echo", "args": ["plain"]}),
        serde_json::json!({"id": 3, "method": "whoami"}),
        serde_json::json!({"id": 4, "method": "nosuch"}),
        serde_json::json!({"id": 5, "method": "prop", "args": ["lane"], "props": {"lane": "blue"}}),
        serde_json::json!({"id": 6, "method": "prop", "args": ["lane"], "props": {"lane": "green"}}),
        serde_json::json!({"id": 7, "method": "slow", "args": [1500]}),
        serde_json::json!({"id": 8, "method": "echo", "args": [42]}),
        serde_json::json!({"id": 9, "method": "echo", "args": [{"long": 1_099_511_627_776u64}]}),
        serde_json::json!({"id": 10, "method": "echo", "args": [true]}),
        serde_json::json!({"id": 11, "method": "echo", "args": [1.5]}),
        serde_json::json!({"id": 12, "method": "echo", "args": [point, "second"]}),
        serde_json::json!({"id": 13, "method": "echo", "args": [{"list": ["a", "b"]}], "props": {"lane": "blue"}}),
        serde_json::json!({"id": 14, "method": "echo", "args": [point], "props": {"lane": "blue"}}),
    ];
    for i in 0..40 {
        let arg = if i % 2 == 0 { "vip".to_string() } else { format!("n{i}") };
        cmds.push(serde_json::json!({"id": 100 + i, "method": "echo", "args": [arg]}));
    }
    cmds
}

/// Checks the answers to [`consumer_calls`] except the errors' wording (each client words them
/// its own way): who answered each call.
#[track_caller]
fn check_routed(out: &[serde_json::Value]) {
    assert_eq!(out.len(), 54, "{out:?}");
    assert_eq!(out[0]["ok"], "beta:vip", "argument routing: {out:?}");
    assert_eq!(out[1]["ok"], "alpha:plain", "{out:?}");
    assert_eq!(out[2]["ok"], "beta", "method + group attachment routing: {out:?}");
    assert_eq!(out[4]["ok"], "beta:blue", "attachment routed on and delivered: {out:?}");
    assert_eq!(out[5]["ok"], "alpha:green", "attachment delivered: {out:?}");
    assert_eq!(out[7]["ok"], "beta:42", "int argument routing: {out:?}");
    assert_eq!(out[8]["ok"], "beta:1099511627776", "long argument routing: {out:?}");
    assert_eq!(out[9]["ok"], "beta:true", "boolean argument routing: {out:?}");
    assert_eq!(out[10]["ok"], "alpha:1.5", "{out:?}");
    // Found after skipping an object argument (and its class definition), an array.
    assert_eq!(
        out[11]["ok"], "beta:[object Object]",
        "second argument routing: {out:?}"
    );
    assert_eq!(out[12]["ok"], "beta:a,b", "attachment after an array: {out:?}");
    assert_eq!(
        out[13]["ok"], "beta:[object Object]",
        "attachment after an object: {out:?}"
    );
    for (k, v) in out[14..].iter().enumerate() {
        let want = if k % 2 == 0 {
            "beta:vip".to_string()
        } else {
            format!("alpha:n{k}")
        };
        assert_eq!(v["ok"], serde_json::Value::String(want), "{v}");
    }
}

fn err_of(v: &serde_json::Value) -> &str {
    v["err"].as_str().unwrap_or_else(|| panic!("an error: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo2_js_consumer_through_weft() {
    let Some((consumer, providers)) = dubbo2_js() else {
        return;
    };
    let (_a, alpha) = node_provider(&providers, "alpha");
    let (_b, beta) = node_provider(&providers, "beta");
    let proxy = start_proxy(&yaml("dubbo2-js", alpha, beta));
    let addr = proxy.listener_addr("dubbo2-js").unwrap();
    let run = move |args: &[&str], cmds: Vec<serde_json::Value>| {
        let mut cmd = Command::new("node");
        cmd.arg(&consumer).arg(addr.to_string()).args(args);
        tokio::task::spawn_blocking(move || consume(cmd, &cmds))
    };

    let out = run(&[], consumer_calls()).await.unwrap();
    check_routed(&out);
    // The provider's own error passes through (dubbo2.js reports an error status's body as text).
    assert!(err_of(&out[3]).contains("Can not find method"), "{out:?}");
    assert!(err_of(&out[3]).contains("nosuch"), "{out:?}");
    // weft's SERVER_TIMEOUT reply after the route's 300ms, not the provider's answer at 1.5s.
    assert!(err_of(&out[6]).contains("upstream request timeout (weft)"), "{out:?}");

    // No group: the `who` route does not match, `rest` does.
    let cmds = vec![serde_json::json!({"id": 1, "method": "whoami"})];
    let out = run(&["org.example.Greeter", "-"], cmds).await.unwrap();
    assert_eq!(out[0]["ok"], "alpha", "{out:?}");

    // A service weft has no route for: dubbo2.js raises weft's SERVICE_NOT_FOUND message.
    let cmds = vec![serde_json::json!({"id": 1, "method": "echo", "args": ["x"]})];
    let out = run(&["org.example.Missing"], cmds).await.unwrap();
    assert!(
        err_of(&out[0]).contains("no route for org.example.Missing.echo (weft)"),
        "{out:?}"
    );

    let m = stats(&proxy).await;
    for want in [
        r#"weft_rpc_requests_total{listener="dubbo2-js",method="echo",outcome="ok"} 49"#,
        r#"weft_rpc_requests_total{listener="dubbo2-js",method="prop",outcome="ok"} 2"#,
        r#"weft_rpc_local_replies_total{listener="dubbo2-js",reason="UT"} 1"#,
        r#"weft_rpc_local_replies_total{listener="dubbo2-js",reason="NR"} 1"#,
    ] {
        assert!(m.contains(want), "{want} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo_ssl_python_consumer_through_weft() {
    let Some((python, providers)) = dubbo_ssl_python() else {
        return;
    };
    let (_a, alpha) = node_provider(&providers, "alpha");
    let (_b, beta) = node_provider(&providers, "beta");
    let proxy = start_proxy(&yaml("dubbo-ssl-python", alpha, beta));
    let addr = proxy.listener_addr("dubbo-ssl-python").unwrap();
    let script = interop_dir().join("dubbo_ssl_peer.py");
    let run = move |args: &[&str], cmds: Vec<serde_json::Value>| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg(addr.to_string()).args(args);
        tokio::task::spawn_blocking(move || consume(cmd, &cmds))
    };

    let out = run(&[], consumer_calls()).await.unwrap();
    check_routed(&out);
    // dubbo-ssl-python raises DubboResponseException with an error status's message.
    assert!(err_of(&out[3]).starts_with("DubboResponseException"), "{out:?}");
    assert!(err_of(&out[3]).contains("Can not find method"), "{out:?}");
    assert!(err_of(&out[6]).contains("upstream request timeout (weft)"), "{out:?}");

    // No group (the library sends a null `group` attachment): `rest`, not `who`.
    let cmds = vec![serde_json::json!({"id": 1, "method": "whoami"})];
    let out = run(&["org.example.Greeter", "-"], cmds).await.unwrap();
    assert_eq!(out[0]["ok"], "alpha", "{out:?}");

    let cmds = vec![serde_json::json!({"id": 1, "method": "echo", "args": ["x"]})];
    let out = run(&["org.example.Missing"], cmds).await.unwrap();
    let err = err_of(&out[0]);
    assert!(err.starts_with("DubboResponseException"), "{out:?}");
    assert!(err.contains("no route for org.example.Missing.echo (weft)"), "{out:?}");

    // Its heartbeats, sent on a connection idle for 0.3s here (60s by default), are answered by
    // weft: none left unanswered, and a call after 2s idle still goes through.
    let cmds = vec![
        serde_json::json!({"id": 1, "method": "echo", "args": ["before"]}),
        serde_json::json!({"id": 2, "method": "echo", "args": ["after"], "delay": 2.0}),
    ];
    let out = run(&["--heartbeat-idle", "0.3"], cmds).await.unwrap();
    assert_eq!(out[0]["ok"], "alpha:before", "{out:?}");
    assert_eq!(out[1]["ok"], "alpha:after", "{out:?}");
    let misses = out[2]["heartbeat_misses"].as_u64().unwrap_or(99);
    assert!(misses <= 1, "heartbeats left unanswered: {out:?}");
    let beats = wait_stat(
        &proxy,
        r#"weft_rpc_heartbeats_total{listener="dubbo-ssl-python"}"#,
        Duration::from_secs(1),
        |v| v >= 2.0,
    )
    .await;
    assert!(beats >= 2.0);

    let m = stats(&proxy).await;
    for want in [
        r#"weft_rpc_requests_total{listener="dubbo-ssl-python",method="echo",outcome="ok"} 51"#,
        r#"weft_rpc_local_replies_total{listener="dubbo-ssl-python",reason="UT"} 1"#,
        r#"weft_rpc_local_replies_total{listener="dubbo-ssl-python",reason="NR"} 1"#,
    ] {
        assert!(m.contains(want), "{want} in\n{m}");
    }
}

/// A provider built on weft's own codec that reads Dubbox's layout (no provider here speaks it):
/// answers `NAME:dubbox:ARG0` to a request whose method is followed by the int -1 (`0x8f`), and
/// `NAME:plain:ARG0` to any other.
async fn dubbox_provider(name: &'static str) -> SocketAddr {
    use weft_rpc::codec::{Codec, FrameKind};
    use weft_rpc::dubbo::{self, Dubbo};
    use weft_rpc::hessian::{self, StrSpan};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_conn::<Dubbo>(s, move |f, tx| {
                if f.kind != FrameKind::Request {
                    return ControlFlow::Continue(());
                }
                let info = Dubbo.request_info(&f).unwrap();
                let layout = match info.method {
                    StrSpan::Range(_, end) if f.data[end as usize] == 0x8f => "dubbox",
                    _ => "plain",
                };
                let arg0 = Dubbo
                    .argument(&f, &info, 0)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let mut v = Vec::new();
                hessian::write_string(&mut v, &format!("{name}:{layout}:{arg0}"));
                let _ = tx.send(dubbo::encode_response(f.id, &v));
                ControlFlow::Continue(())
            }));
        }
    });
    addr
}

/// dubbo2.js in its Dubbox mode (an int -1 between the method and the parameter descriptor):
/// weft reads the request, routes it by argument and by `group` attachment, and forwards it
/// unchanged; the answers reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo2_js_dubbox_layout_through_weft() {
    let Some((consumer, _)) = dubbo2_js() else { return };
    let alpha = dubbox_provider("alpha").await;
    let beta = dubbox_provider("beta").await;
    let proxy = start_proxy(&yaml("dubbo2-js-dubbox", alpha, beta));
    let addr = proxy.listener_addr("dubbo2-js-dubbox").unwrap();
    let mut cmds = vec![
        serde_json::json!({"id": 1, "method": "echo", "args": ["vip"]}),
        serde_json::json!({"id": 2, "method": "echo", "args": ["plain"]}),
        serde_json::json!({"id": 3, "method": "whoami"}),
        serde_json::json!({"id": 4, "method": "echo", "args": ["x"], "props": {"lane": "blue"}}),
    ];
    for i in 0..20 {
        let arg = if i % 2 == 0 { "vip".to_string() } else { format!("n{i}") };
        cmds.push(serde_json::json!({"id": 100 + i, "method": "echo", "args": [arg]}));
    }
    let mut cmd = Command::new("node");
    cmd.arg(&consumer).arg(addr.to_string()).arg("--dubbox");
    let out = tokio::task::spawn_blocking(move || consume(cmd, &cmds)).await.unwrap();
    assert_eq!(out.len(), 24, "{out:?}");
    assert_eq!(out[0]["ok"], "beta:dubbox:vip", "{out:?}");
    assert_eq!(out[1]["ok"], "alpha:dubbox:plain", "{out:?}");
    assert_eq!(
        out[2]["ok"], "beta:dubbox:",
        "method + group attachment routing: {out:?}"
    );
    assert_eq!(out[3]["ok"], "beta:dubbox:x", "attachment routing: {out:?}");
    for (k, v) in out[4..].iter().enumerate() {
        let want = if k % 2 == 0 {
            "beta:dubbox:vip".to_string()
        } else {
            format!("alpha:dubbox:n{k}")
        };
        assert_eq!(v["ok"], serde_json::Value::String(want), "{v}");
    }
}

/// A drain (`READONLY` to each caller) with a call in flight from a real client: the call still
/// gets its answer. `consumer` makes the client's command for a target address. Listener and
/// cluster are named after `name` (metrics are per process).
async fn drain_with_call_in_flight(name: &str, consumer: impl FnOnce(SocketAddr) -> Command) {
    let providers = peer_script().expect("checked by the caller");
    let (_a, alpha) = node_provider(&providers, "alpha");
    let cluster = format!("{name}-c");
    let proxy = start_proxy(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: {name}
    address: 127.0.0.1:0
    rpc:
      protocol: dubbo
      timeout: 5s
      routes: [{{ match: {{ interface: org.example.Greeter }}, cluster: {cluster} }}]
{clusters}"#,
        clusters = clusters_yaml(&[(cluster.as_str(), alpha)])
    ));
    let addr = proxy.listener_addr(name).unwrap();
    let cmd = consumer(addr);
    let cmds = vec![serde_json::json!({"id": 1, "method": "slow", "args": [1000]})];
    let call = tokio::task::spawn_blocking(move || consume(cmd, &cmds));
    wait_stat(
        &proxy,
        &format!(r#"weft_upstream_rq_active{{cluster="{cluster}"}}"#),
        Duration::from_secs(10),
        |v| v == 1.0,
    )
    .await;
    proxy.start_drain();
    let out = call.await.unwrap();
    assert_eq!(
        out[0]["ok"], "alpha:slow",
        "in-flight call answered after READONLY: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo2_js_drain() {
    let Some((consumer, _)) = dubbo2_js() else { return };
    drain_with_call_in_flight("dubbo2-js-drain", |addr| {
        let mut cmd = Command::new("node");
        cmd.arg(&consumer).arg(addr.to_string());
        cmd
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo_ssl_python_drain() {
    let Some((python, _)) = dubbo_ssl_python() else { return };
    drain_with_call_in_flight("dubbo-ssl-python-drain", |addr| {
        let mut cmd = Command::new(&python);
        cmd.arg(interop_dir().join("dubbo_ssl_peer.py")).arg(addr.to_string());
        cmd
    })
    .await;
}

/// dubbo-ssl-python in its TLS mode (`verify=` a CA file) to a Dubbo listener that terminates TLS
/// (`tls` with a certificate; STRICT), then plaintext to the sofa-rpc-node providers: routing,
/// attachments, weft's own reply and concurrent calls over the TLS connection; and a plaintext
/// caller on the same port gets nothing served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo_ssl_python_over_tls_through_weft() {
    let Some((python, providers)) = dubbo_ssl_python() else {
        return;
    };
    let dir = TempDir::new("dubbo-tls");
    let ca = weft_tls::testcerts::Ca::new("weft test dubbo CA");
    ca.write(dir.path(), "ca");
    ca.leaf_dns(&["dubbo.example.com"]).write(dir.path(), "leaf");
    let d = dir.path().display();
    let (_a, alpha) = node_provider(&providers, "alpha");
    let (_b, beta) = node_provider(&providers, "beta");
    let plain = yaml("dubbo-tls", alpha, beta);
    let tls = format!("    tls: {{ certificates: [{{ cert_file: {d}/leaf.crt, key_file: {d}/leaf.key }}] }}\n    rpc:");
    let proxy = start_proxy(&plain.replacen("    rpc:", &tls, 1));
    let addr = proxy.listener_addr("dubbo-tls").unwrap();
    let script = interop_dir().join("dubbo_ssl_peer.py");
    let ca_file = dir.join("ca.crt");

    let mut cmds = vec![
        serde_json::json!({"id": 1, "method": "echo", "args": ["vip"]}),
        serde_json::json!({"id": 2, "method": "echo", "args": ["plain"]}),
        serde_json::json!({"id": 3, "method": "prop", "args": ["lane"], "props": {"lane": "blue"}}),
    ];
    for i in 0..20 {
        let arg = if i % 2 == 0 { "vip".to_string() } else { format!("n{i}") };
        cmds.push(serde_json::json!({"id": 100 + i, "method": "echo", "args": [arg]}));
    }
    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(addr.to_string()).arg("--ca").arg(&ca_file);
    let out = tokio::task::spawn_blocking(move || consume(cmd, &cmds)).await.unwrap();
    assert_eq!(out.len(), 23, "{out:?}");
    assert_eq!(out[0]["ok"], "beta:vip", "{out:?}");
    assert_eq!(out[1]["ok"], "alpha:plain", "{out:?}");
    assert_eq!(out[2]["ok"], "beta:blue", "{out:?}");
    for (k, v) in out[3..].iter().enumerate() {
        let want = if k % 2 == 0 {
            "beta:vip".to_string()
        } else {
            format!("alpha:n{k}")
        };
        assert_eq!(v["ok"], serde_json::Value::String(want), "{v}");
    }

    let cmds = vec![serde_json::json!({"id": 1, "method": "echo", "args": ["x"]})];
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(addr.to_string())
        .arg("org.example.Missing")
        .arg("--ca")
        .arg(&ca_file);
    let out = tokio::task::spawn_blocking(move || consume(cmd, &cmds)).await.unwrap();
    assert!(
        err_of(&out[0]).contains("no route for org.example.Missing.echo (weft)"),
        "{out:?}"
    );

    // Plaintext Dubbo on the TLS port: no handshake, nothing served.
    let cmds = vec![serde_json::json!({"id": 1, "method": "echo", "args": ["x"], "timeout": 1})];
    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(addr.to_string());
    let out = tokio::task::spawn_blocking(move || consume(cmd, &cmds)).await.unwrap();
    assert!(out[0]["ok"].is_null() && out[0]["err"].is_string(), "{out:?}");

    let m = stats(&proxy).await;
    assert!(
        m.contains(r#"weft_rpc_requests_total{listener="dubbo-tls",method="echo",outcome="ok"} 22"#),
        "{m}"
    );
}
