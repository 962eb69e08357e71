//! Live WASI state: the descriptor table with open host files, output sinks,
//! clocks; plus capture to and restore from [`WasiState`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::beneath::{open_beneath, Strategy};
use super::clock::Clocks;
use super::errno::Errno;
use super::state::{FdKind, FdState, FileIdentity, PreopenState, RestoreError, WasiState};
use super::types::*;

/// Where guest output goes.
#[derive(Default)]
pub enum OutputSink {
    /// The host process's own stdout (for fd 1) or stderr (for fd 2).
    #[default]
    Inherit,
    /// Any writer, e.g. a log file or an in-memory buffer.
    Writer(Box<dyn Write + Send>),
}

impl fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputSink::Inherit => f.write_str("Inherit"),
            OutputSink::Writer(_) => f.write_str("Writer(..)"),
        }
    }
}

/// How to start a guest's WASI host.
#[derive(Debug, Default)]
pub struct WasiConfig {
    /// Program arguments, `argv[0]` first.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Host directories given to the guest, with the name it sees them by
    /// (e.g. `/` or `.`); they become fds 3, 4, ...
    pub preopens: Vec<(PathBuf, String)>,
    /// Guest stdout.
    pub stdout: OutputSink,
    /// Guest stderr.
    pub stderr: OutputSink,
}

/// Why a WASI host could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WasiError {
    /// A preopen could not be opened.
    #[error("cannot open preopened directory {}: {source}", path.display())]
    Preopen {
        /// The host path.
        path: PathBuf,
        /// The host error.
        source: io::Error,
    },
    /// A preopen is not a directory.
    #[error("preopen {} is not a directory", path.display())]
    NotDir {
        /// The host path.
        path: PathBuf,
    },
    /// An argument or environment entry holds a NUL byte.
    #[error("argument or environment entry contains a NUL byte: {0:?}")]
    Nul(String),
}

/// The host object behind a descriptor.
pub(crate) enum Handle {
    Stdin,
    Stdout(OutputSink),
    Stderr(OutputSink),
    File(File),
    Dir(File),
}

/// One open descriptor.
pub(crate) struct FdEntry {
    pub(crate) handle: Handle,
    /// Host root of the sandbox this entry lives in: the preopen's host path.
    pub(crate) root: PathBuf,
    /// Path below `root` as the guest spelled it (see `fs::rel_join`); only
    /// ever resolved beneath `root`, never used as a host path.
    pub(crate) rel: PathBuf,
    pub(crate) guest_path: String,
    pub(crate) preopen: Option<String>,
    pub(crate) offset: u64,
    pub(crate) fdflags: u16,
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) base: u64,
    pub(crate) inheriting: u64,
}

impl FdEntry {
    /// `root` joined with `rel`, for messages only: paths are resolved
    /// beneath the directory descriptor, never through this.
    pub(crate) fn host_path(&self) -> PathBuf {
        if self.rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(&self.rel)
        }
    }

    fn kind(&self) -> FdKind {
        match self.handle {
            Handle::Stdin => FdKind::Stdin,
            Handle::Stdout(_) => FdKind::Stdout,
            Handle::Stderr(_) => FdKind::Stderr,
            Handle::File(_) => FdKind::File,
            Handle::Dir(_) => FdKind::Dir,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.handle, Handle::Dir(_))
    }

    /// Fails with `ENOTCAPABLE` unless the descriptor holds `rights`.
    pub(crate) fn need(&self, rights: u64) -> Result<(), Errno> {
        if self.base & rights == rights {
            Ok(())
        } else {
            Err(Errno::Notcapable)
        }
    }

    fn stdio(handle: Handle, base: u64) -> FdEntry {
        FdEntry {
            handle,
            root: PathBuf::new(),
            rel: PathBuf::new(),
            guest_path: String::new(),
            preopen: None,
            offset: 0,
            fdflags: 0,
            read: false,
            write: false,
            base,
            inheriting: 0,
        }
    }

    fn preopen_dir(dir: File, host: &Path, guest: &str) -> FdEntry {
        FdEntry {
            handle: Handle::Dir(dir),
            root: host.to_path_buf(),
            rel: PathBuf::new(),
            guest_path: guest.to_string(),
            preopen: Some(guest.to_string()),
            offset: 0,
            fdflags: 0,
            read: true,
            write: false,
            base: RIGHTS_DIR,
            inheriting: RIGHTS_DIR_INHERITING,
        }
    }
}

/// Live WASI preview1 state of one guest.
pub struct WasiCtx {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) preopens: Vec<PreopenState>,
    pub(crate) fds: BTreeMap<u32, FdEntry>,
    pub(crate) clocks: Clocks,
    pub(crate) exit_status: Option<i32>,
    /// Most descriptors the table may hold ([`crate::limits::Limits::max_fds`]).
    pub(crate) max_fds: u32,
    /// An open was refused for `max_fds`.
    pub(crate) fds_refused: bool,
}

impl fmt::Debug for WasiCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasiCtx")
            .field("args", &self.args)
            .field("fds", &self.fds.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Opens a directory for use as a descriptor.
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

fn check_nul(s: &str) -> Result<(), WasiError> {
    if s.contains('\0') {
        Err(WasiError::Nul(s.to_string()))
    } else {
        Ok(())
    }
}

impl WasiCtx {
    /// Sets up a fresh WASI host: stdio on fds 0-2, preopens from fd 3.
    pub fn new(config: WasiConfig) -> Result<WasiCtx, WasiError> {
        for a in &config.args {
            check_nul(a)?;
        }
        for (k, v) in &config.env {
            check_nul(k)?;
            check_nul(v)?;
        }
        let mut fds = BTreeMap::new();
        fds.insert(0, FdEntry::stdio(Handle::Stdin, RIGHTS_STDIN));
        fds.insert(
            1,
            FdEntry::stdio(Handle::Stdout(config.stdout), RIGHTS_STDOUT),
        );
        fds.insert(
            2,
            FdEntry::stdio(Handle::Stderr(config.stderr), RIGHTS_STDOUT),
        );
        let mut preopens = Vec::new();
        for (i, (host, guest)) in config.preopens.iter().enumerate() {
            let fd = 3 + i as u32;
            let dir = open_dir(host).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOTDIR) {
                    WasiError::NotDir { path: host.clone() }
                } else {
                    WasiError::Preopen {
                        path: host.clone(),
                        source: e,
                    }
                }
            })?;
            fds.insert(fd, FdEntry::preopen_dir(dir, host, guest));
            preopens.push(PreopenState {
                fd,
                guest_path: guest.clone(),
                host_path: host.clone(),
            });
        }
        Ok(WasiCtx {
            args: config.args,
            env: config.env,
            preopens,
            fds,
            clocks: Clocks::new(),
            exit_status: None,
            max_fds: crate::limits::DEFAULT_MAX_FDS,
            fds_refused: false,
        })
    }

    /// The status the guest passed to `proc_exit`, once it has.
    pub fn exit_status(&self) -> Option<i32> {
        self.exit_status
    }

    /// Caps the descriptor table at `n` entries (stdio and preopens count):
    /// opening past it fails with `EMFILE`. Descriptors already open stay.
    pub fn set_max_fds(&mut self, n: u32) {
        self.max_fds = n;
    }

    /// True once an open was refused for the descriptor limit.
    pub fn fds_refused(&self) -> bool {
        self.fds_refused
    }

    /// Flushes guest stdout and stderr sinks.
    pub fn flush(&mut self) -> io::Result<()> {
        for e in self.fds.values_mut() {
            match &mut e.handle {
                Handle::Stdout(s) => flush_sink(s, false)?,
                Handle::Stderr(s) => flush_sink(s, true)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Captures the state. Guest output needs no flush here: every `fd_write`
    /// to stdout/stderr is written through and flushed before it returns.
    pub fn save(&self) -> WasiState {
        let fds = self
            .fds
            .iter()
            .map(|(&fd, e)| {
                let identity = match &e.handle {
                    Handle::File(f) => f.metadata().ok().map(|m| FileIdentity {
                        size: m.size(),
                        mtime_ns: mtime_ns(&m),
                    }),
                    _ => None,
                };
                FdState {
                    fd,
                    kind: e.kind(),
                    root: e.root.clone(),
                    rel: e.rel.clone(),
                    host_path: if e.root.as_os_str().is_empty() {
                        PathBuf::new()
                    } else {
                        e.host_path()
                    },
                    guest_path: e.guest_path.clone(),
                    preopen: e.preopen.clone(),
                    offset: e.offset,
                    fdflags: e.fdflags,
                    read: e.read,
                    write: e.write,
                    rights_base: e.base,
                    rights_inheriting: e.inheriting,
                    identity,
                }
            })
            .collect();
        WasiState {
            args: self.args.clone(),
            env: self.env.clone(),
            preopens: self.preopens.clone(),
            fds,
            next_fd: self.lowest_free_fd(),
            clock: self.clocks.save(),
            exit_status: self.exit_status,
        }
    }

    /// Rebuilds live state from a capture: reopens every file and directory
    /// by its path resolved beneath its preopen (checking a file is
    /// unchanged) and continues the clocks. Either everything
    /// is reopened or an error naming the first offending path is returned.
    pub fn restore(
        state: &WasiState,
        stdout: OutputSink,
        stderr: OutputSink,
    ) -> Result<WasiCtx, RestoreError> {
        for p in &state.preopens {
            match std::fs::metadata(&p.host_path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(RestoreError::PreopenNotDir {
                        path: p.host_path.clone(),
                    })
                }
                Err(source) => {
                    return Err(RestoreError::MissingPreopen {
                        path: p.host_path.clone(),
                        source,
                    })
                }
            }
        }
        let mut stdout = Some(stdout);
        let mut stderr = Some(stderr);
        let mut fds = BTreeMap::new();
        let mut roots = BTreeMap::new();
        for s in &state.fds {
            let handle = match s.kind {
                FdKind::Stdin => Handle::Stdin,
                FdKind::Stdout => Handle::Stdout(
                    stdout
                        .take()
                        .ok_or_else(|| RestoreError::Invalid("stdout appears twice".into()))?,
                ),
                FdKind::Stderr => Handle::Stderr(
                    stderr
                        .take()
                        .ok_or_else(|| RestoreError::Invalid("stderr appears twice".into()))?,
                ),
                FdKind::Dir => {
                    Handle::Dir(reopen(s, &mut roots, OFlags::RDONLY | OFlags::DIRECTORY)?)
                }
                FdKind::File => Handle::File(reopen_file(s, &mut roots)?),
            };
            if fds.contains_key(&s.fd) {
                return Err(RestoreError::Invalid(format!("fd {} appears twice", s.fd)));
            }
            fds.insert(
                s.fd,
                FdEntry {
                    handle,
                    root: s.root.clone(),
                    rel: s.rel.clone(),
                    guest_path: s.guest_path.clone(),
                    preopen: s.preopen.clone(),
                    offset: s.offset,
                    fdflags: s.fdflags,
                    read: s.read,
                    write: s.write,
                    base: s.rights_base,
                    inheriting: s.rights_inheriting,
                },
            );
        }
        Ok(WasiCtx {
            args: state.args.clone(),
            env: state.env.clone(),
            preopens: state.preopens.clone(),
            fds,
            clocks: Clocks::resume(&state.clock),
            exit_status: state.exit_status,
            max_fds: crate::limits::DEFAULT_MAX_FDS,
            fds_refused: false,
        })
    }

    pub(crate) fn lowest_free_fd(&self) -> u32 {
        let mut want = 0u32;
        for &fd in self.fds.keys() {
            if fd != want {
                break;
            }
            want += 1;
        }
        want
    }

    /// Installs an entry at the lowest free descriptor number; `EMFILE`
    /// once the table holds `max_fds` entries.
    pub(crate) fn insert(&mut self, entry: FdEntry) -> Result<u32, Errno> {
        if self.fds.len() >= self.max_fds as usize {
            self.fds_refused = true;
            return Err(Errno::Mfile);
        }
        let fd = self.lowest_free_fd();
        if fd == u32::MAX {
            return Err(Errno::Mfile);
        }
        self.fds.insert(fd, entry);
        Ok(fd)
    }

    pub(crate) fn entry(&self, fd: u32) -> Result<&FdEntry, Errno> {
        self.fds.get(&fd).ok_or(Errno::Badf)
    }

    pub(crate) fn entry_mut(&mut self, fd: u32) -> Result<&mut FdEntry, Errno> {
        self.fds.get_mut(&fd).ok_or(Errno::Badf)
    }

    // ----- args / environ -------------------------------------------------

    fn write_strings<'s>(
        mem: &mut Mem<'_>,
        items: impl Iterator<Item = Vec<u8>> + 's,
        ptrs: u32,
        buf: u32,
    ) -> Result<(), Errno> {
        let mut p = ptrs;
        let mut b = buf;
        for mut item in items {
            item.push(0);
            mem.write_u32(p, b)?;
            mem.write_bytes(b, &item)?;
            p = p.checked_add(4).ok_or(Errno::Fault)?;
            b = b
                .checked_add(u32::try_from(item.len()).map_err(|_| Errno::Fault)?)
                .ok_or(Errno::Fault)?;
        }
        Ok(())
    }

    fn sizes(items: impl Iterator<Item = usize>) -> (u32, u32) {
        let mut n = 0u32;
        let mut total = 0u32;
        for len in items {
            n += 1;
            total = total.saturating_add(len as u32 + 1);
        }
        (n, total)
    }

    fn env_strings(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.env
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
    }

    pub(crate) fn args_get(&self, mem: &mut Mem<'_>, argv: u32, buf: u32) -> Result<(), Errno> {
        Self::write_strings(
            mem,
            self.args.iter().map(|a| a.as_bytes().to_vec()),
            argv,
            buf,
        )
    }

    pub(crate) fn args_sizes_get(&self, mem: &mut Mem<'_>, n: u32, size: u32) -> Result<(), Errno> {
        let (c, s) = Self::sizes(self.args.iter().map(String::len));
        mem.write_u32(n, c)?;
        mem.write_u32(size, s)
    }

    pub(crate) fn environ_get(&self, mem: &mut Mem<'_>, envp: u32, buf: u32) -> Result<(), Errno> {
        Self::write_strings(mem, self.env_strings(), envp, buf)
    }

    pub(crate) fn environ_sizes_get(
        &self,
        mem: &mut Mem<'_>,
        n: u32,
        size: u32,
    ) -> Result<(), Errno> {
        let (c, s) = Self::sizes(self.env.iter().map(|(k, v)| k.len() + v.len() + 1));
        mem.write_u32(n, c)?;
        mem.write_u32(size, s)
    }

    // ----- clocks, random -------------------------------------------------

    pub(crate) fn clock_res_get(&self, mem: &mut Mem<'_>, id: u32, out: u32) -> Result<(), Errno> {
        let r = self.clocks.res_get(id)?;
        mem.write_u64(out, r)
    }

    pub(crate) fn clock_time_get(&self, mem: &mut Mem<'_>, id: u32, out: u32) -> Result<(), Errno> {
        let t = self.clocks.time_get(id)?;
        mem.write_u64(out, t)
    }

    pub(crate) fn random_get(&self, mem: &mut Mem<'_>, buf: u32, len: u32) -> Result<(), Errno> {
        use std::io::Read;
        let dst = mem.slice_mut(buf, len)?;
        if dst.is_empty() {
            return Ok(());
        }
        let mut f = File::open("/dev/urandom")?;
        f.read_exact(dst)?;
        Ok(())
    }

    // ----- descriptor table -----------------------------------------------

    pub(crate) fn fd_close(&mut self, fd: u32) -> Result<(), Errno> {
        let mut e = self.fds.remove(&fd).ok_or(Errno::Badf)?;
        match &mut e.handle {
            Handle::Stdout(s) => {
                let _ = flush_sink(s, false);
            }
            Handle::Stderr(s) => {
                let _ = flush_sink(s, true);
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn fd_renumber(&mut self, from: u32, to: u32) -> Result<(), Errno> {
        if !self.fds.contains_key(&from) || !self.fds.contains_key(&to) {
            return Err(Errno::Badf);
        }
        if from == to {
            return Ok(());
        }
        let e = self.fds.remove(&from).ok_or(Errno::Badf)?;
        self.fds.insert(to, e);
        Ok(())
    }

    pub(crate) fn fd_fdstat_get(&self, mem: &mut Mem<'_>, fd: u32, out: u32) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        let filetype = match &e.handle {
            Handle::Stdin => stdio_filetype(0),
            Handle::Stdout(OutputSink::Inherit) => stdio_filetype(1),
            Handle::Stderr(OutputSink::Inherit) => stdio_filetype(2),
            Handle::Stdout(_) | Handle::Stderr(_) => FILETYPE_UNKNOWN,
            Handle::Dir(_) => FILETYPE_DIRECTORY,
            Handle::File(f) => f
                .metadata()
                .map(|m| filetype_of(&m.file_type()))
                .unwrap_or(FILETYPE_UNKNOWN),
        };
        let mut b = [0u8; 24];
        b[0] = filetype;
        b[2..4].copy_from_slice(&e.fdflags.to_le_bytes());
        b[8..16].copy_from_slice(&e.base.to_le_bytes());
        b[16..24].copy_from_slice(&e.inheriting.to_le_bytes());
        mem.write_bytes(out, &b)
    }

    pub(crate) fn fd_fdstat_set_flags(&mut self, fd: u32, flags: u16) -> Result<(), Errno> {
        let e = self.entry_mut(fd)?;
        if flags & !FDFLAGS_ALL != 0 {
            return Err(Errno::Inval);
        }
        e.fdflags = flags;
        Ok(())
    }

    pub(crate) fn fd_fdstat_set_rights(
        &mut self,
        fd: u32,
        base: u64,
        inheriting: u64,
    ) -> Result<(), Errno> {
        let e = self.entry_mut(fd)?;
        if base & !e.base != 0 || inheriting & !e.inheriting != 0 {
            return Err(Errno::Notcapable);
        }
        e.base = base;
        e.inheriting = inheriting;
        Ok(())
    }

    pub(crate) fn fd_prestat_get(&self, mem: &mut Mem<'_>, fd: u32, out: u32) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        let name = e.preopen.as_ref().ok_or(Errno::Badf)?;
        mem.write_u32(out, 0)?;
        mem.write_u32(out + 4, name.len() as u32)
    }

    pub(crate) fn fd_prestat_dir_name(
        &self,
        mem: &mut Mem<'_>,
        fd: u32,
        buf: u32,
        len: u32,
    ) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        let name = e.preopen.as_ref().ok_or(Errno::Badf)?;
        if (len as usize) < name.len() {
            return Err(Errno::Nametoolong);
        }
        mem.write_bytes(buf, name.as_bytes())
    }

    /// Writes to stdout or stderr.
    pub(crate) fn write_output(&mut self, fd: u32, data: &[u8]) -> Result<usize, Errno> {
        let e = self.entry_mut(fd)?;
        let (sink, is_err) = match &mut e.handle {
            Handle::Stdout(s) => (s, false),
            Handle::Stderr(s) => (s, true),
            _ => return Err(Errno::Badf),
        };
        match sink {
            OutputSink::Inherit if is_err => {
                let mut h = io::stderr().lock();
                h.write_all(data)?;
                h.flush()?;
            }
            OutputSink::Inherit => {
                let mut h = io::stdout().lock();
                h.write_all(data)?;
                h.flush()?;
            }
            OutputSink::Writer(w) => {
                w.write_all(data)?;
                w.flush()?;
            }
        }
        Ok(data.len())
    }
}

fn flush_sink(s: &mut OutputSink, is_err: bool) -> io::Result<()> {
    match s {
        OutputSink::Inherit if is_err => io::stderr().flush(),
        OutputSink::Inherit => io::stdout().flush(),
        OutputSink::Writer(w) => w.flush(),
    }
}

fn stdio_filetype(fd: i32) -> u8 {
    use std::io::IsTerminal;
    let tty = match fd {
        0 => io::stdin().is_terminal(),
        1 => io::stdout().is_terminal(),
        _ => io::stderr().is_terminal(),
    };
    if tty {
        FILETYPE_CHARACTER_DEVICE
    } else {
        FILETYPE_UNKNOWN
    }
}

pub(crate) fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// Opens `s.rel` beneath its preopen `s.root` (opened once per root), as
/// any guest path is: the saved form is a guest-relative description and
/// is never trusted as a host path.
fn reopen(
    s: &FdState,
    roots: &mut BTreeMap<PathBuf, File>,
    flags: OFlags,
) -> Result<File, RestoreError> {
    let err = |source: io::Error| RestoreError::Reopen {
        fd: s.fd,
        path: s.host_path.clone(),
        source,
    };
    if s.root.as_os_str().is_empty() {
        return Err(RestoreError::Invalid(format!(
            "fd {} has no preopened directory",
            s.fd
        )));
    }
    let root = match roots.entry(s.root.clone()) {
        std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::btree_map::Entry::Vacant(v) => v.insert(open_dir(&s.root).map_err(err)?),
    };
    let rel = match s.rel.as_os_str().as_bytes() {
        b"" => b".",
        rel => rel,
    };
    let fd = open_beneath(root.as_fd(), rel, flags, Mode::empty(), Strategy::Auto).map_err(
        |e| match e {
            rustix::io::Errno::XDEV => err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the path leads outside its preopened directory",
            )),
            e => err(e.into()),
        },
    )?;
    Ok(File::from(fd))
}

fn reopen_file(s: &FdState, roots: &mut BTreeMap<PathBuf, File>) -> Result<File, RestoreError> {
    let flags = match (s.read, s.write) {
        (_, false) => OFlags::RDONLY,
        (false, true) => OFlags::WRONLY,
        (true, true) => OFlags::RDWR,
    };
    let file = reopen(s, roots, flags)?;
    if let Some(id) = s.identity {
        let m = file.metadata().map_err(|source| RestoreError::Reopen {
            fd: s.fd,
            path: s.host_path.clone(),
            source,
        })?;
        if m.size() != id.size {
            return Err(RestoreError::Changed {
                fd: s.fd,
                path: s.host_path.clone(),
                what: format!("size {} (was {})", m.size(), id.size),
            });
        }
        if mtime_ns(&m) != id.mtime_ns {
            return Err(RestoreError::Changed {
                fd: s.fd,
                path: s.host_path.clone(),
                what: "modification time differs".into(),
            });
        }
    }
    Ok(file)
}
