//! One `rpc.protocol: auto` port serving five kinds of client, each told apart by one peek at its
//! first bytes: a sofa-rpc-node Dubbo consumer and a sofa-rpc-node Bolt consumer (routed by
//! protocol to their own providers), curl over HTTP/1.1 and over h2c (prior knowledge), and TCP
//! clients for the fallback — one that waits for the server to speak first (sent to the fallback
//! after the sniff timeout) and one that sends bytes no signature matches.
//! Peers: `interop/install` (interop/rpc-node), curl (scripts/install-peers).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_test_support::peers::{interop_dir, interop_peer, tool};
use weft_test_support::*;

mod common;
use common::{clusters_yaml, node_consume};
use weft_test_support::peers::node_provider;

fn scripts() -> Option<(PathBuf, PathBuf)> {
    interop_peer("rpc-node/node_modules/dubbo-remoting/package.json")?;
    interop_peer("rpc-node/node_modules/sofa-bolt-node/package.json")?;
    interop_peer("rpc-node/node_modules/sofa-rpc-node/package.json")?;
    tool("node")?;
    tool("curl")?;
    let d = interop_dir().join("rpc-node");
    Some((d.join("dubbo_peer.js"), d.join("bolt_peer.js")))
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn yaml(dubbo: SocketAddr, bolt: SocketAddr, web: SocketAddr, legacy: SocketAddr) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: mixed
    address: 127.0.0.1:0
    rpc:
      protocol: auto
      sniff_timeout: 100ms
      timeout: 2s
      routes:
        - name: dubbo
          match: {{ protocol: dubbo, interface: org.example.Greeter }}
          cluster: dubbo
        - name: bolt
          match: {{ protocol: bolt, interface: org.example.Greeter }}
          cluster: bolt
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: web }}
    tcp_proxy: {{ cluster: legacy }}
{clusters}"#,
        clusters = clusters_yaml(&[("dubbo", dubbo), ("bolt", bolt), ("web", web), ("legacy", legacy)])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_dubbo_bolt_http1_h2c_and_tcp_fallback() {
    let Some((dubbo_js, bolt_js)) = scripts() else { return };
    let (_d, dubbo) = node_provider(&dubbo_js, "dubbo-p");
    let (_b, bolt) = node_provider(&bolt_js, "bolt-p");
    let web = named_upstream("web").await;
    // A server-speaks-first backend: greets, then echoes.
    let legacy = tcp_server(|mut s: tokio::net::TcpStream| async move {
        if s.write_all(b"220 legacy ready\r\n").await.is_ok() {
            tcp_echo(s).await;
        }
    })
    .await;
    let proxy = start_proxy(&yaml(dubbo, bolt, web.addr, legacy));
    let addr = proxy.listener_addr("mixed").unwrap();

    let cmds = [
        serde_json::json!({"id": 1, "method": "echo", "args": ["hi"]}),
        serde_json::json!({"id": 2, "method": "whoami"}),
    ];
    let (d, c) = (dubbo_js.clone(), cmds.clone());
    let out = tokio::task::spawn_blocking(move || node_consume(&d, addr, &[], &c))
        .await
        .unwrap();
    assert_eq!(out[0]["ok"], "dubbo-p:hi", "Dubbo: {out:?}");
    assert_eq!(out[1]["ok"], "dubbo-p", "{out:?}");
    let (b, c) = (bolt_js.clone(), cmds.clone());
    let out = tokio::task::spawn_blocking(move || node_consume(&b, addr, &[], &c))
        .await
        .unwrap();
    assert_eq!(out[0]["ok"], "bolt-p:hi", "Bolt: {out:?}");
    assert_eq!(out[1]["ok"], "bolt-p", "{out:?}");

    let url = format!("http://{addr}/x");
    let u = url.clone();
    let h1 = tokio::task::spawn_blocking(move || curl(&["-i", "--http1.1", &u]))
        .await
        .unwrap();
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(h1.contains("hello from web"), "{h1}");
    let h2 = tokio::task::spawn_blocking(move || curl(&["-i", "--http2-prior-knowledge", &url]))
        .await
        .unwrap();
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    assert!(h2.contains("hello from web"), "{h2}");

    // Sends nothing first: after the sniff timeout it is the fallback's, whose greeting arrives.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    let mut greet = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut greet))
        .await
        .expect("the fallback's greeting")
        .unwrap();
    assert_eq!(&greet, b"220 legacy ready\r\n");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(90),
        "sniff timeout honoured: {waited:?}"
    );
    s.write_all(b"ping\n").await.unwrap();
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping\n");

    // Bytes no signature matches: the fallback at once (no wait for the timeout).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"SSH-2.0-weft-test\r\n").await.unwrap();
    let mut got = vec![0u8; 18 + 19];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut got))
        .await
        .expect("greeting and echo")
        .unwrap();
    assert_eq!(&got[..18], b"220 legacy ready\r\n");
    assert_eq!(&got[18..], b"SSH-2.0-weft-test\r\n");

    let m = stats(&proxy).await;
    for (p, n) in [("dubbo", 1), ("bolt", 1), ("http1", 1), ("http2", 1), ("fallback", 2)] {
        let want = format!(r#"weft_rpc_sniffed_connections_total{{listener="mixed",protocol="{p}"}} {n}"#);
        assert!(m.contains(&want), "{want}\n{m}");
    }
}

/// TLS on an `auto` listener with `tls`: a ClientHello goes to the HTTP path over TLS (curl
/// verifies the chain), while plaintext HTTP/1.1 on the same port still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_on_one_auto_port() {
    if tool("curl").is_none() {
        return;
    }
    let dir = TempDir::new("sniff-tls");
    let ca = weft_tls::testcerts::Ca::new("weft test sniff CA");
    ca.write(dir.path(), "ca");
    ca.leaf_dns(&["a.example.com"]).write(dir.path(), "a");
    let d = dir.path().display();
    let web = named_upstream("web").await;
    let proxy = start_proxy(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: mixed-tls
    address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert_file: {d}/a.crt, key_file: {d}/a.key, server_names: [a.example.com] }}
    rpc: {{ protocol: auto, routes: [{{ cluster: web }}] }}
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: web }}
{clusters}"#,
        clusters = clusters_yaml(&[("web", web.addr)])
    ));
    let port = proxy.listener_addr("mixed-tls").unwrap().port();
    let ca_file = dir.join("ca.crt").display().to_string();
    let https = tokio::task::spawn_blocking(move || {
        curl(&[
            "-i",
            "--cacert",
            &ca_file,
            "--resolve",
            &format!("a.example.com:{port}:127.0.0.1"),
            &format!("https://a.example.com:{port}/x"),
        ])
    })
    .await
    .unwrap();
    assert!(
        https.starts_with("HTTP/2 200") || https.starts_with("HTTP/1.1 200"),
        "{https}"
    );
    assert!(https.contains("hello from web"), "{https}");
    let plain = tokio::task::spawn_blocking(move || curl(&["-i", &format!("http://127.0.0.1:{port}/x")]))
        .await
        .unwrap();
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    let m = stats(&proxy).await;
    for p in ["tls", "http1"] {
        let want = format!(r#"weft_rpc_sniffed_connections_total{{listener="mixed-tls",protocol="{p}"}} 1"#);
        assert!(m.contains(&want), "{want}\n{m}");
    }
}
