//! Files, directories and sandboxed path resolution.
//!
//! Guest paths are resolved by hand, one component at a time, beneath the
//! directory descriptor they are relative to (that directory is the sandbox
//! boundary, as with `openat2(RESOLVE_BENEATH)`). Every intermediate
//! component is checked with `lstat`; symbolic links are expanded here (never
//! by the host kernel), `..` may not climb above the root, and absolute paths
//! or absolute link targets are refused with `ENOTCAPABLE`. The host call then
//! gets a path whose only possibly-symbolic component is the last one, and is
//! told not to follow it unless the guest asked to (in which case it has
//! already been expanded here).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps, UTIME_NOW, UTIME_OMIT};
use rustix::time::Timespec;

use super::ctx::{FdEntry, Handle, WasiCtx};
use super::errno::Errno;
use super::types::*;

/// Most symbolic links followed while resolving one path.
const MAX_SYMLINKS: usize = 40;

/// A guest path resolved inside its sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// What to hand to the host call. Ends in `/` when the guest path had a
    /// trailing slash and in `/.` when its last component was `.` or `..`, so
    /// the host applies the matching POSIX rules.
    pub(crate) host: PathBuf,
    /// Normalised location below the root.
    pub(crate) rel: PathBuf,
}

fn join(root: &Path, stack: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in stack {
        p.push(c);
    }
    p
}

fn split(path: &[u8]) -> VecDeque<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Resolves `path` relative to `base` (a directory below `root`, which `..`
/// and symbolic links may not leave), following a final symbolic link only
/// when `follow` is set.
pub(crate) fn resolve(
    root: &Path,
    base: &Path,
    path: &[u8],
    follow: bool,
) -> Result<Resolved, Errno> {
    if path.is_empty() {
        return Err(Errno::Noent);
    }
    if path.contains(&0) {
        return Err(Errno::Ilseq);
    }
    if path[0] == b'/' {
        return Err(Errno::Notcapable);
    }
    let mut stack: Vec<OsString> = base
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut pending = split(path);
    let mut trailing = path.ends_with(b"/");
    let mut final_dot = false;
    let mut links = 0usize;
    while let Some(c) = pending.pop_front() {
        let last = pending.is_empty();
        if c == b"." || c == b".." {
            if c == b".." && stack.pop().is_none() {
                return Err(Errno::Notcapable);
            }
            final_dot = last;
            continue;
        }
        final_dot = false;
        let name = OsString::from_vec(c);
        if last && !follow && !trailing {
            stack.push(name);
            continue;
        }
        let mut here = join(root, &stack);
        here.push(&name);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&here)?.into_os_string().into_vec();
                if last && !follow {
                    // Trailing slash without following: the host will follow
                    // this link itself, so make sure it stays in the sandbox.
                    let mut t = target.clone();
                    t.push(b'/');
                    match resolve(root, &join(Path::new(""), &stack), &t, true) {
                        Err(Errno::Notcapable) => return Err(Errno::Notcapable),
                        Err(Errno::Loop) => return Err(Errno::Loop),
                        _ => {}
                    }
                    stack.push(name);
                    continue;
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Errno::Loop);
                }
                if target.is_empty() {
                    return Err(Errno::Noent);
                }
                if target[0] == b'/' {
                    return Err(Errno::Notcapable);
                }
                if last && target.ends_with(b"/") {
                    trailing = true;
                }
                for part in split(&target).into_iter().rev() {
                    pending.push_front(part);
                }
                if pending.is_empty() {
                    // A link to "." or similar: refers to the current dir.
                    final_dot = last;
                }
            }
            Ok(m) => {
                if !last && !m.is_dir() {
                    return Err(Errno::Notdir);
                }
                stack.push(name);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !last {
                    return Err(Errno::Noent);
                }
                stack.push(name);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let rel = join(Path::new(""), &stack);
    let mut host = join(root, &stack).into_os_string();
    if final_dot {
        host.push("/.");
    } else if trailing {
        host.push("/");
    }
    Ok(Resolved {
        host: PathBuf::from(host),
        rel,
    })
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

    fn resolve_at(&self, fd: u32, path: &[u8], follow: bool) -> Result<Resolved, Errno> {
        let d = self.dir(fd)?;
        resolve(&d.host_path(), Path::new(""), path, follow)
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
        let host = e.host_path();
        let self_ino = dir.metadata()?.ino();
        let parent_ino = std::fs::metadata(host.join(".."))
            .map(|m| m.ino())
            .unwrap_or(self_ino);
        let mut names: Vec<(Vec<u8>, u64, u8)> = Vec::new();
        for ent in std::fs::read_dir(&host)? {
            let ent = ent?;
            let ty = ent
                .file_type()
                .map(|t| filetype_of(&t))
                .unwrap_or(FILETYPE_UNKNOWN);
            names.push((ent.file_name().into_vec(), ent.ino(), ty));
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
        let r = resolve(&d.host_path(), Path::new(""), path, follow)?;
        let rel = if r.rel.as_os_str().is_empty() {
            d.rel.clone()
        } else {
            d.rel.join(&r.rel)
        };
        // Directories may carry FD_DATASYNC, so it does not imply writing.
        let write = base & (RIGHT_FD_WRITE | RIGHT_FD_ALLOCATE | RIGHT_FD_FILESTAT_SET_SIZE) != 0;
        let read = base & (RIGHT_FD_READ | RIGHT_FD_READDIR) != 0 || !write;
        let mut fl = OFlags::CLOEXEC | OFlags::NOFOLLOW;
        fl |= match (read, write) {
            (true, true) => OFlags::RDWR,
            (false, true) => OFlags::WRONLY,
            _ => OFlags::RDONLY,
        };
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
        let owned = rustix::fs::open(&r.host, fl, Mode::from_raw_mode(0o666))?;
        let file = File::from(owned);
        let is_dir = file.metadata()?.is_dir();
        let parent_inh = d.inheriting;
        let guest_path = guest_join(&d.guest_path, path);
        let root = d.root.clone();
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
        let r = self.resolve_at(fd, path, false)?;
        std::fs::create_dir(&r.host)?;
        Ok(())
    }

    pub(crate) fn path_remove_directory(&mut self, fd: u32, path: &[u8]) -> Result<(), Errno> {
        let r = self.resolve_at(fd, path, false)?;
        std::fs::remove_dir(&r.host)?;
        Ok(())
    }

    pub(crate) fn path_unlink_file(&mut self, fd: u32, path: &[u8]) -> Result<(), Errno> {
        let r = self.resolve_at(fd, path, false)?;
        std::fs::remove_file(&r.host)?;
        Ok(())
    }

    pub(crate) fn path_rename(
        &mut self,
        fd: u32,
        old: &[u8],
        new_fd: u32,
        new: &[u8],
    ) -> Result<(), Errno> {
        let a = self.resolve_at(fd, old, false)?;
        let b = self.resolve_at(new_fd, new, false)?;
        std::fs::rename(&a.host, &b.host)?;
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
        let r = self.resolve_at(fd, new, false)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &r.host)?;
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
        let r = self.resolve_at(fd, path, false)?;
        let target = std::fs::read_link(&r.host)?.into_os_string().into_vec();
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
        let a = self.resolve_at(old_fd, old, false)?;
        let b = self.resolve_at(new_fd, new, false)?;
        std::fs::hard_link(&a.host, &b.host)?;
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
        let r = self.resolve_at(fd, path, follow)?;
        let m = if follow {
            std::fs::metadata(&r.host)?
        } else {
            std::fs::symlink_metadata(&r.host)?
        };
        Filestat::from_metadata(&m).write(mem, out)
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
        let r = self.resolve_at(fd, path, follow)?;
        let at = if follow {
            AtFlags::empty()
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        rustix::fs::utimensat(rustix::fs::CWD, &r.host, &ts, at)?;
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

        let r = resolve(root, Path::new(""), b"d/./up", true).unwrap();
        assert_eq!(r.rel, Path::new("d/f"));
        let r = resolve(root, Path::new("d"), b"../d//f", false).unwrap();
        assert_eq!(r.host, root.join("d/f"));
        assert_eq!(
            resolve(root, Path::new(""), b"..", false).unwrap_err(),
            Errno::Notcapable
        );
        assert_eq!(
            resolve(root, Path::new(""), b"/etc", false).unwrap_err(),
            Errno::Notcapable
        );
        assert_eq!(
            resolve(root, Path::new(""), b"d/out/passwd", false).unwrap_err(),
            Errno::Notcapable
        );
        assert_eq!(
            resolve(root, Path::new(""), b"abs", true).unwrap_err(),
            Errno::Notcapable
        );
        // Not following the final link leaves it to the host call.
        assert!(resolve(root, Path::new(""), b"abs", false).is_ok());
        assert_eq!(
            resolve(root, Path::new(""), b"loop", true).unwrap_err(),
            Errno::Loop
        );
        assert_eq!(
            resolve(root, Path::new(""), b"d/f/x", false).unwrap_err(),
            Errno::Notdir
        );
        assert_eq!(
            resolve(root, Path::new(""), b"abs/", false).unwrap_err(),
            Errno::Notcapable
        );
    }
}
