//! Fixed-seed fuzz runs on stable Rust, part of `cargo test --workspace`.
//!
//! Each target runs on its seeds (`tern_fuzz::seeds`) and on mutations of
//! them from a fixed-seed PRNG, so a run is the same every time and a
//! failure replays exactly. `TERN_FUZZ_ITERS` sets the mutations per seed
//! (default: a count that keeps the whole run to about 10-20 s in a debug
//! build), `TERN_FUZZ_SEED` the PRNG seed. `TERN_FUZZ_WRITE_CORPUS=DIR`
//! also writes every seed to `DIR/<target>/`, the corpus layout cargo-fuzz
//! starts from. A failing input is saved under the test's target tmp dir
//! and named in the failure message. See `docs/fuzzing.md`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tern_fuzz::mutate::{mutate, Rng};
use tern_fuzz::seeds;

/// Longest mutated input: larger inputs only cost time in a debug build.
const MAX_LEN: usize = 64 << 10;

/// Any single input taking longer than this is reported as a hang.
const HANG: Duration = Duration::from_secs(10);

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

fn failure_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures")
}

/// Runs `target` on one input; a panic or a hang saves the input and fails
/// the test, naming where to find it and how to replay the run.
fn run_one(name: &str, target: fn(&[u8]), input: &[u8], what: &str, seed: u64) -> Duration {
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| target(input)));
    let took = start.elapsed();
    let problem = match result {
        Err(_) => Some("panicked"),
        Ok(()) if took > HANG => Some("hung"),
        Ok(()) => None,
    };
    if let Some(problem) = problem {
        let dir = failure_dir();
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!(
            "{name}-{:016x}.bin",
            xxhash_rust::xxh3::xxh3_64(input)
        ));
        let _ = std::fs::write(&path, input);
        panic!(
            "{name} {problem} ({took:?}) on {what} (TERN_FUZZ_SEED={seed:#x}); \
             input of {} bytes saved to {}; copy it into crates/tern-fuzz/seeds/{name}/ \
             once fixed",
            input.len(),
            path.display()
        );
    }
    took
}

fn fuzz(name: &str, target: fn(&[u8]), default_iters: u64) {
    let iters = env_u64("TERN_FUZZ_ITERS").unwrap_or(default_iters);
    let seed = env_u64("TERN_FUZZ_SEED").unwrap_or(0x7e27_f022);
    let corpus = seeds::all(name);
    assert!(!corpus.is_empty(), "{name} has no seeds");
    if let Some(dir) = std::env::var_os("TERN_FUZZ_WRITE_CORPUS") {
        let dir = PathBuf::from(dir).join(name);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for input in &corpus {
            let file = format!("seed-{:016x}", xxhash_rust::xxh3::xxh3_64(input));
            std::fs::write(dir.join(file), input).expect("writing a corpus file");
        }
    }

    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for (i, input) in corpus.iter().enumerate() {
        slowest = slowest.max(run_one(name, target, input, &format!("seed {i}"), seed));
    }
    // Each seed gets its own stream, so adding a seed does not change the
    // mutations of the others.
    let mut runs = corpus.len() as u64;
    for (i, input) in corpus.iter().enumerate() {
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for n in 0..iters {
            let mutated = mutate(&mut rng, input, &corpus, MAX_LEN);
            let what = format!("mutation {n} of seed {i}");
            slowest = slowest.max(run_one(name, target, &mutated, &what, seed));
            runs += 1;
        }
    }
    eprintln!(
        "{name}: {runs} inputs ({} seeds x {iters} mutations) in {:?}, slowest {slowest:?}",
        corpus.len(),
        start.elapsed()
    );
}

#[test]
fn image_decode() {
    fuzz("image_decode", tern_fuzz::image_decode, 8_000);
}

#[test]
fn proto_frames() {
    fuzz("proto_frames", tern_fuzz::proto_frames, 10_000);
}

#[test]
fn api_bodies() {
    fuzz("api_bodies", tern_fuzz::api_bodies, 3_000);
}

/// A frame whose length says 4 GiB is refused after its four length bytes,
/// before anything of that size is allocated or read.
#[test]
fn a_4_gib_frame_is_refused_after_its_length() {
    struct Endless(usize);
    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            // The length prefix, then zeros for ever.
            for b in buf.iter_mut() {
                *b = if self.0 < 4 { 0xff } else { 0 };
                self.0 += 1;
            }
            Ok(buf.len())
        }
    }
    let mut peer = Endless(0);
    let got = tern_migrate::proto::recv(&mut peer);
    assert!(matches!(got, Err(tern_migrate::MigrateError::Protocol(_))));
    assert_eq!(peer.0, 4, "bytes read past the length");
}

#[test]
fn seeds_are_accepted_by_their_decoders() {
    // Generated seeds must reach past the first checks, or the mutations
    // would only ever test those.
    for (i, image) in seeds::images().iter().enumerate() {
        tern_image::decode(image).unwrap_or_else(|e| panic!("image seed {i}: {e}"));
    }
    let frames = seeds::frames();
    // All but the two oversized frames decode.
    for (i, frame) in frames.iter().enumerate().take(frames.len() - 2) {
        let mut r = frame.as_slice();
        while !r.is_empty() {
            tern_migrate::proto::recv(&mut r).unwrap_or_else(|e| panic!("frame seed {i}: {e}"));
        }
    }
    let module = seeds::command_module();
    tern_prepare::check::check_command(&module).expect("the seed module is a command");
}

#[test]
fn the_stack_seed_is_a_real_continuation() {
    let (module, stack) = seeds::prepared_with_stack().expect("a stack the resume code accepts");
    let frames = tern_prepare::resume::frames(&stack).unwrap();
    eprintln!("stack seed: {frames:?}");
    tern_prepare::resume::build(&module, &frames).unwrap();
}
