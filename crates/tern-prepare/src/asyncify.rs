//! The binaryen Asyncify transform, run through `wasm-opt`.
//!
//! Asyncify rewrites every function so that it can save its locals to a
//! buffer in linear memory and return (unwind), and later be re-entered and
//! restore them (rewind). Tern lets it unwind only from `tern.yield` and the
//! WASI calls that can block.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::{BLOCKING_WASI, WASI_MODULE, YIELD_IMPORT};

/// Name recorded in images for this transform.
pub const TRANSFORM_NAME: &str = "binaryen-asyncify";
/// Version of Tern's side of the transform (migration points + flags). Bump it
/// whenever the prepared output could change for the same input.
/// 2: entry checks only in functions that can recurse.
/// 3: points read the pause flag from the page past 4 GiB, not a global.
pub const PASS_VERSION: u32 = 3;

/// Pass versions whose prepared modules (and so images) this build resumes.
/// Versions 1 and 2 read the pause flag from a global that only wasmtime's
/// epoch interruption raised, which Tern no longer runs: resumed, they could
/// never pause again.
pub const RESUMABLE_PASS_VERSIONS: &[u32] = &[3];

/// True when a module prepared as `version` (a transform version string,
/// `tern-<pass>-...`) can be resumed by this build.
pub fn resumable(version: &str) -> bool {
    RESUMABLE_PASS_VERSIONS
        .iter()
        .any(|v| version.starts_with(&format!("tern-{v}-")))
}

/// Why Asyncify failed.
#[derive(Debug, thiserror::Error)]
pub enum AsyncifyError {
    /// `wasm-opt` is not installed.
    #[error("cannot run {0}: install binaryen (Debian package `binaryen`) or set TERN_WASM_OPT")]
    Missing(String),
    /// Writing or reading its temporary files failed.
    #[error("preparing a temporary file for wasm-opt failed: {0}")]
    Io(#[from] std::io::Error),
    /// `wasm-opt` exited with an error.
    #[error("wasm-opt --asyncify failed: {0}")]
    Failed(String),
}

fn features() -> &'static [&'static str] {
    &[
        "--enable-bulk-memory",
        "--enable-sign-ext",
        "--enable-mutable-globals",
        "--enable-nontrapping-float-to-int",
        "--enable-simd",
        "--enable-multivalue",
        "--enable-reference-types",
    ]
}

/// The version string recorded for this transform with `wasm_opt`.
pub fn transform_version(wasm_opt: &Path, opt_level: u8) -> Result<String, AsyncifyError> {
    static VERSION: OnceLock<String> = OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(format!("tern-{PASS_VERSION}-O{opt_level}+{v}"));
    }
    let out = Command::new(wasm_opt)
        .arg("--version")
        .output()
        .map_err(|_| AsyncifyError::Missing(wasm_opt.display().to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "wasm-opt version 108" -> "wasm-opt-108"
    let v = text.trim().replace(" version ", "-").replace(' ', "_");
    let v = VERSION.get_or_init(|| v).clone();
    Ok(format!("tern-{PASS_VERSION}-O{opt_level}+{v}"))
}

/// Runs Asyncify (and optionally binaryen's optimizer) over `wasm`.
pub fn run(wasm: &[u8], wasm_opt: &Path, opt_level: u8) -> Result<Vec<u8>, AsyncifyError> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.wasm");
    let output = dir.path().join("out.wasm");
    std::fs::write(&input, wasm)?;
    let mut imports = vec![format!("{}.{}", YIELD_IMPORT.0, YIELD_IMPORT.1)];
    imports.extend(BLOCKING_WASI.iter().map(|f| format!("{WASI_MODULE}.{f}")));
    let mut cmd = Command::new(wasm_opt);
    cmd.arg(&input)
        .args(features())
        .arg("--asyncify")
        .arg(format!("--pass-arg=asyncify-imports@{}", imports.join(",")));
    if opt_level > 0 {
        cmd.arg(format!("-O{}", opt_level.min(4)));
    }
    cmd.arg("-o").arg(&output);
    let out = cmd
        .output()
        .map_err(|_| AsyncifyError::Missing(wasm_opt.display().to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let line = msg
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .trim()
            .to_string();
        return Err(AsyncifyError::Failed(line));
    }
    Ok(std::fs::read(&output)?)
}
