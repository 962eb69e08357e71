//! Resource limits enforced by the runtime: memory growth refused past the
//! cap (`memory.grow` returns -1), modules too large from the start refused,
//! and the cap kept across a checkpoint and restore.

use tern_vm::limits::{LimitHit, Limits};
use tern_vm::wasi::{WasiConfig, WasiCtx};
use tern_vm::{Guest, Outcome, Runtime, VmError};

/// Grows memory a page at a time until `memory.grow` fails, then exits
/// with the number of pages it has.
const GROW_UNTIL_REFUSED: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (block $done
      (loop $more
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $more)))
    (call $exit (memory.size))))
"#;

const PAGE: u64 = 64 << 10;

fn prepared() -> tern_prepare::Prepared {
    let wasm = wat::parse_str(GROW_UNTIL_REFUSED).unwrap();
    tern_prepare::prepare(&wasm, &Default::default()).unwrap()
}

fn wasi() -> WasiCtx {
    WasiCtx::new(WasiConfig::default()).unwrap()
}

fn capped(bytes: u64) -> Limits {
    Limits {
        max_memory: Some(bytes),
        ..Limits::default()
    }
}

#[test]
fn memory_grow_returns_minus_one_at_the_cap() {
    let rt = Runtime::new(None).unwrap();
    let mut g = Guest::boot_with(&rt, &prepared(), wasi(), capped(8 * PAGE)).unwrap();
    assert_eq!(g.run().unwrap(), Outcome::Exited(8));
    assert_eq!(
        g.limit_hit(),
        Some(LimitHit::Memory {
            limit: 8 * PAGE,
            wanted: 9 * PAGE
        })
    );
    assert_eq!(
        g.limit_hit().unwrap().to_string(),
        "memory limit of 512 KiB (it asked for 576 KiB)"
    );
}

#[test]
fn initial_memory_past_the_cap_is_refused() {
    let rt = Runtime::new(None).unwrap();
    let e = Guest::boot_with(&rt, &prepared(), wasi(), capped(PAGE))
        .err()
        .expect("a module starting with 128 KiB under a 64 KiB cap");
    assert!(matches!(e, VmError::Limit(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "the module's initial memory of 128 KiB exceeds the memory limit of 64 KiB"
    );
}

#[test]
fn the_cap_survives_checkpoint_and_restore() {
    let rt = Runtime::new(None).unwrap();
    let limits = Limits {
        max_fds: 7,
        ..capped(6 * PAGE)
    };
    let mut g = Guest::boot_with(&rt, &prepared(), wasi(), limits).unwrap();
    g.pause_after_points(2).unwrap();
    assert_eq!(g.run().unwrap(), Outcome::Paused);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("g.tern");
    g.save_image(&image).unwrap();
    drop(g);
    let bytes = std::fs::read(&image).unwrap();
    let view = tern_image::view(&bytes).unwrap();
    let mut g = Guest::restore(&rt, &view, Default::default(), Default::default()).unwrap();
    assert_eq!(g.limits(), limits);
    assert_eq!(g.run().unwrap(), Outcome::Exited(6));
    // A lower cap than the memory the guest has is refused.
    assert!(matches!(g.set_limits(capped(PAGE)), Err(VmError::Limit(_))));
}
