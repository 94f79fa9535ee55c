//! Istio-standard TCP metrics for TCP proxy listeners: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total` (bytes of the response
//! direction, upstream → client) and `istio_tcp_received_bytes_total` (request direction,
//! client → upstream), with Istio's TCP labels (no response code; `request_protocol="tcp"`).
//!
//! A session is counted as opened when its upstream connection is made (or has finally failed,
//! then with the failure's flag), and as closed with its byte counts when it ends. One listener's
//! label sets differ only by response flag, so the handles are built on first use per flag and
//! looked up in a short list afterwards.

use crate::istio::{base_labels, security_policy, IstioMetrics, PeerLabels, Workload};
use crate::shard::Counter;
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioTcpLabels {
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// The four TCP families, registered beside the request metrics.
#[derive(Default)]
pub struct TcpFamilies {
    opened: Family<IstioTcpLabels, Counter>,
    closed: Family<IstioTcpLabels, Counter>,
    sent: Family<IstioTcpLabels, Counter>,
    received: Family<IstioTcpLabels, Counter>,
}

impl TcpFamilies {
    pub(crate) fn register(r: &mut Registry) -> TcpFamilies {
        let f = TcpFamilies::default();
        r.register(
            "istio_tcp_connections_opened",
            "TCP connections opened (Istio standard metric)",
            f.opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP connections closed (Istio standard metric)",
            f.closed.clone(),
        );
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client, response direction (Istio standard metric)",
            f.sent.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client, request direction (Istio standard metric)",
            f.received.clone(),
        );
        f
    }
}

struct Handles {
    opened: Counter,
    closed: Counter,
    sent: Counter,
    received: Counter,
}

/// One TCP proxy listener's reporter.
pub struct IstioTcpReporter {
    metrics: Arc<IstioMetrics>,
    base: IstioTcpLabels,
    /// Per response flag (`-`, `UF`, …: a handful per listener).
    by_flag: RwLock<Vec<(&'static str, Arc<Handles>)>>,
}

impl IstioTcpReporter {
    /// `cluster` is the listener's upstream cluster (`destination_service`).
    pub fn new(metrics: Arc<IstioMetrics>, me: &Workload, inbound: bool, cluster: &str) -> IstioTcpReporter {
        let mut peers = base_labels(me, inbound);
        peers.set_service(cluster);
        let base = IstioTcpLabels {
            peers,
            request_protocol: "tcp".into(),
            response_flags: String::new(),
            connection_security_policy: security_policy(inbound),
        };
        IstioTcpReporter {
            metrics,
            base,
            by_flag: RwLock::new(Vec::new()),
        }
    }

    fn handles(&self, flags: &'static str) -> Arc<Handles> {
        if let Some((_, h)) = self.by_flag.read().iter().find(|(f, _)| *f == flags) {
            return h.clone();
        }
        let mut list = self.by_flag.write();
        if let Some((_, h)) = list.iter().find(|(f, _)| *f == flags) {
            return h.clone();
        }
        let mut l = self.base.clone();
        l.response_flags = flags.to_string();
        let t = &self.metrics.tcp;
        let h = Arc::new(Handles {
            opened: t.opened.get_or_create(&l).clone(),
            closed: t.closed.get_or_create(&l).clone(),
            sent: t.sent.get_or_create(&l).clone(),
            received: t.received.get_or_create(&l).clone(),
        });
        list.push((flags, h.clone()));
        h
    }

    /// A session began (its upstream connection is made, or finally failed with `flags`).
    pub fn opened(&self, flags: &'static str) {
        self.handles(flags).opened.inc();
    }

    /// A session ended: `received` bytes from the client, `sent` bytes to it.
    pub fn closed(&self, flags: &'static str, received: u64, sent: u64) {
        let h = self.handles(flags);
        h.closed.inc();
        h.received.inc_by(received);
        h.sent.inc_by(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_labels_and_sums() {
        let m = Arc::new(IstioMetrics::default());
        let me = Workload::from_node("db-proxy", &Default::default());
        let r = IstioTcpReporter::new(m.clone(), &me, false, "db");
        r.opened("-");
        r.closed("-", 10, 20);
        r.opened("-");
        r.closed("-", 5, 1);
        r.opened("UF");
        r.closed("UF", 0, 0);
        let text = m.encode();
        let find = |name: &str, flags: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("response_flags=\"{flags}\"")))
                .unwrap_or_else(|| panic!("{name} {flags} in {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(find("istio_tcp_connections_opened_total", "-"), "2");
        assert_eq!(find("istio_tcp_connections_closed_total", "UF"), "1");
        assert_eq!(find("istio_tcp_received_bytes_total", "-"), "15");
        assert_eq!(find("istio_tcp_sent_bytes_total", "-"), "21");
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .unwrap();
        for want in [
            "reporter=\"source\"",
            "source_workload=\"db-proxy\"",
            "destination_service=\"db\"",
            "request_protocol=\"tcp\"",
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
    }
}
