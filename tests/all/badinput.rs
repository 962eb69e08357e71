//! Bad input: one line naming the problem, exit code 2, no panic, no output.

use std::path::Path;
use std::process::Output;

use crate::support::*;

fn assert_clean_failure(what: &str, out: &Output) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit code; stderr: {err}"
    );
    assert!(out.stdout.is_empty(), "{what}: wrote to stdout");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.starts_with("tern: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}

/// A real image of a paused `ep`.
fn make_image(dir: &Path) -> Vec<u8> {
    let image = dir.join("ep.tern");
    let mut c = tern();
    c.arg("run")
        .arg(guest("ep"))
        .args(["--checkpoint-after", "300ms", "--image"])
        .arg(&image)
        .args(["--", "22"]);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::read(&image).expect("image written")
}

fn restore_and_inspect(dir: &Path, name: &str, bytes: &[u8], expect: &str) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    for sub in ["restore", "inspect"] {
        let mut c = tern();
        c.arg(sub).arg(&path);
        let (out, _) = run(c);
        let what = format!("{sub} {name}");
        assert_clean_failure(&what, &out);
        assert!(
            stderr(&out).to_lowercase().contains(expect),
            "{what}: expected `{expect}` in: {}",
            stderr(&out)
        );
    }
}

#[test]
fn corrupt_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_image(dir.path());
    restore_and_inspect(dir.path(), "empty", &[], "truncated");
    restore_and_inspect(
        dir.path(),
        "foreign",
        b"\x7fELF\x02\x01\x01 not an image at all",
        "not a tern image",
    );
    for cut in [9, 20, good.len() / 2, good.len() - 1] {
        restore_and_inspect(
            dir.path(),
            &format!("truncated-{cut}"),
            &good[..cut],
            "truncated",
        );
    }
    let mut rng = 0x9e3779b97f4a7c15u64;
    for i in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = 24 + (rng as usize) % (good.len() - 32);
        let mut bad = good.clone();
        bad[at] ^= 1 << (rng % 8);
        restore_and_inspect(dir.path(), &format!("flip-{i}"), &bad, "checksum");
    }
    let mut wrong_version = good.clone();
    wrong_version[8] = 0x7f; // major version
    restore_and_inspect(dir.path(), "version", &wrong_version, "version");
}

#[test]
fn missing_image_is_refused() {
    let mut c = tern();
    c.arg("restore").arg("/nonexistent/x.tern");
    let (out, _) = run(c);
    assert_clean_failure("restore missing", &out);
    assert!(stderr(&out).contains("/nonexistent/x.tern"));
}

#[test]
fn invalid_wasm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "garbage.wasm",
            b"this is not wasm",
            "not a webassembly module",
        ),
        (
            "truncated.wasm",
            b"\0asm\x01\0\0\0\x01\x05",
            "invalid webassembly",
        ),
        ("empty-module.wasm", b"\0asm\x01\0\0\0", "_start"),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        for sub in ["run", "prepare"] {
            let mut c = tern();
            c.arg(sub).arg(&path);
            if sub == "prepare" {
                c.arg("-o").arg(dir.path().join("out.wasm"));
            }
            let (out, _) = run(c);
            let what = format!("{sub} {name}");
            assert_clean_failure(&what, &out);
            assert!(
                stderr(&out).to_lowercase().contains(expect),
                "{what}: {}",
                stderr(&out)
            );
        }
        assert!(
            !dir.path().join("out.wasm").exists(),
            "prepare left output behind"
        );
    }
    // An already-prepared module is refused by name.
    let prepared = dir.path().join("prepared.wasm");
    let mut c = tern();
    c.arg("prepare")
        .arg(guest("hello"))
        .arg("-o")
        .arg(&prepared);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut c = tern();
    c.arg("run").arg(&prepared);
    let (out, _) = run(c);
    assert_clean_failure("run prepared", &out);
    assert!(stderr(&out).contains("already prepared"));
}

#[test]
fn changed_file_blocks_restore() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("f.tern");
    let mut c = tern();
    c.arg("run")
        .arg(guest("filerw"))
        .arg("--dir")
        .arg(format!("{}:/data", dir.path().display()))
        .args(["--checkpoint-after", "150ms", "--image"])
        .arg(&image)
        .args(["--", "--records", "200000"]);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(image.exists(), "checkpoint happened: {}", stderr(&out));
    let file = dir.path().join("out.txt");
    let mut contents = std::fs::read(&file).unwrap();
    contents.extend_from_slice(b"tampered\n");
    std::fs::write(&file, &contents).unwrap();
    let mut c = tern();
    c.arg("restore").arg(&image);
    let (out, _) = run(c);
    assert_clean_failure("restore changed", &out);
    assert!(stderr(&out).contains("out.txt"), "{}", stderr(&out));
    std::fs::remove_file(&file).unwrap();
    let (out, _) = run({
        let mut c = tern();
        c.arg("restore").arg(&image);
        c
    });
    assert_clean_failure("restore missing file", &out);
    assert!(stderr(&out).contains("out.txt"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let mut c = tern();
    c.args(["run"]);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(2));
    let mut c = tern();
    c.args([
        "run",
        "x.wasm",
        "--checkpoint-after",
        "soon",
        "--image",
        "y",
    ]);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("soon"));
}

/// An image made by an earlier layout of Tern's transform (version 2
/// called `tern.yield` at every migration point, and read a pause flag
/// that only wasmtime's epochs raised) is refused in one line that names
/// the transform version, before anything runs.
#[test]
fn image_of_an_older_transform_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_image(dir.path());
    let image = tern_image::read_file(&dir.path().join("ep.tern")).unwrap();
    assert_eq!(image.meta.transform.name, "tern-unwind");
    let mut meta = image.meta.clone();
    let current = format!("unwind{}", tern_prepare::unwind::VERSION);
    meta.transform.version = meta.transform.version.replace(&current, "unwind2");
    assert_ne!(meta.transform.version, image.meta.transform.version);
    let memory = image.memory.to_bytes().unwrap();
    let old = dir.path().join("old.tern");
    tern_image::write_file(
        &old,
        &tern_image::ImageRef {
            meta: &meta,
            module: &image.module,
            memory: &memory,
            globals: &image.globals,
            stack: &image.stack,
            host: &image.host,
        },
    )
    .unwrap();
    let mut c = tern();
    c.arg("restore").arg(&old);
    let (out, _) = run(c);
    assert_clean_failure("restore of a tern-unwind 1 image", &out);
    assert!(
        stderr(&out).contains(&meta.transform.version),
        "{}",
        stderr(&out)
    );
}
