//! Save/restore tests driving the host functions directly (no guest).

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::ctx::Handle;
use super::types::*;
use super::*;

/// Writes `data` to `fd` through `fd_write`, with a scratch guest memory.
fn write_via(ctx: &mut WasiCtx, fd: u32, data: &[u8]) {
    let mut raw = vec![0u8; 64 + data.len()];
    raw[64..].copy_from_slice(data);
    let mut mem = Mem::new(&mut raw);
    mem.write_u32(0, 64).unwrap();
    mem.write_u32(4, data.len() as u32).unwrap();
    ctx.fd_write(&mut mem, fd, 0, 1, 8).unwrap();
    assert_eq!(mem.read_u32(8).unwrap() as usize, data.len());
}

fn ctx_with_root(root: &std::path::Path) -> WasiCtx {
    WasiCtx::new(WasiConfig {
        args: vec!["prog".into(), "arg".into()],
        env: vec![("K".into(), "V".into())],
        preopens: vec![(root.to_path_buf(), "/".into())],
        ..WasiConfig::default()
    })
    .unwrap()
}

const RW: u64 = RIGHT_FD_READ | RIGHT_FD_WRITE | RIGHT_FD_SEEK | RIGHT_FD_TELL;

#[test]
fn save_restore_continues_at_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = ctx_with_root(dir.path());
    let fd = ctx
        .path_open(3, 0, b"out.txt", OFLAGS_CREAT, RW, 0, 0)
        .unwrap();
    write_via(&mut ctx, fd, b"hello ");
    let state = ctx.save();
    let bytes = postcard::to_allocvec(&state).unwrap();
    let decoded: WasiState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);
    assert_eq!(ctx.save().fds, state.fds);
    let f = state.fds.iter().find(|f| f.fd == fd).unwrap();
    assert_eq!((f.kind, f.offset), (FdKind::File, 6));
    assert_eq!(f.identity.unwrap().size, 6);
    drop(ctx);

    let mut ctx = WasiCtx::restore(&state, OutputSink::Inherit, OutputSink::Inherit).unwrap();
    assert_eq!(ctx.args, ["prog", "arg"]);
    write_via(&mut ctx, fd, b"world");
    assert_eq!(
        std::fs::read(dir.path().join("out.txt")).unwrap(),
        b"hello world"
    );
    assert_eq!(ctx.entry(fd).unwrap().offset, 11);
    // The preopen is still a preopen and paths still resolve below it.
    let fd2 = ctx.path_open(3, 0, b"out.txt", 0, RW, 0, 0).unwrap();
    assert_ne!(fd2, fd);
    assert_eq!(ctx.save().next_fd, fd2 + 1);
}

#[test]
fn changed_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = ctx_with_root(dir.path());
    let fd = ctx
        .path_open(3, 0, b"data.bin", OFLAGS_CREAT, RW, 0, 0)
        .unwrap();
    write_via(&mut ctx, fd, b"abc");
    let state = ctx.save();
    drop(ctx);
    let path = dir.path().join("data.bin");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let err = WasiCtx::restore(&state, OutputSink::Inherit, OutputSink::Inherit).unwrap_err();
    assert!(matches!(err, RestoreError::Changed { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'));

    std::fs::remove_file(&path).unwrap();
    let err = WasiCtx::restore(&state, OutputSink::Inherit, OutputSink::Inherit).unwrap_err();
    assert!(matches!(err, RestoreError::Reopen { .. }), "{err}");
    assert!(err.to_string().contains("data.bin"));
}

#[test]
fn missing_preopen_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let state = ctx_with_root(&root).save();
    std::fs::remove_dir(&root).unwrap();
    let err = WasiCtx::restore(&state, OutputSink::Inherit, OutputSink::Inherit).unwrap_err();
    assert!(matches!(err, RestoreError::MissingPreopen { .. }));
    assert!(err.to_string().contains(&root.display().to_string()));
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn output_goes_to_new_sinks_after_restore() {
    let (a, b) = (Shared::default(), Shared::default());
    let mut ctx = WasiCtx::new(WasiConfig {
        stdout: OutputSink::Writer(Box::new(a.clone())),
        ..WasiConfig::default()
    })
    .unwrap();
    write_via(&mut ctx, 1, b"before ");
    let state = ctx.save();
    let mut ctx = WasiCtx::restore(
        &state,
        OutputSink::Writer(Box::new(b.clone())),
        OutputSink::Inherit,
    )
    .unwrap();
    write_via(&mut ctx, 1, b"after");
    assert_eq!(&*a.0.lock().unwrap(), b"before ");
    assert_eq!(&*b.0.lock().unwrap(), b"after");
}

#[test]
fn monotonic_clock_continues_across_restore() {
    let ctx = WasiCtx::new(WasiConfig::default()).unwrap();
    let mut state = ctx.save();
    state.clock.monotonic_ns += 1_000_000_000_000;
    let restored = WasiCtx::restore(&state, OutputSink::Inherit, OutputSink::Inherit).unwrap();
    assert!(restored.clocks.monotonic() >= state.clock.monotonic_ns);
}

#[test]
fn opening_past_the_descriptor_limit_fails_with_emfile() {
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = ctx_with_root(dir.path());
    // stdio and the preopen take fds 0-3: room for one more.
    ctx.set_max_fds(5);
    let fd = ctx
        .path_open(3, 0, b"a.txt", OFLAGS_CREAT, RW, 0, 0)
        .unwrap();
    assert_eq!(fd, 4);
    assert!(!ctx.fds_refused());
    assert_eq!(
        ctx.path_open(3, 0, b"b.txt", OFLAGS_CREAT, RW, 0, 0),
        Err(Errno::Mfile)
    );
    assert!(ctx.fds_refused());
    // Closing one makes room again.
    ctx.fd_close(fd).unwrap();
    assert_eq!(ctx.path_open(3, 0, b"b.txt", OFLAGS_CREAT, RW, 0, 0), Ok(4));
}

#[test]
fn restore_resolves_saved_paths_beneath_the_preopen() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    std::fs::create_dir(tmp.path().join("outside")).unwrap();
    std::fs::write(root.join("d/e/f"), b"inside").unwrap();
    std::fs::write(tmp.path().join("outside/f"), b"secret").unwrap();
    std::os::unix::fs::symlink("d/e", root.join("l")).unwrap();
    let mut ctx = ctx_with_root(&root);
    // Through a link inside the preopen, and from a directory descriptor.
    let file = ctx.path_open(3, 0, b"l/./f", 0, RW, 0, 0).unwrap();
    let dir = ctx
        .path_open(3, 0, b"d/e/..", OFLAGS_DIRECTORY, 0, !0, 0)
        .unwrap();
    let file2 = ctx.path_open(dir, 0, b"e//f", 0, RW, 0, 0).unwrap();
    let state = ctx.save();
    let rel = |fd| state.fds.iter().find(|f| f.fd == fd).unwrap().rel.clone();
    assert_eq!(rel(file), std::path::Path::new("l/f"));
    assert_eq!(rel(file2), std::path::Path::new("d/e/../e/f"));
    drop(ctx);

    let ctx = WasiCtx::restore(&state, OutputSink::Inherit, OutputSink::Inherit).unwrap();
    for fd in [file, file2] {
        let Handle::File(f) = &ctx.entry(fd).unwrap().handle else {
            panic!("fd {fd} is not a file");
        };
        assert_eq!(std::io::read_to_string(f).unwrap(), "inside");
    }
    drop(ctx);

    // A saved path is never trusted as a host path.
    let mut bad = state.clone();
    let f = bad.fds.iter_mut().find(|f| f.fd == file).unwrap();
    f.rel = "../outside/f".into();
    f.identity = None;
    let err = WasiCtx::restore(&bad, OutputSink::Inherit, OutputSink::Inherit).unwrap_err();
    assert!(matches!(err, RestoreError::Reopen { .. }), "{err}");
    assert!(err.to_string().contains("outside its preopened"), "{err}");
}

/// The race of `tests/all/sandbox.rs` without a guest: `path_open` on a
/// path while another thread swaps a directory on it with a symbolic link
/// that leads out of the preopen.
#[test]
fn path_open_never_follows_a_swapped_in_link_out() {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use std::sync::atomic::{AtomicBool, Ordering};

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("d/x")).unwrap();
    std::fs::create_dir_all(tmp.path().join("outside/x")).unwrap();
    std::fs::write(data.join("d/x/f"), b"inside").unwrap();
    std::fs::write(tmp.path().join("outside/x/f"), b"outside").unwrap();
    std::os::unix::fs::symlink("../outside", data.join("swap")).unwrap();
    let mut ctx = ctx_with_root(&data);

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, d, swap) = (stop.clone(), data.join("d"), data.join("swap"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &d, CWD, &swap, RenameFlags::EXCHANGE).unwrap();
                n += 1;
            }
            n
        })
    };
    let (mut inside, mut outside, mut refused) = (0u32, 0u32, 0u32);
    let mut errors = Vec::new();
    for _ in 0..100_000 {
        match ctx.path_open(3, LOOKUPFLAGS_SYMLINK_FOLLOW, b"d/x/f", 0, RW, 0, 0) {
            Ok(fd) => {
                let Handle::File(f) = &ctx.entry(fd).unwrap().handle else {
                    panic!("not a file");
                };
                match std::io::read_to_string(f).unwrap().as_str() {
                    "inside" => inside += 1,
                    _ => outside += 1,
                }
                ctx.fd_close(fd).unwrap();
            }
            Err(e) => {
                if !errors.contains(&e) {
                    errors.push(e);
                }
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let counts = format!("inside {inside} outside {outside} refused {refused} swaps {swaps}");
    assert_eq!(outside, 0, "read the file outside the preopen: {counts}");
    // `d` the directory is read; `d` the link leads outside and is refused.
    assert_eq!(errors, [Errno::Notcapable], "{counts}");
    assert!(inside > 0 && refused > 0 && swaps > 100, "{counts}");
}
