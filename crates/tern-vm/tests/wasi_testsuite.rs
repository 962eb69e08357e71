//! Runs the prebuilt WASI preview1 conformance suite (WebAssembly/wasi-testsuite)
//! against Tern's WASI host on plain wasmtime.
//!
//! The suite is found through `TERN_WASI_TESTSUITE` or at
//! `<workspace>/../shared/wasi-testsuite`; without it the test is skipped.
//! Every `tests/*/testsuite/wasm32-wasip1/*.wasm` is run with the arguments,
//! environment and preopened root from its `.json`, and its exit status (and
//! stdout/stderr, where the `.json` gives them) compared. Tests in
//! [`EXPECTED_FAILURES`] must fail (each with its reason, also listed in
//! `docs/wasi.md`); any other failure, or an expected failure that passes,
//! fails this test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tern_vm::store::StoreData;
use tern_vm::wasi::{add_to_linker, GuestExit, OutputSink, WasiConfig, WasiCtx};
use wasmtime::{Engine, Linker, Module, Store};

/// Tests known to fail, as `suite/name` with the reason.
const EXPECTED_FAILURES: &[(&str, &str)] = &[];

fn suite_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("TERN_WASI_TESTSUITE") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/wasi-testsuite"),
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

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
    }
}

/// Runs one test; `Err` describes how it failed.
fn run_one(engine: &Engine, wasm: &Path, work: &Path) -> Result<(), String> {
    let spec = read_spec(&wasm.with_extension("json"))?;
    let name = wasm
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut preopens = Vec::new();
    if let Some(root) = &spec.root {
        let src = wasm.parent().unwrap_or(Path::new(".")).join(root);
        let dst = work.join("root");
        copy_tree(&src, &dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
        preopens.push((dst, "/".to_string()));
    }
    let (out, err) = (Capture::default(), Capture::default());
    let mut args = vec![name];
    args.extend(spec.args.iter().cloned());
    let ctx = WasiCtx::new(WasiConfig {
        args,
        env: spec.env.clone(),
        preopens,
        stdout: OutputSink::Writer(Box::new(out.clone())),
        stderr: OutputSink::Writer(Box::new(err.clone())),
    })
    .map_err(|e| e.to_string())?;
    let module = Module::from_file(engine, wasm).map_err(|e| format!("compile: {e:#}"))?;
    let mut linker = Linker::new(engine);
    add_to_linker(&mut linker).map_err(|e| format!("linker: {e:#}"))?;
    let mut store = Store::new(engine, StoreData::new(ctx));
    let instance = linker
        .instantiate(&mut store, &module)
        .map_err(|e| format!("instantiate: {e:#}"))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|e| format!("no _start: {e:#}"))?;
    let code = match start.call(&mut store, ()) {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<GuestExit>() {
            Some(GuestExit(c)) => *c,
            None => {
                return Err(format!(
                    "trapped: {}\n  stdout: {:?}\n  stderr: {:?}",
                    e.root_cause(),
                    out.text(),
                    err.text()
                ))
            }
        },
    };
    let mut problems = Vec::new();
    if code != spec.exit_code {
        problems.push(format!("exit status {code}, expected {}", spec.exit_code));
    }
    if let Some(want) = &spec.stdout {
        if &out.text() != want {
            problems.push(format!("stdout {:?}, expected {want:?}", out.text()));
        }
    }
    if let Some(want) = &spec.stderr {
        if &err.text() != want {
            problems.push(format!("stderr {:?}, expected {want:?}", err.text()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n  stdout: {:?}\n  stderr: {:?}",
            problems.join("; "),
            out.text(),
            err.text()
        ))
    }
}

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

#[test]
fn wasi_testsuite() {
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
    let engine = Engine::new(&wasmtime::Config::new()).expect("engine");
    let work = tempfile::tempdir().expect("tempdir");
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, Result<(), String>)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((id, wasm)) = tests.get(i) else {
                    break;
                };
                let dir = work.path().join(id.replace('/', "__"));
                let r = run_one(&engine, wasm, &dir);
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
                "{id}: passes but is listed in EXPECTED_FAILURES (remove it there and in docs/wasi.md)"
            )),
            (Err(e), None) => failures.push(format!("{id}: {e}")),
            (Err(_), Some((_, why))) => eprintln!("{id}: expected failure ({why})"),
        }
    }
    eprintln!(
        "wasi-testsuite: {passed} passed, {} expected failures, {} unexpected failures, of {}",
        results.len() - passed - failures.len(),
        failures.len(),
        results.len()
    );
    assert!(
        failures.is_empty(),
        "wasi-testsuite failures:\n{}",
        failures.join("\n")
    );
}
