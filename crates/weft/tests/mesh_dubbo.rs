//! Dubbo2 through the mesh, configured by `weft control`, with software nobody here wrote on both
//! ends: a registry service with `protocol: dubbo` (interface `org.example.Greeter`) served by two
//! sofa-rpc-node Dubbo providers (`interop/rpc-node/dubbo_peer.js`), each behind its own weft
//! sidecar, whose inbound listener weft control makes a `dubbo_proxy` one; and a sofa-rpc-node
//! consumer calling its own sidecar's outbound Dubbo listener (node metadata
//! `weft.outbound_dubbo`), which routes by interface: consumer → sidecar → sidecar → provider.
//!
//! Checks: calls answered by both providers (per-call load balancing over the consumer's one
//! connection), attachments delivered, an interface no service provides answered with weft's
//! SERVICE_NOT_FOUND, the RPC metrics of both hops, and a registry change (one provider removed)
//! followed with no failed call.
//!
//! `dubbo_over_mesh_mtls`: the same hop with weft control as the mesh CA and the service STRICT:
//! the caller's sidecar opens its upstream Dubbo connections over mTLS (the cluster's TLS from
//! weft control), the providers' sidecars accept only mTLS, and the calls get through.
//!
//! `dubbo_routing_rules_from_the_registry_pick_the_provider`: the registry's `routes[].dubbo[]`
//! rules (by method, argument value and attachment, to subsets) decide which provider answers.
//!
//! `envoy_sidecar_takes_weft_controls_dubbo_listener`: Envoy 1.40 as the consumer's sidecar, its
//! Dubbo listener (`envoy.filters.network.dubbo_proxy`) and clusters from the same weft control:
//! the consumer's calls go through Envoy to the weft sidecars and their providers. Envoy comes from
//! `interop/install`; outside CI a missing Envoy skips it, under `CI=true` it fails.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_test_support::peers::{
    envoy_ads_bootstrap, envoy_binary, interop_dir, interop_peer, node_provider, tool, ChildGuard,
};
use weft_test_support::{eventually_blocking, free_addr, metric, reserved_addr, TempDir};

mod blocking;
use blocking::{http, start_control, start_proxy};
mod mesh_support;
use mesh_support::token;

const IFACE: &str = "org.example.Greeter";

fn peer_script() -> Option<PathBuf> {
    interop_peer("rpc-node/node_modules/dubbo-remoting/package.json")?;
    interop_peer("rpc-node/node_modules/sofa-rpc-node/package.json")?;
    tool("node")?;
    Some(interop_dir().join("rpc-node/dubbo_peer.js"))
}

/// The sofa-rpc-node consumer on `target` for `iface`: runs `cmds` (one JSON object each) and
/// returns the answers sorted by id; panics after 30 s.
fn consume(script: &Path, target: SocketAddr, iface: &str, cmds: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut child = ChildGuard(
        Command::new("node")
            .arg(script)
            .args(["consumer", &target.to_string(), iface])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts"),
    );
    {
        let mut stdin = child.0.stdin.take().unwrap();
        for c in cmds {
            writeln!(stdin, "{c}").unwrap();
        }
    }
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(out).lines().map_while(Result::ok).collect();
        let _ = tx.send(lines);
    });
    let lines = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the consumer finished within 30 s");
    let mut v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    v.sort_by_key(|x| x["id"].as_u64());
    v
}

/// A `weft proxy` sidecar of `service`: (process, admin, its outbound Dubbo listener's address).
/// With `inbound`, its inbound listener is there, in front of `app`.
fn sidecar(
    dir: &TempDir,
    id: &str,
    service: &str,
    inbound: Option<(SocketAddr, SocketAddr)>,
    xds: SocketAddr,
) -> (ChildGuard, SocketAddr, SocketAddr) {
    sidecar_with(dir, id, service, inbound, xds, &[])
}

/// [`sidecar`] with extra `weft proxy` arguments (an identity token).
fn sidecar_with(
    dir: &TempDir,
    id: &str,
    service: &str,
    inbound: Option<(SocketAddr, SocketAddr)>,
    xds: SocketAddr,
    extra: &[&std::ffi::OsStr],
) -> (ChildGuard, SocketAddr, SocketAddr) {
    let inb = inbound
        .map(|(i, app)| format!("    weft.inbound: \"{i}\"\n    weft.app: \"{app}\"\n"))
        .unwrap_or_default();
    // The ports are drawn free but bound later, by the sidecar: one taken in between (a CI run's
    // sidecar NACKed its Dubbo listener with "Address already in use") is retried with fresh ones.
    for _ in 0..3 {
        let (admin, outbound, dubbo_out) = (free_addr(), free_addr(), free_addr());
        let cfg = format!(
            "node:\n  id: {id}\n  cluster: {service}\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{outbound}\"\n    weft.outbound_dubbo: \"{dubbo_out}\"\n{inb}admin:\n  address: \"{admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{xds}\"\n  mode: ads_delta\n"
        );
        let path = dir.join(&format!("{id}.yaml"));
        std::fs::write(&path, cfg).unwrap();
        if let Some(child) = start_proxy(&path, extra, admin) {
            return (child, admin, dubbo_out);
        }
    }
    panic!("sidecar {id} never became ready (3 tries with fresh ports, 20 s each)");
}

fn stats(admin: SocketAddr) -> String {
    http(admin, "x", "/stats/prometheus")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn registry(reg: &TempDir, endpoints: &[SocketAddr]) {
    registry_with(reg, endpoints, "");
}

/// The registry with `extra` service fields (indented lines).
fn registry_with(reg: &TempDir, endpoints: &[SocketAddr], extra: &str) {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{{address: \"{e}\"}}")).collect();
    reg.write(
        "services.yaml",
        &format!(
            "services:\n  - name: greeter\n    protocol: dubbo\n    interfaces: [{IFACE}]\n{extra}    endpoints: [{}]\n",
            eps.join(", ")
        ),
    );
}

/// TLS handshakes a proxy accepted (its inbound side), from its metrics.
fn handshakes_accepted(admin: SocketAddr) -> f64 {
    stats(admin)
        .lines()
        .filter(|l| l.starts_with("weft_tls_handshakes_total{side=\"downstream\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}

#[test]
fn dubbo_over_mesh_mtls() {
    let Some(script) = peer_script() else { return };
    let reg = TempDir::new("mesh-dubbo-mtls-reg");
    let dir = TempDir::new("mesh-dubbo-mtls");
    let ca = dir.join("ca");
    let (_alpha, alpha) = node_provider(&script, "alpha");
    let (_beta, beta) = node_provider(&script, "beta");
    // The inbound ports are named in the registry before the sidecars bind them: held meanwhile.
    let ((_hold_a, in_a), (_hold_b, in_b)) = (reserved_addr(), reserved_addr());
    registry_with(&reg, &[in_a, in_b], "    mtls: STRICT\n");
    let ca_arg = ca.display().to_string();
    let (_control, xds, _) = start_control(&reg, &["--ca-dir", &ca_arg]);
    let ca_addr = xds.to_string();
    let args = |t: &PathBuf| -> Vec<std::ffi::OsString> {
        vec![
            "--ca-address".into(),
            ca_addr.clone().into(),
            "--identity-token-file".into(),
            t.clone().into_os_string(),
        ]
    };
    let (tg, tw) = (token(&dir.0, "default/greeter"), token(&dir.0, "default/web"));
    let (ag, aw) = (args(&tg), args(&tw));
    fn os(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
        v.iter().map(|x| x.as_os_str()).collect()
    }
    let (_pa, admin_a, _) = sidecar_with(&dir, "greeter-a", "greeter", Some((in_a, alpha)), xds, &os(&ag));
    let (_pb, admin_b, _) = sidecar_with(&dir, "greeter-b", "greeter", Some((in_b, beta)), xds, &os(&ag));
    let (_c, _, out) = sidecar_with(&dir, "web-1", "web", None, xds, &os(&aw));

    let cmds: Vec<serde_json::Value> = (0..12)
        .map(|i| serde_json::json!({"id": i, "method": "echo", "args": [format!("t{i}")]}))
        .collect();
    // The providers' sidecars may take a moment to hold their certificates.
    let got = eventually_blocking("calls over mTLS", Duration::from_secs(20), || {
        let got = consume(&script, out, IFACE, &cmds);
        got.iter().all(|g| g["ok"].is_string()).then_some(got)
    });
    let who: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|g| g["ok"].as_str().unwrap().split_once(':').unwrap().0)
        .collect();
    assert_eq!(who.len(), 2, "{got:?}");
    assert!(
        handshakes_accepted(admin_a) >= 1.0 && handshakes_accepted(admin_b) >= 1.0,
        "the providers' sidecars accepted no mTLS connection:\n{}",
        stats(admin_a)
    );
    // STRICT: a plaintext Dubbo caller straight to a provider's sidecar gets nothing.
    let direct = consume(
        &script,
        in_a,
        IFACE,
        &[serde_json::json!({"id": 1, "method": "echo", "args": ["x"], "timeout": 1000})],
    );
    assert!(
        !direct[0]["ok"].is_string(),
        "plaintext got through a STRICT inbound: {direct:?}"
    );
}

#[test]
fn dubbo_calls_cross_two_sidecars_configured_by_weft_control() {
    let Some(script) = peer_script() else { return };
    let reg = TempDir::new("mesh-dubbo-reg");
    let dir = TempDir::new("mesh-dubbo");
    let (_alpha, alpha) = node_provider(&script, "alpha");
    let (_beta, beta) = node_provider(&script, "beta");
    let ((_hold_a, in_a), (_hold_b, in_b)) = (reserved_addr(), reserved_addr());
    registry(&reg, &[in_a, in_b]);
    let (_control, xds, control_admin) = start_control(&reg, &["--graph-interval", "300ms"]);
    let (_pa, admin_a, _) = sidecar(&dir, "greeter-a", "greeter", Some((in_a, alpha)), xds);
    let (_pb, admin_b, _) = sidecar(&dir, "greeter-b", "greeter", Some((in_b, beta)), xds);
    let (_c, admin_c, out) = sidecar(&dir, "web-1", "web", None, xds);

    // Echo calls (concurrent on the consumer's one connection), attachments, and a call to an
    // interface nobody provides.
    let mut cmds: Vec<serde_json::Value> = (0..20)
        .map(|i| serde_json::json!({"id": i, "method": "echo", "args": [format!("m{i}")]}))
        .collect();
    cmds.push(serde_json::json!({"id": 100, "method": "prop", "args": ["lane"], "props": {"lane": "blue"}}));
    let got = consume(&script, out, IFACE, &cmds);
    assert_eq!(got.len(), 21, "{got:?}");
    let mut by = std::collections::BTreeMap::new();
    for (i, g) in got[..20].iter().enumerate() {
        let ok = g["ok"].as_str().unwrap_or_else(|| panic!("call {i}: {g}"));
        let (who, arg) = ok.split_once(':').unwrap();
        assert_eq!(arg, format!("m{i}"), "{g}");
        *by.entry(who.to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        ["alpha", "beta"],
        "both providers answer: {by:?}"
    );
    let prop = got[20]["ok"].as_str().unwrap_or_default();
    assert!(
        prop == "alpha:blue" || prop == "beta:blue",
        "attachment delivered: {}",
        got[20]
    );

    let missing = consume(
        &script,
        out,
        "org.example.Missing",
        &[serde_json::json!({"id": 1, "method": "echo", "args": ["x"]})],
    );
    let err = missing[0]["err"].as_str().unwrap_or_default();
    assert!(err.contains("no route for org.example.Missing.echo"), "{missing:?}");

    // Both hops counted the calls as RPC requests (listener labels: weft control's names).
    let sample = |admin, listener: &str| {
        metric(
            &stats(admin),
            &format!(r#"weft_rpc_requests_total{{listener="{listener}",method="echo",outcome="ok"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(sample(admin_c, "outbound_dubbo"), 20.0, "{}", stats(admin_c));
    let inbound = sample(admin_a, "inbound|greeter") + sample(admin_b, "inbound|greeter");
    assert_eq!(inbound, 20.0, "{}\n{}", stats(admin_a), stats(admin_b));
    // And in the Istio-standard metrics, as Dubbo: the caller's sidecar reports as source to the
    // service's cluster, the providers' as destination.
    let istio = |admin, reporter: &str, service: &str| {
        (stats(admin).lines())
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| l.contains(&format!("reporter=\"{reporter}\"")))
            .filter(|l| l.contains(&format!("destination_service=\"{service}\"")))
            .filter(|l| l.contains("request_protocol=\"dubbo\"") && l.contains("response_code=\"200\""))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
            .sum::<f64>()
    };
    assert!(istio(admin_c, "source", "greeter") >= 20.0, "{}", stats(admin_c));
    // weft control's service metadata on the inbound cluster names the service, as Istio's does.
    let dest = istio(admin_a, "destination", "greeter") + istio(admin_b, "destination", "greeter");
    assert!(dest >= 20.0, "{}", stats(admin_a));
    // So the service graph of weft control shows the Dubbo edge web -> greeter.
    let edge = eventually_blocking("the web -> greeter Dubbo edge", Duration::from_secs(30), || {
        let (_, body) = http(control_admin, "x", "/graph.json")?;
        let g: serde_json::Value = serde_json::from_str(&body).ok()?;
        let e = (g["edges"].as_array()?.iter())
            .find(|e| e["to"] == "svc:greeter" && e["from"].as_str().is_some_and(|f| f.contains("web")))?
            .clone();
        (e["protocols"] == serde_json::json!(["dubbo"])).then_some(e)
    });
    eprintln!("graph edge: {edge}");

    // One provider leaves the registry: the next calls all reach the other one, none fails.
    registry(&reg, &[in_a]);
    let start = Instant::now();
    eventually_blocking("calls only to alpha", Duration::from_secs(20), || {
        let cmds: Vec<serde_json::Value> = (0..6)
            .map(|i| serde_json::json!({"id": i, "method": "whoami"}))
            .collect();
        let got = consume(&script, out, IFACE, &cmds);
        for g in &got {
            assert!(g["ok"].is_string(), "a call failed during the change: {g}");
        }
        got.iter().all(|g| g["ok"] == "alpha").then_some(())
    });
    eprintln!("registry change followed in {:?}", start.elapsed());
}

/// `routes[].dubbo[]` from the registry: calls routed by method, by argument value and by
/// attachment to a subset of the service's providers, checked by which provider answered; the
/// other calls load balanced over both; a rule changed in the registry followed.
#[test]
fn dubbo_routing_rules_from_the_registry_pick_the_provider() {
    let Some(script) = peer_script() else { return };
    let reg = TempDir::new("mesh-dubbo-rules-reg");
    let dir = TempDir::new("mesh-dubbo-rules");
    let (_alpha, alpha) = node_provider(&script, "alpha");
    let (_beta, beta) = node_provider(&script, "beta");
    let ((_hold_a, in_a), (_hold_b, in_b)) = (reserved_addr(), reserved_addr());
    let write = |vip: &str| {
        reg.write(
            "services.yaml",
            &format!(
                r#"services:
  - name: greeter
    protocol: dubbo
    interfaces: [{IFACE}]
    endpoints:
      - {{address: "{in_a}", labels: {{who: alpha}}}}
      - {{address: "{in_b}", labels: {{who: beta}}}}
destinations:
  - service: greeter
    subsets:
      - {{name: alpha, labels: {{who: alpha}}}}
      - {{name: beta, labels: {{who: beta}}}}
routes:
  - service: greeter
    dubbo:
      - match: {{method: echo, arguments: [{{index: 0, equals: vip}}]}}
        route: {{destination: greeter, subset: {vip}}}
      - match: {{interface: {IFACE}, method: whoami}}
        route: {{destination: greeter, subset: beta}}
      - match: {{attachments: {{lane: blue}}}}
        route: {{destination: greeter, subset: alpha}}
"#
            ),
        )
    };
    write("alpha");
    let (_control, xds, _) = start_control(&reg, &[]);
    let (_pa, _, _) = sidecar(&dir, "greeter-a", "greeter", Some((in_a, alpha)), xds);
    let (_pb, _, _) = sidecar(&dir, "greeter-b", "greeter", Some((in_b, beta)), xds);
    let (_c, _, out) = sidecar(&dir, "web-1", "web", None, xds);

    let mut cmds = Vec::new();
    for i in 0..6 {
        cmds.push(serde_json::json!({"id": i, "method": "echo", "args": ["vip"]}));
        cmds.push(serde_json::json!({"id": 10 + i, "method": "whoami"}));
        cmds.push(serde_json::json!({"id": 20 + i, "method": "prop", "args": ["lane"], "props": {"lane": "blue"}}));
    }
    for i in 0..12 {
        cmds.push(serde_json::json!({"id": 30 + i, "method": "echo", "args": [format!("x{i}")]}));
    }
    let got = consume(&script, out, IFACE, &cmds);
    assert_eq!(got.len(), 30, "{got:?}");
    let ok = |g: &serde_json::Value| g["ok"].as_str().unwrap_or_else(|| panic!("{g}")).to_string();
    for g in &got {
        let id = g["id"].as_u64().unwrap();
        match id {
            0..=9 => assert_eq!(ok(g), "alpha:vip", "by argument value: {g}"),
            10..=19 => assert_eq!(ok(g), "beta", "by method: {g}"),
            20..=29 => assert_eq!(ok(g), "alpha:blue", "by attachment: {g}"),
            _ => {}
        }
    }
    let rest: std::collections::BTreeSet<String> = (got.iter())
        .filter(|g| g["id"].as_u64().unwrap() >= 30)
        .map(|g| ok(g).split_once(':').unwrap().0.to_string())
        .collect();
    assert_eq!(rest.len(), 2, "the other calls go to both providers: {got:?}");

    // The rule changes in the registry: `echo("vip")` now goes to beta.
    write("beta");
    eventually_blocking("the vip calls to move to beta", Duration::from_secs(20), || {
        let cmds: Vec<serde_json::Value> = (0..4)
            .map(|i| serde_json::json!({"id": i, "method": "echo", "args": ["vip"]}))
            .collect();
        let got = consume(&script, out, IFACE, &cmds);
        got.iter().all(|g| g["ok"] == "beta:vip").then_some(())
    });
}

/// The consumer's Envoy sidecar's node (the rest: [`envoy_ads_bootstrap`]).
const ENVOY_NODE: &str = r#"  id: {{NODE_ID}}
  cluster: web
  metadata:
    weft.role: sidecar
    weft.outbound: "{{OUTBOUND}}"
    weft.outbound_dubbo: "{{OUTBOUND_DUBBO}}""#;

#[test]
fn envoy_sidecar_takes_weft_controls_dubbo_listener() {
    let Some(envoy) = envoy_binary() else { return };
    let Some(script) = peer_script() else { return };
    let reg = TempDir::new("mesh-dubbo-envoy-reg");
    let dir = TempDir::new("mesh-dubbo-envoy");
    let (_alpha, alpha) = node_provider(&script, "alpha");
    let (_beta, beta) = node_provider(&script, "beta");
    let (in_a, in_b) = (free_addr(), free_addr());
    registry(&reg, &[in_a, in_b]);
    let (_control, xds, _) = start_control(&reg, &[]);
    let (_pa, admin_a, _) = sidecar(&dir, "greeter-a", "greeter", Some((in_a, alpha)), xds);
    let (_pb, admin_b, _) = sidecar(&dir, "greeter-b", "greeter", Some((in_b, beta)), xds);

    let (out, out_dubbo, envoy_admin) = (free_addr(), free_addr(), free_addr());
    let cfg = envoy_ads_bootstrap(ENVOY_NODE, envoy_admin.port(), xds.port(), "")
        .replace("{{NODE_ID}}", &format!("envoy-dubbo-{}", std::process::id()))
        .replace("{{OUTBOUND}}", &out.to_string())
        .replace("{{OUTBOUND_DUBBO}}", &out_dubbo.to_string());
    std::fs::write(dir.join("envoy.yaml"), cfg).unwrap();
    let log = dir.join("envoy.log");
    let _envoy = ChildGuard(
        Command::new(&envoy)
            .arg("-c")
            .arg(dir.join("envoy.yaml"))
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start envoy"),
    );
    let envoy_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // Envoy's Dubbo listener is up once it accepted weft control's listener.
    let t = Instant::now();
    while std::net::TcpStream::connect(out_dubbo).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "Envoy never opened its Dubbo listener:\n{}",
            envoy_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let cmds: Vec<serde_json::Value> = (0..20)
        .map(|i| serde_json::json!({"id": i, "method": "echo", "args": [format!("e{i}")]}))
        .collect();
    // Envoy may have the listener a moment before the cluster's endpoints.
    let got = eventually_blocking("calls through Envoy", Duration::from_secs(20), || {
        let got = consume(&script, out_dubbo, IFACE, &cmds);
        got.iter().all(|g| g["ok"].is_string()).then_some(got)
    });
    let mut who = std::collections::BTreeSet::new();
    for (i, g) in got.iter().enumerate() {
        let (w, arg) = g["ok"].as_str().unwrap().split_once(':').unwrap();
        assert_eq!(arg, format!("e{i}"), "{g}");
        who.insert(w.to_string());
    }
    assert_eq!(who.len(), 2, "both providers answer through Envoy: {got:?}");
    // The calls reached the weft sidecars' Dubbo listeners.
    let inbound = |admin| {
        metric(
            &stats(admin),
            r#"weft_rpc_requests_total{listener="inbound|greeter",method="echo",outcome="ok"}"#,
        )
        .unwrap_or(0.0)
    };
    assert!(inbound(admin_a) + inbound(admin_b) >= 20.0, "{}", stats(admin_a));
    // Envoy's own Dubbo counters (stat prefix outbound_dubbo).
    let es = http(envoy_admin, "x", "/stats?filter=dubbo.outbound_dubbo")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(es.contains("dubbo.outbound_dubbo.request: "), "{es}");
}
