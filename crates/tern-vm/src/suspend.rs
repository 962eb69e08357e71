//! Unwinding a guest out of a host call and rewinding it back in.
//!
//! A prepared module (see `tern-prepare`) can unwind its whole call stack into
//! a buffer in linear memory from `tern.yield` and from the WASI calls that can
//! block, and rewind it later. The buffer lives *past the end* of the guest's
//! memory: Tern opens scratch pages of its own mapping there
//! ([`crate::memory::open_scratch`]), which guest code can address because
//! wasmtime elides bounds checks on Tern's 4 GiB reservations, while
//! `memory.size` and every guest-visible byte stay as they were:
//!
//! ```text
//! suspend():  top = memory size; open [top, top+N); header at top = {top+8, top+N};
//!             start_unwind(top)
//! _start returns (state = unwinding):
//!             stack blob = mem[top+8..current]; stop_unwind; close the scratch
//! rewind:     open [top, top+N); header + blob at top; start_rewind(top);
//!             call _start again
//! the same import is re-entered (state = rewinding):
//!             stop_rewind; close the scratch; continue the call
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

/// Scratch opened past the guest's memory for an unwind or rewind, in bytes.
/// Only the pages the unwinding code touches are ever backed, so this costs nothing
/// until used; 64 MiB holds far more frames than wasmtime's stack limit
/// ([`crate::MAX_WASM_STACK`]) lets a guest have.
pub const UNWIND_BUFFER: usize = 64 << 20;
/// Least scratch worth unwinding into.
const UNWIND_BUFFER_MIN: usize = 1 << 20;

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

/// Scratch opened past the end of guest memory: `[addr, addr + len)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scratch {
    pub(crate) addr: usize,
    pub(crate) len: usize,
}

/// Per-store bookkeeping for unwinding and rewinding.
#[derive(Default)]
pub(crate) struct SuspendState {
    pub(crate) fns: Option<AsyncifyFns>,
    /// The call being unwound out of (set by `suspend`).
    pub(crate) pending: Option<PendingCall>,
    /// Scratch used by the unwind in progress.
    pub(crate) unwinding: Option<Scratch>,
    /// Scratch used by the rewind in progress, and the call to resume.
    pub(crate) rewinding: Option<(Scratch, PendingCall)>,
    /// The rewind in progress is by continuation copies (`tern-unwind`):
    /// the module's state stays normal throughout.
    pub(crate) by_copies: bool,
}

/// Why unwinding or rewinding failed.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// The module was not prepared by Tern.
    #[error("the guest module is not migratable (not prepared by Tern)")]
    NotPrepared,
    /// No room past the guest's memory for the unwind buffer.
    #[error("no room past guest memory for the unwind buffer: {0}")]
    NoRoom(String),
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
    if caller.data().suspend.by_copies {
        if state != STATE_NORMAL {
            return Err(SuspendError::BadState(state).into());
        }
        caller.data_mut().suspend.by_copies = false;
    } else {
        if state != STATE_REWINDING {
            return Err(SuspendError::BadState(state).into());
        }
        f.stop_rewind.call(&mut *caller, ())?;
    }
    let Some((scratch, pending)) = caller.data_mut().suspend.rewinding.take() else {
        return Err(SuspendError::BadBuffer.into());
    };
    close(&f.memory, &mut *caller, scratch)?;
    Ok(Entry::Rewound(pending))
}

/// Starts unwinding the guest out of the current import; the import must then
/// return at once (any return value; it is ignored).
pub fn suspend(caller: &mut Caller<'_, StoreData>, pending: PendingCall) -> wasmtime::Result<()> {
    let Some(f) = fns(caller) else {
        return Err(SuspendError::NotPrepared.into());
    };
    let scratch = open(&f.memory, &mut *caller)?;
    let mem = scratch_slice(&f.memory, caller, scratch);
    write_header(mem, 0, scratch.addr + 8, scratch.addr + scratch.len)?;
    caller.data_mut().suspend.unwinding = Some(scratch);
    caller.data_mut().suspend.pending = Some(pending);
    f.start_unwind
        .call(&mut *caller, scratch.addr as u32 as i32)?;
    Ok(())
}

/// Opens scratch past the end of guest memory.
fn open(memory: &Memory, store: impl AsContextMut<Data = StoreData>) -> wasmtime::Result<Scratch> {
    let base = memory.data_ptr(&store);
    let addr = memory.data_size(&store);
    let room = crate::memory::scratch_room(base, addr)
        .ok_or_else(|| SuspendError::NoRoom("guest memory is not Tern's mapping".into()))?;
    let len = room.min(UNWIND_BUFFER);
    if len < UNWIND_BUFFER_MIN {
        return Err(
            SuspendError::NoRoom(format!("memory ends {} bytes before 4 GiB", room)).into(),
        );
    }
    crate::memory::open_scratch(base, addr, len)
        .map_err(|e| SuspendError::NoRoom(e.to_string()))?;
    Ok(Scratch { addr, len })
}

/// Closes scratch opened by [`open`].
fn close(
    memory: &Memory,
    store: impl AsContextMut<Data = StoreData>,
    scratch: Scratch,
) -> wasmtime::Result<()> {
    let base = memory.data_ptr(&store);
    crate::memory::close_scratch(base, scratch.addr, scratch.len)
        .map_err(|e| SuspendError::NoRoom(e.to_string()))?;
    Ok(())
}

/// The bytes of open scratch, as a slice.
fn scratch_slice<'a, S: AsContextMut<Data = StoreData>>(
    memory: &Memory,
    store: &'a mut S,
    scratch: Scratch,
) -> &'a mut [u8] {
    let base = memory.data_ptr(&*store);
    // SAFETY: `open` made [addr, addr + len) of this memory's mapping readable
    // and writable, it stays open until `close`, and nothing else references
    // it: the guest is inside a host call or returned, so no guest code runs
    // while this borrow (tied to the exclusive borrow of the store) lives.
    unsafe { std::slice::from_raw_parts_mut(base.add(scratch.addr), scratch.len) }
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
    let scratch = store
        .as_context_mut()
        .data_mut()
        .suspend
        .unwinding
        .take()
        .ok_or(SuspendError::BadBuffer)?;
    let mem = scratch_slice(&f.memory, &mut store, scratch);
    let current = read_u32(mem, 0).ok_or(SuspendError::BadBuffer)?;
    let start = scratch.addr + 8;
    if current < start || current > scratch.addr + scratch.len {
        return Err(SuspendError::BadBuffer.into());
    }
    let blob = mem[8..current - scratch.addr].to_vec();
    f.stop_unwind.call(&mut store, ())?;
    close(&f.memory, &mut store, scratch)?;
    let pending = store
        .as_context_mut()
        .data_mut()
        .suspend
        .pending
        .take()
        .ok_or(SuspendError::BadBuffer)?;
    Ok(Some((blob, pending)))
}

/// Prepares a rewind of `blob` into the call `pending` by continuation
/// copies: opens the buffer and puts the frames in it, without changing the
/// module's state. Returns the buffer's address, for the continuation's
/// entry point.
pub(crate) fn open_for_copies(
    mut store: impl AsContextMut<Data = StoreData>,
    blob: &[u8],
    pending: PendingCall,
) -> wasmtime::Result<i32> {
    let scratch = fill_buffer(&mut store, blob)?;
    let mut cx = store.as_context_mut();
    let data = cx.data_mut();
    data.suspend.rewinding = Some((scratch, pending));
    data.suspend.by_copies = true;
    Ok(scratch.addr as u32 as i32)
}

/// The entry points of the store's prepared module.
fn prepared_fns(store: &impl AsContextMut<Data = StoreData>) -> wasmtime::Result<AsyncifyFns> {
    Ok(store
        .as_context()
        .data()
        .suspend
        .fns
        .clone()
        .ok_or(SuspendError::NotPrepared)?)
}

/// Opens scratch and writes `blob` and a header whose current pointer is
/// at its end (frames are popped in reverse of their pushing: rewinding
/// starts from the end of the data, with every transform).
fn fill_buffer(
    mut store: impl AsContextMut<Data = StoreData>,
    blob: &[u8],
) -> wasmtime::Result<Scratch> {
    let f = prepared_fns(&store)?;
    let scratch = open(&f.memory, &mut store)?;
    if blob.len() + 8 > scratch.len {
        close(&f.memory, &mut store, scratch)?;
        return Err(SuspendError::NoRoom(format!("the stack is {} bytes", blob.len())).into());
    }
    let mem = scratch_slice(&f.memory, &mut store, scratch);
    mem[8..8 + blob.len()].copy_from_slice(blob);
    let end = scratch.addr + 8 + blob.len();
    write_header(mem, 0, end, end)?;
    Ok(scratch)
}

/// Prepares a rewind of `blob` into the call `pending`; the caller then calls
/// the guest's entry point again.
pub(crate) fn start_rewind(
    mut store: impl AsContextMut<Data = StoreData>,
    blob: &[u8],
    pending: PendingCall,
) -> wasmtime::Result<()> {
    let f = prepared_fns(&store)?;
    let scratch = fill_buffer(&mut store, blob)?;
    store.as_context_mut().data_mut().suspend.rewinding = Some((scratch, pending));
    f.start_rewind
        .call(&mut store, scratch.addr as u32 as i32)?;
    Ok(())
}
