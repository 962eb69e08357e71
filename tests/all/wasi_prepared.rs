//! The WASI preview1 conformance suite (WebAssembly/wasi-testsuite) run
//! through the real `tern` binary: every test module is prepared (migration
//! points + Asyncify) and run exactly as a user would, `tern run`.
//!
//! `crates/tern-vm/tests/wasi_testsuite.rs` runs the same tests in-process on
//! the unprepared modules; this test mirrors its mapping of each `.json`
//! (arguments after the module's file name as `argv[0]`, environment,
//! `root` preopened as `/` from a private writable copy without `*.cleanup`
//! files) and its comparisons (exit status always, stdout/stderr where the
//! `.json` gives them). Tern prints nothing itself on a plain run, so the
//! guest's stderr is `tern`'s stderr.
//!
//! The suite is found through `TERN_WASI_TESTSUITE` or at
//! `<workspace>/../shared/wasi-testsuite`; without it the test is skipped.
//! `TERN_WASI_FILTER=name` runs a subset. Tests in [`EXPECTED_FAILURES`]
//! must fail; any other failure, or an expected failure that passes, fails
//! this test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::*;

/// Tests known to fail when prepared, as `suite/name` with the reason. The
/// same semantics as the in-process harness's list (which is empty).
const EXPECTED_FAILURES: &[(&str, &str)] = &[];

/// At most this many `tern` processes at once (the machine is shared).
const THREADS: usize = 2;

/// A single test that takes longer than this is killed and fails.
const TIMEOUT: Duration = Duration::from_secs(120);

fn suite_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("TERN_WASI_TESTSUITE") {
        Some(d) => PathBuf::from(d),
        None => root().join("../shared/wasi-testsuite"),
    };
    dir.join("tests").is_dir().then_some(dir)
}

#[derive(Debug, Default)]
struct Spec {
    args: Vec<String>,
    env: Vec<(String, String)>,
    root: Option<String>,
    exit_code: i32,
    stdout: Option<String>,
    stderr: Option<String>,
}

fn read_spec(json: &Path) -> Result<Spec, String> {
    let mut spec = Spec::default();
    if !json.exists() {
        return Ok(spec);
    }
    let text = std::fs::read_to_string(json).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if let Some(a) = v.get("args").and_then(|a| a.as_array()) {
        spec.args = a
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect();
    }
    if let Some(e) = v.get("env").and_then(|e| e.as_object()) {
        spec.env = e
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
    }
    spec.root = v.get("root").and_then(|r| r.as_str()).map(str::to_string);
    if let Some(c) = v.get("exit_code").and_then(|c| c.as_i64()) {
        spec.exit_code = c as i32;
    }
    spec.stdout = v.get("stdout").and_then(|s| s.as_str()).map(str::to_string);
    spec.stderr = v.get("stderr").and_then(|s| s.as_str()).map(str::to_string);
    Ok(spec)
}

/// Copies a directory tree, leaving out `*.cleanup` entries and making the
/// copy writable (the shared suite is read-only).
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dst)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))?;
    for ent in std::fs::read_dir(src)? {
        let ent = ent?;
        let name = ent.file_name();
        if name.to_string_lossy().ends_with(".cleanup") {
            continue;
        }
        let ty = ent.file_type()?;
        let to = dst.join(&name);
        if ty.is_dir() {
            copy_tree(&ent.path(), &to)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(ent.path())?, &to)?;
        } else {
            std::fs::copy(ent.path(), &to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// Every `tests/*/testsuite/wasm32-wasip1/*.wasm`, as (`suite/name`, path).
fn collect(suite: &Path) -> Vec<(String, PathBuf)> {
    let mut tests = Vec::new();
    let Ok(groups) = std::fs::read_dir(suite.join("tests")) else {
        return tests;
    };
    for g in groups.flatten() {
        let dir = g.path().join("testsuite/wasm32-wasip1");
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "wasm") {
                let id = format!(
                    "{}/{}",
                    g.file_name().to_string_lossy(),
                    p.file_stem().unwrap_or_default().to_string_lossy()
                );
                tests.push((id, p));
            }
        }
    }
    tests.sort();
    tests
}

/// Runs one test through `tern run`; `Err` describes how it failed.
fn run_one(wasm: &Path, work: &Path) -> Result<(), String> {
    let spec = read_spec(&wasm.with_extension("json"))?;
    let mut c = tern();
    c.arg("run");
    if let Some(root) = &spec.root {
        let src = wasm.parent().unwrap_or(Path::new(".")).join(root);
        let dst = work.join("root");
        copy_tree(&src, &dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
        c.arg("--dir").arg(format!("{}:/", dst.display()));
    }
    for (k, v) in &spec.env {
        c.arg("--env").arg(format!("{k}={v}"));
    }
    c.arg(wasm).arg("--").args(&spec.args);
    let Some((out, _)) = run_timeout(c, TIMEOUT) else {
        return Err(format!("timed out after {TIMEOUT:?}"));
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let mut problems = Vec::new();
    match out.status.code() {
        None => problems.push(format!("killed: {}", out.status)),
        Some(134) if spec.exit_code != 134 => problems.push("the guest trapped".to_string()),
        Some(2) if spec.exit_code != 2 && stderr.starts_with("tern: ") => {
            problems.push("tern failed".to_string())
        }
        Some(code) if code != spec.exit_code & 0xff => {
            problems.push(format!("exit status {code}, expected {}", spec.exit_code))
        }
        Some(_) => {}
    }
    if let Some(want) = &spec.stdout {
        if &stdout != want {
            problems.push(format!("stdout {stdout:?}, expected {want:?}"));
        }
    }
    if let Some(want) = &spec.stderr {
        if &stderr != want {
            problems.push(format!("stderr {stderr:?}, expected {want:?}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n  stdout: {stdout:?}\n  stderr: {stderr:?}",
            problems.join("; ")
        ))
    }
}

#[test]
fn wasi_testsuite_prepared() {
    let Some(suite) = suite_dir() else {
        eprintln!("wasi-testsuite not found (set TERN_WASI_TESTSUITE); skipped");
        return;
    };
    let tests = collect(&suite);
    assert!(!tests.is_empty(), "no tests under {}", suite.display());
    let filter = std::env::var("TERN_WASI_FILTER").ok();
    let tests: Vec<_> = tests
        .into_iter()
        .filter(|(id, _)| filter.as_deref().is_none_or(|f| id.contains(f)))
        .collect();
    let started = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, Result<(), String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((id, wasm)) = tests.get(i) else {
                    break;
                };
                let dir = work.path().join(id.replace('/', "__"));
                let r = run_one(wasm, &dir);
                results.lock().unwrap().push((id.clone(), r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut failures = Vec::new();
    let mut passed = 0;
    for (id, r) in &results {
        let expected = EXPECTED_FAILURES.iter().find(|(n, _)| n == id);
        match (r, expected) {
            (Ok(()), None) => passed += 1,
            (Ok(()), Some(_)) => failures.push(format!(
                "{id}: passes but is listed in EXPECTED_FAILURES (remove it there)"
            )),
            (Err(e), None) => failures.push(format!("{id}: {e}")),
            (Err(_), Some((_, why))) => eprintln!("{id}: expected failure ({why})"),
        }
    }
    eprintln!(
        "wasi-testsuite (prepared, via tern run): {passed} passed, {} expected failures, {} unexpected failures, of {}, in {:.1?}",
        results.len() - passed - failures.len(),
        failures.len(),
        results.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "wasi-testsuite (prepared) failures:\n{}",
        failures.join("\n")
    );
}
