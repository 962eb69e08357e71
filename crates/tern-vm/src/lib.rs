//! Tern's runtime: runs a prepared WebAssembly module as a *guest* on
//! wasmtime, with linear memory in a mapping Tern owns ([`memory`]), its own
//! WASI preview1 host ([`wasi`]), and pause / capture / restore of the whole
//! execution state ([`suspend`], [`Guest`]).
//!
//! ```no_run
//! use tern_vm::{Guest, Outcome, Runtime};
//! let rt = Runtime::new(None)?;
//! let wasm = std::fs::read("app.wasm")?;
//! let prepared = tern_prepare::prepare(&wasm, &Default::default())?;
//! let wasi = tern_vm::wasi::WasiCtx::new(tern_vm::wasi::WasiConfig::default())?;
//! let mut guest = Guest::boot(&rt, &prepared, wasi)?;
//! let pause = guest.pause_handle();
//! std::thread::spawn(move || { std::thread::sleep(std::time::Duration::from_millis(100)); pause.request() });
//! if guest.run()? == Outcome::Paused {
//!     guest.save_image("app.tern".as_ref())?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod dirty;
mod engine;
mod guest;
pub mod host;
pub mod lazy;
pub mod limits;
pub mod memory;
mod precompiled;
pub mod store;
pub mod suspend;
mod uffd;
pub mod wasi;

pub use engine::{Runtime, GUEST_THREAD_STACK, MAX_WASM_STACK};
pub use guest::{timed, CaptureStats, Captured, Guest, Incoming, Outcome, PauseHandle};

/// Errors from the runtime. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Creating the wasmtime engine failed.
    #[error("starting the runtime failed: {0}")]
    Engine(String),
    /// Compiling the module failed.
    #[error("compiling the module failed: {0}")]
    Compile(String),
    /// Instantiating the module failed.
    #[error("instantiating the module failed: {0}")]
    Instantiate(String),
    /// The module lacks what Tern adds when preparing.
    #[error("the module is not prepared for migration: {0}")]
    NotPrepared(String),
    /// The image cannot be resumed by this build or on this host.
    #[error("the image cannot be resumed here: {0}")]
    Incompatible(String),
    /// The image's host state could not be read.
    #[error(transparent)]
    HostState(crate::host::HostStateError),
    /// Reopening the guest's files failed.
    #[error(transparent)]
    Restore(crate::wasi::RestoreError),
    /// Setting up guest memory failed.
    #[error("setting up guest memory failed: {0}")]
    Memory(String),
    /// The guest trapped.
    #[error("the guest trapped: {0}")]
    Trap(String),
    /// Unwinding the guest's stack failed.
    #[error("unwinding the guest failed: {0}")]
    Unwind(String),
    /// Rewinding the guest's stack failed.
    #[error("rewinding the guest failed: {0}")]
    Rewind(String),
    /// The guest would exceed one of its limits ([`limits::Limits`]).
    #[error("{0}")]
    Limit(String),
    /// Capturing the paused guest failed.
    #[error("capturing the guest failed: {0}")]
    Capture(String),
}
