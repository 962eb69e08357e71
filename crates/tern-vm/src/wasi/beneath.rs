//! Race-free path resolution beneath a directory descriptor.
//!
//! A guest path is always resolved relative to an open directory (a preopen
//! or a directory the guest opened), and may not leave it: `..` may not
//! climb above it, absolute paths and absolute symbolic links are refused,
//! and every step is taken relative to a descriptor the previous step
//! opened, never through a host path string. A directory swapped for a
//! symbolic link by another process while a path is resolved can therefore
//! not carry the lookup outside: whatever the lookup meets is judged when
//! it is met.
//!
//! Two strategies give the same answers (the fuzz test checks it):
//!
//! - `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the kernel
//!   does the walk and the check (Linux 5.6 and later). A rename racing with
//!   a `..` makes it fail with `EAGAIN`; the call is then retried.
//! - A walk one component at a time, as cap-std does: every intermediate
//!   component is opened with `O_PATH | O_NOFOLLOW` relative to the previous
//!   one, symbolic links are read through the descriptor that holds them and
//!   expanded here (at most 40, else `ELOOP`), `..` returns to the
//!   descriptor held one level up. Used when `openat2` returns `ENOSYS`
//!   (old kernels, seccomp filters that do not know it).
//!
//! Errors are host errors, as `openat2` reports them: an escape is `EXDEV`,
//! which the WASI layer turns into `ENOTCAPABLE`.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{fstat, openat, openat2, readlinkat, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::{Errno, Result};

/// Most symbolic links followed while resolving one path (the kernel's
/// limit too).
const MAX_SYMLINKS: usize = 40;

/// How often an `openat2` that failed with `EAGAIN` (a concurrent rename
/// while it walked `..`) is retried before the walk takes over.
const OPENAT2_RETRIES: usize = 64;

/// How paths are resolved.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `openat2`, or the walk once `openat2` has returned `ENOSYS`.
    Auto,
    /// `openat2` (`ENOSYS` where the kernel lacks it; the walk if it keeps
    /// failing with `EAGAIN`).
    Openat2,
    /// The component-by-component walk.
    Walk,
}

/// 0: `openat2` not tried yet or works; 1: it returned `ENOSYS`.
static NO_OPENAT2: AtomicU8 = AtomicU8::new(0);

/// Opens `path` relative to `start` without leaving it, like
/// `openat2(start, path, {flags, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS})`.
/// `O_NOFOLLOW` in `flags` leaves a final symbolic link unfollowed (a
/// trailing `/` still follows it, as in POSIX); `O_CLOEXEC` is always added.
#[doc(hidden)]
pub fn open_beneath(
    start: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    mode: Mode,
    strategy: Strategy,
) -> Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC;
    // openat2 refuses a mode that nothing would use.
    // (O_TMPFILE includes O_DIRECTORY's bit, hence `contains`.)
    let mode = if flags.contains(OFlags::CREATE) || flags.contains(OFlags::TMPFILE) {
        mode
    } else {
        Mode::empty()
    };
    if path.first() == Some(&b'/') {
        return Err(Errno::XDEV);
    }
    let use_openat2 = match strategy {
        Strategy::Auto => NO_OPENAT2.load(Ordering::Relaxed) == 0,
        Strategy::Openat2 => true,
        Strategy::Walk => false,
    };
    if use_openat2 {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        for _ in 0..OPENAT2_RETRIES {
            match openat2(start, path, flags, mode, how) {
                Err(Errno::AGAIN) => continue,
                Err(Errno::NOSYS) if strategy == Strategy::Auto => {
                    NO_OPENAT2.store(1, Ordering::Relaxed);
                    break;
                }
                r => return r,
            }
        }
    }
    walk(start, path, flags, mode)
}

/// The last component of a path, in the directory that holds it.
#[doc(hidden)]
#[derive(Debug)]
pub struct Entry<'a> {
    dir: Dir<'a>,
    name: Vec<u8>,
    trailing: bool,
}

#[derive(Debug)]
enum Dir<'a> {
    /// The start directory itself.
    Start(BorrowedFd<'a>),
    /// A directory below it, opened with `O_PATH`.
    Opened(OwnedFd),
}

impl Entry<'_> {
    /// The directory holding the entry, opened beneath the start directory.
    pub fn dir(&self) -> BorrowedFd<'_> {
        match &self.dir {
            Dir::Start(fd) => *fd,
            Dir::Opened(fd) => fd.as_fd(),
        }
    }

    /// The entry's name in [`Entry::dir`]: one component, `.` when the path
    /// names a directory through a final `.` or `..`.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Whether the guest path ended in `/`.
    pub fn trailing(&self) -> bool {
        self.trailing
    }

    /// The name for a `*at` call that does not follow its last component
    /// (`mkdirat`, `unlinkat`, `renameat`, `symlinkat`, the new side of
    /// `linkat`): with the guest's trailing `/`, so that the host applies
    /// the POSIX trailing-slash rules.
    pub fn at_name(&self) -> Vec<u8> {
        let mut n = self.name.clone();
        if self.trailing {
            n.push(b'/');
        }
        n
    }
}

/// Splits `path` into the directory that holds its last component, opened
/// race-free beneath `start`, and that component. A final `.` or `..`
/// names a directory: the entry is then that directory as `.`. With a
/// trailing `/` the host would follow a final symbolic link itself, so one
/// that leads outside is refused here (`EXDEV`), as is a loop (`ELOOP`);
/// calls that follow must use [`open_beneath`] on the whole path instead.
#[doc(hidden)]
pub fn entry_beneath<'a>(
    start: BorrowedFd<'a>,
    path: &[u8],
    strategy: Strategy,
) -> Result<Entry<'a>> {
    if path.is_empty() {
        return Err(Errno::NOENT);
    }
    if path[0] == b'/' {
        return Err(Errno::XDEV);
    }
    let trailing = path.ends_with(b"/");
    let end = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let trimmed = &path[..end];
    let (parent, name) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY;
    if name == b"." || name == b".." {
        let fd = open_beneath(start, trimmed, dir_flags, Mode::empty(), strategy)?;
        return Ok(Entry {
            dir: Dir::Opened(fd),
            name: b".".to_vec(),
            trailing: false,
        });
    }
    let dir = if parent.is_empty() {
        Dir::Start(start)
    } else {
        Dir::Opened(open_beneath(
            start,
            parent,
            dir_flags,
            Mode::empty(),
            strategy,
        )?)
    };
    if trailing {
        if let Err(e @ (Errno::XDEV | Errno::LOOP)) =
            open_beneath(start, path, OFlags::PATH, Mode::empty(), strategy)
        {
            return Err(e);
        }
    }
    Ok(Entry {
        dir,
        name: name.to_vec(),
        trailing,
    })
}

fn split(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

fn is(fd: &OwnedFd, ty: FileType) -> Result<bool> {
    Ok(FileType::from_raw_mode(fstat(fd)?.st_mode) == ty)
}

/// The target of the symbolic link `fd` was opened on (`O_PATH | O_NOFOLLOW`).
fn link_target(fd: &OwnedFd) -> Result<Vec<u8>> {
    Ok(readlinkat(fd, c"", Vec::new())?.into_bytes())
}

/// The component-by-component strategy; see the module docs.
fn walk(start: BorrowedFd<'_>, path: &[u8], flags: OFlags, mode: Mode) -> Result<OwnedFd> {
    let step = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let follow_last = !flags.contains(OFlags::NOFOLLOW);
    let mut pending: VecDeque<Vec<u8>> = split(path).map(<[u8]>::to_vec).collect();
    let mut trailing = path.ends_with(b"/");
    // Directories entered below `start`, innermost last.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut links = 0usize;
    if pending.is_empty() {
        // "" (or only slashes, refused earlier as absolute).
        return Err(Errno::NOENT);
    }
    while let Some(c) = pending.pop_front() {
        let last = pending.is_empty();
        let cur = dirs.last().map_or(start, AsFd::as_fd);
        if c == b"." || c == b".." {
            if c == b".." && dirs.pop().is_none() {
                return Err(Errno::XDEV);
            }
            if last {
                let cur = dirs.last().map_or(start, AsFd::as_fd);
                return openat(cur, c".", flags, mode);
            }
            continue;
        }
        let target = if last {
            let follow = follow_last || trailing;
            let mut fl = flags | OFlags::NOFOLLOW;
            if trailing {
                if flags.contains(OFlags::CREATE) {
                    // What the kernel answers for "name/" with O_CREAT.
                    return Err(Errno::ISDIR);
                }
                fl |= OFlags::DIRECTORY;
            }
            match openat(cur, c.as_slice(), fl, mode) {
                Ok(fd) if follow && flags.contains(OFlags::PATH) && is(&fd, FileType::Symlink)? => {
                    link_target(&fd)?
                }
                Ok(fd) => return Ok(fd),
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) if follow => {
                    // A symbolic link, or something that is not one.
                    match openat(cur, c.as_slice(), step, Mode::empty()) {
                        Ok(fd) if is(&fd, FileType::Symlink)? => link_target(&fd)?,
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        } else {
            let fd = openat(cur, c.as_slice(), step, Mode::empty())?;
            match FileType::from_raw_mode(fstat(&fd)?.st_mode) {
                FileType::Directory => {
                    dirs.push(fd);
                    continue;
                }
                FileType::Symlink => link_target(&fd)?,
                _ => return Err(Errno::NOTDIR),
            }
        };
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(Errno::LOOP);
        }
        if target.is_empty() {
            return Err(Errno::NOENT);
        }
        if target[0] == b'/' {
            return Err(Errno::XDEV);
        }
        if last && target.ends_with(b"/") {
            trailing = true;
        }
        for part in split(&target).rev() {
            pending.push_front(part.to_vec());
        }
    }
    unreachable!("the last component returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, std::fs::File) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("../d/f", root.join("d/up")).unwrap();
        std::os::unix::fs::symlink("../../etc", root.join("d/out")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        std::os::unix::fs::symlink("d/", root.join("dl")).unwrap();
        let dir = std::fs::File::open(&root).unwrap();
        (tmp, dir)
    }

    #[test]
    fn both_strategies_refuse_escapes() {
        let (_tmp, root) = tree();
        let root = root.as_fd();
        let get = OFlags::PATH;
        for s in [Strategy::Openat2, Strategy::Walk] {
            let open = |p: &[u8], fl| open_beneath(root, p, fl, Mode::empty(), s).map(|_| ());
            assert_eq!(open(b"d/./up", get), Ok(()), "{s:?}");
            assert_eq!(open(b"d/../d//f", get), Ok(()), "{s:?}");
            assert_eq!(open(b"dl/f", get), Ok(()), "{s:?}");
            assert_eq!(open(b"..", get), Err(Errno::XDEV), "{s:?}");
            assert_eq!(open(b"d/../..", get), Err(Errno::XDEV), "{s:?}");
            assert_eq!(open(b"/etc", get), Err(Errno::XDEV), "{s:?}");
            assert_eq!(open(b"d/out/passwd", get), Err(Errno::XDEV), "{s:?}");
            assert_eq!(open(b"abs", get), Err(Errno::XDEV), "{s:?}");
            assert_eq!(open(b"abs", get | OFlags::NOFOLLOW), Ok(()), "{s:?}");
            assert_eq!(open(b"abs/", get | OFlags::NOFOLLOW), Err(Errno::XDEV));
            assert_eq!(open(b"loop", get), Err(Errno::LOOP), "{s:?}");
            assert_eq!(open(b"d/f/x", get), Err(Errno::NOTDIR), "{s:?}");
            assert_eq!(open(b"d/f/", get), Err(Errno::NOTDIR), "{s:?}");
            assert_eq!(open(b"d/nope/x", get), Err(Errno::NOENT), "{s:?}");
            assert_eq!(open(b"d/f", OFlags::RDONLY), Ok(()), "{s:?}");
            assert_eq!(
                open(b"d/up", OFlags::RDONLY | OFlags::NOFOLLOW),
                Err(Errno::LOOP),
                "{s:?}"
            );
            assert_eq!(
                open(b"d/new/", OFlags::RDWR | OFlags::CREATE),
                Err(Errno::ISDIR),
                "{s:?}"
            );
        }
    }

    #[test]
    fn entries_split_the_last_component() {
        let (_tmp, root) = tree();
        let root = root.as_fd();
        let s = Strategy::Auto;
        let e = entry_beneath(root, b"d//f", s).unwrap();
        assert_eq!((e.name(), e.trailing()), (&b"f"[..], false));
        let e = entry_beneath(root, b"d/", s).unwrap();
        assert_eq!((e.name(), e.at_name()), (&b"d"[..], b"d/".to_vec()));
        let e = entry_beneath(root, b"d/..", s).unwrap();
        assert_eq!(e.name(), b".");
        // Not followed: the link itself is the entry.
        assert_eq!(entry_beneath(root, b"abs", s).unwrap().name(), b"abs");
        assert_eq!(entry_beneath(root, b"abs/", s).unwrap_err(), Errno::XDEV);
        assert_eq!(entry_beneath(root, b"loop/", s).unwrap_err(), Errno::LOOP);
        assert_eq!(entry_beneath(root, b"..", s).unwrap_err(), Errno::XDEV);
        assert_eq!(entry_beneath(root, b"d/out/x", s).unwrap_err(), Errno::XDEV);
        assert_eq!(entry_beneath(root, b"", s).unwrap_err(), Errno::NOENT);
    }
}
