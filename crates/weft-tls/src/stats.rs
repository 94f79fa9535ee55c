//! Handshake counters per listener or cluster, by outcome, for the admin's Prometheus page.

use crate::peer::FailureReason;
use parking_lot::Mutex;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which end of the connection weft was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// weft accepted the connection (a listener).
    Downstream,
    /// weft opened it (a cluster).
    Upstream,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
        }
    }
}

/// The counters of one listener or cluster.
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    pub ok: AtomicU64,
    /// Of `ok`, the handshakes that negotiated ShangMi (`TLS_SM4_GCM_SM3`).
    pub sm: AtomicU64,
    /// Plaintext connections accepted by a permissive listener.
    pub plaintext: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
}

impl HandshakeCounters {
    /// Counts a completed handshake that negotiated `suite`.
    pub fn completed(&self, suite: Option<rustls::CipherSuite>) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        if suite == Some(rustls::CipherSuite::Unknown(weft_sm::TLS_SM4_GCM_SM3_ID)) {
            self.sm.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn failed(&self, r: FailureReason) {
        let i = FailureReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failures(&self, r: FailureReason) -> u64 {
        let i = FailureReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.failures[i].load(Ordering::Relaxed)
    }
}

/// Every listener's and cluster's counters; they live as long as the process (a reload keeps them).
#[derive(Debug, Default)]
pub struct TlsStats {
    entries: Mutex<Vec<(Side, String, Arc<HandshakeCounters>)>>,
}

impl TlsStats {
    pub fn counters(&self, side: Side, name: &str) -> Arc<HandshakeCounters> {
        let mut e = self.entries.lock();
        if let Some((_, _, c)) = e.iter().find(|(s, n, _)| *s == side && n == name) {
            return c.clone();
        }
        let c = Arc::new(HandshakeCounters::default());
        e.push((side, name.to_string(), c.clone()));
        c
    }

    /// Prometheus text lines (no `# EOF`).
    pub fn prometheus(&self) -> String {
        let e = self.entries.lock();
        let mut out = String::new();
        out.push_str("# TYPE weft_tls_handshakes_total counter\n");
        for (side, name, c) in e.iter() {
            let _ = writeln!(
                out,
                "weft_tls_handshakes_total{{side=\"{}\",name=\"{}\"}} {}",
                side.as_str(),
                escape(name),
                c.ok.load(Ordering::Relaxed)
            );
        }
        out.push_str("# TYPE weft_tls_sm_handshakes_total counter\n");
        for (side, name, c) in e.iter() {
            let _ = writeln!(
                out,
                "weft_tls_sm_handshakes_total{{side=\"{}\",name=\"{}\"}} {}",
                side.as_str(),
                escape(name),
                c.sm.load(Ordering::Relaxed)
            );
        }
        out.push_str("# TYPE weft_tls_plaintext_connections_total counter\n");
        for (side, name, c) in e.iter().filter(|(s, _, _)| *s == Side::Downstream) {
            let _ = writeln!(
                out,
                "weft_tls_plaintext_connections_total{{side=\"{}\",name=\"{}\"}} {}",
                side.as_str(),
                escape(name),
                c.plaintext.load(Ordering::Relaxed)
            );
        }
        out.push_str("# TYPE weft_tls_handshake_failures_total counter\n");
        for (side, name, c) in e.iter() {
            for r in FailureReason::ALL {
                let _ = writeln!(
                    out,
                    "weft_tls_handshake_failures_total{{side=\"{}\",name=\"{}\",reason=\"{}\"}} {}",
                    side.as_str(),
                    escape(name),
                    r.as_str(),
                    c.failures(r)
                );
            }
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
