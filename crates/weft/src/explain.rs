//! `weft explain`: asks a running proxy's admin API (`POST /explain`) what it would do with a
//! request, and prints the answer for a person (or the JSON with `--json`).

use clap::Args;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Args)]
pub struct ExplainArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Request method, e.g. GET.
    method: String,
    /// Request URL, e.g. http://reviews/path?x=1 (the host picks the virtual host).
    url: String,
    /// A request header, "name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Explain for this listener only (default: the first HTTP listener that routes the request).
    #[arg(long)]
    listener: Option<String>,
    /// The caller's mTLS identity for authorization, e.g. spiffe://cluster.local/ns/default/sa/reviews
    /// (default: a plaintext caller with none).
    #[arg(long)]
    principal: Option<String>,
    /// The caller's IP address for authorization (default 127.0.0.1).
    #[arg(long)]
    source: Option<String>,
    /// Print the admin API's JSON as is.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ExplainArgs) -> i32 {
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => headers.push(serde_json::json!([k.trim(), v.trim()])),
            _ => {
                eprintln!("weft explain: -H \"{h}\": expected \"name: value\"");
                return 2;
            }
        }
    }
    let body = serde_json::json!({
        "method": args.method,
        "url": args.url,
        "headers": headers,
        "listener": args.listener,
        "principal": args.principal,
        "source": args.source,
    })
    .to_string();
    let (status, text) = match post(args.admin, "/explain", &body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft explain: cannot reach the admin API at {}: {e}", args.admin);
            return 1;
        }
    };
    if status != 200 {
        eprintln!("weft explain: the proxy answered {status}: {}", text.trim());
        return 1;
    }
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("weft explain: the answer is not JSON ({e})");
            return 1;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", render(&v));
    }
    0
}

fn post(admin: SocketAddr, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The explanation for a person: one section per step.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let r = &v["request"];
    o += &format!("request   {} {}{}\n", s(&r["method"]), s(&r["host"]), s(&r["path"]));
    let verdict = &v["verdict"];
    o += &format!(
        "verdict   {} (flags {}, status {}): {}\n",
        s(&verdict["outcome"]),
        s(&verdict["response_flags"]),
        s(&verdict["status"]),
        s(&verdict["detail"])
    );
    if let Some(l) = v.get("listener") {
        o += &format!(
            "listener  {} on {}, filter chain {} ({})\n",
            s(&l["name"]),
            s(&l["address"]),
            s(&l["filter_chain"]),
            s(&l["why"])
        );
    }
    if let Some(vh) = v.get("virtual_host") {
        o += &format!("vhost     {} (by {})\n", s(&vh["name"]), s(&vh["matched_by"]));
    }
    if let Some(skipped) = v["routes_not_matched"].as_array() {
        for x in skipped {
            o += &format!("  skipped route {}: {}\n", s(&x["route"]), s(&x["why"]));
        }
    }
    if let Some(rt) = v.get("route") {
        o += &format!("route     {} ({})\n", s(&rt["name"]), s(&rt["action"]));
    }
    if let Some(cs) = v["clusters"].as_array() {
        for c in cs {
            o += &format!(
                "cluster   {} weight {} ({}%)\n",
                s(&c["name"]),
                s(&c["weight"]),
                s(&c["share_percent"])
            );
        }
        o += &format!("          {}\n", s(&v["cluster_pick"]));
    }
    if let Some(us) = v["upstream"].as_array() {
        for u in us {
            if u["exists"] == false {
                o += &format!("upstream  {}: no such cluster\n", s(&u["cluster"]));
                continue;
            }
            o += &format!(
                "upstream  {} lb {} subset {} panic {}\n",
                s(&u["cluster"]),
                s(&u["lb_policy"]),
                s(&u["subset"]),
                s(&u["panic_mode"])
            );
            for e in u["endpoints"].as_array().into_iter().flatten() {
                o += &format!(
                    "  endpoint {} healthy {} ejected {} eligible {} priority {} distance {} in_subset {}\n",
                    s(&e["address"]),
                    s(&e["healthy"]),
                    s(&e["outlier_ejected"]),
                    s(&e["eligible"]),
                    s(&e["priority"]),
                    s(&e["locality_distance"]),
                    s(&e["in_subset"])
                );
            }
            o += &format!("  candidates {}\n  pick {}\n", s(&u["candidates"]), s(&u["pick"]));
        }
    }
    if let Some(p) = v["policies"].as_object() {
        for (k, x) in p {
            match x.get("detail") {
                // Authorization: its decision in words (the JSON has the policy and config).
                Some(d) if k == "authorization" => o += &format!("policy    {k}: {}\n", s(d)),
                _ => o += &format!("policy    {k}: {}\n", s(x)),
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section() {
        let v = serde_json::json!({
            "request": { "method": "GET", "host": "reviews", "path": "/x" },
            "verdict": { "outcome": "forward", "response_flags": "-", "status": 0, "detail": "d" },
            "listener": { "name": "web", "address": "127.0.0.1:1", "filter_chain": 0, "why": "w" },
            "virtual_host": { "name": "reviews", "matched_by": "exact domain \"reviews\"" },
            "routes_not_matched": [{ "route": "a", "why": "method GET is not one of [POST]" }],
            "route": { "name": "b", "action": "forward" },
            "clusters": [{ "name": "c", "weight": 1, "share_percent": 100.0 }],
            "cluster_pick": "the route's only cluster",
            "upstream": [{ "cluster": "c", "exists": true, "lb_policy": "round_robin", "endpoints": [
                { "address": "127.0.0.1:2", "healthy": true, "eligible": true }], "candidates": ["127.0.0.1:2"], "pick": "p" }],
            "policies": { "timeout": "15000ms" },
        });
        let text = render(&v);
        for want in [
            "request   GET reviews/x",
            "verdict   forward",
            "listener  web on 127.0.0.1:1, filter chain 0",
            "skipped route a: method GET is not one of [POST]",
            "route     b (forward)",
            "cluster   c weight 1 (100.0%)",
            "endpoint 127.0.0.1:2 healthy true",
            "policy    timeout: 15000ms",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }
}
