//! `weft init`: transparent interception (the job of Istio's `istio-iptables`/istio-init).
//!
//! Installs iptables rules in the current network namespace so that the app's outbound TCP goes to
//! the sidecar's outbound port and inbound TCP to its inbound port, in chains of its own
//! (`WEFT_*`). `--tproxy` moves the inbound capture to the mangle table's TPROXY target (the
//! sidecar then sees the connection's real destination as its local address, with no NAT), plus a
//! fwmark `ip rule` and a `local` route table.
//!
//! Why `iptables-restore --noflush` (and `iptables-save`) rather than one `iptables` call per rule:
//! a restore input is applied as one transaction per table, so a table is never left with half of
//! the rules; the generated input is also exactly what `--dry-run` prints, and a failure names the
//! line of that input, which we map back to the rule. Rules of other software are untouched
//! (`--noflush`); our chains are flushed and refilled in the same transaction, and the jumps from
//! the built-in chains are added only if missing, so running `weft init` twice changes nothing.
//! If anything fails after a part was committed (IPv6 after IPv4, the mangle table after nat, the
//! `ip rule`), everything `weft init` owns is removed again before the error is reported.
//!
//! What "ours" means for `--remove`: chains named `WEFT_*`, the rules in built-in chains that jump
//! to them, and (TPROXY) the `ip rule fwmark MARK lookup TABLE` and `local default dev lo` route
//! in TABLE.

use clap::Args;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// The sidecar's outbound listener port: the app's outbound TCP is redirected here.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The sidecar's inbound listener port: TCP arriving for the app is redirected here.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The UID the sidecar runs as: its own connections are never intercepted.
    #[arg(long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The GID the sidecar runs as: its own connections are never intercepted.
    #[arg(long, default_value_t = 1337)]
    pub proxy_gid: u32,
    /// Inbound ports to capture: "*" (all, the default), a comma-separated list, or "" (none).
    #[arg(long, default_value = "*", value_parser = parse_ports)]
    pub include_inbound_ports: PortSet,
    /// Inbound ports never captured (comma-separated), e.g. "22".
    #[arg(long, default_value = "", value_parser = parse_ports)]
    pub exclude_inbound_ports: PortSet,
    /// Outbound destination ports never captured (comma-separated).
    #[arg(long, default_value = "", value_parser = parse_ports)]
    pub exclude_outbound_ports: PortSet,
    /// Outbound destinations to capture: "*" (all, the default), comma-separated CIDRs, or "" (none).
    #[arg(long, default_value = "*", value_parser = parse_cidrs)]
    pub include_outbound_cidrs: CidrSet,
    /// Outbound destinations never captured (comma-separated CIDRs, IPv4 and IPv6).
    #[arg(long, default_value = "", value_parser = parse_cidrs)]
    pub exclude_outbound_cidrs: CidrSet,
    /// Capture inbound with TPROXY (mangle table) instead of REDIRECT: no NAT on inbound, the
    /// sidecar's inbound listener must be `transparent: true` (needs CAP_NET_ADMIN).
    #[arg(long)]
    pub tproxy: bool,
    /// The fwmark TPROXY puts on captured packets (and the `ip rule` matches).
    #[arg(long, default_value_t = 1337)]
    pub tproxy_mark: u32,
    /// The routing table holding the `local default dev lo` route for marked packets.
    #[arg(long, default_value_t = 133)]
    pub tproxy_table: u32,
    /// Capture the app's DNS (UDP and TCP port 53, to any resolver over IPv4) to the sidecar's DNS
    /// proxy on 127.0.0.1:PORT (`dns.listen` in its configuration), e.g. 15053.
    #[arg(long)]
    pub dns_port: Option<u16>,
    /// IPv4 only: leave ip6tables alone.
    #[arg(long)]
    pub no_ipv6: bool,
    /// Remove everything `weft init` installed (its chains, the jumps to them, TPROXY's ip rule
    /// and route) and nothing else.
    #[arg(long)]
    pub remove: bool,
    /// Print the iptables-restore input (and ip commands) instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// A set of ports; `all` stands for "*".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    pub all: bool,
    pub ports: Vec<u16>,
}

/// A set of CIDRs; `all` stands for "*".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    pub all: bool,
    pub cidrs: Vec<(IpAddr, u8)>,
}

fn parse_ports(s: &str) -> Result<PortSet, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(PortSet {
            all: true,
            ports: vec![],
        });
    }
    let mut ports = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => ports.push(n),
            _ => {
                return Err(format!(
                    "\"{p}\" is not a port (1-65535), \"*\" or a comma-separated list"
                ))
            }
        }
    }
    Ok(PortSet { all: false, ports })
}

fn parse_cidrs(s: &str) -> Result<CidrSet, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(CidrSet {
            all: true,
            cidrs: vec![],
        });
    }
    let mut cidrs = Vec::new();
    for c in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let (ip, len) = c.split_once('/').unwrap_or((c, ""));
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("\"{c}\" is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = if len.is_empty() {
            max
        } else {
            match len.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("\"{c}\": the prefix length must be 0-{max}")),
            }
        };
        cidrs.push((ip, len));
    }
    Ok(CidrSet { all: false, cidrs })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
    /// The source address an inbound pass-through may use on loopback (Istio's 127.0.0.6):
    /// traffic from it is never captured again.
    fn passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }
    fn matches(self, ip: &IpAddr) -> bool {
        matches!((self, ip), (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_)))
    }
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// The rules of one table: our chains (declared, hence flushed, by the restore), the rules in
/// them, and the jumps from built-in chains.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableRules {
    pub table: &'static str,
    pub chains: Vec<&'static str>,
    pub rules: Vec<String>,
    pub jumps: Vec<String>,
}

/// The whole rule set `weft init` wants for one family.
pub fn rules(a: &InitArgs, f: Family) -> Vec<TableRules> {
    let mut nat = TableRules {
        table: "nat",
        ..Default::default()
    };
    let lo = f.localhost();
    // Outbound: everything the app sends over TCP, except the sidecar's own traffic, loopback and
    // the exclusions, goes to the outbound port.
    nat.chains.extend(["WEFT_OUTPUT", "WEFT_REDIRECT"]);
    nat.rules.push(format!(
        "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        a.outbound_port
    ));
    let (uid, gid) = (a.proxy_uid, a.proxy_gid);
    nat.rules.extend([
        // An inbound pass-through that connects from 127.0.0.6 (::6) to the app.
        format!("-A WEFT_OUTPUT -s {} -o lo -j RETURN", f.passthrough_source()),
        // The app talking to itself (its own addresses go over lo): not a mesh call.
        format!("-A WEFT_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"),
        format!("-A WEFT_OUTPUT -o lo -m owner ! --gid-owner {gid} -j RETURN"),
        // The sidecar's own connections (upstream calls, xDS, the inbound pass-through).
        format!("-A WEFT_OUTPUT -m owner --uid-owner {uid} -j RETURN"),
        format!("-A WEFT_OUTPUT -m owner --gid-owner {gid} -j RETURN"),
        format!("-A WEFT_OUTPUT -d {lo} -j RETURN"),
    ]);
    for p in &a.exclude_outbound_ports.ports {
        nat.rules.push(format!("-A WEFT_OUTPUT -p tcp --dport {p} -j RETURN"));
    }
    for (ip, len) in a.exclude_outbound_cidrs.cidrs.iter().filter(|(ip, _)| f.matches(ip)) {
        nat.rules.push(format!("-A WEFT_OUTPUT -d {ip}/{len} -j RETURN"));
    }
    if a.include_outbound_cidrs.all {
        nat.rules.push("-A WEFT_OUTPUT -j WEFT_REDIRECT".into());
    } else {
        for (ip, len) in a.include_outbound_cidrs.cidrs.iter().filter(|(ip, _)| f.matches(ip)) {
            nat.rules.push(format!("-A WEFT_OUTPUT -d {ip}/{len} -j WEFT_REDIRECT"));
        }
    }
    if let (Some(port), Family::V4) = (a.dns_port, f) {
        // Before the TCP capture: a TCP query to port 53 goes to the DNS proxy, not the outbound
        // listener. The sidecar's own queries (its upstream resolver) are not captured.
        nat.chains.push("WEFT_DNS");
        nat.rules.extend([
            format!("-A WEFT_DNS -m owner --uid-owner {uid} -j RETURN"),
            format!("-A WEFT_DNS -m owner --gid-owner {gid} -j RETURN"),
            format!("-A WEFT_DNS -p udp -j REDIRECT --to-ports {port}"),
            format!("-A WEFT_DNS -p tcp -j REDIRECT --to-ports {port}"),
        ]);
        // Written as iptables-save prints them, so a second run finds them in place.
        nat.jumps.extend([
            "-A OUTPUT -p udp -m udp --dport 53 -j WEFT_DNS".to_string(),
            "-A OUTPUT -p tcp -m tcp --dport 53 -j WEFT_DNS".to_string(),
        ]);
    }
    nat.jumps.push("-A OUTPUT -p tcp -j WEFT_OUTPUT".into());

    let inbound = a.include_inbound_ports.all || !a.include_inbound_ports.ports.is_empty();
    if !a.tproxy {
        if inbound {
            nat.chains.extend(["WEFT_INBOUND", "WEFT_IN_REDIRECT"]);
            nat.rules.push(format!(
                "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
                a.inbound_port
            ));
            inbound_rules(&mut nat.rules, a, "WEFT_IN_REDIRECT");
            nat.jumps.push("-A PREROUTING -p tcp -j WEFT_INBOUND".into());
        }
        return vec![nat];
    }
    let mut mangle = TableRules {
        table: "mangle",
        ..Default::default()
    };
    if inbound {
        let mark = a.tproxy_mark;
        mangle.chains.extend(["WEFT_INBOUND", "WEFT_DIVERT", "WEFT_TPROXY"]);
        mangle.rules.extend([
            format!("-A WEFT_DIVERT -j MARK --set-xmark {mark:#x}/0xffffffff"),
            "-A WEFT_DIVERT -j ACCEPT".to_string(),
            format!(
                "-A WEFT_TPROXY ! -d {lo} -p tcp -j TPROXY --on-port {} --tproxy-mark {mark:#x}/0xffffffff",
                a.inbound_port
            ),
            // Packets over loopback are local traffic (among them the sidecar's own connection to
            // the app), never inbound from the network.
            "-A WEFT_INBOUND -i lo -j RETURN".to_string(),
            // Packets answering a connection opened from this namespace (the sidecar's upstream
            // and xDS connections, the app's bypassed ones) are delivered as usual: TPROXY would
            // find their socket, see that it is not transparent, and drop them.
            "-A WEFT_INBOUND -p tcp -m conntrack --ctdir REPLY -j RETURN".to_string(),
        ]);
        inbound_rules(&mut mangle.rules, a, "WEFT_TPROXY");
        // Packets of connections the sidecar already holds go straight to it.
        let last = mangle.rules.len();
        let divert = "-A WEFT_INBOUND -p tcp -m socket --transparent -j WEFT_DIVERT".to_string();
        // After the exclusions, before the capture.
        let at = last - capture_rule_count(a);
        mangle.rules.insert(at, divert);
        mangle.jumps.push("-A PREROUTING -p tcp -j WEFT_INBOUND".into());
        // The return path of the sidecar's connections to the app from the caller's address (an
        // `original_source` cluster): the sidecar's packets with a source that is not an address of
        // this namespace mark their connection; the app's replies on it get the TPROXY mark, so the
        // `ip rule` above routes them to the local socket instead of out towards the caller.
        mangle.chains.push("WEFT_ORIG_SRC");
        mangle.rules.splice(
            0..0,
            [
                format!(
                    "-A WEFT_ORIG_SRC -p tcp -m owner --uid-owner {uid} -m addrtype ! --src-type LOCAL -j CONNMARK --set-xmark {mark:#x}/0xffffffff"
                ),
                format!("-A WEFT_ORIG_SRC -p tcp -m connmark --mark {mark:#x} -j MARK --set-xmark {mark:#x}/0xffffffff"),
            ],
        );
        mangle.jumps.push("-A OUTPUT -p tcp -j WEFT_ORIG_SRC".into());
    }
    vec![nat, mangle]
}

fn capture_rule_count(a: &InitArgs) -> usize {
    if a.include_inbound_ports.all {
        1
    } else {
        a.include_inbound_ports.ports.len()
    }
}

/// WEFT_INBOUND: the exclusions, then the capture (to `target`).
fn inbound_rules(out: &mut Vec<String>, a: &InitArgs, target: &str) {
    for p in &a.exclude_inbound_ports.ports {
        out.push(format!("-A WEFT_INBOUND -p tcp --dport {p} -j RETURN"));
    }
    if a.include_inbound_ports.all {
        out.push(format!("-A WEFT_INBOUND -p tcp -j {target}"));
    } else {
        for p in &a.include_inbound_ports.ports {
            out.push(format!("-A WEFT_INBOUND -p tcp --dport {p} -j {target}"));
        }
    }
}

/// What `iptables-save` shows of ours in one table.
#[derive(Debug, Default)]
struct Installed {
    chains: Vec<String>,
    jumps: Vec<String>,
}

const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Our chains and the jumps to them, per table, from `iptables-save` output.
fn installed(save: &str) -> Vec<(String, Installed)> {
    let mut out: Vec<(String, Installed)> = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            out.push((t.trim().to_string(), Installed::default()));
            continue;
        }
        let Some((_, cur)) = out.last_mut() else { continue };
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if name.starts_with("WEFT_") {
                cur.chains.push(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut words = rule.split_whitespace();
            let chain = words.next().unwrap_or("");
            let jumps_to_ours = rule
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with("WEFT_"));
            if BUILTIN.contains(&chain) && jumps_to_ours {
                cur.jumps.push(line.to_string());
            }
        }
    }
    out.retain(|(_, i)| !i.chains.is_empty() || !i.jumps.is_empty());
    out
}

/// The restore input that takes the namespace from `save` to `want` (`want` empty: removal).
/// Our chains are declared (so flushed) and refilled in one transaction per table; jumps already
/// present as wanted are left in place, so a second run changes nothing.
fn restore_input(save: &str, want: &[TableRules]) -> String {
    let have = installed(save);
    let mut tables: Vec<&str> = want.iter().map(|t| t.table).collect();
    for (t, _) in &have {
        if !tables.contains(&t.as_str()) {
            tables.push(t);
        }
    }
    let empty = Installed::default();
    let mut out = String::new();
    for table in tables {
        let have = have.iter().find(|(t, _)| t == table).map(|(_, i)| i).unwrap_or(&empty);
        let want = want.iter().find(|t| t.table == table);
        let want_jumps: Vec<&str> = want
            .map(|w| w.jumps.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let keep_jumps =
            have.jumps.len() == want_jumps.len() && have.jumps.iter().all(|j| want_jumps.contains(&j.as_str()));
        out.push_str(&format!("*{table}\n"));
        let mut declared: Vec<&str> = Vec::new();
        for c in want.map(|w| w.chains.as_slice()).unwrap_or(&[]) {
            declared.push(c);
        }
        for c in &have.chains {
            if !declared.contains(&c.as_str()) {
                declared.push(c);
            }
        }
        for c in &declared {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        if !keep_jumps {
            for j in &have.jumps {
                out.push_str(&format!("-D{}\n", &j[2..]));
            }
        }
        if let Some(w) = want {
            for r in &w.rules {
                out.push_str(r);
                out.push('\n');
            }
            if !keep_jumps {
                for j in &w.jumps {
                    out.push_str(j);
                    out.push('\n');
                }
            }
        }
        // Chains we had but no longer want (e.g. REDIRECT → TPROXY) are deleted, now empty.
        for c in &have.chains {
            if !want.is_some_and(|w| w.chains.contains(&c.as_str())) {
                out.push_str(&format!("-X {c}\n"));
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[derive(Debug)]
pub enum InitError {
    /// A program `weft init` needs is not installed.
    Missing {
        program: &'static str,
    },
    /// No CAP_NET_ADMIN in this process.
    NoCapability,
    /// A program failed.
    Command {
        what: String,
        stderr: String,
    },
    /// iptables-restore refused a rule.
    Rule {
        family: Family,
        rule: String,
        stderr: String,
    },
    Io(std::io::Error),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Missing { program } => write!(
                f,
                "{program} is not installed (not found in PATH): install iptables (Debian/Ubuntu: apt-get install iptables; Alpine: apk add iptables)"
            ),
            InitError::NoCapability => write!(
                f,
                "this process lacks CAP_NET_ADMIN, which changing iptables rules needs: run it as root or give it the capability (Kubernetes: securityContext.capabilities.add: [NET_ADMIN, NET_RAW] on the init container)"
            ),
            InitError::Command { what, stderr } => write!(f, "{what} failed: {}", stderr.trim()),
            InitError::Rule { family, rule, stderr } => write!(
                f,
                "{} rule refused: `{rule}`: {} (nothing was left installed)",
                family.name(),
                stderr.trim()
            ),
            InitError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for InitError {}

impl From<std::io::Error> for InitError {
    fn from(e: std::io::Error) -> Self {
        InitError::Io(e)
    }
}

fn find_program(name: &'static str) -> Result<PathBuf, InitError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Root's usual sbin directories, for a PATH without them (sudo, cron).
    let extra = ["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(InitError::Missing { program: name })
}

/// CAP_NET_ADMIN (bit 12) in the effective set, from /proc/self/status.
fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true; // cannot tell: let iptables say
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << 12) != 0)
}

fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let path = find_program(program)?;
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.trim().is_empty() {
            stderr = format!("exit status {}", out.status);
        }
        Err(InitError::Command {
            what: format!("{program} {}", args.join(" ")),
            stderr,
        })
    }
}

/// The line number iptables-restore names in its error ("line 7 failed", "line 7: ...",
/// "Error occurred at line: 7").
fn failed_line(stderr: &str) -> Option<usize> {
    stderr.match_indices("line").find_map(|(at, _)| {
        let rest = stderr[at + 4..].trim_start_matches([':', ' ']);
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    })
}

fn restore(f: Family, input: &str) -> Result<(), InitError> {
    match run(f.restore(), &["--noflush", "-w", "5"], Some(input)) {
        Ok(_) => Ok(()),
        Err(InitError::Command { stderr, .. }) => {
            let rule = failed_line(&stderr)
                .and_then(|n| input.lines().nth(n.saturating_sub(1)))
                .unwrap_or("(the rule set)")
                .to_string();
            Err(InitError::Rule {
                family: f,
                rule,
                stderr,
            })
        }
        Err(e) => Err(e),
    }
}

fn families(a: &InitArgs) -> Vec<Family> {
    if a.no_ipv6 {
        vec![Family::V4]
    } else {
        vec![Family::V4, Family::V6]
    }
}

/// The `ip` commands TPROXY needs in one family (each idempotent as run by [`ip_rules_apply`]).
fn ip_commands(a: &InitArgs, f: Family) -> [Vec<String>; 2] {
    let (mark, table) = (format!("{:#x}", a.tproxy_mark), a.tproxy_table.to_string());
    [
        ["ip", f.ip_flag(), "rule", "add", "fwmark", &mark, "lookup", &table]
            .map(String::from)
            .to_vec(),
        [
            "ip",
            f.ip_flag(),
            "route",
            "replace",
            "local",
            "default",
            "dev",
            "lo",
            "table",
            &table,
        ]
        .map(String::from)
        .to_vec(),
    ]
}

fn our_ip_rule_present(a: &InitArgs, f: Family) -> Result<bool, InitError> {
    let rules = run("ip", &[f.ip_flag(), "rule", "show"], None)?;
    let want = format!("fwmark {:#x} lookup {}", a.tproxy_mark, a.tproxy_table);
    Ok(rules.lines().any(|l| l.contains(&want)))
}

fn ip_rules_apply(a: &InitArgs, f: Family) -> Result<(), InitError> {
    let [rule, route] = ip_commands(a, f);
    let args = |v: &[String]| v[1..].iter().map(String::as_str).collect::<Vec<_>>().join(" ");
    if !our_ip_rule_present(a, f)? {
        run("ip", &rule[1..].iter().map(String::as_str).collect::<Vec<_>>(), None)
            .map_err(|e| with_what(e, &args(&rule)))?;
    }
    run("ip", &route[1..].iter().map(String::as_str).collect::<Vec<_>>(), None)
        .map(drop)
        .map_err(|e| with_what(e, &args(&route)))
}

fn with_what(e: InitError, what: &str) -> InitError {
    match e {
        InitError::Command { stderr, .. } => InitError::Command {
            what: format!("ip {what}"),
            stderr,
        },
        e => e,
    }
}

fn ip_rules_remove(a: &InitArgs, f: Family) -> Result<(), InitError> {
    let (mark, table) = (format!("{:#x}", a.tproxy_mark), a.tproxy_table.to_string());
    // A rule may have been added more than once by hand; remove every copy (bounded).
    for _ in 0..16 {
        if !our_ip_rule_present(a, f)? {
            break;
        }
        run(
            "ip",
            &[f.ip_flag(), "rule", "del", "fwmark", &mark, "lookup", &table],
            None,
        )?;
    }
    let routes = run("ip", &[f.ip_flag(), "route", "show", "table", &table], None).unwrap_or_default();
    if routes.lines().any(|l| l.starts_with("local default dev lo")) {
        run(
            "ip",
            &[
                f.ip_flag(),
                "route",
                "del",
                "local",
                "default",
                "dev",
                "lo",
                "table",
                &table,
            ],
            None,
        )?;
    }
    Ok(())
}

/// Removes everything of ours in every family; the first error is returned after trying all.
fn remove_all(a: &InitArgs) -> Result<bool, InitError> {
    let mut first_err = None;
    let mut removed = false;
    for f in families(a) {
        let res = (|| {
            let save = run(f.save(), &[], None)?;
            if !installed(&save).is_empty() {
                removed = true;
                restore(f, &restore_input(&save, &[]))?;
            }
            if our_ip_rule_present(a, f)? {
                removed = true;
            }
            ip_rules_remove(a, f)
        })();
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

fn apply(a: &InitArgs) -> Result<(), InitError> {
    for f in families(a) {
        let save = run(f.save(), &[], None)?;
        restore(f, &restore_input(&save, &rules(a, f)))?;
        if a.tproxy {
            ip_rules_apply(a, f)?;
        } else {
            // Switching from TPROXY back to REDIRECT: the ip rule is no longer ours to keep.
            ip_rules_remove(a, f)?;
        }
    }
    Ok(())
}

fn dry_run(a: &InitArgs) -> String {
    let mut out = String::new();
    for f in families(a) {
        // Without access to the current rules, the input is the one for a namespace without ours.
        let save = if a.remove {
            run(f.save(), &[], None).unwrap_or_default()
        } else {
            String::new()
        };
        let want = if a.remove { vec![] } else { rules(a, f) };
        out.push_str(&format!("# {} ({} --noflush)\n", f.name(), f.restore()));
        out.push_str(&restore_input(&save, &want));
        if a.tproxy && !a.remove {
            for c in ip_commands(a, f) {
                out.push_str(&format!("# {}\n", c.join(" ")));
            }
        }
    }
    out
}

/// `weft init`: exit code 0 on success, 1 on failure (with the reason on stderr).
pub fn run_init(a: InitArgs) -> i32 {
    if a.dry_run {
        print!("{}", dry_run(&a));
        return 0;
    }
    let check = || -> Result<(), InitError> {
        for f in families(&a) {
            find_program(f.restore())?;
            find_program(f.save())?;
        }
        if a.tproxy || a.remove {
            find_program("ip")?;
        }
        if !has_net_admin() {
            return Err(InitError::NoCapability);
        }
        Ok(())
    };
    if let Err(e) = check() {
        eprintln!("weft init: {e}");
        return 1;
    }
    if a.remove {
        return match remove_all(&a) {
            Ok(true) => {
                eprintln!("weft init: interception removed");
                0
            }
            Ok(false) => {
                eprintln!("weft init: nothing to remove");
                0
            }
            Err(e) => {
                eprintln!("weft init --remove: {e}");
                1
            }
        };
    }
    match apply(&a) {
        Ok(()) => {
            eprintln!(
                "weft init: interception installed (outbound -> :{}, inbound -> :{}{}; proxy uid {} gid {})",
                a.outbound_port,
                a.inbound_port,
                if a.tproxy { " by TPROXY" } else { "" },
                a.proxy_uid,
                a.proxy_gid
            );
            0
        }
        Err(e) => {
            // Never half-applied: take back whatever part was committed.
            if let Err(e2) = remove_all(&a) {
                eprintln!("weft init: cleaning up after the failure also failed: {e2}");
            }
            eprintln!("weft init: {e}");
            eprintln!("weft init: nothing was left installed (every WEFT_ chain, jump and ip rule was removed again)");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        T::try_parse_from(std::iter::once("init").chain(extra.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn redirect_rules_exclude_the_proxy_loopback_and_exclusions() {
        let a = args(&[
            "--exclude-inbound-ports",
            "22,15090",
            "--exclude-outbound-cidrs",
            "10.9.0.0/16,fd00::/8",
            "--exclude-outbound-ports",
            "5432",
        ]);
        let v4 = rules(&a, Family::V4);
        assert_eq!(v4.len(), 1);
        let nat = &v4[0];
        assert_eq!(
            nat.chains,
            ["WEFT_OUTPUT", "WEFT_REDIRECT", "WEFT_INBOUND", "WEFT_IN_REDIRECT"]
        );
        let text = nat.rules.join("\n");
        assert!(text.contains("-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(text.contains("-A WEFT_OUTPUT -d 10.9.0.0/16 -j RETURN"));
        assert!(!text.contains("fd00"), "IPv6 CIDRs stay out of iptables: {text}");
        assert!(text.contains("-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN"));
        assert!(text.contains("-A WEFT_INBOUND -p tcp --dport 22 -j RETURN"));
        // Exclusions come before the capture.
        let excl = text.find("--dport 15090 -j RETURN").unwrap();
        let capture = text.find("-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT").unwrap();
        assert!(excl < capture);
        assert!(text.ends_with("-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT"));
        assert_eq!(
            nat.jumps,
            [
                "-A OUTPUT -p tcp -j WEFT_OUTPUT",
                "-A PREROUTING -p tcp -j WEFT_INBOUND"
            ]
        );
        let v6 = rules(&a, Family::V6).remove(0).rules.join("\n");
        assert!(v6.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN") && v6.contains("-d ::1/128 -j RETURN"));
    }

    #[test]
    fn tproxy_moves_inbound_to_mangle() {
        let a = args(&["--tproxy", "--include-inbound-ports", "8080,9090"]);
        let t = rules(&a, Family::V4);
        assert_eq!(t[0].chains, ["WEFT_OUTPUT", "WEFT_REDIRECT"]);
        assert_eq!(t[1].table, "mangle");
        let m = t[1].rules.join("\n");
        assert!(
            m.contains("TPROXY --on-port 15006 --tproxy-mark 0x539/0xffffffff"),
            "{m}"
        );
        let divert = m.find("-m socket --transparent -j WEFT_DIVERT").unwrap();
        assert!(divert < m.find("--dport 8080 -j WEFT_TPROXY").unwrap());
        // Replies to connections opened from the namespace are never diverted.
        let replies = m
            .find("-A WEFT_INBOUND -p tcp -m conntrack --ctdir REPLY -j RETURN")
            .unwrap();
        assert!(replies < divert, "{m}");
        assert!(m.ends_with("-A WEFT_INBOUND -p tcp --dport 9090 -j WEFT_TPROXY"), "{m}");
        // The return path of original-source connections.
        assert!(m.contains("-A WEFT_ORIG_SRC -p tcp -m owner --uid-owner 1337 -m addrtype ! --src-type LOCAL -j CONNMARK --set-xmark 0x539/0xffffffff"), "{m}");
        assert!(
            m.contains("-A WEFT_ORIG_SRC -p tcp -m connmark --mark 0x539 -j MARK --set-xmark 0x539/0xffffffff"),
            "{m}"
        );
        assert!(t[1].jumps.contains(&"-A OUTPUT -p tcp -j WEFT_ORIG_SRC".to_string()));
    }

    #[test]
    fn dns_capture_comes_before_the_tcp_capture_and_spares_the_proxy() {
        let a = args(&["--dns-port", "15053"]);
        let nat = rules(&a, Family::V4).remove(0);
        assert_eq!(
            nat.jumps[..3],
            [
                "-A OUTPUT -p udp -m udp --dport 53 -j WEFT_DNS",
                "-A OUTPUT -p tcp -m tcp --dport 53 -j WEFT_DNS",
                "-A OUTPUT -p tcp -j WEFT_OUTPUT"
            ]
        );
        let text = nat.rules.join("\n");
        assert!(text.contains("-A WEFT_DNS -m owner --uid-owner 1337 -j RETURN\n-A WEFT_DNS -m owner --gid-owner 1337 -j RETURN\n-A WEFT_DNS -p udp -j REDIRECT --to-ports 15053"));
        assert!(!rules(&a, Family::V6).remove(0).chains.contains(&"WEFT_DNS"));
    }

    #[test]
    fn no_inbound_ports_means_no_inbound_chain() {
        let a = args(&["--include-inbound-ports", ""]);
        let nat = rules(&a, Family::V4).remove(0);
        assert_eq!(nat.jumps, ["-A OUTPUT -p tcp -j WEFT_OUTPUT"]);
        assert!(!nat.chains.contains(&"WEFT_INBOUND"));
    }

    #[test]
    fn bad_flags_are_refused_with_the_value() {
        let e = T::try_parse_from(["init", "--exclude-inbound-ports", "22,x"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("\"x\" is not a port"), "{e}");
        let e = T::try_parse_from(["init", "--exclude-outbound-cidrs", "10.0.0.0/33"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("prefix length must be 0-32"), "{e}");
        let e = T::try_parse_from(["init", "--include-outbound-cidrs", "nope"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("\"nope\" is not a CIDR"), "{e}");
    }

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_REDIRECT - [0:0]
:OTHER - [0:0]
-A OUTPUT -j OTHER
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A WEFT_OUTPUT -j WEFT_REDIRECT
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j DROP
COMMIT
";

    #[test]
    fn second_run_keeps_the_jumps_and_refills_the_chains() {
        let a = args(&["--include-inbound-ports", ""]);
        let input = restore_input(SAVED, &rules(&a, Family::V4));
        assert!(!input.contains("-D "), "{input}");
        assert_eq!(
            input.matches("-A OUTPUT").count(),
            0,
            "the jump is there already: {input}"
        );
        assert!(input.starts_with("*nat\n:WEFT_OUTPUT - [0:0]\n:WEFT_REDIRECT - [0:0]\n"));
        assert!(
            !input.contains("OTHER") && !input.contains("filter"),
            "others' rules untouched: {input}"
        );
    }

    #[test]
    fn changed_jumps_are_replaced_and_removal_takes_only_ours() {
        let a = args(&[]);
        let input = restore_input(SAVED, &rules(&a, Family::V4));
        assert!(input.contains("-D OUTPUT -p tcp -j WEFT_OUTPUT\n"), "{input}");
        assert!(input.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT\n-A PREROUTING -p tcp -j WEFT_INBOUND\n"));
        let rm = restore_input(SAVED, &[]);
        assert_eq!(
            rm,
            "*nat\n:WEFT_OUTPUT - [0:0]\n:WEFT_REDIRECT - [0:0]\n-D OUTPUT -p tcp -j WEFT_OUTPUT\n-X WEFT_OUTPUT\n-X WEFT_REDIRECT\nCOMMIT\n"
        );
        assert_eq!(restore_input("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", &[]), "");
    }

    #[test]
    fn the_failed_line_is_found() {
        assert_eq!(failed_line("iptables-restore: line 7 failed"), Some(7));
        assert_eq!(
            failed_line("iptables-restore v1.8.9 (nf_tables): line 12: RULE_APPEND failed"),
            Some(12)
        );
        assert_eq!(
            failed_line("owner: Bad value for \"--uid-owner\"\nError occurred at line: 5\nTry `iptables-restore -h'"),
            Some(5)
        );
        assert_eq!(failed_line("oops, a pipeline"), None);
    }
}
