//! `weft intercept on|off`: switch an instance's traffic interception without losing a request.
//!
//! The procedure (the Alibaba/Ant article's): take the instance out of its callers' load balancing
//! at the control plane (`POST /endpoints/drain` on weft control's admin API, which works whatever
//! registry the endpoint comes from), wait until every connected proxy has ACKed a configuration
//! without it, wait until the sidecar's inbound listeners hold no connection, switch (`weft init`
//! or `weft init --remove`, in this process, in the current network namespace), and put the
//! instance back (`POST /endpoints/undrain`), waiting for the ACKs again.
//!
//! Whatever fails, the instance is put back before the command exits: a drain never outlives the
//! command, and `weft init` never leaves half-applied rules.

use crate::init::InitArgs;
use clap::{Args, ValueEnum};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Install interception (`weft init`).
    On,
    /// Remove it (`weft init --remove`).
    Off,
}

#[derive(Args, Debug)]
pub struct InterceptArgs {
    /// on: install interception; off: remove it.
    pub switch: Switch,
    /// weft control's admin address (its `--admin`).
    #[arg(long)]
    pub control: SocketAddr,
    /// The instance as the registry knows it: SERVICE/IP:PORT, e.g. reviews/10.0.0.7:8080.
    #[arg(long, value_parser = parse_instance)]
    pub instance: (String, SocketAddr),
    /// The instance's sidecar admin address (its inbound connections are watched).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Give up (and put the instance back, unswitched) if the callers have not drained it after
    /// this long, e.g. "30s".
    #[arg(long, value_parser = weft_config::duration::parse, default_value = "30s")]
    pub drain_timeout: Duration,
    /// The `weft init` flags (ports, uid, exclusions, --tproxy …) used for "on" and "off".
    #[command(flatten)]
    pub init: InitArgs,
}

fn parse_instance(s: &str) -> Result<(String, SocketAddr), String> {
    let (svc, addr) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("\"{s}\" is not SERVICE/IP:PORT"))?;
    if svc.is_empty() {
        return Err(format!("\"{s}\": the service name is empty"));
    }
    let addr = addr
        .parse()
        .map_err(|_| format!("\"{s}\": \"{addr}\" is not IP:PORT"))?;
    Ok((svc.to_string(), addr))
}

/// Why the switch did not happen (or did not finish).
#[derive(Debug)]
enum Error {
    Http { url: String, why: String },
    Status { url: String, status: u16, body: String },
    BadJson { url: String },
    NotReady(String),
    NotDrained { waited: Duration, pending: String },
    Connections { waited: Duration, active: f64 },
    Init,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Http { url, why } => write!(f, "{url}: {why}"),
            Error::Status { url, status, body } => write!(f, "{url}: {status} {}", body.trim()),
            Error::BadJson { url } => write!(f, "{url}: the answer is not the expected JSON"),
            Error::NotReady(why) => write!(f, "the sidecar is not ready, refusing to send traffic to it: {why}"),
            Error::NotDrained { waited, pending } => write!(
                f,
                "the callers have not drained the instance after {waited:?} (--drain-timeout); waiting for: {pending}"
            ),
            Error::Connections { waited, active } => write!(
                f,
                "the sidecar's inbound listeners still hold {active} connections after {waited:?} (--drain-timeout)"
            ),
            Error::Init => write!(f, "weft init failed (see above); nothing was switched"),
        }
    }
}

/// One HTTP/1.1 request with `connection: close`: (status, body).
fn request(method: &str, addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    let url = format!("http://{addr}{path}");
    let err = |why: String| Error::Http { url: url.clone(), why };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| err(e.to_string()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err("not an HTTP answer".into()))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(Error::Status { url, status, body });
    }
    Ok((status, body))
}

fn request_json(method: &str, addr: SocketAddr, path: &str) -> Result<serde_json::Value, Error> {
    let (_, body) = request(method, addr, path)?;
    serde_json::from_str(&body).map_err(|_| Error::BadJson {
        url: format!("http://{addr}{path}"),
    })
}

/// Query-string encoding of everything but unreserved characters.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Ctl<'a> {
    a: &'a InterceptArgs,
    query: String,
}

impl Ctl<'_> {
    /// POST drain/undrain: the epoch to wait for.
    fn call(&self, what: &str) -> Result<u64, Error> {
        let path = format!("/endpoints/{what}?{}", self.query);
        let v = request_json("POST", self.a.control, &path)?;
        v["epoch"].as_u64().ok_or(Error::BadJson {
            url: format!("http://{}{path}", self.a.control),
        })
    }

    /// Until every proxy connected to the control plane has ACKed `epoch`.
    fn wait_acked(&self, epoch: u64, deadline: Instant, started: Instant) -> Result<usize, Error> {
        let path = format!("/endpoints/drains?epoch={epoch}");
        loop {
            let v = request_json("GET", self.a.control, &path)?;
            if v["converged"] == true {
                return Ok(v["proxies"].as_u64().unwrap_or(0) as usize);
            }
            if Instant::now() >= deadline {
                let pending: Vec<String> = v["pending"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| {
                                format!(
                                    "{} ({})",
                                    p["node_id"].as_str().unwrap_or("?"),
                                    p["waiting"].as_str().unwrap_or("?")
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let pending = if pending.is_empty() {
                    "the control plane to publish the change".to_string()
                } else {
                    pending.join(", ")
                };
                return Err(Error::NotDrained {
                    waited: started.elapsed(),
                    pending,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Connections open on the sidecar's inbound listeners (those on `--inbound-port`).
fn inbound_connections(admin: SocketAddr, inbound_port: u16) -> Result<f64, Error> {
    let listeners = request_json("GET", admin, "/listeners")?;
    let names: Vec<String> = listeners["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            l["address"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .is_some_and(|a| a.port() == inbound_port)
        })
        .filter_map(|l| l["name"].as_str().map(String::from))
        .collect();
    let (_, stats) = request("GET", admin, "/stats/prometheus")?;
    let mut total = 0.0;
    for line in stats.lines() {
        let Some(rest) = line.strip_prefix("weft_downstream_cx_active{listener=\"") else {
            continue;
        };
        let Some((name, value)) = rest.split_once("\"}") else {
            continue;
        };
        if names.iter().any(|n| n == name) {
            total += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(total)
}

fn switch(a: &InterceptArgs, ctl: &Ctl) -> Result<(), Error> {
    let started = Instant::now();
    let deadline = started + a.drain_timeout;
    let sidecar_up = match request("GET", a.admin, "/ready") {
        Ok(_) => true,
        Err(e) if a.switch == Switch::On => return Err(Error::NotReady(e.to_string())),
        Err(e) => {
            eprintln!("weft intercept: the sidecar's admin API does not answer ({e}); not watching its connections");
            false
        }
    };
    let epoch = ctl.call("drain")?;
    eprintln!(
        "weft intercept: {}/{} drained at weft control (epoch {epoch}); waiting for the proxies' ACKs",
        a.instance.0, a.instance.1
    );
    let proxies = ctl.wait_acked(epoch, deadline, started)?;
    eprintln!(
        "weft intercept: all {proxies} connected proxies ACKed the drain after {:?}",
        started.elapsed()
    );
    if sidecar_up {
        loop {
            let active = inbound_connections(a.admin, a.init.inbound_port)?;
            if active == 0.0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Connections {
                    waited: started.elapsed(),
                    active,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "weft intercept: no inbound connection left at the sidecar after {:?}",
            started.elapsed()
        );
    }
    let mut init = a.init.clone();
    init.remove = a.switch == Switch::Off;
    if crate::init::run_init(init) != 0 {
        return Err(Error::Init);
    }
    Ok(())
}

/// `weft intercept`: 0 when switched and the instance is back in rotation; 1 otherwise (the
/// instance is back in rotation either way); 2 for bad flags.
pub fn run(a: InterceptArgs) -> i32 {
    if a.init.remove || a.init.dry_run {
        eprintln!("weft intercept: --remove and --dry-run belong to weft init; say `weft intercept off` to remove");
        return 2;
    }
    let ctl = Ctl {
        a: &a,
        query: format!(
            "service={}&address={}",
            enc(&a.instance.0),
            enc(&a.instance.1.to_string())
        ),
    };
    let switched = switch(&a, &ctl);
    // Back into rotation, whatever happened.
    let restored = ctl.call("undrain").and_then(|epoch| {
        let started = Instant::now();
        ctl.wait_acked(epoch, started + a.drain_timeout, started)
    });
    match (&switched, &restored) {
        (Ok(()), Ok(n)) => {
            eprintln!(
                "weft intercept: interception {}; {}/{} back in rotation ({n} proxies ACKed)",
                if a.switch == Switch::On { "on" } else { "off" },
                a.instance.0,
                a.instance.1
            );
            0
        }
        (Ok(()), Err(e)) => {
            eprintln!("weft intercept: switched, but putting the instance back is not confirmed: {e}");
            1
        }
        (Err(e), r) => {
            eprintln!("weft intercept: {e}");
            match r {
                Ok(_) => eprintln!("weft intercept: nothing switched; the instance is back in rotation"),
                Err(e2) => {
                    eprintln!("weft intercept: nothing switched; putting the instance back is not confirmed: {e2}")
                }
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_parsed() {
        assert_eq!(
            parse_instance("reviews/10.0.0.7:8080").unwrap(),
            ("reviews".to_string(), "10.0.0.7:8080".parse().unwrap())
        );
        assert_eq!(parse_instance("a/b/[fd00::2]:80").unwrap().0, "a/b");
        assert!(parse_instance("10.0.0.7:8080").unwrap_err().contains("SERVICE/IP:PORT"));
        assert!(parse_instance("/10.0.0.7:8080").unwrap_err().contains("empty"));
        assert!(parse_instance("r/10.0.0.7").unwrap_err().contains("is not IP:PORT"));
        assert_eq!(enc("[fd00::2]:80"), "%5Bfd00%3A%3A2%5D%3A80");
    }
}
