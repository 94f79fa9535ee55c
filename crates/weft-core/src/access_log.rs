//! Structured access log: one JSON object per line, written through a buffer that a background task
//! flushes every 250 ms (and whenever it grows past 64 KiB), so logging costs a formatted line and an
//! uncontended lock per request rather than a syscall.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use weft_config::LogSink;

const FLUSH_THRESHOLD: usize = 64 * 1024;

pub struct AccessLogger {
    buf: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl AccessLogger {
    fn open(sink: &LogSink) -> io::Result<AccessLogger> {
        let out: Box<dyn Write + Send> = match sink {
            LogSink::Stdout => Box::new(io::stdout()),
            LogSink::Stderr => Box::new(io::stderr()),
            LogSink::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        };
        Ok(AccessLogger {
            buf: Mutex::new(Vec::with_capacity(FLUSH_THRESHOLD)),
            out: Mutex::new(out),
        })
    }

    /// Appends one record (a JSON object without the trailing newline).
    pub fn log(&self, record: &serde_json::Value) {
        let mut buf = self.buf.lock();
        let _ = serde_json::to_writer(&mut *buf, record);
        buf.push(b'\n');
        if buf.len() >= FLUSH_THRESHOLD {
            let data = std::mem::take(&mut *buf);
            drop(buf);
            self.write_out(&data);
        }
    }

    pub fn flush(&self) {
        let data = {
            let mut buf = self.buf.lock();
            if buf.is_empty() {
                return;
            }
            std::mem::take(&mut *buf)
        };
        self.write_out(&data);
    }

    fn write_out(&self, data: &[u8]) {
        let mut out = self.out.lock();
        let _ = out.write_all(data);
        let _ = out.flush();
    }
}

/// Opens each sink once and hands out shared loggers; flushes them periodically.
#[derive(Default)]
pub struct AccessLogs {
    open: Mutex<HashMap<LogSink, Weak<AccessLogger>>>,
}

impl AccessLogs {
    pub fn get(&self, sink: &LogSink) -> io::Result<Arc<AccessLogger>> {
        let mut open = self.open.lock();
        if let Some(l) = open.get(sink).and_then(Weak::upgrade) {
            return Ok(l);
        }
        let l = Arc::new(AccessLogger::open(sink)?);
        open.insert(sink.clone(), Arc::downgrade(&l));
        Ok(l)
    }

    pub fn flush_all(&self) {
        let loggers: Vec<_> = {
            let mut open = self.open.lock();
            open.retain(|_, w| w.strong_count() > 0);
            open.values().filter_map(Weak::upgrade).collect()
        };
        for l in loggers {
            l.flush();
        }
    }

    pub async fn flush_periodically(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            self.flush_all();
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling in a date crate.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
