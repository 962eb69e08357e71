//! Dirty-page tracking (`tern_vm::dirty`) of memory mapped like guest memory,
//! with both methods. The userfaultfd tests are skipped, with a note, only
//! where userfaultfd cannot be opened or the kernel is older than 6.7; set
//! `TERN_REQUIRE_UFFD=1` to make that a failure instead.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tern_vm::dirty::{DirtyError, DirtyTracker, Method, Prefer, TRACK_PAGE};

const MIB: usize = 1 << 20;
/// Reserved like a guest memory (smaller): inaccessible beyond what is open.
const RESERVE: usize = 64 * MIB;
const WORDS: usize = TRACK_PAGE / 8;

/// A reservation like Tern's guest memory: `RESERVE` bytes of
/// `PROT_NONE` private anonymous memory whose start is opened read-write.
/// All accesses are atomic, so a writer thread may share it.
struct Mem {
    base: *mut u8,
    open: AtomicUsize,
}

// SAFETY: `Mem` is an address range; every access to the memory behind it
// goes through atomic loads and stores within the opened part.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    /// `huge_pages: false` keeps transparent huge pages away, so that writes
    /// are reported page by page.
    fn new(open: usize, huge_pages: bool) -> Mem {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks
        // aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RESERVE,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(
            base,
            libc::MAP_FAILED,
            "{}",
            std::io::Error::last_os_error()
        );
        if !huge_pages {
            // SAFETY: advice on our own fresh mapping; contents unaffected.
            let r = unsafe { libc::madvise(base, RESERVE, libc::MADV_NOHUGEPAGE) };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        }
        let mem = Mem {
            base: base.cast(),
            open: AtomicUsize::new(0),
        };
        mem.grow(open);
        mem
    }

    /// Opens `[0, to)` read-write, as a guest's `memory.grow` does.
    fn grow(&self, to: usize) {
        let from = self.open.load(Ordering::Acquire);
        assert!(from <= to && to <= RESERVE);
        // SAFETY: [from, to) lies inside our reservation; making it
        // accessible invalidates nothing.
        let r = unsafe {
            libc::mprotect(
                self.base.add(from).cast(),
                to - from,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        self.open.store(to, Ordering::Release);
    }

    fn word(&self, page: usize, word: usize) -> &AtomicU64 {
        assert!(word < WORDS && (page + 1) * TRACK_PAGE <= self.open.load(Ordering::Acquire));
        // SAFETY: the word is inside the opened, mapped part (asserted), 8-byte
        // aligned (page-aligned base), and only ever accessed atomically; the
        // mapping outlives `&self`.
        unsafe { AtomicU64::from_ptr(self.base.add(page * TRACK_PAGE).cast::<u64>().add(word)) }
    }

    fn write(&self, page: usize, word: usize, value: u64) {
        self.word(page, word).store(value, Ordering::Relaxed);
    }

    fn read(&self, page: usize, word: usize) -> u64 {
        self.word(page, word).load(Ordering::Relaxed)
    }

    fn page(&self, page: usize) -> Vec<u8> {
        (0..WORDS)
            .flat_map(|w| self.read(page, w).to_ne_bytes())
            .collect()
    }

    /// The kernel writes 8 bytes at the start of `page` (`read(2)` from a
    /// pipe), as it does for a guest's `fd_read`.
    fn kernel_write(&self, page: usize, byte: u8) {
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(&[byte; 8]).unwrap();
        let _ = self.word(page, 0); // bounds check
                                    // SAFETY: 8 bytes at the start of an opened page of our mapping,
                                    // which no Rust reference covers.
        let n = unsafe { libc::read(r.as_raw_fd(), self.base.add(page * TRACK_PAGE).cast(), 8) };
        assert_eq!(n, 8, "{}", std::io::Error::last_os_error());
    }

    /// Drops the page's contents (`MADV_DONTNEED`): it reads as zeros again.
    fn discard(&self, page: usize) {
        let _ = self.word(page, 0); // bounds check
                                    // SAFETY: one opened page of our private anonymous mapping, which no
                                    // Rust reference covers; it reads back as zeros.
        let r = unsafe {
            libc::madvise(
                self.base.add(page * TRACK_PAGE).cast(),
                TRACK_PAGE,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }

    fn track(&self, method: Method) -> Option<DirtyTracker> {
        let prefer = match method {
            Method::UffdWp => Prefer::UffdWp,
            Method::Hash => Prefer::Hash,
        };
        let len = self.open.load(Ordering::Acquire);
        // SAFETY: [base, base + len) is opened and stays mapped until `self`
        // drops; every test drops the tracker first.
        match unsafe { DirtyTracker::start(self.base, len, prefer) } {
            Ok(t) => {
                assert_eq!(t.method(), method);
                assert_eq!(t.fallback_reason(), None);
                Some(t)
            }
            Err(
                e @ (DirtyError::UffdOpen(_)
                | DirtyError::UffdFeatures(_)
                | DirtyError::Unsupported),
            ) if method == Method::UffdWp
                && std::env::var_os("TERN_REQUIRE_UFFD").is_none_or(|v| v != "1") =>
            {
                eprintln!("note: userfaultfd test skipped: {e}");
                None
            }
            Err(e) => panic!("starting {method} tracking: {e}"),
        }
    }

    /// Tells `t` that the memory is now open up to `len`.
    fn extend(&self, t: &mut DirtyTracker) {
        let len = self.open.load(Ordering::Acquire);
        // SAFETY: as in `track`.
        unsafe { t.extend(len) }.unwrap();
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; trackers and threads using it
        // are gone.
        unsafe { libc::munmap(self.base.cast(), RESERVE) };
    }
}

fn tracks_written_pages(method: Method) {
    let mem = Mem::new(4 * MIB, false);
    for p in [3, 100, 700] {
        mem.write(p, 1, 0xAA);
    }
    let Some(mut t) = mem.track(method) else {
        return;
    };
    println!("{method}: tracking {} pages", t.len() / TRACK_PAGE);
    assert!(t.collect().unwrap().is_empty(), "nothing written yet");
    // Reading never-touched pages is not writing.
    assert_eq!(mem.read(200, 0) + mem.read(201, 7), 0);
    assert!(t.collect().unwrap().is_empty());

    // Never-touched pages, pages touched before start, first and last page.
    let first: [u32; 6] = [0, 3, 5, 6, 500, 1023];
    for (i, &p) in first.iter().enumerate() {
        mem.write(p as usize, i * 13, 1000 + i as u64);
    }
    assert_eq!(t.collect().unwrap(), first);
    assert!(
        t.collect().unwrap().is_empty(),
        "no writes since the last collect"
    );

    let again: [u32; 3] = [3, 42, 500];
    for (i, &p) in again.iter().enumerate() {
        mem.write(p as usize, 5, 2000 + i as u64);
    }
    assert_eq!(t.collect().unwrap(), again);

    // Written by the kernel: a never-touched page and a protected one.
    mem.kernel_write(77, 0x77);
    mem.kernel_write(100, 0x55);
    assert_eq!(t.collect().unwrap(), [77, 100]);
    // Zeroed by MADV_DONTNEED (as `memory::zero_range` does).
    mem.discard(42);
    assert_eq!(t.collect().unwrap(), [42]);
    assert!(t.collect().unwrap().is_empty());

    // Growth: the guest writes the new part before the tracker hears of it,
    // and after.
    mem.grow(8 * MIB);
    mem.write(1500, 0, 1);
    mem.extend(&mut t);
    mem.write(2000, 0, 1);
    assert_eq!(t.len(), 8 * MIB);
    let added: Vec<u32> = (1024..2048).collect();
    assert_eq!(
        t.collect().unwrap(),
        added,
        "the added range is reported once"
    );
    assert!(t.collect().unwrap().is_empty());
    mem.write(2000, 1, 3);
    mem.write(1500, 2, 3);
    mem.write(10, 3, 3);
    assert_eq!(t.collect().unwrap(), [10, 1500, 2000]);
    // SAFETY: same length: nothing to do.
    unsafe { t.extend(8 * MIB) }.unwrap();
    // SAFETY: refused before anything happens.
    let shrink = unsafe { t.extend(4 * MIB) };
    assert!(
        matches!(shrink, Err(DirtyError::Shrink { .. })),
        "{shrink:?}"
    );
    assert!(t.collect().unwrap().is_empty());

    // After the tracker is gone the memory is plain memory again: every
    // page (protected, never touched, written) takes writes and keeps data.
    drop(t);
    assert_eq!(mem.read(5, 2 * 13), 1002);
    assert_eq!(mem.page(77)[..8], [0x77; 8]);
    for p in 0..2048 {
        mem.write(p, 9, p as u64 + 1);
    }
    for p in 0..2048 {
        assert_eq!(mem.read(p, 9), p as u64 + 1);
    }
}

#[test]
fn uffd_tracks_written_pages() {
    tracks_written_pages(Method::UffdWp);
}

#[test]
fn hash_tracks_written_pages() {
    tracks_written_pages(Method::Hash);
}

/// A guest thread writes while the migration thread collects and copies the
/// reported pages into a shadow; the memory grows midway. After the writer
/// stops and one last collect, the shadow must equal the memory.
fn concurrent_shadow(method: Method) {
    // Huge pages allowed: coarser reports, same guarantee.
    let mem = Mem::new(4 * MIB, true);
    for p in (0..1024).step_by(3) {
        mem.write(p, 0, p as u64);
    }
    let Some(mut t) = mem.track(method) else {
        return;
    };
    let mut shadow = vec![0u8; 8 * MIB];
    let copy = |shadow: &mut [u8], p: usize| {
        shadow[p * TRACK_PAGE..(p + 1) * TRACK_PAGE].copy_from_slice(&mem.page(p));
    };
    for p in 0..1024 {
        copy(&mut shadow, p);
    }
    let stop = AtomicBool::new(false);
    let writable_pages = AtomicUsize::new(1024);
    let (mut rounds, mut reported) = (0usize, 0usize);
    let writes = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let (mut x, mut n) = (0x9E37_79B9_7F4A_7C15u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pages = writable_pages.load(Ordering::Acquire) as u64;
                n += 1;
                mem.write((x % pages) as usize, ((x >> 40) % WORDS as u64) as usize, n);
            }
            n
        });
        let begin = Instant::now();
        let mut grown = false;
        // At least 600 ms, 8 rounds and the growth (a loaded machine is
        // slow: one round can take the test from before 250 ms to past
        // 600 ms), at most 30 s.
        while (begin.elapsed() < Duration::from_millis(600) || rounds < 8 || !grown)
            && begin.elapsed() < Duration::from_secs(30)
        {
            if !grown && begin.elapsed() > Duration::from_millis(250) {
                mem.grow(8 * MIB);
                writable_pages.store(2048, Ordering::Release);
                std::thread::sleep(Duration::from_millis(5));
                mem.extend(&mut t);
                grown = true;
            }
            let pages = t.collect().unwrap();
            rounds += 1;
            reported += pages.len();
            for p in pages {
                copy(&mut shadow, p as usize);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    for p in t.collect().unwrap() {
        copy(&mut shadow, p as usize);
    }
    println!("{method}: {writes} writes, {rounds} collects, {reported} pages reported");
    assert!(writes > 1000 && rounds >= 8, "too little happened");
    for p in 0..2048 {
        assert!(
            shadow[p * TRACK_PAGE..(p + 1) * TRACK_PAGE] == mem.page(p)[..],
            "{method}: page {p} of the shadow differs from the memory"
        );
    }
}

#[test]
fn uffd_shadow_copy_matches_under_concurrent_writes() {
    concurrent_shadow(Method::UffdWp);
}

#[test]
fn hash_shadow_copy_matches_under_concurrent_writes() {
    concurrent_shadow(Method::Hash);
}

/// The guest changes a page between the tracker reading it and the caller's
/// copy, then puts the old content back. `copy_all` and `collect_pages` hand
/// over the bytes the tracker read, so the shadow stays right (with hashing,
/// plain `collect` could not tell).
fn content_restored_after_collect(method: Method) {
    let mem = Mem::new(MIB, false);
    let Some(mut t) = mem.track(method) else {
        return;
    };
    let mut shadow = vec![0u8; MIB];
    let mut put = |p: u32, bytes: &[u8; TRACK_PAGE]| {
        let p = p as usize;
        shadow[p * TRACK_PAGE..(p + 1) * TRACK_PAGE].copy_from_slice(bytes);
    };
    mem.write(5, 0, 1);
    t.copy_all(&mut put);
    mem.write(5, 0, 2); // after the read, before the next collect
    mem.write(5, 0, 1); // and back
    mem.write(6, 0, 1);
    let n = t
        .collect_pages(|p, bytes| {
            put(p, bytes);
            if p == 6 {
                mem.write(6, 0, 2); // while being copied
            }
        })
        .unwrap();
    assert!(n >= 1);
    mem.write(6, 0, 1); // back to what was read
    t.collect_pages(&mut put).unwrap();
    drop(t);
    for p in [5, 6] {
        assert_eq!(
            shadow[p * TRACK_PAGE..(p + 1) * TRACK_PAGE],
            mem.page(p)[..]
        );
    }
    assert_eq!(mem.read(6, 0), 1);
}

#[test]
fn uffd_exact_copies_when_content_is_restored() {
    content_restored_after_collect(Method::UffdWp);
}

#[test]
fn hash_exact_copies_when_content_is_restored() {
    content_restored_after_collect(Method::Hash);
}

#[test]
fn auto_prefers_uffd_and_reports_fallbacks() {
    let mem = Mem::new(MIB, false);
    // SAFETY: the opened MiB stays mapped until `mem` drops, after `t`.
    let t = unsafe { DirtyTracker::start(mem.base, MIB, Prefer::Auto) }.unwrap();
    match t.method() {
        Method::UffdWp => assert_eq!(t.fallback_reason(), None),
        Method::Hash => {
            let why = t.fallback_reason().expect("a reason for the fallback");
            println!("note: auto fell back to hashing: {why}");
            assert!(!why.contains('\n'));
        }
    }
    drop(t);
    // SAFETY: as above.
    let t = unsafe { DirtyTracker::start(mem.base, MIB, Prefer::Hash) }.unwrap();
    assert_eq!((t.method(), t.fallback_reason()), (Method::Hash, None));
    drop(t);
    // SAFETY: refused before any memory is touched.
    let r = unsafe { DirtyTracker::start(mem.base.wrapping_add(8), MIB, Prefer::UffdWp) };
    assert!(matches!(r, Err(DirtyError::Unaligned { .. })), "{r:?}");
}

/// Memory another userfaultfd already tracks cannot be registered again:
/// `Auto` falls back to hashing and says why, `UffdWp` fails.
#[test]
fn auto_falls_back_to_hashing_with_a_reason() {
    let mem = Mem::new(MIB, false);
    let Some(first) = mem.track(Method::UffdWp) else {
        return;
    };
    // SAFETY: the opened MiB stays mapped until `mem` drops, after both
    // trackers.
    let second = unsafe { DirtyTracker::start(mem.base, MIB, Prefer::Auto) }.unwrap();
    assert_eq!(second.method(), Method::Hash);
    let why = second.fallback_reason().expect("a reason");
    println!("auto on memory already tracked: {why}");
    assert!(why.starts_with("registering guest memory with userfaultfd failed: "));
    assert!(!why.contains('\n') && !why.contains("os error"));
    // SAFETY: as above.
    let r = unsafe { DirtyTracker::start(mem.base, MIB, Prefer::UffdWp) };
    assert!(matches!(r, Err(DirtyError::UffdRegister(_))), "{r:?}");
    // Both work side by side.
    mem.write(9, 0, 1);
    let mut first = first;
    let mut second = second;
    assert_eq!(first.collect().unwrap(), [9]);
    assert_eq!(second.collect().unwrap(), [9]);
}
