//! Gives back the code and read-only data pages that only starting the proxy needed.
//!
//! An idle `weft proxy` had ~14 MiB of file-backed pages resident against ~2 MiB of heap and
//! stacks: its executable is one binary for the proxy, the control plane, the demo and the load
//! generator (35 MiB of code), and starting up (argument parsing, configuration, TLS and metrics
//! set-up) runs code spread all over it. The kernel maps pages around each faulting one (64 KiB
//! "fault-around"), so a few hundred scattered first calls left ~10 MiB of code mapped for the
//! process's whole life, charged to its memory cgroup and shown as its RSS.
//!
//! Once the proxy is ready, [`release`] unmaps the pages of every private, read-only,
//! file-backed mapping that holds no page of its own (`Anonymous` and `Swap` are 0 in
//! `/proc/self/smaps`): the executable's code and constants and those of the shared libraries.
//! `madvise(MADV_DONTNEED)` on such a mapping only removes the page-table entries; the pages stay
//! in the page cache and the next call into them faults them back in (a minor fault, no I/O), so
//! the code the request path uses comes back with the first requests and the rest stays out.
//! Mappings with pages of their own (RELRO data relocated at start, anything written) are never
//! touched: dropping those would lose their contents.
//!
//! No crate does this (it is a few lines over `/proc/self/smaps` and one system call).

/// Releases the resident pages of this process's clean read-only file mappings; returns how many
/// KiB were resident in them before.
#[cfg(target_os = "linux")]
pub fn release() -> u64 {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    let mut current: Option<Mapping> = None;
    let mut flush = |m: Option<Mapping>| {
        let Some(m) = m else { return };
        if !m.candidate || m.anonymous != Some(0) || m.swap != Some(0) {
            return;
        }
        // SAFETY: the range is a whole mapping of this process, read-only, private and backed by
        // a file, with no anonymous (copied-on-write) or swapped page: MADV_DONTNEED drops only
        // page-table entries of pages the page cache still holds, and later accesses fault the
        // same bytes back in. No memory the program wrote is lost.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += m.rss_kib;
        }
    };
    for line in smaps.lines() {
        if let Some(m) = Mapping::header(line) {
            flush(current.take());
            current = Some(m);
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        let mut field = line.split_whitespace();
        let (Some(name), Some(value)) = (field.next(), field.next()) else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else { continue };
        match name {
            "Rss:" => m.rss_kib = kib,
            "Anonymous:" => m.anonymous = Some(kib),
            "Swap:" => m.swap = Some(kib),
            _ => {}
        }
    }
    flush(current.take());
    released
}

#[cfg(not(target_os = "linux"))]
pub fn release() -> u64 {
    0
}

/// One mapping of `/proc/self/smaps`, as far as [`release`] needs it.
#[cfg(target_os = "linux")]
struct Mapping {
    start: usize,
    end: usize,
    /// Private, not writable, backed by a file (not the heap, a stack, `[vdso]` or `[vvar]`).
    candidate: bool,
    rss_kib: u64,
    anonymous: Option<u64>,
    swap: Option<u64>,
}

#[cfg(target_os = "linux")]
impl Mapping {
    /// `start-end perms offset dev inode [path]`; `None` for the field lines in between.
    fn header(line: &str) -> Option<Mapping> {
        let mut parts = line.split_whitespace();
        let (start, end) = parts.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let perms = parts.next()?.as_bytes();
        let (_offset, _dev, inode) = (parts.next()?, parts.next()?, parts.next()?);
        let path = parts.next().unwrap_or("");
        let candidate = perms.len() == 4
            && perms[0] == b'r'
            && perms[1] == b'-'
            && perms[3] == b'p'
            && inode != "0"
            && path.starts_with('/');
        Some(Mapping {
            start,
            end,
            candidate,
            rss_kib: 0,
            anonymous: None,
            swap: None,
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn headers_and_candidates() {
        let text = Mapping::header("557d4c533000-557d4e72f000 r-xp 00801000 fd:01 4242 /usr/bin/weft").unwrap();
        assert!(text.candidate);
        assert_eq!(text.end - text.start, 0x557d4e72f000 - 0x557d4c533000);
        assert!(
            Mapping::header("557d4e805000-557d4e80e000 rw-p 00ad3000 fd:01 4242 /usr/bin/weft")
                .map(|m| !m.candidate)
                .unwrap()
        );
        assert!(Mapping::header("7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]")
            .map(|m| !m.candidate)
            .unwrap());
        assert!(Mapping::header("7f00-8f00 r--s 00000000 fd:01 99 /dev/shm/x")
            .map(|m| !m.candidate)
            .unwrap());
        assert!(Mapping::header("Rss:                2548 kB").is_none());
        assert!(Mapping::header("VmFlags: rd mr mw me sd").is_none());
    }

    /// Code keeps running after its pages were released (they fault back in), and the mapping
    /// with relocated data (pages of its own) keeps its contents.
    #[test]
    fn release_keeps_the_process_working() {
        static TABLE: [&str; 3] = ["one", "two", "three"];
        let before: Vec<String> = TABLE.iter().map(|s| s.to_uppercase()).collect();
        let file_before = rss_file_kib();
        let kib = release();
        let file_after = rss_file_kib();
        assert!(kib > 0, "the test binary's code was resident");
        assert!(file_after < file_before, "RssFile {file_before} → {file_after} KiB");
        let after: Vec<String> = TABLE.iter().map(|s| s.to_uppercase()).collect();
        assert_eq!(before, after);
        assert_eq!(format!("{:?}", std::time::Duration::from_millis(1500)), "1.5s");
    }

    fn rss_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}
