//! JWT request authentication (`jwt_authn`) with claim-based authorization, through a real pair of
//! proxies: client → outbound proxy → inbound sidecar (JWT + authorization) → app. Keys are
//! generated at test time; one provider's JWKS is inline, the other's is fetched from a cluster (a
//! tiny HTTP server on 127.0.0.1) and rotated while the proxy runs.

use base64::Engine;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use weft_jwt::testing::{jwks, now, TestKey};
use weft_test_support::*;

const ISS: &str = "https://idp.test/";
const REMOTE_ISS: &str = "https://remote.test/";

fn sidecar_yaml(app: SocketAddr, gold: SocketAddr, jwks_server: SocketAddr, local_jwks: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    http:
      jwt_authn:
        providers:
          local:
            issuer: "{ISS}"
            audiences: [bookstore]
            local_jwks: {{ inline_string: '{local_jwks}' }}
            forward_payload_header: x-jwt-payload
            claim_to_headers:
              - {{ header_name: x-jwt-sub, claim_name: sub }}
              - {{ header_name: x-jwt-tier, claim_name: plan.tier }}
          remote:
            issuer: "{REMOTE_ISS}"
            remote_jwks:
              http_uri: {{ uri: "http://jwks.test/.well-known/jwks.json", cluster: jwks, timeout: 1s }}
              cache_duration: 1s
            from_headers: [{{ name: x-remote-token }}]
            forward: true
        rules:
          - {{ match: {{ prefix: /public }}, requires: {{ allow_missing: {{}} }} }}
          - {{ match: {{ prefix: /remote }}, requires: {{ provider_name: remote }} }}
          - {{ match: {{ prefix: / }}, requires: {{ provider_name: local }} }}
      authorization:
        policies:
          - name: no-guests
            action: DENY
            rules: [{{ when: [{{ key: "request.auth.claims[groups]", values: [guests] }}] }}]
          - name: admins
            action: ALLOW
            rules:
              - to: [{{ paths: ["/admin*"] }}]
                from: [{{ requestPrincipals: ["{ISS}*"] }}]
                when: [{{ key: "request.auth.claims[realm][roles]", values: [admin] }}]
              - to: [{{ notPaths: ["/admin*"] }}]
      route_config:
        virtual_hosts:
          - name: app
            domains: ["*"]
            routes:
              - match: {{ prefix: /, headers: [{{ name: x-jwt-tier, exact: gold }}] }}
                route: {{ cluster: gold }}
              - match: {{ prefix: / }}
                route: {{ cluster: app }}
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
  - name: gold
    endpoints: [{{ address: "{gold}" }}]
  - name: jwks
    endpoints: [{{ address: "{jwks_server}" }}]
"#
    )
}

fn outbound_yaml(sidecar: SocketAddr) -> String {
    one_route_yaml(
        "{ cluster: sidecar }",
        &format!("  - name: sidecar\n    endpoints: [{{ address: \"{sidecar}\" }}]"),
    )
}

struct Env {
    _sidecar: Arc<weft_proxy::Server>,
    _outbound: Arc<weft_proxy::Server>,
    front: SocketAddr,
    app: Upstream,
    gold: Upstream,
    jwks_server: Upstream,
    remote_keys: Arc<Mutex<String>>,
    key: TestKey,
    /// An RS256 key in the same local JWKS.
    rsa: TestKey,
    /// The sidecar's configuration (to reload it), and its inbound listener.
    sidecar_yaml: String,
    inbound: SocketAddr,
}

async fn env(remote: &TestKey) -> Env {
    let key = TestKey::es256("local-1");
    let rsa = TestKey::rs256("local-rsa");
    let app = upstream(|_| async { text(200, "app") }).await;
    let gold = upstream(|_| async { text(200, "gold") }).await;
    let remote_keys = Arc::new(Mutex::new(jwks(&[remote])));
    let served = remote_keys.clone();
    let jwks_server = upstream(move |s: Seen| {
        let body = served.lock().clone();
        async move {
            if s.uri.path() != "/.well-known/jwks.json" || s.headers.get("host").is_none_or(|h| h != "jwks.test") {
                return text(404, "no");
            }
            text(200, &body)
        }
    })
    .await;
    let yaml = sidecar_yaml(app.addr, gold.addr, jwks_server.addr, &jwks(&[&key, &rsa]));
    let sidecar = start_proxy(&yaml);
    let inbound = sidecar.listener_addr("inbound").unwrap();
    let outbound = start_proxy(&outbound_yaml(inbound));
    let front = outbound.listener_addr("web").unwrap();
    Env {
        _sidecar: sidecar,
        _outbound: outbound,
        front,
        app,
        gold,
        jwks_server,
        remote_keys,
        key,
        rsa,
        sidecar_yaml: yaml,
        inbound,
    }
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "sub": "alice", "aud": ["bookstore"], "exp": now() + 300, "groups": ["readers"]});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

async fn call(front: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    send_once(front, req("GET", path, "bookstore", headers, ""))
        .await
        .unwrap()
}

async fn bearer(front: SocketAddr, path: &str, token: &str) -> Got {
    call(front, path, &[("authorization", &format!("Bearer {token}"))]).await
}

fn assert_invalid(g: &Got, status: u16, body: &str) {
    assert_eq!(g.status, status, "{}", g.text());
    assert_eq!(g.text(), body);
    let w = g.header("www-authenticate").expect("www-authenticate");
    assert!(w.starts_with("Bearer realm=\"http://bookstore/"), "{w}");
    assert!(w.ends_with(", error=\"invalid_token\""), "{w}");
    assert_eq!(g.header("x-weft-reason"), Some("JWT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_claim_authorization_through_a_sidecar_pair() {
    let remote = TestKey::es256("remote-1");
    let e = env(&remote).await;

    // Valid token: the app sees the claims, not the token; claim_to_headers ran before routing.
    let token = e.key.sign(&claims(json!({"plan": {"tier": "silver"}})));
    let g = bearer(e.front, "/books", &token).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "app"));
    let seen = e.app.last();
    assert!(
        seen.headers.get("authorization").is_none(),
        "the token is not forwarded"
    );
    assert_eq!(seen.headers["x-jwt-sub"], "alice");
    assert_eq!(seen.headers["x-jwt-tier"], "silver");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seen.headers["x-jwt-payload"].as_bytes())
        .unwrap();
    let payload: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["sub"], "alice");
    let gold_token = e.key.sign(&claims(json!({"plan": {"tier": "gold"}})));
    let g = bearer(e.front, "/books", &gold_token).await;
    assert_eq!(
        (g.status.as_u16(), g.text().as_str()),
        (200, "gold"),
        "routed on a claim"
    );
    assert_eq!(e.gold.hits(), 1);

    // RS256 from the same JWKS; another RSA key under the same kid is refused.
    let g = bearer(e.front, "/books", &e.rsa.sign(&claims(json!({})))).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "app"));
    assert_eq!(e.app.last().headers["x-jwt-sub"], "alice");
    let forged = TestKey::rs256("local-rsa").sign(&claims(json!({})));
    assert_invalid(&bearer(e.front, "/books", &forged).await, 401, "Jwt verification fails");

    // A client cannot forge the headers the filter writes.
    let g = call(
        e.front,
        "/public",
        &[
            ("x-jwt-sub", "mallory"),
            ("x-jwt-payload", "e30"),
            ("x-jwt-tier", "gold"),
        ],
    )
    .await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "app"));
    let seen = e.app.last();
    assert!(seen.headers.get("x-jwt-sub").is_none() && seen.headers.get("x-jwt-payload").is_none());

    // Missing when required: 401 without error="invalid_token".
    let g = call(e.front, "/books", &[]).await;
    assert_eq!(g.status, 401);
    assert_eq!(g.text(), "Jwt is missing");
    assert_eq!(
        g.header("www-authenticate"),
        Some("Bearer realm=\"http://bookstore/books\"")
    );

    // Signed by another key with the same kid.
    let forged = TestKey::es256("local-1").sign(&claims(json!({})));
    assert_invalid(&bearer(e.front, "/books", &forged).await, 401, "Jwt verification fails");
    // Expired beyond the 60 s clock skew; not yet valid.
    let expired = e.key.sign(&claims(json!({"exp": now() - 120})));
    assert_invalid(&bearer(e.front, "/books", &expired).await, 401, "Jwt is expired");
    let early = e.key.sign(&claims(json!({"nbf": now() + 600})));
    assert_invalid(&bearer(e.front, "/books", &early).await, 401, "Jwt not yet valid");
    // Wrong audience: Envoy answers 403 for it.
    let aud = e.key.sign(&claims(json!({"aud": "other"})));
    assert_invalid(
        &bearer(e.front, "/books", &aud).await,
        403,
        "Audiences in Jwt are not allowed",
    );
    // Wrong issuer; garbage.
    let iss = e.key.sign(&claims(json!({"iss": "https://evil.test/"})));
    assert_invalid(
        &bearer(e.front, "/books", &iss).await,
        401,
        "Jwt issuer is not configured",
    );
    let g = bearer(e.front, "/books", "not.a.jwt").await;
    assert_eq!(g.status, 401);
    // The token in the query string (Envoy's default `access_token`) works and is removed.
    let g = call(e.front, &format!("/books?x=1&access_token={token}"), &[]).await;
    assert_eq!(g.status, 200);
    assert_eq!(e.app.last().uri.to_string(), "/books?x=1");

    // allow_missing: no token is fine, an invalid one is not.
    assert_eq!(call(e.front, "/public/x", &[]).await.status, 200);
    assert_invalid(&bearer(e.front, "/public/x", &expired).await, 401, "Jwt is expired");
    assert_eq!(bearer(e.front, "/public/x", &token).await.status, 200);

    // `POST /explain` (what `weft explain -H 'authorization: Bearer …'` asks) runs the same JWT
    // check and feeds the claims to authorization.
    let explain = |token: String| {
        let admin = admin_addr(&e._sidecar);
        async move {
            let body = json!({ "method": "GET", "url": "http://bookstore/admin/users", "headers": { "authorization": format!("Bearer {token}") } }).to_string();
            let got = send_once(
                admin,
                req(
                    "POST",
                    "/explain",
                    &admin.to_string(),
                    &[("content-type", "application/json")],
                    &body,
                ),
            )
            .await
            .unwrap();
            assert_eq!(got.status, 200, "{}", got.text());
            serde_json::from_str::<Value>(&got.text()).unwrap()
        }
    };
    let admin_token = e.key.sign(&claims(json!({"realm": {"roles": ["admin"]}})));
    let v = explain(admin_token).await;
    assert_eq!(v["policies"]["jwt_authn"]["decision"], "passed", "{v}");
    assert_eq!(v["policies"]["jwt_authn"]["claims"]["sub"], "alice", "{v}");
    assert_eq!(v["policies"]["authorization"]["decision"], "allowed", "{v}");
    assert!(
        v.get("verdict")
            .is_none_or(|x| x["outcome"] != "denied" && x["outcome"] != "unauthenticated"),
        "{v}"
    );
    let v = explain(token.clone()).await;
    assert_eq!(
        v["policies"]["authorization"]["decision"], "denied",
        "no admin role: {v}"
    );
    let v = explain(expired.clone()).await;
    assert_eq!(v["policies"]["jwt_authn"]["decision"], "rejected", "{v}");
    assert_eq!(
        (v["verdict"]["outcome"].as_str(), v["verdict"]["status"].as_u64()),
        (Some("unauthenticated"), Some(401)),
        "{v}"
    );
    assert_eq!(v["verdict"]["detail"], "Jwt is expired", "{v}");

    // Authorization on claims: a DENY on a list claim, an ALLOW on a nested claim + principal.
    let guest = e.key.sign(&claims(json!({"groups": ["readers", "guests"]})));
    let g = bearer(e.front, "/books", &guest).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (403, "RBAC: access denied"));
    let g = bearer(e.front, "/admin/users", &token).await;
    assert_eq!(g.status, 403, "no admin role");
    let admin = e.key.sign(&claims(json!({"realm": {"roles": ["admin"]}})));
    let g = bearer(e.front, "/admin/users", &admin).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "app"));

    // Remote JWKS: fetched from the cluster on first use, the token kept (forward: true).
    let hits_before = e.jwks_server.hits();
    let rt = |k: &TestKey| k.sign(&json!({"iss": REMOTE_ISS, "sub": "svc", "exp": now() + 300}));
    let g = call(e.front, "/remote/a", &[("x-remote-token", &rt(&remote))]).await;
    assert_eq!(g.status, 200, "{}", g.text());
    assert!(e.jwks_server.hits() > hits_before);
    assert!(e.app.last().headers.get("x-remote-token").is_some());
    // A local-provider token is no good there.
    let g = call(e.front, "/remote/a", &[("x-remote-token", &token)]).await;
    assert_eq!(g.status, 401);

    // Rotation: the server now publishes only a new key; tokens of the new key are accepted once
    // the cache refreshes (1 s, or sooner on the unknown kid), the old key's no longer.
    let rotated = TestKey::es256("remote-2");
    *e.remote_keys.lock() = jwks(&[&rotated]);
    let new_token = rt(&rotated);
    eventually("the rotated key is accepted", Duration::from_secs(10), || {
        let t = new_token.clone();
        async move { (call(e.front, "/remote/b", &[("x-remote-token", &t)]).await.status == 200).then_some(()) }
    })
    .await;
    let g = call(e.front, "/remote/b", &[("x-remote-token", &rt(&remote))]).await;
    assert_eq!(g.status, 401, "the retired key is refused");

    // The JWKS server goes away: the cached keys keep working.
    let mut server = e.jwks_server;
    server.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let g = call(e.front, "/remote/c", &[("x-remote-token", &new_token)]).await;
        assert_eq!(g.status, 200, "last good keys kept: {}", g.text());
    }
    // ... and across a reload of the sidecar's configuration that changes its listener (a new
    // connection manager, the same JWKS source).
    let changed = e.sidecar_yaml.replace("name: no-guests", "name: no-guests-2");
    assert_ne!(changed, e.sidecar_yaml);
    e._sidecar.apply(weft_config::from_yaml(&changed).unwrap()).unwrap();
    // (On a new connection: the outbound proxy's pooled ones keep the old listener's filters.)
    let g = call(e.inbound, "/remote/c", &[("x-remote-token", &new_token)]).await;
    assert_eq!(g.status, 200, "the cached keys survive a reload: {}", g.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_not_fetched_yet_answers_401() {
    let app = upstream(|_| async { text(200, "app") }).await;
    let dead = dead_addr();
    let yaml = format!(
        r#"
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      jwt_authn:
        providers:
          idp:
            remote_jwks: {{ http_uri: {{ uri: "http://idp/jwks", cluster: idp, timeout: 500ms }} }}
        rules: [{{ match: {{ prefix: / }}, requires: {{ provider_name: idp }} }}]
      route_config:
        virtual_hosts:
          - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: app }} }}] }}
clusters:
  - {{ name: app, endpoints: [{{ address: "{}" }}] }}
  - {{ name: idp, endpoints: [{{ address: "{dead}" }}] }}
"#,
        app.addr
    );
    let p = start_proxy(&yaml);
    let front = p.listener_addr("web").unwrap();
    let token = TestKey::es256("k").sign(&json!({"sub": "x"}));
    let g = bearer(front, "/", &token).await;
    assert_eq!(g.status, 401);
    assert_eq!(g.text(), "Jwks remote fetch is failed");
    assert_eq!(app.hits(), 0);
}

#[test]
fn invalid_jwt_config_is_refused_naming_the_field() {
    let yaml = one_route_yaml("{ cluster: app }", "  - name: app\n    endpoints: [{ address: \"127.0.0.1:1\" }]").replace(
        "    http:\n",
        "    http:\n      jwt_authn:\n        providers:\n          idp: { remote_jwks: { http_uri: { uri: \"http://idp/jwks\", cluster: nowhere } } }\n",
    );
    let e = weft_config::from_yaml(&yaml).unwrap_err().to_string();
    assert!(
        e.contains("listeners[0].http.jwt_authn.providers.idp.remote_jwks.http_uri.cluster"),
        "{e}"
    );
}

/// The remote JWKS over TLS: the `jwks` cluster has a `tls` block, and the identity provider
/// (here a weft listener terminating TLS with a certificate for idp.test) is verified against it.
/// A cluster trusting another CA gets nothing: 401, and the keys are never fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_jwks_is_fetched_over_tls_from_a_verified_server() {
    use weft_tls::testcerts::Ca;
    let dir = TempDir::new("jwks-tls");
    let d = dir.path().display();
    let ca = Ca::new("weft test IdP CA");
    ca.write(dir.path(), "ca");
    ca.leaf_dns(&["idp.test"]).write(dir.path(), "idp");
    Ca::new("another CA").write(dir.path(), "other");
    let key = TestKey::es256("tls-1");
    let doc = jwks(&[&key]);
    let jwks_server = upstream(move |_| {
        let doc = doc.clone();
        async move { text(200, &doc) }
    })
    .await;
    let idp = start_proxy(&format!(
        r#"
runtime: {{ concurrency: 1 }}
listeners:
  - name: idp
    address: 127.0.0.1:0
    tls: {{ certificates: [{{ cert_file: {d}/idp.crt, key_file: {d}/idp.key }}] }}
    http:
      route_config:
        virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: jwks }} }}] }}]
clusters:
  - {{ name: jwks, endpoints: [{{ address: "{}" }}] }}
"#,
        jwks_server.addr
    ));
    let idp_addr = idp.listener_addr("idp").unwrap();
    let app = upstream(|_| async { text(200, "app") }).await;
    let sidecar = |ca_file: &str| {
        start_proxy(&format!(
            r#"
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      jwt_authn:
        providers:
          idp:
            remote_jwks: {{ http_uri: {{ uri: "https://idp.test/jwks", cluster: idp, timeout: 2s }} }}
        rules: [{{ match: {{ prefix: / }}, requires: {{ provider_name: idp }} }}]
      route_config:
        virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: app }} }}] }}]
clusters:
  - {{ name: app, endpoints: [{{ address: "{}" }}] }}
  - name: idp
    endpoints: [{{ address: "{idp_addr}" }}]
    tls: {{ sni: idp.test, trusted_ca_file: {d}/{ca_file}.crt }}
"#,
            app.addr
        ))
    };
    let token = key.sign(&json!({"sub": "x", "exp": now() + 300}));
    let good = sidecar("ca");
    let g = bearer(good.listener_addr("web").unwrap(), "/", &token).await;
    assert_eq!((g.status.as_u16(), g.text().as_str()), (200, "app"));
    assert_eq!(jwks_server.hits(), 1, "fetched once, over TLS");
    let wrong = sidecar("other");
    let g = bearer(wrong.listener_addr("web").unwrap(), "/", &token).await;
    assert_eq!(
        (g.status.as_u16(), g.text().as_str()),
        (401, "Jwks remote fetch is failed")
    );
    assert_eq!(jwks_server.hits(), 1, "an unverified server is not asked");
}
