//! Differential test of prepare over random modules (issue 5): `wasm-smith`
//! generates modules (terminating, NaNs canonicalized, only the features
//! Tern accepts), each runs as the original and as Tern's prepared form,
//! the latter also paused, captured into an image and restored again and
//! again while it runs. The outcome (exit or trap) and the whole final
//! memory must be identical every time.
//!
//! Tern's own transform gets the full instruction set Tern accepts
//! (multi-value blocks and loops, table instructions); binaryen's Asyncify,
//! kept as an oracle, gets what binaryen 108 can parse.

use arbitrary::Unstructured;
use tern_prepare::Transform;
use tern_vm::wasi::{WasiConfig, WasiCtx};
use tern_vm::{Guest, Outcome, Runtime};

/// What a run ended with: `Ok(exit status)` or the trap's message, and the
/// memory at the end.
#[derive(Debug, PartialEq)]
struct End {
    outcome: Result<i32, String>,
    memory: Vec<u8>,
}

fn config(transform: Transform) -> wasm_smith::Config {
    let full = transform == Transform::Tern;
    wasm_smith::Config {
        // A WASI command as Tern takes it: `_start` and `memory`, no imports.
        exports: Some(
            wat::parse_str(r#"(module (func (export "_start")) (memory (export "memory") 1))"#)
                .unwrap(),
        ),
        max_imports: 0,
        // No start function: everything runs in `_start`, where Tern can
        // pause it.
        allow_start_export: false,
        min_funcs: 2,
        max_funcs: 12,
        max_instructions: 200,
        // The exported memory is the only one (it is added on top of these).
        max_memories: 0,
        max_tables: 1,
        memory_max_size_required: true,
        canonicalize_nans: true,
        // What tern-prepare accepts (and binaryen 108 understands).
        bulk_memory_enabled: true,
        // Off: wasm-smith 0.254 then writes reference types in forms only
        // the GC proposal accepts.
        reference_types_enabled: false,
        memory64_enabled: false,
        multi_value_enabled: full,
        saturating_float_to_int_enabled: true,
        sign_extension_ops_enabled: true,
        simd_enabled: true,
        relaxed_simd_enabled: false,
        exceptions_enabled: false,
        gc_enabled: false,
        tail_call_enabled: false,
        threads_enabled: false,
        extended_const_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        // binaryen 108 cannot parse `elem.drop` and rejects some loops with
        // multi-value types: tern prepare refuses those up front for it, so
        // its generator keeps to what it can prepare.
        allowed_instructions: if full {
            wasm_smith::InstructionKinds::all()
        } else {
            wasm_smith::InstructionKinds::new(&[
                wasm_smith::InstructionKind::Numeric,
                wasm_smith::InstructionKind::Vector,
                wasm_smith::InstructionKind::Parametric,
                wasm_smith::InstructionKind::Variable,
                wasm_smith::InstructionKind::Memory,
                wasm_smith::InstructionKind::Control,
            ])
        },
        ..wasm_smith::Config::default()
    }
}

/// Module number `seed`: deterministic bytes into wasm-smith.
fn module(seed: u64, transform: Transform) -> Option<Vec<u8>> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..16 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut u = Unstructured::new(&bytes);
    let mut m = wasm_smith::Module::new(config(transform), &mut u).ok()?;
    m.ensure_termination(100_000).ok()?;
    Some(plain_types(&m.to_bytes()))
}

/// wasm-smith 0.254 puts the types of required exports in explicit
/// recursion groups, which only the GC proposal allows; a group of one
/// final function type without supertype is the plain function type, so
/// re-encode every type that way.
fn plain_types(wasm: &[u8]) -> Vec<u8> {
    use wasm_encoder::reencode::{Error, Reencode};
    struct Plain;
    impl Reencode for Plain {
        type Error = std::convert::Infallible;
        fn parse_type_section(
            &mut self,
            types: &mut wasm_encoder::TypeSection,
            section: wasmparser::TypeSectionReader<'_>,
        ) -> Result<(), Error<Self::Error>> {
            for group in section {
                for sub in group?.into_types() {
                    let wasmparser::CompositeInnerType::Func(f) = &sub.composite_type.inner else {
                        panic!("wasm-smith made a non-function type with GC off");
                    };
                    let params = f
                        .params()
                        .iter()
                        .map(|t| self.val_type(*t))
                        .collect::<Result<Vec<_>, _>>()?;
                    let results = f
                        .results()
                        .iter()
                        .map(|t| self.val_type(*t))
                        .collect::<Result<Vec<_>, _>>()?;
                    types.ty().function(params, results);
                }
            }
            Ok(())
        }
    }
    let mut module = wasm_encoder::Module::new();
    Plain
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .expect("re-encoding a valid module");
    module.finish()
}

fn wasi() -> WasiCtx {
    WasiCtx::new(WasiConfig {
        args: vec!["m".into()],
        ..WasiConfig::default()
    })
    .unwrap()
}

fn memory_of(g: &Guest) -> Vec<u8> {
    let h = g.memory_handle().unwrap();
    let mut out = vec![0u8; h.len()];
    h.read(0, &mut out).unwrap();
    out
}

fn finish(g: &mut Guest, r: Result<Outcome, tern_vm::VmError>) -> End {
    // Which trap is not compared: binaryen's optimizer may turn one trap
    // into another at the same point (seen: a NaN conversion reported as
    // an overflow), which the program cannot observe.
    let outcome = match r {
        Ok(Outcome::Exited(c)) => Ok(c),
        Ok(Outcome::Paused) => unreachable!("nobody asked for a pause"),
        Err(tern_vm::VmError::Trap(_)) => Err("trap".to_string()),
        Err(e) => Err(e.to_string()),
    };
    End {
        outcome,
        memory: memory_of(g),
    }
}

/// Runs the prepared module, pausing it `pauses` times, each time writing
/// an image and going on from a guest restored from it. Pause `k` comes
/// after a number of migration points chosen from `seed` and `k` (0 to 16),
/// so captures land at the first points, deep in loops and recursion, and
/// at points the guest reaches only late.
fn run_with_restores(
    rt: &Runtime,
    prepared: &tern_prepare::Prepared,
    seed: u64,
    pauses: u32,
) -> (End, u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::boot(rt, prepared, wasi()).unwrap();
    let mut taken = 0;
    loop {
        if taken < pauses {
            let skip = (seed * 7 + u64::from(taken) * 13) % 17;
            g.pause_after_points(skip).unwrap();
        }
        let r = g.run();
        if !matches!(r, Ok(Outcome::Paused)) {
            return (finish(&mut g, r), taken);
        }
        let path = dir.path().join(format!("{taken}.tern"));
        g.save_image(&path).unwrap();
        drop(g);
        let bytes = std::fs::read(&path).unwrap();
        let view = tern_image::view(&bytes).unwrap();
        let sink = || tern_vm::wasi::OutputSink::Writer(Box::new(std::io::sink()));
        g = Guest::restore(rt, &view, sink(), sink()).unwrap();
        taken += 1;
    }
}

#[test]
fn tern_transform_matches_originals_with_and_without_restores() {
    on_guest_thread(|| compare_many(Transform::Tern, 500));
}

#[test]
fn asyncify_matches_originals_with_and_without_restores() {
    on_guest_thread(|| compare_many(Transform::BinaryenAsyncify, 50));
}

/// Guests run on threads with the stack Tern gives them.
fn on_guest_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(tern_vm::GUEST_THREAD_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// Compares `default` modules (or `TERN_DIFF_MODULES`) prepared by
/// `transform`.
fn compare_many(transform: Transform, default: u64) {
    let rt = Runtime::new(None).unwrap();
    let (mut compared, mut restores, mut skipped) = (0u64, 0u64, Vec::new());
    let n: u64 = std::env::var("TERN_DIFF_MODULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let opts = tern_prepare::Options {
        transform,
        ..tern_prepare::Options::default()
    };
    for seed in 0..n {
        let Some(wasm) = module(seed, transform) else {
            skipped.push((seed, "wasm-smith gave up".to_string()));
            continue;
        };
        let prepared = match tern_prepare::prepare(&wasm, &opts) {
            Ok(p) => p,
            Err(e) => {
                skipped.push((seed, e.to_string()));
                continue;
            }
        };
        let mut orig = match Guest::boot_original(&rt, &wasm, wasi()) {
            Ok(g) => g,
            Err(e) => {
                // The start function trapped: the prepared module must too.
                let p = Guest::boot(&rt, &prepared, wasi());
                assert!(p.is_err(), "module {seed}: only the original trapped ({e})");
                skipped.push((seed, format!("trapped while instantiating: {e}")));
                continue;
            }
        };
        let r = orig.run();
        let want = finish(&mut orig, r);
        let mut plain = Guest::boot(&rt, &prepared, wasi()).unwrap();
        let r = plain.run();
        let got = finish(&mut plain, r);
        assert_eq!(got.outcome, want.outcome, "module {seed}: prepared outcome");
        assert!(got.memory == want.memory, "module {seed}: prepared memory");
        let (got, taken) = run_with_restores(&rt, &prepared, seed, 8);
        assert_eq!(
            got.outcome, want.outcome,
            "module {seed}: after {taken} restores"
        );
        assert!(
            got.memory == want.memory,
            "module {seed}: memory after {taken} restores"
        );
        compared += 1;
        restores += u64::from(taken);
    }
    eprintln!(
        "{transform:?}: {compared} of {n} modules compared, {restores} restores; skipped: {skipped:?}"
    );
    // Most modules must really be compared, and many restored mid-run.
    assert!(
        compared * 10 >= n * 8,
        "only {compared} of {n} compared: {skipped:?}"
    );
    // Many modules end before any migration point (no loop or recursion
    // is reached from `_start`), or before the chosen one.
    assert!(
        restores * 20 >= n,
        "only {restores} restores in {compared} modules"
    );
}
