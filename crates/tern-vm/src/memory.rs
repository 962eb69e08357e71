//! Guest linear memory in a mapping Tern owns.
//!
//! wasmtime asks [`TernMemoryCreator`] for every linear memory. Tern reserves
//! the whole address range (plus wasmtime's guard region) as an inaccessible,
//! unbacked private anonymous mapping and makes the first `size` bytes
//! readable and writable; growing opens more of it. The base never moves.
//!
//! Owning the mapping is what later makes dirty tracking (userfaultfd
//! write-protect), post-copy (missing-page faults), fork (mapping a frozen
//! base privately) and restore-by-mapping possible; for now it gives cheap
//! zeroing ([`zero_range`]) on restore.
//!
//! This is one of Tern's few `unsafe` modules: every block says why it holds.

use std::ffi::c_void;
use std::ptr;

use rustix::mm::{self, MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Host page size assumed for mapping granularity (checked at creation).
const WASM_PAGE: usize = 65536;

/// Creates guest memories for wasmtime.
#[derive(Debug, Default)]
pub struct TernMemoryCreator;

/// One guest linear memory: a reserved range, the first `size` bytes usable.
#[derive(Debug)]
pub struct GuestMapping {
    base: *mut u8,
    size: usize,
    capacity: usize,
    mapped: usize,
}

// SAFETY: the mapping is plain memory owned by this value; wasmtime
// serializes all access to a store's memories, and the raw pointer is only
// dereferenced by wasmtime-compiled code and Tern's store-borrowing helpers.
unsafe impl Send for GuestMapping {}
// SAFETY: as above; `&GuestMapping` only exposes sizes and the base address.
unsafe impl Sync for GuestMapping {}

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
        let mut m = GuestMapping {
            base: base.cast(),
            size: 0,
            capacity,
            mapped,
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
                    self.base.add(self.size).cast::<c_void>(),
                    new_size - self.size,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            }?;
            self.size = new_size;
        }
        Ok(())
    }
}

impl Drop for GuestMapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`mapped` is exactly the mapping created in `new`, and
        // wasmtime drops the memory only when no code can touch it any more.
        let _ = unsafe { mm::munmap(self.base.cast(), self.mapped) };
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
        self.base
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
