//! Dirty-page tracking of guest memory, for pre-copy live migration.
//!
//! A [`DirtyTracker`] watches `[base, base + len)` of a guest's linear memory
//! (Tern's private anonymous mapping, see [`crate::memory`]) and answers, each
//! time [`DirtyTracker::collect`] is called, which [`TRACK_PAGE`]-sized pages
//! were written since tracking started or since the previous `collect`. The
//! guest keeps running and writing on its own thread meanwhile.
//!
//! Two methods:
//!
//! * [`Method::UffdWp`]: userfaultfd *asynchronous* write-protect plus the
//!   `PAGEMAP_SCAN` ioctl of `/proc/self/pagemap` (Linux 6.7+). The kernel
//!   write-protects the range; the first write to a page just clears the
//!   protection (no fault is delivered to anyone, nothing blocks), and one
//!   `PAGEMAP_SCAN` per `collect` returns the written pages and protects them
//!   again, atomically per page table. A page written after the scan passed it
//!   shows up in the next `collect`, so no write is ever missed. The kernel
//!   tracks at its own page granularity: a transparent huge page reports all
//!   of its 4 KiB pages once written (more pages, never fewer).
//! * [`Method::Hash`]: xxh3-64 of every page, recomputed on each `collect`;
//!   pages whose hash changed are reported. Works anywhere (older kernels,
//!   qemu-user), costs a full read of the memory per `collect`.
//!
//! Memory that grows while tracked is added with [`DirtyTracker::extend`];
//! the whole added range is reported once by the next `collect` (the guest may
//! have written it before the tracker heard of it).
//!
//! With `Hash`, a page is "clean" when its content hashes as it did when the
//! tracker last hashed it. If a page changes between that moment and the
//! caller's copy of it, then changes back, `collect` cannot tell (with `UffdWp`
//! it can). [`DirtyTracker::copy_all`] and [`DirtyTracker::collect_pages`]
//! close that gap: they hand the caller the very bytes that were hashed, and
//! are exact with both methods.
//!
//! This is one of Tern's few `unsafe` modules: every block says why it holds.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::uffd;

/// Granularity of tracking, in bytes. Page indices count these.
pub const TRACK_PAGE: usize = 4096;

/// How a [`DirtyTracker`] finds written pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// userfaultfd asynchronous write-protect + `PAGEMAP_SCAN`.
    UffdWp,
    /// xxh3-64 hash of every page, compared between collects.
    Hash,
}

impl Method {
    /// A short stable name, for logs and statistics.
    pub fn name(self) -> &'static str {
        match self {
            Method::UffdWp => "uffd-wp+pagemap-scan",
            Method::Hash => "xxh3-hash",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which method [`DirtyTracker::start`] should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefer {
    /// userfaultfd when it works here, hashing otherwise.
    #[default]
    Auto,
    /// userfaultfd or an error.
    UffdWp,
    /// Hashing, always.
    Hash,
}

impl FromStr for Prefer {
    type Err = DirtyError;

    /// Parses `auto`, `uffd` or `hash` (ASCII case ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Prefer::Auto),
            "uffd" => Ok(Prefer::UffdWp),
            "hash" => Ok(Prefer::Hash),
            _ => Err(DirtyError::UnknownMethod(s.to_string())),
        }
    }
}

impl fmt::Display for Prefer {
    /// The spelling [`Prefer::from_str`] accepts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Prefer::Auto => "auto",
            Prefer::UffdWp => "uffd",
            Prefer::Hash => "hash",
        })
    }
}

/// Errors from dirty tracking. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// A method name that is not `auto`, `uffd` or `hash`.
    #[error("unknown dirty tracking method `{0}` (expected auto, uffd or hash)")]
    UnknownMethod(String),
    /// The range does not start or end on a page boundary.
    #[error("the tracked range is not {align}-byte aligned: base {base:#x}, length {len:#x}")]
    Unaligned {
        /// Start address.
        base: usize,
        /// Length in bytes.
        len: usize,
        /// Required alignment in bytes.
        align: usize,
    },
    /// More pages than a `u32` index can name.
    #[error("the tracked range is too large: {0} bytes")]
    TooLarge(usize),
    /// `extend` to a smaller length.
    #[error("the tracked range cannot shrink from {from} to {to} bytes")]
    Shrink {
        /// Current length.
        from: usize,
        /// Requested length.
        to: usize,
    },
    /// userfaultfd tracking is not built for this OS or architecture.
    #[error("userfaultfd write-protect tracking is not supported on this platform")]
    Unsupported,
    /// Creating the userfaultfd failed (no permission, no kernel support).
    #[error("userfaultfd is not available: {}", short(.0))]
    UffdOpen(io::Error),
    /// The `UFFDIO_API` handshake failed.
    #[error("the userfaultfd handshake failed: {}", short(.0))]
    UffdApi(io::Error),
    /// The kernel lacks asynchronous write-protect or `PAGEMAP_SCAN`.
    #[error("the kernel lacks {0} (needs Linux 6.7+)")]
    UffdFeatures(&'static str),
    /// `UFFDIO_REGISTER` of the memory failed.
    #[error("registering guest memory with userfaultfd failed: {}", short(.0))]
    UffdRegister(io::Error),
    /// `UFFDIO_WRITEPROTECT` of the memory failed.
    #[error("write-protecting guest memory failed: {}", short(.0))]
    WriteProtect(io::Error),
    /// Opening `/proc/self/pagemap` failed.
    #[error("opening /proc/self/pagemap failed: {}", short(.0))]
    Pagemap(io::Error),
    /// The `PAGEMAP_SCAN` ioctl failed. The next successful `collect` reports
    /// every page, so nothing is lost if the caller carries on.
    #[error("scanning guest memory for written pages failed: {}", short(.0))]
    Scan(io::Error),
}

/// An OS error as its bare description ("Operation not permitted"), without
/// the " (os error 1)" suffix, to keep messages one short line.
fn short(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Tracks which pages of a range of guest memory were written. See the
/// [module documentation](self).
pub struct DirtyTracker {
    /// Start of the tracked memory; TRACK_PAGE (and, for uffd, host page)
    /// aligned. Invariant: `[base, base + len)` is readable, mapped memory
    /// (the contract of `start` and `extend`).
    base: *mut u8,
    /// Tracked bytes, a multiple of TRACK_PAGE.
    len: usize,
    /// Pages `force_from..pages()` are reported by the next collect whatever
    /// the method says: memory added by `extend`, or everything after a
    /// failed scan. `pages()` when none.
    force_from: usize,
    inner: Inner,
    fallback: Option<String>,
}

enum Inner {
    Uffd(uffd::Uffd),
    /// The hash of every page, as last read.
    Hash(Vec<u64>),
}

// SAFETY: the tracker owns file descriptors and plain data; `base` is only an
// address of memory that the `start` contract keeps mapped for the tracker's
// life, read with atomic loads from whichever thread owns the tracker.
unsafe impl Send for DirtyTracker {}

impl DirtyTracker {
    /// Starts tracking `[base, base + len)`. Pages written from now on are
    /// reported by the next [`collect`](Self::collect).
    ///
    /// `base` and `len` must be multiples of [`TRACK_PAGE`] (for userfaultfd,
    /// of the host page size).
    ///
    /// # Safety
    ///
    /// `[base, base + len)` must be readable memory of a private anonymous
    /// mapping that stays mapped for the tracker's whole life (up to every
    /// later [`extend`](Self::extend) length).
    pub unsafe fn start(
        base: *mut u8,
        len: usize,
        prefer: Prefer,
    ) -> Result<DirtyTracker, DirtyError> {
        check_range(base as usize, len, TRACK_PAGE)?;
        let mut tracker = DirtyTracker {
            base,
            len,
            force_from: len / TRACK_PAGE,
            inner: Inner::Hash(Vec::new()),
            fallback: None,
        };
        match prefer {
            Prefer::Hash => {}
            Prefer::UffdWp => tracker.inner = Inner::Uffd(uffd_start(base, len)?),
            Prefer::Auto => match uffd_start(base, len) {
                Ok(u) => tracker.inner = Inner::Uffd(u),
                Err(e) => tracker.fallback = Some(e.to_string()),
            },
        }
        if let Inner::Hash(hashes) = &mut tracker.inner {
            let mut buf = [0u8; TRACK_PAGE];
            let n = len / TRACK_PAGE;
            let mut h = Vec::with_capacity(n);
            for i in 0..n {
                read_page_at(base, len, i, &mut buf);
                h.push(xxhash_rust::xxh3::xxh3_64(&buf));
            }
            *hashes = h;
        }
        Ok(tracker)
    }

    /// The method in use.
    pub fn method(&self) -> Method {
        match self.inner {
            Inner::Uffd(_) => Method::UffdWp,
            Inner::Hash(_) => Method::Hash,
        }
    }

    /// Why userfaultfd was not used, when [`Prefer::Auto`] fell back to
    /// hashing.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Tracked bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn pages(&self) -> usize {
        self.len / TRACK_PAGE
    }

    /// Tracks `[base, base + new_len)` from now on. The added pages are all
    /// reported by the next collect. Shrinking is an error; the same length is
    /// a no-op. On error the tracked length is unchanged (and pages past it
    /// are not tracked).
    ///
    /// # Safety
    ///
    /// As [`start`](Self::start), for `[base, base + new_len)`.
    pub unsafe fn extend(&mut self, new_len: usize) -> Result<(), DirtyError> {
        if new_len < self.len {
            return Err(DirtyError::Shrink {
                from: self.len,
                to: new_len,
            });
        }
        if new_len == self.len {
            return Ok(());
        }
        check_range(self.base as usize, new_len, TRACK_PAGE)?;
        let old_pages = self.pages();
        match &mut self.inner {
            Inner::Uffd(u) => {
                check_range(self.base as usize, new_len, uffd::host_page())?;
                u.track(self.base as usize + self.len, new_len - self.len)?;
            }
            Inner::Hash(hashes) => hashes.resize(new_len / TRACK_PAGE, 0),
        }
        self.len = new_len;
        self.force_from = self.force_from.min(old_pages);
        Ok(())
    }

    /// Page indices (relative to base, in units of [`TRACK_PAGE`]), ascending,
    /// written since [`start`](Self::start) or the previous collect, and
    /// re-arms tracking for them. Copy the pages *after* this returns.
    pub fn collect(&mut self) -> Result<Vec<u32>, DirtyError> {
        let mut out = Vec::new();
        match &mut self.inner {
            Inner::Uffd(u) => {
                if let Err(e) = u.scan(self.base as usize, self.len, &mut out) {
                    // Pages may have been re-protected without being
                    // reported: report all of them next time.
                    self.force_from = 0;
                    return Err(e);
                }
                let cut = out.partition_point(|&p| (p as usize) < self.force_from);
                out.truncate(cut);
                out.extend((self.force_from..self.pages()).map(|p| p as u32));
            }
            Inner::Hash(_) => {
                self.hash_pass(|i, _| out.push(i));
            }
        }
        self.force_from = self.pages();
        debug_assert!(out.windows(2).all(|w| w[0] < w[1]));
        Ok(out)
    }

    /// As [`collect`](Self::collect), but also reads each reported page and
    /// hands `each` its index and content; returns how many pages. With
    /// [`Method::Hash`] the content is exactly what was hashed, which makes
    /// the caller's copy exact even when the guest writes a page and then
    /// restores its earlier content.
    pub fn collect_pages(
        &mut self,
        mut each: impl FnMut(u32, &[u8; TRACK_PAGE]),
    ) -> Result<usize, DirtyError> {
        if let Inner::Hash(_) = self.inner {
            let n = self.hash_pass(each);
            self.force_from = self.pages();
            return Ok(n);
        }
        let pages = self.collect()?;
        let mut buf = [0u8; TRACK_PAGE];
        for &p in &pages {
            self.read_page(p as usize, &mut buf);
            each(p, &buf);
        }
        Ok(pages.len())
    }

    /// Reads every tracked page and hands `each` its index and content: the
    /// initial full copy of pre-copy migration. Use it after `start`; with
    /// [`Method::Hash`] it also rebases the hashes on exactly these bytes.
    /// Pages written later are reported by the next collect.
    pub fn copy_all(&mut self, mut each: impl FnMut(u32, &[u8; TRACK_PAGE])) {
        let mut buf = [0u8; TRACK_PAGE];
        for i in 0..self.pages() {
            self.read_page(i, &mut buf);
            if let Inner::Hash(hashes) = &mut self.inner {
                hashes[i] = xxhash_rust::xxh3::xxh3_64(&buf);
            }
            each(i as u32, &buf);
        }
        // Everything forced (added by extend, or lost by a failed scan) was
        // just read after it became tracked.
        self.force_from = self.pages();
    }

    /// Rehashes every page, reporting (through `each`) those whose hash
    /// changed or which are forced. Returns the count. The scan runs on all
    /// cores for large memories (it is the whole of the downtime's copy
    /// phase with this method); each reported page is then read once more
    /// and its stored hash set from exactly the bytes handed to `each`.
    fn hash_pass(&mut self, mut each: impl FnMut(u32, &[u8; TRACK_PAGE])) -> usize {
        let (base, len, force_from) = (self.base, self.len, self.force_from);
        let Inner::Hash(hashes) = &mut self.inner else {
            return 0;
        };
        let changed = changed_pages(base as usize, len, hashes, force_from);
        let mut buf = [0u8; TRACK_PAGE];
        for &i in &changed {
            read_page_at(base, len, i, &mut buf);
            hashes[i] = xxhash_rust::xxh3::xxh3_64(&buf);
            each(i as u32, &buf);
        }
        changed.len()
    }

    fn read_page(&self, index: usize, buf: &mut [u8; TRACK_PAGE]) {
        read_page_at(self.base, self.len, index, buf);
    }
}

impl Drop for DirtyTracker {
    /// Unprotects and unregisters the memory (userfaultfd) and closes the
    /// descriptors; the memory stays mapped and writable.
    fn drop(&mut self) {
        match &self.inner {
            Inner::Uffd(u) => u.release(self.base as usize, self.len),
            Inner::Hash(_) => {}
        }
    }
}

impl fmt::Debug for DirtyTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirtyTracker")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("method", &self.method())
            .field("fallback", &self.fallback)
            .finish()
    }
}

fn check_range(base: usize, len: usize, align: usize) -> Result<(), DirtyError> {
    if !base.is_multiple_of(align) || !len.is_multiple_of(align) || base == 0 {
        return Err(DirtyError::Unaligned { base, len, align });
    }
    if len / TRACK_PAGE > u32::MAX as usize + 1 || base.checked_add(len).is_none() {
        return Err(DirtyError::TooLarge(len));
    }
    Ok(())
}

/// Copies page `index` of `[base, base + len)` into `buf`, with relaxed atomic
/// loads: the guest may be writing the page concurrently.
///
/// Only called with a tracker's `base` and `len`, which satisfy the tracker's
/// invariant (readable mapping, `base` TRACK_PAGE aligned); `index` is checked
/// here.
/// Below this many pages (4 MiB) a hash scan stays on one thread.
const PARALLEL_MIN_PAGES: usize = 1024;

/// Indices, ascending, of the pages of `[base, base + len)` whose content
/// no longer hashes to `hashes`, and of every page from `force_from` on.
fn changed_pages(base: usize, len: usize, hashes: &[u64], force_from: usize) -> Vec<usize> {
    let scan = |first: usize, part: &[u64]| {
        let mut buf = [0u8; TRACK_PAGE];
        let mut out = Vec::new();
        for (j, stored) in part.iter().enumerate() {
            let i = first + j;
            read_page_at(base as *mut u8, len, i, &mut buf);
            if i >= force_from || xxhash_rust::xxh3::xxh3_64(&buf) != *stored {
                out.push(i);
            }
        }
        out
    };
    let threads = if hashes.len() < PARALLEL_MIN_PAGES {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    };
    if threads == 1 {
        return scan(0, hashes);
    }
    let chunk = hashes.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = hashes
            .chunks(chunk)
            .enumerate()
            .map(|(k, part)| s.spawn(move || scan(k * chunk, part)))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a hash scan thread panicked"))
            .collect()
    })
}

fn read_page_at(base: *mut u8, len: usize, index: usize, buf: &mut [u8; TRACK_PAGE]) {
    assert!(index < len / TRACK_PAGE, "page {index} is not tracked");
    // SAFETY: index * TRACK_PAGE + TRACK_PAGE <= len (asserted above), so the
    // offset stays inside the tracked range, one allocation (the mapping).
    let page = unsafe { base.add(index * TRACK_PAGE) }.cast::<u64>();
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        // SAFETY: `page + i` (i < TRACK_PAGE / 8) is 8-byte aligned (base is
        // page aligned) and inside the tracked range, which the tracker's
        // invariant keeps mapped and readable for its whole life. Rust code
        // only touches guest memory through raw pointers and the guest is
        // compiled code, so an atomic load is the right way to read it while
        // it may be written.
        let word = unsafe { AtomicU64::from_ptr(page.add(i)) }.load(Ordering::Relaxed);
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
}

fn uffd_start(base: *mut u8, len: usize) -> Result<uffd::Uffd, DirtyError> {
    check_range(base as usize, len, uffd::host_page())?;
    let u = uffd::Uffd::open()?;
    u.track(base as usize, len)?;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_parses_and_displays() {
        assert_eq!("auto".parse::<Prefer>().unwrap(), Prefer::Auto);
        assert_eq!("uffd".parse::<Prefer>().unwrap(), Prefer::UffdWp);
        assert_eq!("hash".parse::<Prefer>().unwrap(), Prefer::Hash);
        assert_eq!("HASH".parse::<Prefer>().unwrap(), Prefer::Hash);
        let err = "mprotect".parse::<Prefer>().unwrap_err();
        assert!(matches!(err, DirtyError::UnknownMethod(ref s) if s == "mprotect"));
        assert_eq!(
            err.to_string(),
            "unknown dirty tracking method `mprotect` (expected auto, uffd or hash)"
        );
        for p in [Prefer::Auto, Prefer::UffdWp, Prefer::Hash] {
            assert_eq!(p.to_string().parse::<Prefer>().unwrap(), p);
        }
        assert_eq!(Prefer::default(), Prefer::Auto);
        assert_eq!(Method::UffdWp.to_string(), "uffd-wp+pagemap-scan");
        assert_eq!(Method::Hash.to_string(), "xxh3-hash");
        assert_eq!(Method::Hash.name(), "xxh3-hash");
    }

    #[test]
    fn errors_are_one_short_line() {
        let e = DirtyError::UffdOpen(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            e.to_string(),
            "userfaultfd is not available: Operation not permitted"
        );
        let e = DirtyError::Unaligned {
            base: 0x1000,
            len: 0x10,
            align: 4096,
        };
        assert_eq!(
            e.to_string(),
            "the tracked range is not 4096-byte aligned: base 0x1000, length 0x10"
        );
    }

    #[test]
    fn tracker_is_send() {
        fn send<T: Send>() {}
        send::<DirtyTracker>();
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut page = vec![0u64; 1024];
        let p = page.as_mut_ptr().cast::<u8>();
        // SAFETY: the range is refused before any memory is read.
        let r = unsafe { DirtyTracker::start(p.wrapping_add(8), TRACK_PAGE, Prefer::Hash) };
        assert!(matches!(r, Err(DirtyError::Unaligned { .. })));
        // SAFETY: as above.
        let r = unsafe { DirtyTracker::start(std::ptr::null_mut(), 0, Prefer::Hash) };
        assert!(matches!(r, Err(DirtyError::Unaligned { .. })));
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn uapi_numbers_match_the_kernel_headers() {
        use crate::uffd::*;
        // Values printed by a C program including <linux/userfaultfd.h>
        // (and `_IOWR('f', 16, struct pm_scan_arg)` for PAGEMAP_SCAN).
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdioWriteprotect>(), 24);
    }

    /// A user-mode-only userfaultfd (what unprivileged processes get) must
    /// still let the kernel write into protected pages (`read(2)` into guest
    /// memory) and see those writes: asynchronous write-protect never
    /// delivers a fault.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn user_mode_only_uffd_sees_kernel_writes() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut u = match uffd::Uffd::open_with(1 /* UFFD_USER_MODE_ONLY */) {
            Ok(u) => u,
            Err(e @ (DirtyError::UffdOpen(_) | DirtyError::UffdFeatures(_))) => {
                eprintln!("skipped: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let len = 16 * TRACK_PAGE;
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }
        .unwrap()
        .cast::<u8>();
        // SAFETY: page 2 is inside the mapping; nothing else uses it.
        unsafe { base.add(2 * TRACK_PAGE).write(1) };
        u.track(base as usize, len).unwrap();
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(&[7u8; 16]).unwrap();
        // Page 2 is present and protected, page 9 was never touched.
        for page in [2usize, 9] {
            // SAFETY: reads 8 bytes into the mapping at page `page`, which is
            // inside it and referenced by nothing else.
            let n = unsafe { libc::read(r.as_raw_fd(), base.add(page * TRACK_PAGE).cast(), 8) };
            assert_eq!(n, 8, "{}", io::Error::last_os_error());
        }
        let mut out = Vec::new();
        u.scan(base as usize, len, &mut out).unwrap();
        assert_eq!(out, [2, 9]);
        out.clear();
        u.scan(base as usize, len, &mut out).unwrap();
        assert_eq!(out, [] as [u32; 0]);
        u.release(base as usize, len);
        drop(u);
        // SAFETY: the mapping made above, no longer used.
        unsafe { rustix::mm::munmap(base.cast(), len) }.unwrap();
    }
}
