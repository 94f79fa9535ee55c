//! Gives back the code and read-only data pages that only starting the proxy needed.
//!
//! An idle `weft proxy` had ~14 MiB of file-backed pages resident against ~2 MiB of heap and
//! stacks: its executable is one binary for the proxy, the control plane, the demo and the load
//! generator (35 MiB of code), and starting up (argument parsing, configuration, TLS and metrics
//! set-up) runs code spread all over it. The kernel maps pages around each faulting one (64 KiB
//! "fault-around"), so a few hundred scattered first calls left ~10 MiB of code mapped for the
//! process's whole life, counted in its RSS.
//!
//! Once the proxy is ready, [`release`] unmaps the pages of the read-only segments (code and
//! constants) of the executable and its shared libraries. `madvise(MADV_DONTNEED)` on them only removes page-table entries: the
//! pages stay in the page cache and the next call into them faults them back in (a minor fault,
//! no I/O), so the code the request path uses comes back with the first requests and the rest
//! stays out. The pages are still charged to the process's memory cgroup (as page cache) until
//! the kernel reclaims them; what drops at once is the process's RSS.
//!
//! Which ranges: the `PT_LOAD` segments without write permission of the executable and of the
//! shared libraries, from `dl_iterate_phdr`: an object is on its list only once its segments are
//! mapped where they stay, and the loader's lock is held while they are released, so no mapping
//! changes under the call (a list of ranges read from `/proc/self/smaps` alone could be stale by
//! then: a library being loaded is first mapped read-only as a whole, then its data mapped over
//! it and written). The loader never writes into a read-only segment, except for an object with
//! text relocations: those objects are skipped. A segment is only released when
//! `/proc/self/smaps`, read just before, shows its mapping with no page of its own (`Anonymous`
//! and `Swap` 0: no breakpoint or uprobe copied a page) and with base pages (not hugetlbfs).
//!
//! No crate does this (it is a few lines over `dl_iterate_phdr`, `/proc/self/smaps` and one
//! system call).

/// Releases the resident pages of the loaded objects' clean read-only segments; returns how many
/// KiB were resident in them before.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release() -> u64 {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let mut ctx = Walk {
        clean: clean_mappings(&smaps, page as u64 / 1024),
        page,
        released_kib: 0,
    };
    // SAFETY: the callback only reads the program headers glibc hands it and calls madvise on
    // ranges checked as described in the module documentation; `ctx` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(release_segments), (&mut ctx as *mut Walk).cast()) };
    ctx.released_kib
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> u64 {
    0
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
struct Walk {
    /// Read-only private file mappings with no page of their own: (start, end, resident KiB).
    clean: Vec<(usize, usize, u64)>,
    /// The base page size (segments are released in whole pages of it).
    page: usize,
    released_kib: u64,
}

/// `dl_iterate_phdr`'s callback, once per loaded object (the executable, then the libraries).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" fn release_segments(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: glibc passes a valid `dl_phdr_info` and our `data` pointer back.
    let (info, walk) = unsafe { (&*info, &mut *data.cast::<Walk>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers of a loaded object.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    // An object with text relocations has the loader write into its code: leave it alone (one
    // still being loaded by another thread could be written after the check below).
    for h in headers.iter().filter(|h| h.p_type == libc::PT_DYNAMIC) {
        // SAFETY: the PT_DYNAMIC segment of a loaded object, at its load address.
        if unsafe { has_text_relocations(base + h.p_vaddr as usize) } {
            return 0;
        }
    }
    let page = walk.page;
    for h in headers {
        if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 || h.p_memsz == 0 {
            continue;
        }
        // Segments with different permissions never share a page, so the whole pages around a
        // read-only segment are its own.
        let start = (base + h.p_vaddr as usize) & !(page - 1);
        let end = (base + h.p_vaddr as usize + h.p_memsz as usize + page - 1) & !(page - 1);
        let Some(&(_, _, kib)) = walk.clean.iter().find(|(s, e, _)| *s <= start && end <= *e) else {
            continue;
        };
        // SAFETY: a read-only segment of a loaded object without text relocations (the loader
        // never writes into it), inside a private file mapping that held no anonymous (copied)
        // or swapped page and uses base pages: MADV_DONTNEED drops only page-table entries of
        // pages the page cache still holds, and later accesses fault the same bytes back in. The
        // loader's lock (held during this callback) keeps the objects' mappings as they are.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) } == 0 {
            walk.released_kib += kib;
        }
    }
    0
}

/// Whether the dynamic section at `dynamic` has `DT_TEXTREL` or `DF_TEXTREL` in `DT_FLAGS`.
///
/// # Safety
/// `dynamic` must be the address of a loaded object's `PT_DYNAMIC` segment.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe fn has_text_relocations(dynamic: usize) -> bool {
    const DT_NULL: i64 = 0;
    const DT_TEXTREL: i64 = 22;
    const DT_FLAGS: i64 = 30;
    const DF_TEXTREL: u64 = 0x4;
    #[repr(C)]
    struct Dyn {
        tag: i64,
        val: u64,
    }
    let mut entry = dynamic as *const Dyn;
    // A dynamic section ends with DT_NULL; the bound only guards against a corrupt one.
    for _ in 0..4096 {
        // SAFETY: the entries up to DT_NULL are mapped (the loader read them).
        let d = unsafe { &*entry };
        match d.tag {
            DT_NULL => return false,
            DT_TEXTREL => return true,
            DT_FLAGS if d.val & DF_TEXTREL != 0 => return true,
            _ => {}
        }
        // SAFETY: still inside the section (DT_NULL not reached yet).
        entry = unsafe { entry.add(1) };
    }
    true
}

/// The mappings of `/proc/self/smaps` that are private, read-only, file-backed, with base pages
/// of `page_kib` (not huge pages) and no anonymous or swapped page: (start, end, resident KiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn clean_mappings(smaps: &str, page_kib: u64) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut current: Option<Mapping> = None;
    let mut flush = |m: Option<Mapping>| {
        if let Some(m) = m.filter(|m| m.clean(page_kib)) {
            out.push((m.start, m.end, m.rss_kib));
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
            "KernelPageSize:" => m.page_kib = Some(kib),
            "Private_Hugetlb:" | "Shared_Hugetlb:" => m.hugetlb += kib,
            _ => {}
        }
    }
    flush(current.take());
    out
}

/// One mapping of `/proc/self/smaps`, as far as [`release`] needs it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
struct Mapping {
    start: usize,
    end: usize,
    /// Private, not writable, backed by a regular file (not the heap, a stack, `[vdso]`, a device).
    candidate: bool,
    rss_kib: u64,
    anonymous: Option<u64>,
    swap: Option<u64>,
    page_kib: Option<u64>,
    hugetlb: u64,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
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
            && path.starts_with('/')
            && !path.starts_with("/dev/");
        Some(Mapping {
            start,
            end,
            candidate,
            rss_kib: 0,
            anonymous: None,
            swap: None,
            page_kib: None,
            hugetlb: 0,
        })
    }

    fn clean(&self, page_kib: u64) -> bool {
        self.candidate
            && self.anonymous == Some(0)
            && self.swap == Some(0)
            && self.page_kib == Some(page_kib)
            && self.hugetlb == 0
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
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

    #[test]
    fn only_clean_small_page_mappings() {
        let smaps = "\
55d000000000-55d000100000 r--p 00000000 fd:01 42 /usr/bin/weft
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 300 kB
Anonymous:             0 kB
Swap:                  0 kB
Private_Hugetlb:       0 kB
VmFlags: rd mr mw me sd
55d000100000-55d000200000 r-xp 00100000 fd:01 42 /usr/bin/weft
KernelPageSize:        4 kB
Rss:                 500 kB
Anonymous:             4 kB
Swap:                  0 kB
55d000200000-55d000300000 r--p 00200000 fd:01 42 /usr/bin/weft
KernelPageSize:        4 kB
Rss:                 100 kB
Anonymous:           100 kB
Swap:                  0 kB
7f0000000000-7f0000200000 r--p 00000000 00:10 77 /mnt/huge/weft
KernelPageSize:     2048 kB
Rss:                   0 kB
Anonymous:             0 kB
Swap:                  0 kB
Private_Hugetlb:    2048 kB
7f0000400000-7f0000401000 r--p 00000000 00:05 12 /dev/dri/card0
KernelPageSize:        4 kB
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
";
        // The code mapping with a copied page (a breakpoint, a text relocation) and the RELRO
        // data are kept, as are hugetlbfs and device mappings.
        assert_eq!(clean_mappings(smaps, 4), vec![(0x55d000000000, 0x55d000100000, 300)]);
    }

    #[test]
    fn text_relocations_are_seen() {
        let plain: [[u64; 2]; 3] = [[1, 7], [30, 0x8], [0, 0]]; // DT_NEEDED, DT_FLAGS (BIND_NOW), DT_NULL
        let flagged: [[u64; 2]; 2] = [[30, 0x4 | 0x8], [0, 0]]; // DT_FLAGS with DF_TEXTREL
        let tagged: [[u64; 2]; 2] = [[22, 0], [0, 0]]; // DT_TEXTREL
                                                       // SAFETY: each array is a well-formed dynamic section ending with DT_NULL.
        unsafe {
            assert!(!has_text_relocations(plain.as_ptr() as usize));
            assert!(has_text_relocations(flagged.as_ptr() as usize));
            assert!(has_text_relocations(tagged.as_ptr() as usize));
        }
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
