//! Guest memory that arrives after the guest resumed (post-copy).
//!
//! [`LazyMemory::arm`] drops what a guest memory holds and registers it for
//! missing-page faults: the guest may then run, and the first touch of each
//! page (by guest code, by Tern's host functions, or by the kernel on the
//! guest's behalf) waits until the page is placed. Whoever holds the
//! `LazyMemory` reads the faults ([`LazyMemory::faults`]), fetches those
//! pages, and places pages as they arrive ([`LazyMemory::place`],
//! [`LazyMemory::place_zero`]), fetched or pushed, in any order; a page is
//! placed once, the first time. Once every page is placed
//! ([`LazyMemory::missing`] is 0), dropping it ends the faulting.
//!
//! A page is never read as zero by mistake: until it is placed, a toucher
//! waits. Dropping a `LazyMemory` with pages still missing would let them
//! read as zero, so [`LazyMemory::is_complete`] must hold first; a memory
//! whose pages can no longer come must not run again.

use std::io;
use std::time::Instant;

use crate::memory::MemoryHandle;
use crate::uffd::Missing;

/// Bytes per page placed: the wire's page, which must be the host's.
pub const PAGE: usize = 4096;

/// Why a memory cannot be made lazy here.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The host's pages are not 4 KiB.
    #[error("post-copy needs 4 KiB host pages, this host has {0}-byte pages")]
    PageSize(usize),
    /// userfaultfd cannot be opened or registered (no kernel support, no
    /// permission, or an emulator that does not offer it).
    #[error("post-copy needs userfaultfd, which is not available here: {0}")]
    Unavailable(String),
    /// Dropping the memory's contents failed.
    #[error("preparing guest memory for post-copy failed: {0}")]
    Prepare(io::Error),
}

/// Checks that post-copy works here: 4 KiB pages and a userfaultfd that
/// takes missing-page registrations (a probe on a scratch mapping).
pub fn available() -> Result<(), LazyError> {
    let page = rustix::param::page_size();
    if page != PAGE {
        return Err(LazyError::PageSize(page));
    }
    let probe = MemoryHandle::anonymous(1 << 16).map_err(LazyError::Prepare)?;
    Missing::register(probe.base() as usize, PAGE)
        .map(drop)
        .map_err(|e| LazyError::Unavailable(e.to_string()))
}

/// A guest memory being filled in while the guest runs.
pub struct LazyMemory {
    missing: Missing,
    handle: MemoryHandle,
    base: usize,
    pages: u32,
    /// One bit per page: placed.
    placed: Vec<u64>,
    left: u32,
    armed_at: Instant,
}

impl LazyMemory {
    /// Drops the contents of the first `bytes` of `handle`'s memory (a
    /// multiple of [`PAGE`], at most its size) and makes every page of them
    /// fault until placed. The guest must not run during the call.
    pub fn arm(handle: MemoryHandle, bytes: usize) -> Result<LazyMemory, LazyError> {
        let page = rustix::param::page_size();
        if page != PAGE {
            return Err(LazyError::PageSize(page));
        }
        if !bytes.is_multiple_of(PAGE) || bytes > handle.len() {
            return Err(LazyError::Prepare(io::Error::other(format!(
                "{bytes} bytes is not a whole number of pages of a {}-byte memory",
                handle.len()
            ))));
        }
        handle.discard(0, bytes).map_err(LazyError::Prepare)?;
        let base = handle.base() as usize;
        let missing =
            Missing::register(base, bytes).map_err(|e| LazyError::Unavailable(e.to_string()))?;
        let pages = (bytes / PAGE) as u32;
        Ok(LazyMemory {
            missing,
            handle,
            base,
            pages,
            placed: vec![0; pages.div_ceil(64) as usize],
            left: pages,
            armed_at: Instant::now(),
        })
    }

    /// Pages covered.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Pages not placed yet.
    pub fn missing(&self) -> u32 {
        self.left
    }

    /// True once every page is placed.
    pub fn is_complete(&self) -> bool {
        self.left == 0
    }

    /// When [`LazyMemory::arm`] returned.
    pub fn armed_at(&self) -> Instant {
        self.armed_at
    }

    /// True when page `index` is placed.
    pub fn is_placed(&self, index: u32) -> bool {
        index < self.pages && self.placed[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// The descriptor that is readable when a fault waits (for `poll`).
    pub fn fault_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.missing.fd()
    }

    /// Appends the index of every page a toucher now waits for (without
    /// blocking; a page may be reported more than once).
    pub fn faults(&self, out: &mut Vec<u32>) -> io::Result<()> {
        let mut addrs = Vec::new();
        self.missing.faults(&mut addrs)?;
        out.extend(
            addrs
                .into_iter()
                .filter_map(|a| a.checked_sub(self.base))
                .map(|off| (off / PAGE) as u32)
                .filter(|&i| i < self.pages),
        );
        Ok(())
    }

    fn range_ok(&self, first: u32, count: u32) -> io::Result<()> {
        if first.checked_add(count).is_none_or(|end| end > self.pages) {
            return Err(io::Error::other(format!(
                "pages {first}..+{count} lie outside the {} pages being filled in",
                self.pages
            )));
        }
        Ok(())
    }

    fn mark(&mut self, first: u32, count: u32) {
        for i in first..first + count {
            let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
            if self.placed[w] & b == 0 {
                self.placed[w] |= b;
                self.left -= 1;
            }
        }
    }

    /// The runs `[start, end)` of pages in `[first, first + count)` not
    /// placed yet.
    fn unplaced_runs(&self, first: u32, count: u32) -> Vec<(u32, u32)> {
        let mut runs = Vec::new();
        let mut i = first;
        while i < first + count {
            if self.is_placed(i) {
                i += 1;
                continue;
            }
            let mut end = i + 1;
            while end < first + count && !self.is_placed(end) {
                end += 1;
            }
            runs.push((i, end));
            i = end;
        }
        runs
    }

    /// Places `bytes` (whole pages) from page `first`, waking whoever waits
    /// on them; pages placed before keep their bytes. Returns the pages
    /// newly placed.
    pub fn place(&mut self, first: u32, bytes: &[u8]) -> io::Result<u32> {
        if !bytes.len().is_multiple_of(PAGE) {
            return Err(io::Error::other("a partial page cannot be placed"));
        }
        let count = (bytes.len() / PAGE) as u32;
        self.range_ok(first, count)?;
        let before = self.left;
        // Place only runs of pages not placed yet: the rest are the guest's
        // now, and it may have written them.
        for (i, end) in self.unplaced_runs(first, count) {
            let src = &bytes[(i - first) as usize * PAGE..(end - first) as usize * PAGE];
            self.missing.copy(self.base + i as usize * PAGE, src)?;
            self.mark(i, end - i);
        }
        Ok(before - self.left)
    }

    /// Places zero pages from `first`, as [`LazyMemory::place`] does.
    pub fn place_zero(&mut self, first: u32, count: u32) -> io::Result<u32> {
        self.range_ok(first, count)?;
        let before = self.left;
        for (i, end) in self.unplaced_runs(first, count) {
            self.missing
                .zero(self.base + i as usize * PAGE, (end - i) as usize * PAGE)?;
            self.mark(i, end - i);
        }
        Ok(before - self.left)
    }

    /// The memory's handle.
    pub fn handle(&self) -> &MemoryHandle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lazy_or_skip(handle: MemoryHandle, bytes: usize) -> Option<LazyMemory> {
        match LazyMemory::arm(handle, bytes) {
            Ok(l) => Some(l),
            Err(e @ LazyError::Unavailable(_)) => {
                eprintln!("skipped: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// A thread touching lazy pages waits for each until it is placed, and
    /// sees exactly the bytes placed (or zero pages placed as zero), never
    /// a zero page it was not given.
    #[test]
    fn touching_a_missing_page_waits_for_it() {
        let pages = 64u32;
        let handle = MemoryHandle::anonymous(pages as usize * PAGE).unwrap();
        // Bytes the memory held before: arming must drop them.
        handle.fill_for_test(0xEE);
        let Some(mut lazy) = lazy_or_skip(handle.clone(), pages as usize * PAGE) else {
            return;
        };
        assert_eq!(lazy.missing(), pages);
        let h = handle.clone();
        let reader = std::thread::spawn(move || {
            // Pages 5, 40 and 63, in that order; each read blocks until the
            // page is placed.
            [5usize, 40, 63]
                .iter()
                .map(|&p| {
                    let mut b = [0u8; 8];
                    h.read(p * PAGE + 8, &mut b).unwrap();
                    b[0]
                })
                .collect::<Vec<_>>()
        });
        let mut served = Vec::new();
        let mut faults = Vec::new();
        while served.len() < 3 {
            faults.clear();
            lazy.faults(&mut faults).unwrap();
            for &p in &faults {
                if lazy.is_placed(p) {
                    continue;
                }
                served.push(p);
                if p == 40 {
                    assert_eq!(lazy.place_zero(p, 1).unwrap(), 1);
                } else {
                    assert_eq!(lazy.place(p, &vec![p as u8; PAGE]).unwrap(), 1);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(served, [5, 40, 63]);
        assert_eq!(reader.join().unwrap(), [5, 0, 63]);
        // Placing over placed pages changes nothing; the rest fill in.
        assert_eq!(lazy.place(4, &vec![9u8; 3 * PAGE]).unwrap(), 2);
        let mut b = [0u8; 1];
        handle.read(5 * PAGE, &mut b).unwrap();
        assert_eq!(b[0], 5);
        assert_eq!(lazy.place_zero(0, pages).unwrap(), pages - 5);
        assert!(lazy.is_complete());
        handle.read(4 * PAGE, &mut b).unwrap();
        assert_eq!(b[0], 9);
        assert!(lazy.place(pages, &[0u8; PAGE]).is_err());
        drop(lazy);
        handle.read(63 * PAGE, &mut b).unwrap();
        assert_eq!(b[0], 63);
    }
}
