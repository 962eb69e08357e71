//! The saved form of a guest's WASI state: plain data, serde, no host handles.
//! [`WasiCtx::save`](super::WasiCtx::save) produces it and
//! [`WasiCtx::restore`](super::WasiCtx::restore) turns it back into live state.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything needed to rebuild a guest's WASI host state in another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasiState {
    /// Program arguments, `argv[0]` first.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// The directories given to the guest at start (whether or not it has
    /// closed their descriptors since).
    pub preopens: Vec<PreopenState>,
    /// Every open descriptor, in ascending fd order.
    pub fds: Vec<FdState>,
    /// The lowest fd number the next open would use.
    pub next_fd: u32,
    /// Guest clocks at capture.
    pub clock: ClockState,
    /// The guest's exit status once it called `proc_exit`.
    pub exit_status: Option<i32>,
}

/// A directory the guest was started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreopenState {
    /// Its original descriptor number.
    pub fd: u32,
    /// The name the guest sees (`fd_prestat_dir_name`).
    pub guest_path: String,
    /// The host directory.
    pub host_path: PathBuf,
}

/// What a descriptor refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// The host process's stdin.
    Stdin,
    /// The guest's stdout sink.
    Stdout,
    /// The guest's stderr sink.
    Stderr,
    /// A regular file (or other non-directory) opened by path.
    File,
    /// A directory: a preopen or one opened by path.
    Dir,
}

/// Size and modification time of a file when it was saved; a restore refuses
/// a file that no longer matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// One open descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdState {
    /// The guest's descriptor number.
    pub fd: u32,
    /// What it is.
    pub kind: FdKind,
    /// Host root of the preopen this descriptor was opened under (empty for
    /// stdio). Paths are resolved inside it.
    pub root: PathBuf,
    /// Path relative to `root` as the guest spelled it (empty for the root
    /// itself and for stdio): symbolic links and `..` may remain. A restore
    /// resolves it beneath `root` as it resolves any guest path.
    pub rel: PathBuf,
    /// `root` joined with `rel`, for messages only: it is never opened.
    pub host_path: PathBuf,
    /// The guest path, for messages.
    pub guest_path: String,
    /// Set when this descriptor is a preopen: its prestat name.
    pub preopen: Option<String>,
    /// Current WASI file offset.
    pub offset: u64,
    /// WASI `fdflags` (append, nonblock, sync, ...).
    pub fdflags: u16,
    /// Opened for reading.
    pub read: bool,
    /// Opened for writing.
    pub write: bool,
    /// WASI base rights.
    pub rights_base: u64,
    /// WASI inheriting rights.
    pub rights_inheriting: u64,
    /// For files: what the file looked like at capture.
    pub identity: Option<FileIdentity>,
}

/// Guest clocks at capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// Guest monotonic clock, nanoseconds.
    pub monotonic_ns: u64,
    /// Guest CPU-time clock, nanoseconds.
    pub cpu_time_ns: u64,
    /// Host wall clock at capture (informational).
    pub realtime_ns: u64,
}

/// Why a saved WASI state could not be brought back.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A preopened directory is gone or is not a directory.
    #[error("preopened directory {} is missing: {source}", path.display())]
    MissingPreopen {
        /// The host directory.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
    /// A preopen path exists but is not a directory.
    #[error("preopened path {} is not a directory", path.display())]
    PreopenNotDir {
        /// The host path.
        path: PathBuf,
    },
    /// A file or directory an fd referred to could not be reopened.
    #[error("cannot reopen {} (fd {fd}): {source}", path.display())]
    Reopen {
        /// The guest fd.
        fd: u32,
        /// The host path.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
    /// A file changed since it was saved.
    #[error("file {} (fd {fd}) changed since capture: {what}", path.display())]
    Changed {
        /// The guest fd.
        fd: u32,
        /// The host path.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// The saved state contradicts itself.
    #[error("invalid saved WASI state: {0}")]
    Invalid(String),
}
