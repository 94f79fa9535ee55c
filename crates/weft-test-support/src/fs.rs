//! Temporary directories and the large-body test pattern.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `weft-test-TAG-PID-N` under the system temp dir, emptied if it existed.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` atomically (temp file + rename), as config management tools do.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, self.0.join(name)).unwrap_or_else(|e| panic!("rename to {name}: {e}"));
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.0.join(name)).unwrap_or_else(|e| panic!("remove {name}: {e}"));
    }
}

impl Drop for TempDir {
    /// Removes the directory, except when the test is failing: then it stays, with the logs of
    /// the processes the test ran, and its path is printed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for the failing test: {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The byte at `offset` of the test pattern used for large bodies (period 251, a prime, so chunk
/// boundaries never line up with it).
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// `len` bytes of the test pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> Bytes {
    let period: Vec<u8> = (0..251u64).map(pattern_byte).collect();
    let mut v = Vec::with_capacity(len + 251);
    v.extend_from_slice(&period[(offset % 251) as usize..]);
    while v.len() < len {
        v.extend_from_slice(&period);
    }
    v.truncate(len);
    v.into()
}

/// Whether `data` is exactly the test pattern starting at `offset`.
pub fn is_pattern(offset: u64, data: &[u8]) -> bool {
    data == &pattern(offset, data.len())[..]
}

/// Reads a JSON-lines file (an access log), waiting (polling every 50 ms, at most `wait`) until it
/// holds at least `n` complete lines. Returns every complete line parsed, however many there are
/// then.
pub async fn json_lines(path: &Path, n: usize, wait: std::time::Duration) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let lines: Vec<serde_json::Value> = complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= n || std::time::Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Standard base64 (with or without `=` padding) to bytes: what the Kubernetes API puts in a
/// Secret's `data` and an AdmissionReview's `patch`. Panics on anything else (a test input).
pub fn base64_decode(s: &str) -> Vec<u8> {
    weft_core::trace::base64_decode(s.trim().as_bytes()).unwrap_or_else(|| panic!("not base64: {s:?}"))
}
