//! Unwinding a guest out of a host call and rewinding it back in.
//!
//! A prepared module (see `tern-prepare`) can unwind its whole call stack into
//! a buffer in linear memory from `tern.yield` and from the WASI calls that can
//! block, and rewind it later. The buffer needs somewhere to live: Tern borrows
//! the top of linear memory for it and *puts the borrowed bytes back*
//! afterwards, so the guest never sees it:
//!
//! ```text
//! suspend():  save mem[A..top] aside; header at A = {A+8, top}; start_unwind(A)
//! _start returns (state = unwinding):
//!             stack blob = mem[A+8..current]; stop_unwind; put mem[A..top] back
//! rewind:     A' = top - 8 - len(blob); save mem[A'..top] aside;
//!             header + blob at A'; start_rewind(A'); call _start again
//! the same import is re-entered (state = rewinding):
//!             stop_rewind; put mem[A'..top] back; continue the call
//! ```
//!
//! So the image holds the memory exactly as the guest sees it, plus the stack
//! blob as a separate section. Imports that may suspend the guest call
//! [`enter_import`] first and [`suspend`] when a pause is requested while they
//! would otherwise wait or when they are a migration point.

use serde::{Deserialize, Serialize};
use wasmtime::{AsContextMut, Caller, Memory, TypedFunc};

use crate::store::StoreData;
use crate::wasi;

/// Least linear memory borrowed for an unwind, in bytes.
pub const UNWIND_BUFFER_MIN: usize = 256 << 10;
/// Most linear memory borrowed for an unwind, in bytes.
pub const UNWIND_BUFFER_MAX: usize = 64 << 20;
/// Borrowed bytes per byte of native stack the guest's frames use. Asyncify
/// saves a frame's locals and a call index; Cranelift's native frame holds
/// at least the live ones, so 4x leaves a wide margin.
const UNWIND_PER_STACK_BYTE: usize = 4;

/// Asyncify's states, as `asyncify_get_state` reports them.
const STATE_NORMAL: i32 = 0;
const STATE_UNWINDING: i32 = 1;
const STATE_REWINDING: i32 = 2;

/// The host call a guest was suspended in. Saved in the image; when the guest
/// is rewound, the same import is called again and receives this back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PendingCall {
    /// Tern's migration point.
    Yield,
    /// A blocking WASI call, with what it needs to continue.
    Wasi(wasi::Pending),
}

/// How an import was entered.
#[derive(Debug)]
pub enum Entry {
    /// A normal call: do the work.
    Fresh,
    /// The guest is being rewound into this call after a restore: the call was
    /// suspended with this record and must now continue (not start over).
    Rewound(PendingCall),
}

/// The asyncify entry points of a prepared module.
#[derive(Clone)]
pub(crate) struct AsyncifyFns {
    pub(crate) memory: Memory,
    pub(crate) start_unwind: TypedFunc<i32, ()>,
    pub(crate) stop_unwind: TypedFunc<(), ()>,
    pub(crate) start_rewind: TypedFunc<i32, ()>,
    pub(crate) stop_rewind: TypedFunc<(), ()>,
    pub(crate) get_state: TypedFunc<(), i32>,
}

/// Linear memory borrowed for the unwind buffer, with the bytes it held.
#[derive(Debug)]
pub(crate) struct Borrowed {
    pub(crate) addr: usize,
    pub(crate) displaced: Vec<u8>,
}

/// Per-store bookkeeping for unwinding and rewinding.
#[derive(Default)]
pub(crate) struct SuspendState {
    pub(crate) fns: Option<AsyncifyFns>,
    /// The call being unwound out of (set by `suspend`).
    pub(crate) pending: Option<PendingCall>,
    /// Memory borrowed by the unwind in progress.
    pub(crate) unwinding: Option<Borrowed>,
    /// Memory borrowed by the rewind in progress, and the call to resume.
    pub(crate) rewinding: Option<(Borrowed, PendingCall)>,
    /// Approximate native stack address where the guest was entered.
    pub(crate) stack_base: usize,
}

/// An approximation of the current native stack pointer (the address of a
/// local): the difference of two readings is how much stack lies between.
#[inline(never)]
pub(crate) fn stack_marker() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Why unwinding or rewinding failed.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// The module was not prepared by Tern.
    #[error("the guest module is not migratable (not prepared by Tern)")]
    NotPrepared,
    /// Linear memory is too small to hold the unwind buffer.
    #[error("guest memory too small for the unwind buffer")]
    MemoryTooSmall,
    /// Asyncify was in an unexpected state.
    #[error("unexpected asyncify state {0}")]
    BadState(i32),
    /// The unwind buffer header was out of range.
    #[error("asyncify unwind buffer is corrupt")]
    BadBuffer,
}

fn fns(caller: &Caller<'_, StoreData>) -> Option<AsyncifyFns> {
    caller.data().suspend.fns.clone()
}

/// Called first by every import that may suspend the guest.
pub fn enter_import(caller: &mut Caller<'_, StoreData>) -> wasmtime::Result<Entry> {
    let Some(f) = fns(caller) else {
        return Ok(Entry::Fresh);
    };
    if caller.data().suspend.rewinding.is_none() {
        return Ok(Entry::Fresh);
    }
    let state = f.get_state.call(&mut *caller, ())?;
    if state != STATE_REWINDING {
        return Err(SuspendError::BadState(state).into());
    }
    f.stop_rewind.call(&mut *caller, ())?;
    let Some((borrowed, pending)) = caller.data_mut().suspend.rewinding.take() else {
        return Err(SuspendError::BadBuffer.into());
    };
    give_back(&f.memory, &mut *caller, borrowed)?;
    Ok(Entry::Rewound(pending))
}

/// Starts unwinding the guest out of the current import; the import must then
/// return at once (any return value; it is ignored).
pub fn suspend(caller: &mut Caller<'_, StoreData>, pending: PendingCall) -> wasmtime::Result<()> {
    let Some(f) = fns(caller) else {
        return Err(SuspendError::NotPrepared.into());
    };
    // Borrow what the stack can need: a few times the native stack in use.
    let base = caller.data().suspend.stack_base;
    let used = base.saturating_sub(stack_marker());
    let want = used
        .saturating_mul(UNWIND_PER_STACK_BYTE)
        .clamp(UNWIND_BUFFER_MIN, UNWIND_BUFFER_MAX);
    let mem = f.memory.data_mut(&mut *caller);
    let top = mem.len();
    let len = top.min(want) & !7;
    if len < 64 {
        return Err(SuspendError::MemoryTooSmall.into());
    }
    let addr = top - len;
    let displaced = mem[addr..top].to_vec();
    write_header(mem, addr, addr + 8, top)?;
    caller.data_mut().suspend.unwinding = Some(Borrowed { addr, displaced });
    caller.data_mut().suspend.pending = Some(pending);
    f.start_unwind.call(&mut *caller, addr as i32)?;
    Ok(())
}

fn write_header(mem: &mut [u8], addr: usize, current: usize, end: usize) -> wasmtime::Result<()> {
    let cur = u32::try_from(current).map_err(|_| SuspendError::BadBuffer)?;
    let end = u32::try_from(end).map_err(|_| SuspendError::BadBuffer)?;
    let h = mem.get_mut(addr..addr + 8).ok_or(SuspendError::BadBuffer)?;
    h[0..4].copy_from_slice(&cur.to_le_bytes());
    h[4..8].copy_from_slice(&end.to_le_bytes());
    Ok(())
}

fn read_u32(mem: &[u8], at: usize) -> Option<usize> {
    let b = mem.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn give_back(
    memory: &Memory,
    mut store: impl AsContextMut<Data = StoreData>,
    borrowed: Borrowed,
) -> wasmtime::Result<()> {
    let mem = memory.data_mut(&mut store);
    let end = borrowed.addr + borrowed.displaced.len();
    mem.get_mut(borrowed.addr..end)
        .ok_or(SuspendError::BadBuffer)?
        .copy_from_slice(&borrowed.displaced);
    Ok(())
}

/// After the guest's entry point returned: if it was unwinding, finishes the
/// unwind and returns the stack blob and the pending call.
pub(crate) fn finish_unwind(
    mut store: impl AsContextMut<Data = StoreData>,
) -> wasmtime::Result<Option<(Vec<u8>, PendingCall)>> {
    let Some(f) = store.as_context().data().suspend.fns.clone() else {
        return Ok(None);
    };
    let state = f.get_state.call(&mut store, ())?;
    match state {
        STATE_NORMAL => return Ok(None),
        STATE_UNWINDING => {}
        other => return Err(SuspendError::BadState(other).into()),
    }
    let borrowed = store
        .as_context_mut()
        .data_mut()
        .suspend
        .unwinding
        .take()
        .ok_or(SuspendError::BadBuffer)?;
    let mem = f.memory.data(&store);
    let current = read_u32(mem, borrowed.addr).ok_or(SuspendError::BadBuffer)?;
    let start = borrowed.addr + 8;
    if current < start || current > mem.len() {
        return Err(SuspendError::BadBuffer.into());
    }
    let blob = mem[start..current].to_vec();
    f.stop_unwind.call(&mut store, ())?;
    give_back(&f.memory, &mut store, borrowed)?;
    let pending = store
        .as_context_mut()
        .data_mut()
        .suspend
        .pending
        .take()
        .ok_or(SuspendError::BadBuffer)?;
    Ok(Some((blob, pending)))
}

/// Prepares a rewind of `blob` into the call `pending`; the caller then calls
/// the guest's entry point again.
pub(crate) fn start_rewind(
    mut store: impl AsContextMut<Data = StoreData>,
    blob: &[u8],
    pending: PendingCall,
) -> wasmtime::Result<()> {
    let f = store
        .as_context()
        .data()
        .suspend
        .fns
        .clone()
        .ok_or(SuspendError::NotPrepared)?;
    let mem = f.memory.data_mut(&mut store);
    let top = mem.len();
    let need = (blob.len() + 8).next_multiple_of(8);
    if need > top {
        return Err(SuspendError::MemoryTooSmall.into());
    }
    let addr = (top - need) & !7;
    let displaced = mem[addr..top].to_vec();
    let end = addr + 8 + blob.len();
    mem[addr + 8..end].copy_from_slice(blob);
    // Asyncify pops what it pushed: rewinding starts from the end of the data.
    write_header(mem, addr, end, end)?;
    store.as_context_mut().data_mut().suspend.rewinding =
        Some((Borrowed { addr, displaced }, pending));
    f.start_rewind.call(&mut store, addr as i32)?;
    Ok(())
}
