//! Tern's own WASI preview1 host.
//!
//! wasmtime-wasi keeps its state in host objects that cannot be serialised,
//! so Tern implements `wasi_snapshot_preview1` itself, split Firecracker
//! style into live and saved state:
//!
//! - [`WasiCtx`] is the live state: open host files, output sinks, clocks.
//! - [`WasiState`] is plain serde data: arguments, environment, preopens and
//!   every descriptor with its path below its preopen, offset, flags, rights
//!   and a file identity check. [`WasiCtx::save`] and [`WasiCtx::restore`] convert.
//!
//! [`add_to_linker`] defines all preview1 imports. File offsets are kept in
//! the descriptor table (reads and writes are positional), so they are always
//! known for saving. Blocking calls (`poll_oneoff`, `fd_read` on stdin) wait
//! in short slices and suspend the guest when a pause is requested, recording
//! a [`Pending`] to continue from. See `docs/wasi.md`.

#[doc(hidden)]
pub mod beneath;
mod clock;
mod ctx;
mod errno;
mod fs;
mod linker;
mod poll;
mod state;
mod types;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use ctx::{OutputSink, WasiConfig, WasiCtx, WasiError};
pub use errno::Errno;
pub use linker::add_to_linker;
pub use state::{ClockState, FdKind, FdState, FileIdentity, PreopenState, RestoreError, WasiState};

/// What a blocking WASI call needs to continue after a restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Pending {
    /// `poll_oneoff` was waiting. One entry per subscription, in order: the
    /// absolute deadline on the guest monotonic clock (nanoseconds) of a clock
    /// subscription, `None` for descriptor subscriptions.
    PollOneoff {
        /// Per-subscription deadlines.
        deadlines: Vec<Option<u64>>,
    },
    /// `fd_read` was waiting for input on this descriptor (the host's stdin).
    FdRead {
        /// The guest descriptor.
        fd: u32,
    },
}

/// The error a guest's `proc_exit` call ends execution with; the runtime
/// downcasts the trap error to it to obtain the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExit(pub i32);

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest exited with status {}", self.0)
    }
}

impl std::error::Error for GuestExit {}

#[cfg(test)]
mod tests;
