//! Fixed-seed fuzzing of sandboxed path resolution.
//!
//! Random guest paths (made of `..`, `.`, empty components, names, the
//! names of symbolic links that stay inside or lead out, over-long names,
//! leading and trailing slashes) are resolved beneath a temporary tree with
//! both strategies of `tern_vm::wasi::beneath`, the resolver every WASI path
//! call goes through. Checked for every path and every set of open flags:
//!
//! - whatever is opened (and the directory an entry is split off in) is one
//!   of the tree's own inodes, never the directory above it or anything
//!   outside;
//! - `openat2` and the component walk agree: the same inode or the same
//!   error;
//! - nothing panics.
//!
//! `TERN_FUZZ_ITERS` sets the number of paths (default 20000, well under
//! a second); `TERN_FUZZ_SEED` changes the seed.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use rustix::fs::{fstat, statat, AtFlags, Mode, OFlags};
use rustix::io::Errno;
use tern_vm::wasi::beneath::{entry_beneath, open_beneath, Strategy};

/// One piece of a generated path.
#[derive(Debug, Clone)]
enum Piece {
    Dot,
    DotDot,
    Empty,
    /// One of [`NAMES`].
    Name(u8),
    /// A 255-byte name (exists) or a 256-byte one (too long).
    Long(bool),
}

impl<'a> Arbitrary<'a> for Piece {
    /// Mostly names, so that many paths lead somewhere.
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Piece> {
        Ok(match u.int_in_range(0u8..=15)? {
            0 => Piece::Dot,
            1 | 2 => Piece::DotDot,
            3 => Piece::Empty,
            4 => Piece::Long(u.arbitrary()?),
            _ => Piece::Name(u.arbitrary()?),
        })
    }
}

/// A generated guest path.
#[derive(Debug, Clone)]
struct Case {
    leading_slash: bool,
    pieces: Vec<Piece>,
    trailing_slash: bool,
    /// Index into [`FLAGS`].
    flags: u8,
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Case> {
        let n = u.int_in_range(1usize..=8)?;
        Ok(Case {
            leading_slash: u.ratio(1u8, 32)?,
            pieces: (0..n)
                .map(|_| u.arbitrary())
                .collect::<arbitrary::Result<_>>()?,
            trailing_slash: u.ratio(1u8, 6)?,
            flags: u.arbitrary()?,
        })
    }
}

/// Names in the tree: directories, files, and symbolic links that stay
/// inside (`in_*`), lead outside (`out_*`) or go nowhere.
const NAMES: &[&str] = &[
    "a", "b", "c", "d", "x", "f", "file", "nope", "in_up", "in_dd", "in_file", "in_self",
    "in_slash", "out_rel", "out_abs", "out_deep", "out_dd", "loop1", "dangling", "outside",
];

const FLAGS: &[OFlags] = &[
    OFlags::PATH,
    OFlags::PATH.union(OFlags::NOFOLLOW),
    OFlags::RDONLY,
    OFlags::RDONLY.union(OFlags::NOFOLLOW),
    OFlags::RDONLY.union(OFlags::DIRECTORY),
];

fn long(ok: bool) -> String {
    "L".repeat(if ok { 255 } else { 256 })
}

impl Case {
    fn path(&self) -> Vec<u8> {
        let mut p = String::new();
        if self.leading_slash {
            p.push('/');
        }
        let parts: Vec<String> = self
            .pieces
            .iter()
            .map(|c| match c {
                Piece::Dot => ".".to_string(),
                Piece::DotDot => "..".to_string(),
                Piece::Empty => String::new(),
                Piece::Name(i) => NAMES[*i as usize % NAMES.len()].to_string(),
                Piece::Long(ok) => long(*ok),
            })
            .collect();
        p.push_str(&parts.join("/"));
        if self.trailing_slash {
            p.push('/');
        }
        p.into_bytes()
    }
}

/// Builds `tmp/outside/...` and the sandbox `tmp/root/...`.
fn build(tmp: &Path) {
    let outside = tmp.join("outside");
    let root = tmp.join("root");
    for d in ["outside/x", "root/a/b/c", "root/d/x"] {
        std::fs::create_dir_all(tmp.join(d)).unwrap();
    }
    std::fs::create_dir(root.join(long(true))).unwrap();
    std::fs::write(outside.join("x/f"), b"outside").unwrap();
    std::fs::write(outside.join("file"), b"outside").unwrap();
    for f in ["a/f", "a/b/c/file", "d/x/f", "file"] {
        std::fs::write(root.join(f), b"inside").unwrap();
    }
    let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, root.join(at)).unwrap();
    link("a/b/..", "in_up");
    link("../..", "a/b/in_dd");
    link("c/file", "a/b/in_file");
    link(".", "in_self");
    link("d/", "in_slash");
    link("../../d", "a/b/d");
    link("../outside", "out_rel");
    link(outside.to_str().unwrap(), "out_abs");
    link("../../../outside", "a/b/out_deep");
    link("../..", "a/out_dd");
    link("loop2", "loop1");
    link("loop1", "loop2");
    link("nope", "dangling");
    link("a/b", "b");
}

/// Every inode in the tree under `root`, `root` included, links not followed.
fn inodes(root: &Path) -> HashSet<(u64, u64)> {
    let mut set = HashSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        set.insert((m.dev(), m.ino()));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    set
}

fn id(fd: BorrowedFd<'_>) -> (u64, u64) {
    let st = fstat(fd).unwrap();
    (st.st_dev, st.st_ino)
}

/// A deterministic byte stream (splitmix64).
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn resolution_never_leaves_the_tree() {
    let iters = env_u64("TERN_FUZZ_ITERS", 20_000);
    let seed = env_u64("TERN_FUZZ_SEED", 0x7e57_5eed);
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let root_path = tmp.path().join("root");
    let inside = inodes(&root_path);
    let root = std::fs::File::open(&root_path).unwrap();
    let root = root.as_fd();

    let data = bytes(seed, 64 * iters as usize);
    let mut u = Unstructured::new(&data);
    let (mut opened, mut refused, mut escapes_refused) = (0u64, 0u64, 0u64);
    for i in 0..iters {
        let Ok(case) = Case::arbitrary(&mut u) else {
            break;
        };
        let path = case.path();
        let flags = FLAGS[case.flags as usize % FLAGS.len()];
        let show = || format!("#{i} {:?} {flags:?}", String::from_utf8_lossy(&path));

        let got: Vec<Result<(u64, u64), Errno>> = [Strategy::Openat2, Strategy::Walk]
            .into_iter()
            .map(|s| {
                open_beneath(root, &path, flags, Mode::empty(), s).map(|fd: OwnedFd| id(fd.as_fd()))
            })
            .collect();
        assert_eq!(
            got[0],
            got[1],
            "openat2 and the walk disagree on {}",
            show()
        );
        match got[0] {
            Ok(ino) => {
                assert!(inside.contains(&ino), "opened outside the tree: {}", show());
                opened += 1;
            }
            Err(Errno::XDEV) => escapes_refused += 1,
            Err(_) => refused += 1,
        }

        for s in [Strategy::Openat2, Strategy::Walk] {
            let Ok(e) = entry_beneath(root, &path, s) else {
                continue;
            };
            assert!(
                inside.contains(&id(e.dir())),
                "entry dir outside: {}",
                show()
            );
            assert!(
                !e.name().contains(&b'/') && !e.name().is_empty(),
                "{}",
                show()
            );
            if let Ok(st) = statat(e.dir(), e.name(), AtFlags::SYMLINK_NOFOLLOW) {
                let ino = (st.st_dev, st.st_ino);
                assert!(inside.contains(&ino), "entry outside: {}", show());
            }
        }
    }
    eprintln!(
        "{iters} paths: {opened} opened, {escapes_refused} escapes refused, {refused} other errors"
    );
    // The generator reaches all three outcomes, or it tests little.
    assert!(opened > iters / 20 && escapes_refused > iters / 50 && refused > iters / 20);
}
