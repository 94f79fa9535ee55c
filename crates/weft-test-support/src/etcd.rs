//! A throwaway single-member etcd (Debian's `etcd` server) on ephemeral loopback ports, driven with
//! `etcdctl`. Killed (and reaped) on drop.

use crate::{eventually_blocking, free_addr};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Etcd {
    child: Child,
    /// The client URL's address (`http://` + this).
    pub client: SocketAddr,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Etcd {
    /// Starts etcd with its data in `data` and waits until it is healthy. None (after the
    /// [`crate::peers::missing`] note; a panic under `CI=true`) when etcd or etcdctl is missing.
    pub fn start(data: &Path) -> Option<Etcd> {
        if crate::peers::on_path("etcd").is_none() || crate::peers::on_path("etcdctl").is_none() {
            crate::peers::missing("etcd and etcdctl", "scripts/install-peers installs them");
            return None;
        }
        let (client, peer) = (free_addr(), free_addr());
        let c = format!("http://{client}");
        let p = format!("http://{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("t={p}"), "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let e = Etcd { child, client };
        eventually_blocking("etcd healthy", Duration::from_secs(20), || {
            e.ctl(&["endpoint", "health"]).map(|_| ())
        });
        Some(e)
    }

    /// etcdctl's stdout, None when it failed.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.client.to_string(), "--command-timeout", "3s"])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
