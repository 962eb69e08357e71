//! Guest linear memory in a mapping Tern owns.
//!
//! wasmtime asks [`TernMemoryCreator`] for every linear memory. Tern reserves
//! the whole address range (plus wasmtime's guard region) as an inaccessible,
//! unbacked private anonymous mapping and makes the first `size` bytes
//! readable and writable; growing opens more of it. The base never moves.
//!
//! Owning the mapping is what later makes dirty tracking (userfaultfd
//! write-protect), post-copy (missing-page faults), fork (mapping a frozen
//! base privately) and restore-by-mapping possible. It also gives cheap
//! zeroing ([`zero_range`]) on restore, and room *past the end* of a guest's
//! memory for the unwind buffer ([`open_scratch`]): wasmtime elides bounds
//! checks on these 4 GiB reservations, so guest code reaches bytes beyond
//! `memory.size` exactly when Tern has made them accessible, and the guest
//! never sees them in its own memory.
//!
//! One page of the guard past 4 GiB holds the guest's *pause flag*
//! ([`PauseFlag`], at `tern_prepare::PAUSE_FLAG_ADDRESS`): prepared code
//! reads it at every migration point, and any thread can raise it. It is
//! read-only to the guest.
//!
//! This is one of Tern's few `unsafe` modules: every block says why it holds.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Host page size assumed for mapping granularity (checked at creation).
const WASM_PAGE: usize = 65536;

/// One reservation: the mmap'ed range and the guest-visible size. Shared by
/// the [`GuestMapping`] wasmtime owns and every [`MemoryHandle`], and
/// unmapped when the last of them is gone, so a handle never dangles.
#[derive(Debug)]
struct Region {
    base: *mut u8,
    /// Bytes reserved: capacity plus guard.
    mapped: usize,
    /// Guest-visible bytes (grows only).
    size: AtomicUsize,
    /// Serializes writers of the pause flag page (see [`PauseFlag::set`]).
    flag: Mutex<()>,
}

// SAFETY: a Region is an address range and counters; the memory behind it is
// only dereferenced through the documented unsafe paths of this module and by
// wasmtime-compiled code, never through `&Region` itself.
unsafe impl Send for Region {}
// SAFETY: as above; the only shared mutable field is atomic.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        MAPPINGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(self.base as usize));
        // SAFETY: `base`/`mapped` is exactly the mapping made in
        // `GuestMapping::new`; this is the last owner (wasmtime dropped its
        // memory and no handle is left), so nothing can touch it any more.
        let _ = unsafe { mm::munmap(self.base.cast(), self.mapped) };
    }
}

/// Every live guest mapping of this process, by base address. Lets
/// [`open_scratch`] check that a range lies inside a mapping Tern made, and
/// [`handle_for`] find the region of a wasmtime memory.
static MAPPINGS: Mutex<BTreeMap<usize, Weak<Region>>> = Mutex::new(BTreeMap::new());

fn region_at(base: usize) -> Option<Arc<Region>> {
    MAPPINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&base)
        .and_then(Weak::upgrade)
}

/// Creates guest memories for wasmtime.
#[derive(Debug, Default)]
pub struct TernMemoryCreator;

/// One guest linear memory: a reserved range, the first `size` bytes usable.
#[derive(Debug)]
pub struct GuestMapping {
    region: Arc<Region>,
    size: usize,
    capacity: usize,
}

impl GuestMapping {
    fn new(minimum: usize, capacity: usize, guard: usize) -> Result<Self, String> {
        let mapped = capacity
            .checked_add(guard)
            .ok_or_else(|| "guest memory reservation overflows".to_string())?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks
        // cannot alias any existing Rust object.
        let base = unsafe {
            mm::mmap_anonymous(
                ptr::null_mut(),
                mapped,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| format!("reserving {mapped} bytes of guest memory failed: {e}"))?;
        let region = Arc::new(Region {
            base: base.cast(),
            mapped,
            size: AtomicUsize::new(0),
            flag: Mutex::new(()),
        });
        if let Some(at) = flag_page(mapped) {
            // SAFETY: the flag page lies inside the reservation just made
            // (flag_page checked it), in the guard, where nothing points.
            unsafe {
                mm::mprotect(
                    region.base.add(at).cast::<c_void>(),
                    rustix::param::page_size(),
                    MprotectFlags::READ,
                )
            }
            .map_err(|e| format!("mapping the pause flag failed: {e}"))?;
        }
        MAPPINGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(base as usize, Arc::downgrade(&region));
        let mut m = GuestMapping {
            region,
            size: 0,
            capacity,
        };
        m.open_to(minimum).map_err(|e| e.to_string())?;
        Ok(m)
    }

    fn open_to(&mut self, new_size: usize) -> std::io::Result<()> {
        if new_size > self.capacity {
            return Err(std::io::Error::other(format!(
                "guest memory cannot grow to {new_size} bytes (capacity {})",
                self.capacity
            )));
        }
        if new_size > self.size {
            // SAFETY: [base + size, base + new_size) lies inside our own
            // reservation (new_size <= capacity <= mapped), which nothing else
            // references; making it accessible cannot invalidate any reference.
            unsafe {
                mm::mprotect(
                    self.region.base.add(self.size).cast::<c_void>(),
                    new_size - self.size,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            }?;
            self.size = new_size;
            self.region.size.store(new_size, Ordering::Release);
        }
        Ok(())
    }
}

// SAFETY: the base is page aligned (mmap), never moves, sizes are multiples of
// the wasm page, the region past `size` stays inaccessible up to the guard.
unsafe impl LinearMemory for GuestMapping {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        self.open_to(new_size)?;
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.region.base
    }
}

// SAFETY: every memory returned honours the reservation and guard that
// wasmtime asked for (see `GuestMapping::new`), is zero filled (fresh
// anonymous pages) and never relocates.
unsafe impl MemoryCreator for TernMemoryCreator {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if ty.is_64() || ty.is_shared() {
            return Err("Tern guests have one unshared 32-bit memory".into());
        }
        let four_gib = 1usize << 32;
        let capacity = match reserved_size_in_bytes {
            Some(r) => r,
            None => maximum.unwrap_or(four_gib).min(four_gib),
        };
        let capacity = capacity.max(minimum).next_multiple_of(WASM_PAGE);
        Ok(Box::new(GuestMapping::new(
            minimum,
            capacity,
            guard_size_in_bytes,
        )?))
    }
}

/// Gives `[offset, offset + len)` of a guest memory back to the kernel, so it
/// reads as zero again, without a write per byte. `len` and `offset` must be
/// multiples of the host page size for the fast path; other ranges are
/// zeroed by writing.
pub fn zero_range(memory: &mut [u8], offset: usize, len: usize) -> std::io::Result<()> {
    let end = offset
        .checked_add(len)
        .filter(|e| *e <= memory.len())
        .ok_or_else(|| std::io::Error::other("range outside guest memory"))?;
    let page = rustix::param::page_size();
    let start_aligned = offset.next_multiple_of(page).min(end);
    let end_aligned = (end / page * page).max(start_aligned);
    memory[offset..start_aligned].fill(0);
    memory[end_aligned..end].fill(0);
    if end_aligned > start_aligned {
        let region = &mut memory[start_aligned..end_aligned];
        // SAFETY: `region` is a page-aligned range of a private anonymous
        // mapping we exclusively borrow; MADV_DONTNEED makes its pages read as
        // zero, which is a valid value for `u8`, and the borrow ends with this
        // call so no other reference observes the change concurrently.
        unsafe {
            mm::madvise(
                region.as_mut_ptr().cast(),
                region.len(),
                mm::Advice::LinuxDontNeed,
            )
        }?;
    }
    Ok(())
}

/// How many bytes past `size` of the guest mapping at `base` can be opened
/// with [`open_scratch`]: the rest of the reservation, as far as a 32-bit
/// address reaches. `None` if `base` is not a mapping Tern made.
pub(crate) fn scratch_room(base: *const u8, size: usize) -> Option<usize> {
    let reserved = region_at(base as usize)?.mapped;
    let addressable = (1usize << 32).min(reserved);
    Some(addressable.saturating_sub(size))
}

/// Makes `[size, size + len)` of the guest mapping at `base` readable and
/// writable (zero filled, backed on first touch) although it lies past the
/// guest's memory. Fails unless the range is inside a mapping Tern made.
pub(crate) fn open_scratch(base: *mut u8, size: usize, len: usize) -> std::io::Result<()> {
    check_scratch(base, size, len)?;
    // SAFETY: check_scratch proved [base + size, base + size + len) lies in
    // one of our own reservations, past the guest-visible memory, where no
    // Rust reference points; making it accessible invalidates nothing.
    unsafe {
        mm::mprotect(
            base.add(size).cast::<c_void>(),
            len,
            MprotectFlags::READ | MprotectFlags::WRITE,
        )
    }?;
    Ok(())
}

/// Undoes [`open_scratch`]: the range is dropped (reads as zero if opened
/// again) and made inaccessible, so the guard behaves as before.
pub(crate) fn close_scratch(base: *mut u8, size: usize, len: usize) -> std::io::Result<()> {
    check_scratch(base, size, len)?;
    // SAFETY: as in open_scratch the range is ours and past the guest's
    // memory; no reference into it survives this call (callers copy out what
    // they need first), so discarding its pages and protecting it is sound.
    unsafe {
        let p = base.add(size).cast::<c_void>();
        mm::madvise(p, len, mm::Advice::LinuxDontNeed)?;
        mm::mprotect(p, len, MprotectFlags::empty())?;
    }
    Ok(())
}

fn check_scratch(base: *const u8, size: usize, len: usize) -> std::io::Result<()> {
    let page = rustix::param::page_size();
    let room = scratch_room(base, size)
        .ok_or_else(|| std::io::Error::other("not a guest memory mapping"))?;
    if len > room || !size.is_multiple_of(page) || !len.is_multiple_of(page) {
        return Err(std::io::Error::other(format!(
            "scratch range of {len} bytes at {size} does not fit the reservation"
        )));
    }
    Ok(())
}

/// Offset of the pause flag page in a mapping of `mapped` bytes, if the
/// mapping reaches past it (it does with wasmtime's 4 GiB reservation and
/// its guard; see `crate::engine`).
fn flag_page(mapped: usize) -> Option<usize> {
    let at = usize::try_from(tern_prepare::PAUSE_FLAG_ADDRESS).ok()?;
    let page = rustix::param::page_size();
    (at.is_multiple_of(page) && at.checked_add(page)? <= mapped).then_some(at)
}

/// The pause flag of one guest memory: an `i32` past 4 GiB that the
/// migration points of prepared code read (see
/// `tern_prepare::PAUSE_FLAG_INDEX`). `Send + Sync`: any thread may raise
/// it while the guest runs. Keeps the mapping alive.
#[derive(Debug, Clone)]
pub struct PauseFlag {
    region: Arc<Region>,
    at: usize,
}

impl PauseFlag {
    /// Raises (1) or lowers (0) the flag. The page stays readable all
    /// along; it is writable only while this holds the region's lock.
    pub fn set(&self, on: bool) -> std::io::Result<()> {
        let _g = self.region.flag.lock().unwrap_or_else(|e| e.into_inner());
        let page = rustix::param::page_size();
        // SAFETY: [at, at + page) is the flag page inside the reservation
        // (checked by `flag_page`), past anything the guest can grow into;
        // no Rust reference points into it. Adding write access while the
        // guest may read it changes nothing for the guest, and the lock
        // keeps another writer from removing it under us.
        unsafe {
            let p = self.region.base.add(self.at);
            mm::mprotect(
                p.cast::<c_void>(),
                page,
                MprotectFlags::READ | MprotectFlags::WRITE,
            )?;
            // The guest reads this word with plain loads at any moment; an
            // aligned atomic store is what it sees whole, old or new.
            std::sync::atomic::AtomicI32::from_ptr(p.cast::<i32>())
                .store(i32::from(on), Ordering::SeqCst);
            mm::mprotect(p.cast::<c_void>(), page, MprotectFlags::READ)?;
        }
        Ok(())
    }
}

/// The pause flag of the Tern mapping whose base is `base`, if it is one
/// and reaches the flag page.
pub(crate) fn pause_flag(base: *const u8) -> Option<PauseFlag> {
    let region = region_at(base as usize)?;
    let at = flag_page(region.mapped)?;
    Some(PauseFlag { region, at })
}

/// A shared, read-only view of a guest's memory that another thread can use
/// while the guest runs (pre-copy reads pages as the guest writes them).
/// Keeps the mapping alive: it is unmapped only after the guest and every
/// handle are gone.
#[derive(Debug, Clone)]
pub struct MemoryHandle {
    region: Arc<Region>,
}

impl MemoryHandle {
    /// The guest-visible size now, in bytes (it only grows).
    pub fn len(&self) -> usize {
        self.region.size.load(Ordering::Acquire)
    }

    /// True for a memory of no pages.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The base address (for dirty tracking).
    pub fn base(&self) -> *mut u8 {
        self.region.base
    }

    /// Copies `dst.len()` bytes at `offset` out of guest memory. The guest
    /// may be writing them at the same time: the copy is then a mix of old
    /// and new bytes, which dirty tracking makes harmless (the page is sent
    /// again). Fails if the range is past the memory's end.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), std::io::Error> {
        if offset
            .checked_add(dst.len())
            .is_none_or(|end| end > self.len())
        {
            return Err(std::io::Error::other("read past the end of guest memory"));
        }
        // SAFETY: [offset, offset + len) is inside the guest-visible part of
        // a mapping this handle keeps alive; it is readable (opened up to
        // `size`, which never shrinks). The guest may write concurrently:
        // bytes have no invalid values, and a torn copy is re-sent by the
        // dirty-tracking protocol, so the race cannot break an invariant.
        unsafe {
            ptr::copy_nonoverlapping(self.region.base.add(offset), dst.as_mut_ptr(), dst.len());
        }
        Ok(())
    }
}

impl MemoryHandle {
    /// A memory of `len` bytes (a multiple of 64 KiB) that no guest owns,
    /// readable and writable: for probes and tests.
    pub(crate) fn anonymous(len: usize) -> Result<MemoryHandle, std::io::Error> {
        let m = GuestMapping::new(len, len, 0).map_err(std::io::Error::other)?;
        Ok(MemoryHandle {
            region: m.region.clone(),
        })
    }

    /// Gives `[offset, offset + len)` (page aligned) back to the kernel: it
    /// reads as zero, and is populated again on its next touch. For memory
    /// whose guest does not run (post-copy arms it before resuming).
    pub(crate) fn discard(&self, offset: usize, len: usize) -> Result<(), std::io::Error> {
        let page = rustix::param::page_size();
        if !offset.is_multiple_of(page)
            || !len.is_multiple_of(page)
            || offset.checked_add(len).is_none_or(|end| end > self.len())
        {
            return Err(std::io::Error::other(
                "discarded range is not whole pages of guest memory",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        // SAFETY: a page-aligned range inside the guest-visible part of a
        // private anonymous mapping this handle keeps alive. Rust code never
        // holds references into guest memory across this call (it reads
        // through raw copies), and MADV_DONTNEED only makes the pages read
        // as zero, a valid value for bytes.
        unsafe {
            mm::madvise(
                self.region.base.add(offset).cast(),
                len,
                mm::Advice::LinuxDontNeed,
            )
        }?;
        Ok(())
    }

    /// Fills the whole memory with `byte` (tests).
    #[cfg(test)]
    pub(crate) fn fill_for_test(&self, byte: u8) {
        // SAFETY: the guest-visible part of a mapping this handle keeps
        // alive, readable and writable; tests own the memory exclusively.
        unsafe { ptr::write_bytes(self.region.base, byte, self.len()) };
    }
}

/// The handle of the Tern mapping whose base is `base`, if it is one.
pub(crate) fn handle_for(base: *const u8) -> Option<MemoryHandle> {
    region_at(base as usize).map(|region| MemoryHandle { region })
}
