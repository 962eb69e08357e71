//! Tern's toolchain: turns a plain wasm32-wasi (preview1) command module into
//! its *migratable* form, whose whole execution state can be captured at any
//! migration point and resumed on any host.
//!
//! Preparing a module is three steps:
//!
//! 1. **validate** ([`check`]): the module must be valid WebAssembly, a
//!    preview1 command (exports `_start` and `memory`, imports nothing but
//!    `wasi_snapshot_preview1`), and not already prepared or asyncified;
//! 2. **migration points** ([`points`]): at every loop header and at the
//!    entry of every function that can recurse ([`callgraph`]) a cheap flag
//!    check `global.get $tern_pause; if; call $tern.yield; end` is inserted, every mutable global is exported (so capture sees
//!    `__stack_pointer` and the like), and the pause flag is exported as
//!    `tern_pause`;
//! 3. **transform** ([`Transform`]): makes the stack unwindable from
//!    `tern.yield` and the WASI calls that can block. The first transform is
//!    binaryen's Asyncify ([`asyncify`]).
//!
//! Every prepared module records which transform and version made it
//! ([`TransformId`]), so that images resume only under a compatible one.
//!
//! ```no_run
//! let wasm = std::fs::read("hello.wasm").unwrap();
//! let prepared = tern_prepare::prepare(&wasm, &tern_prepare::Options::default()).unwrap();
//! std::fs::write("hello.tern.wasm", &prepared.module).unwrap();
//! ```

#![deny(missing_docs)]

pub mod asyncify;
mod cache;
pub mod callgraph;
pub mod check;
pub mod points;

pub use cache::{default_cache_dir, Cache, CacheError};

use std::path::PathBuf;

/// The import module and name of Tern's migration point.
pub const YIELD_IMPORT: (&str, &str) = ("tern", "yield");
/// Export name of the pause flag global (an `i32`, nonzero = pause requested).
pub const PAUSE_EXPORT: &str = "tern_pause";
/// Prefix of the exports Tern adds for every mutable global: `tern_g<index>`.
pub const GLOBAL_EXPORT_PREFIX: &str = "tern_g";
/// WASI preview1 calls that may block, and so may suspend the guest.
pub const BLOCKING_WASI: &[&str] = &["fd_read", "poll_oneoff"];
/// The WASI preview1 import module name.
pub const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// Names the transform (and its version) that made a prepared module.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransformId {
    /// Transform family, e.g. `binaryen-asyncify`.
    pub name: String,
    /// Version of Tern's pass plus the tool's version.
    pub version: String,
}

/// The migratable form of a module.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The prepared module bytes.
    pub module: Vec<u8>,
    /// Which transform made it.
    pub transform: TransformId,
    /// BLAKE3 digest of the original module.
    pub original_digest: [u8; 32],
    /// BLAKE3 digest of `module`.
    pub prepared_digest: [u8; 32],
}

/// The transforms Tern can use to make a stack unwindable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transform {
    /// Binaryen's Asyncify pass, run through `wasm-opt`.
    #[default]
    BinaryenAsyncify,
}

/// How to prepare.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which transform.
    pub transform: Transform,
    /// The `wasm-opt` executable (binaryen) to run.
    pub wasm_opt: PathBuf,
    /// Binaryen optimization level run after Asyncify (0 = none).
    pub opt_level: u8,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            transform: Transform::BinaryenAsyncify,
            wasm_opt: std::env::var_os("TERN_WASM_OPT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("wasm-opt")),
            opt_level: 2,
        }
    }
}

/// Why a module could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The module failed validation or is not something Tern can migrate.
    #[error(transparent)]
    Check(#[from] check::CheckError),
    /// Inserting migration points failed.
    #[error("inserting migration points failed: {0}")]
    Points(String),
    /// The unwinding transform failed.
    #[error(transparent)]
    Asyncify(#[from] asyncify::AsyncifyError),
    /// The transform produced a module that is not valid.
    #[error("the prepared module is invalid (transform bug): {0}")]
    InvalidOutput(String),
}

/// BLAKE3 digest of a byte string.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Hex form of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prepares `wasm` (a plain wasm32-wasi command) with `opts`.
pub fn prepare(wasm: &[u8], opts: &Options) -> Result<Prepared, PrepareError> {
    let info = check::check_command(wasm)?;
    let with_points = points::insert(wasm, &info).map_err(PrepareError::Points)?;
    let (module, transform) = match opts.transform {
        Transform::BinaryenAsyncify => {
            let out = asyncify::run(&with_points, &opts.wasm_opt, opts.opt_level)?;
            let version = asyncify::transform_version(&opts.wasm_opt, opts.opt_level)?;
            (
                out,
                TransformId {
                    name: asyncify::TRANSFORM_NAME.to_string(),
                    version,
                },
            )
        }
    };
    check::check_prepared(&module).map_err(|e| PrepareError::InvalidOutput(e.to_string()))?;
    Ok(Prepared {
        original_digest: digest(wasm),
        prepared_digest: digest(&module),
        module,
        transform,
    })
}
