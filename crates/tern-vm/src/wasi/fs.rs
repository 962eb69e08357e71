//! Files, directories and sandboxed path calls.
//!
//! Every path call resolves the guest path beneath the directory descriptor
//! it is relative to (see [`beneath`](super::beneath)): the kernel, through
//! `openat2(RESOLVE_BENEATH)`, or a walk that holds a descriptor for every
//! step, judges each component when it meets it, so a directory swapped for
//! a symbolic link by another process cannot lead the call outside. Calls
//! that act on a name (`mkdirat`, `unlinkat`, `renameat`, `symlinkat`,
//! `linkat`, `readlinkat`, `utimensat`) get the directory holding the last
//! component as a descriptor and the component itself; calls that follow
//! the path to its end open it beneath the directory and act on the result.
//! No host path string is ever built from a guest path.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, UTIME_NOW, UTIME_OMIT};
use rustix::time::Timespec;

use super::beneath::{self, Entry, Strategy};
use super::ctx::{FdEntry, Handle, WasiCtx};
use super::errno::Errno;
use super::types::*;

/// The WASI error for a failed resolution: leaving the directory is
/// `ENOTCAPABLE`, anything else keeps its host meaning.
fn resolve_errno(e: rustix::io::Errno) -> Errno {
    if e == rustix::io::Errno::XDEV {
        Errno::Notcapable
    } else {
        e.into()
    }
}

/// Checks what the host cannot: a NUL byte is `EILSEQ` and an absolute path
/// `ENOTCAPABLE` (the guest never holds `/`).
fn check_path(path: &[u8]) -> Result<(), Errno> {
    if path.is_empty() {
        return Err(Errno::Noent);
    }
    if path.contains(&0) {
        return Err(Errno::Ilseq);
    }
    if path[0] == b'/' {
        return Err(Errno::Notcapable);
    }
    Ok(())
}

/// Opens `path` beneath `dir`: see [`beneath::open_beneath`].
pub(crate) fn open_at(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    check_path(path)?;
    beneath::open_beneath(dir, path, flags, mode, Strategy::Auto).map_err(resolve_errno)
}

/// The directory holding the last component of `path` beneath `dir`, and
/// that component: see [`beneath::entry_beneath`].
fn entry_at<'a>(dir: BorrowedFd<'a>, path: &[u8]) -> Result<Entry<'a>, Errno> {
    check_path(path)?;
    beneath::entry_beneath(dir, path, Strategy::Auto).map_err(resolve_errno)
}

/// Opens what `path` leads to for inspection only (`O_PATH`), following a
/// final symbolic link when `follow` is set (or the path ends in `/`).
fn open_path_at(dir: BorrowedFd<'_>, path: &[u8], follow: bool) -> Result<File, Errno> {
    let mut flags = OFlags::PATH;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    Ok(File::from(open_at(dir, path, flags, Mode::empty())?))
}

/// The saved description of a descriptor opened as `path` from a directory
/// saved as `base`: `base` and `path` joined, with empty and `.` components
/// dropped. `..` and symbolic links are kept as the guest wrote them: a
/// restore resolves the result beneath the preopen again, which leads to
/// the same place as long as the tree is unchanged.
pub(crate) fn rel_join(base: &Path, path: &[u8]) -> PathBuf {
    let mut rel = base.to_path_buf();
    for c in path.split(|&b| b == b'/') {
        if !c.is_empty() && c != b"." {
            rel.push(OsStr::from_bytes(c));
        }
    }
    rel
}

fn filetype_of_raw(ft: FileType) -> u8 {
    match ft {
        FileType::Directory => FILETYPE_DIRECTORY,
        FileType::RegularFile => FILETYPE_REGULAR_FILE,
        FileType::Symlink => FILETYPE_SYMBOLIC_LINK,
        FileType::BlockDevice => FILETYPE_BLOCK_DEVICE,
        FileType::CharacterDevice => FILETYPE_CHARACTER_DEVICE,
        FileType::Socket => FILETYPE_SOCKET_STREAM,
        _ => FILETYPE_UNKNOWN,
    }
}

fn read_full_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while !buf.is_empty() {
        match f.read_at(buf, offset) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Builds host timestamps from WASI `fstflags`.
fn timestamps(atim: u64, mtim: u64, flags: u16) -> Result<Timestamps, Errno> {
    let all = FSTFLAGS_ATIM | FSTFLAGS_ATIM_NOW | FSTFLAGS_MTIM | FSTFLAGS_MTIM_NOW;
    if flags & !all != 0 {
        return Err(Errno::Inval);
    }
    let one = |set: u16, now: u16, v: u64| -> Result<Timespec, Errno> {
        match (flags & set != 0, flags & now != 0) {
            (true, true) => Err(Errno::Inval),
            (_, true) => Ok(Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_NOW,
            }),
            (true, false) => Ok(Timespec {
                tv_sec: (v / 1_000_000_000) as i64,
                tv_nsec: (v % 1_000_000_000) as _,
            }),
            (false, false) => Ok(Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            }),
        }
    };
    Ok(Timestamps {
        last_access: one(FSTFLAGS_ATIM, FSTFLAGS_ATIM_NOW, atim)?,
        last_modification: one(FSTFLAGS_MTIM, FSTFLAGS_MTIM_NOW, mtim)?,
    })
}

fn guest_join(base: &str, path: &[u8]) -> String {
    let p = String::from_utf8_lossy(path);
    if base.is_empty() {
        p.into_owned()
    } else if base.ends_with('/') {
        format!("{base}{p}")
    } else {
        format!("{base}/{p}")
    }
}

impl WasiCtx {
    fn dir(&self, fd: u32) -> Result<&FdEntry, Errno> {
        let e = self.entry(fd)?;
        if !e.is_dir() {
            return Err(Errno::Notdir);
        }
        Ok(e)
    }

    /// The open directory behind descriptor `fd`, which paths are resolved
    /// beneath.
    fn dir_fd(&self, fd: u32) -> Result<BorrowedFd<'_>, Errno> {
        match &self.dir(fd)?.handle {
            Handle::Dir(d) => Ok(d.as_fd()),
            _ => Err(Errno::Notdir),
        }
    }

    // ----- reading and writing ------------------------------------------------

    pub(crate) fn fd_read(
        &mut self,
        mem: &mut Mem<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        out: u32,
    ) -> Result<(), Errno> {
        let e = self.entry_mut(fd)?;
        let f = match &e.handle {
            Handle::File(f) => f,
            Handle::Dir(_) => return Err(Errno::Isdir),
            _ => return Err(Errno::Badf),
        };
        e.need(RIGHT_FD_READ)?;
        if !e.read {
            return Err(Errno::Badf);
        }
        let iovs = mem.iovecs(iovs, n)?;
        let mut total = 0usize;
        for (buf, len) in iovs {
            let dst = mem.slice_mut(buf, len)?;
            let got = read_full_at(f, dst, e.offset)?;
            e.offset += got as u64;
            total += got;
            if got < len as usize {
                break;
            }
        }
        mem.write_u32(out, total as u32)
    }

    pub(crate) fn fd_pread(
        &mut self,
        mem: &mut Mem<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        offset: u64,
        out: u32,
    ) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        let f = match &e.handle {
            Handle::File(f) => f,
            Handle::Dir(_) => return Err(Errno::Isdir),
            _ => return Err(Errno::Spipe),
        };
        e.need(RIGHT_FD_READ)?;
        if !e.read {
            return Err(Errno::Badf);
        }
        let iovs = mem.iovecs(iovs, n)?;
        let mut total = 0usize;
        let mut off = offset;
        for (buf, len) in iovs {
            let dst = mem.slice_mut(buf, len)?;
            let got = read_full_at(f, dst, off)?;
            off += got as u64;
            total += got;
            if got < len as usize {
                break;
            }
        }
        mem.write_u32(out, total as u32)
    }

    pub(crate) fn fd_write(
        &mut self,
        mem: &mut Mem<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        out: u32,
    ) -> Result<(), Errno> {
        let data = mem.gather(iovs, n)?;
        let e = self.entry_mut(fd)?;
        let written = match &e.handle {
            Handle::Stdout(_) | Handle::Stderr(_) => {
                e.need(RIGHT_FD_WRITE)?;
                None
            }
            Handle::File(f) => {
                e.need(RIGHT_FD_WRITE)?;
                if !e.write {
                    return Err(Errno::Badf);
                }
                let off = if e.fdflags & FDFLAGS_APPEND != 0 {
                    f.metadata()?.len()
                } else {
                    e.offset
                };
                f.write_all_at(&data, off)?;
                e.offset = off + data.len() as u64;
                Some(data.len())
            }
            Handle::Dir(_) => return Err(Errno::Isdir),
            Handle::Stdin => return Err(Errno::Badf),
        };
        let written = match written {
            Some(n) => n,
            None => self.write_output(fd, &data)?,
        };
        mem.write_u32(out, written as u32)
    }

    pub(crate) fn fd_pwrite(
        &mut self,
        mem: &mut Mem<'_>,
        fd: u32,
        iovs: u32,
        n: u32,
        offset: u64,
        out: u32,
    ) -> Result<(), Errno> {
        let data = mem.gather(iovs, n)?;
        let e = self.entry(fd)?;
        let f = match &e.handle {
            Handle::File(f) => f,
            Handle::Dir(_) => return Err(Errno::Isdir),
            _ => return Err(Errno::Spipe),
        };
        e.need(RIGHT_FD_WRITE)?;
        if !e.write {
            return Err(Errno::Badf);
        }
        f.write_all_at(&data, offset)?;
        mem.write_u32(out, data.len() as u32)
    }

    pub(crate) fn fd_seek(
        &mut self,
        mem: &mut Mem<'_>,
        fd: u32,
        delta: i64,
        whence: u8,
        out: u32,
    ) -> Result<(), Errno> {
        let e = self.entry_mut(fd)?;
        let f = match &e.handle {
            Handle::File(f) => f,
            Handle::Dir(_) => return Err(Errno::Isdir),
            _ => return Err(Errno::Spipe),
        };
        let base: i128 = match whence {
            WHENCE_SET => 0,
            WHENCE_CUR => i128::from(e.offset),
            WHENCE_END => i128::from(f.metadata()?.len()),
            _ => return Err(Errno::Inval),
        };
        let new = base + i128::from(delta);
        if new < 0 || new > i128::from(i64::MAX) {
            return Err(Errno::Inval);
        }
        e.offset = new as u64;
        mem.write_u64(out, e.offset)
    }

    pub(crate) fn fd_tell(&self, mem: &mut Mem<'_>, fd: u32, out: u32) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        match &e.handle {
            Handle::File(_) => mem.write_u64(out, e.offset),
            Handle::Dir(_) => Err(Errno::Isdir),
            _ => Err(Errno::Spipe),
        }
    }

    // ----- descriptor attributes ------------------------------------------------

    pub(crate) fn fd_filestat_get(
        &self,
        mem: &mut Mem<'_>,
        fd: u32,
        out: u32,
    ) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        let st = match &e.handle {
            Handle::File(f) | Handle::Dir(f) => Filestat::from_metadata(&f.metadata()?),
            _ => Filestat {
                filetype: FILETYPE_CHARACTER_DEVICE,
                ..Filestat::default()
            },
        };
        st.write(mem, out)
    }

    pub(crate) fn fd_filestat_set_size(&mut self, fd: u32, size: u64) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        match &e.handle {
            Handle::File(f) => {
                if !e.write {
                    return Err(Errno::Badf);
                }
                f.set_len(size)?;
                Ok(())
            }
            Handle::Dir(_) => Err(Errno::Isdir),
            _ => Err(Errno::Inval),
        }
    }

    pub(crate) fn fd_filestat_set_times(
        &mut self,
        fd: u32,
        atim: u64,
        mtim: u64,
        flags: u16,
    ) -> Result<(), Errno> {
        let ts = timestamps(atim, mtim, flags)?;
        let e = self.entry(fd)?;
        match &e.handle {
            Handle::File(f) | Handle::Dir(f) => {
                rustix::fs::futimens(f, &ts)?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn fd_advise(&self, fd: u32, _off: u64, _len: u64, advice: u8) -> Result<(), Errno> {
        if advice > 5 {
            return Err(Errno::Inval);
        }
        let e = self.entry(fd)?;
        match &e.handle {
            Handle::File(_) => Ok(()),
            Handle::Dir(_) => Err(Errno::Isdir),
            _ => Err(Errno::Spipe),
        }
    }

    pub(crate) fn fd_allocate(&mut self, fd: u32, off: u64, len: u64) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        let f = match &e.handle {
            Handle::File(f) => f,
            Handle::Dir(_) => return Err(Errno::Isdir),
            _ => return Err(Errno::Badf),
        };
        if !e.write {
            return Err(Errno::Badf);
        }
        let end = off.checked_add(len).ok_or(Errno::Inval)?;
        if end > i64::MAX as u64 {
            return Err(Errno::Fbig);
        }
        if end > f.metadata()?.len() {
            f.set_len(end)?;
        }
        Ok(())
    }

    pub(crate) fn fd_sync(&mut self, fd: u32, data_only: bool) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        match &e.handle {
            Handle::File(f) | Handle::Dir(f) => {
                if data_only {
                    f.sync_data()?;
                } else {
                    f.sync_all()?;
                }
            }
            Handle::Stdin => return Err(Errno::Inval),
            // Output is written through on every fd_write.
            Handle::Stdout(_) | Handle::Stderr(_) => {}
        }
        Ok(())
    }

    pub(crate) fn fd_readdir(
        &self,
        mem: &mut Mem<'_>,
        fd: u32,
        buf: u32,
        len: u32,
        cookie: u64,
        out: u32,
    ) -> Result<(), Errno> {
        let e = self.entry(fd)?;
        let dir = match &e.handle {
            Handle::Dir(d) => d,
            _ => return Err(Errno::Notdir),
        };
        let self_ino = dir.metadata()?.ino();
        let parent_ino = rustix::fs::statat(dir, c"..", AtFlags::empty())
            .map(|st| st.st_ino)
            .unwrap_or(self_ino);
        let mut names: Vec<(Vec<u8>, u64, u8)> = Vec::new();
        for ent in rustix::fs::Dir::read_from(dir)? {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let ty = match ent.file_type() {
                FileType::Unknown => rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| filetype_of_raw(FileType::from_raw_mode(st.st_mode)))
                    .unwrap_or(FILETYPE_UNKNOWN),
                ft => filetype_of_raw(ft),
            };
            names.push((name.to_vec(), ent.ino(), ty));
        }
        // Sorted by name: cookies are indices into this listing, which makes
        // them stable without any saved state (also across a restore).
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let all = [
            (b".".to_vec(), self_ino, FILETYPE_DIRECTORY),
            (b"..".to_vec(), parent_ino, FILETYPE_DIRECTORY),
        ]
        .into_iter()
        .chain(names);
        let cap = len as usize;
        let mut bytes = Vec::new();
        let start = usize::try_from(cookie).unwrap_or(usize::MAX);
        for (i, (name, ino, ty)) in all.enumerate().skip(start) {
            if bytes.len() >= cap {
                break;
            }
            let mut h = [0u8; 24];
            h[0..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            h[8..16].copy_from_slice(&ino.to_le_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
            h[20] = ty;
            bytes.extend_from_slice(&h);
            bytes.extend_from_slice(&name);
        }
        bytes.truncate(cap);
        mem.write_bytes(buf, &bytes)?;
        mem.write_u32(out, bytes.len() as u32)
    }

    // ----- paths ------------------------------------------------------------------

    #[allow(clippy::too_many_arguments, reason = "mirrors the WASI signature")]
    pub(crate) fn path_open(
        &mut self,
        fd: u32,
        dirflags: u32,
        path: &[u8],
        oflags: u16,
        base: u64,
        inheriting: u64,
        fdflags: u16,
    ) -> Result<u32, Errno> {
        let follow = dirflags & LOOKUPFLAGS_SYMLINK_FOLLOW != 0;
        let d = self.dir(fd)?;
        if oflags & OFLAGS_TRUNC != 0 {
            d.need(RIGHT_PATH_FILESTAT_SET_SIZE)?;
        }
        if fdflags & !FDFLAGS_ALL != 0 {
            return Err(Errno::Inval);
        }
        // Directories may carry FD_DATASYNC, so it does not imply writing.
        let write = base & (RIGHT_FD_WRITE | RIGHT_FD_ALLOCATE | RIGHT_FD_FILESTAT_SET_SIZE) != 0;
        let read = base & (RIGHT_FD_READ | RIGHT_FD_READDIR) != 0 || !write;
        let mut fl = match (read, write) {
            (true, true) => OFlags::RDWR,
            (false, true) => OFlags::WRONLY,
            _ => OFlags::RDONLY,
        };
        if !follow {
            fl |= OFlags::NOFOLLOW;
        }
        if oflags & OFLAGS_CREAT != 0 {
            fl |= OFlags::CREATE;
        }
        if oflags & OFLAGS_EXCL != 0 {
            fl |= OFlags::EXCL;
        }
        if oflags & OFLAGS_TRUNC != 0 {
            fl |= OFlags::TRUNC;
        }
        if oflags & OFLAGS_DIRECTORY != 0 {
            fl |= OFlags::DIRECTORY;
        }
        if fdflags & FDFLAGS_NONBLOCK != 0 {
            fl |= OFlags::NONBLOCK;
        }
        if fdflags & FDFLAGS_DSYNC != 0 {
            fl |= OFlags::DSYNC;
        }
        if fdflags & FDFLAGS_SYNC != 0 {
            fl |= OFlags::SYNC;
        }
        if fdflags & FDFLAGS_RSYNC != 0 {
            fl |= OFlags::RSYNC;
        }
        let dir = self.dir_fd(fd)?;
        let file = File::from(open_at(dir, path, fl, Mode::from_raw_mode(0o666))?);
        let is_dir = file.metadata()?.is_dir();
        let parent_inh = d.inheriting;
        let guest_path = guest_join(&d.guest_path, path);
        let root = d.root.clone();
        let rel = rel_join(&d.rel, path);
        let (handle, mask) = if is_dir {
            (Handle::Dir(file), RIGHTS_DIR)
        } else {
            (Handle::File(file), RIGHTS_FILE)
        };
        let entry = FdEntry {
            handle,
            root,
            rel,
            guest_path,
            preopen: None,
            offset: 0,
            fdflags,
            read,
            write,
            base: base & mask & parent_inh,
            inheriting: inheriting & parent_inh,
        };
        self.insert(entry)
    }

    pub(crate) fn path_create_directory(&mut self, fd: u32, path: &[u8]) -> Result<(), Errno> {
        let e = entry_at(self.dir_fd(fd)?, path)?;
        rustix::fs::mkdirat(e.dir(), e.at_name(), Mode::from_raw_mode(0o777))?;
        Ok(())
    }

    pub(crate) fn path_remove_directory(&mut self, fd: u32, path: &[u8]) -> Result<(), Errno> {
        let e = entry_at(self.dir_fd(fd)?, path)?;
        rustix::fs::unlinkat(e.dir(), e.at_name(), AtFlags::REMOVEDIR)?;
        Ok(())
    }

    pub(crate) fn path_unlink_file(&mut self, fd: u32, path: &[u8]) -> Result<(), Errno> {
        let e = entry_at(self.dir_fd(fd)?, path)?;
        rustix::fs::unlinkat(e.dir(), e.at_name(), AtFlags::empty())?;
        Ok(())
    }

    pub(crate) fn path_rename(
        &mut self,
        fd: u32,
        old: &[u8],
        new_fd: u32,
        new: &[u8],
    ) -> Result<(), Errno> {
        let a = entry_at(self.dir_fd(fd)?, old)?;
        let b = entry_at(self.dir_fd(new_fd)?, new)?;
        rustix::fs::renameat(a.dir(), a.at_name(), b.dir(), b.at_name())?;
        Ok(())
    }

    pub(crate) fn path_symlink(&mut self, target: &[u8], fd: u32, new: &[u8]) -> Result<(), Errno> {
        if target.contains(&0) {
            return Err(Errno::Ilseq);
        }
        // Absolute targets could never be followed inside the sandbox.
        if target.first() == Some(&b'/') {
            return Err(Errno::Notcapable);
        }
        let e = entry_at(self.dir_fd(fd)?, new)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), e.dir(), e.at_name())?;
        Ok(())
    }

    pub(crate) fn path_readlink(
        &self,
        mem: &mut Mem<'_>,
        fd: u32,
        path: &[u8],
        buf: u32,
        len: u32,
        out: u32,
    ) -> Result<(), Errno> {
        let dir = self.dir_fd(fd)?;
        let e = entry_at(dir, path)?;
        if e.trailing() {
            // The host would follow a final link to the directory the `/`
            // asks for, and that is not a link: only its errors remain.
            open_path_at(dir, path, true)?;
            return Err(Errno::Inval);
        }
        let target = rustix::fs::readlinkat(e.dir(), e.name(), Vec::new())?.into_bytes();
        let n = target.len().min(len as usize);
        mem.write_bytes(buf, &target[..n])?;
        mem.write_u32(out, n as u32)
    }

    pub(crate) fn path_link(
        &mut self,
        old_fd: u32,
        old_flags: u32,
        old: &[u8],
        new_fd: u32,
        new: &[u8],
    ) -> Result<(), Errno> {
        if old_flags & LOOKUPFLAGS_SYMLINK_FOLLOW != 0 {
            return Err(Errno::Inval);
        }
        let old_dir = self.dir_fd(old_fd)?;
        let a = entry_at(old_dir, old)?;
        let b = entry_at(self.dir_fd(new_fd)?, new)?;
        if a.trailing() {
            // The host would follow a final link to a directory, and
            // directories cannot be hard-linked.
            open_path_at(old_dir, old, true)?;
            return Err(Errno::Perm);
        }
        rustix::fs::linkat(a.dir(), a.name(), b.dir(), b.at_name(), AtFlags::empty())?;
        Ok(())
    }

    pub(crate) fn path_filestat_get(
        &self,
        mem: &mut Mem<'_>,
        fd: u32,
        flags: u32,
        path: &[u8],
        out: u32,
    ) -> Result<(), Errno> {
        let follow = flags & LOOKUPFLAGS_SYMLINK_FOLLOW != 0;
        let f = open_path_at(self.dir_fd(fd)?, path, follow)?;
        Filestat::from_metadata(&f.metadata()?).write(mem, out)
    }

    #[allow(clippy::too_many_arguments, reason = "mirrors the WASI signature")]
    pub(crate) fn path_filestat_set_times(
        &mut self,
        fd: u32,
        flags: u32,
        path: &[u8],
        atim: u64,
        mtim: u64,
        fst: u16,
    ) -> Result<(), Errno> {
        let ts = timestamps(atim, mtim, fst)?;
        let follow = flags & LOOKUPFLAGS_SYMLINK_FOLLOW != 0;
        let dir = self.dir_fd(fd)?;
        if !follow {
            let e = entry_at(dir, path)?;
            if !e.trailing() {
                rustix::fs::utimensat(e.dir(), e.name(), &ts, AtFlags::SYMLINK_NOFOLLOW)?;
                return Ok(());
            }
        }
        // Followed to the end (also by a trailing `/`): act on what the
        // path leads to, never on a name the host would follow again.
        let f = open_path_at(dir, path, true)?;
        rustix::fs::utimensat(&f, c"", &ts, AtFlags::EMPTY_PATH)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stays_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("../d/f", root.join("d/up")).unwrap();
        std::os::unix::fs::symlink("../../etc", root.join("d/out")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let dir = File::open(root).unwrap();
        let fd = dir.as_fd();
        let ino = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().ino();
        let got = |path: &[u8], follow| {
            open_path_at(fd, path, follow).map(|f| f.metadata().unwrap().ino())
        };

        assert_eq!(got(b"d/./up", true), Ok(ino("d/f")));
        assert_eq!(got(b"d/../d//f", false), Ok(ino("d/f")));
        assert_eq!(got(b"..", false), Err(Errno::Notcapable));
        assert_eq!(got(b"d/../..", false), Err(Errno::Notcapable));
        assert_eq!(got(b"/etc", false), Err(Errno::Notcapable));
        assert_eq!(got(b"d/out/passwd", false), Err(Errno::Notcapable));
        assert_eq!(got(b"abs", true), Err(Errno::Notcapable));
        // Not following the final link gives the link itself.
        assert_eq!(got(b"abs", false), Ok(ino("abs")));
        assert_eq!(got(b"loop", true), Err(Errno::Loop));
        assert_eq!(got(b"d/f/x", false), Err(Errno::Notdir));
        assert_eq!(got(b"d\0f", false), Err(Errno::Ilseq));
        assert_eq!(got(b"", false), Err(Errno::Noent));
        // A trailing slash makes the host follow: an escape is refused even
        // for calls that do not follow.
        assert_eq!(entry_at(fd, b"abs/").unwrap_err(), Errno::Notcapable);
        let e = entry_at(fd, b"d/up").unwrap();
        assert_eq!(e.name(), b"up");
        assert_eq!(
            rustix::fs::statat(e.dir(), e.name(), AtFlags::empty())
                .unwrap()
                .st_ino,
            ino("d/f")
        );
    }

    #[test]
    fn saved_paths_keep_the_guest_spelling() {
        assert_eq!(rel_join(Path::new(""), b"d/./x//f/"), Path::new("d/x/f"));
        assert_eq!(rel_join(Path::new("a"), b"l/../f"), Path::new("a/l/../f"));
        assert_eq!(rel_join(Path::new("a"), b"."), Path::new("a"));
    }
}
