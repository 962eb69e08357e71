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
//!    check `if (load PAUSE_FLAG) call $tern.yield` is inserted (see
//!    [`PAUSE_FLAG_INDEX`]), every mutable global is exported (so capture sees
//!    `__stack_pointer` and the like), and the pause flag is exported as
//!    `tern_pause`;
//! 3. **transform** ([`Transform`]): makes the stack unwindable from
//!    `tern.yield` and the WASI calls that can block: Tern's own
//!    ([`unwind`]), or binaryen's Asyncify ([`asyncify`]), kept as a
//!    differential-testing oracle.
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
pub mod liveness;
pub mod points;
pub mod resume;
pub mod unwind;

pub use cache::{default_cache_dir, Cache, CacheError};

use std::path::PathBuf;

/// The import module and name of Tern's migration point.
pub const YIELD_IMPORT: (&str, &str) = ("tern", "yield");
/// Export name of the pause flag global (an `i32`, nonzero = pause requested).
pub const PAUSE_EXPORT: &str = "tern_pause";
/// Where migration points read the pause flag, an `i32` that the monitor
/// raises from any thread: `i32.load offset=PAUSE_FLAG_OFFSET
/// (i32.const PAUSE_FLAG_INDEX)`, that is at [`PAUSE_FLAG_ADDRESS`], 64 KiB
/// past the 4 GiB a 32-bit address reaches. Guest code cannot name that
/// byte but through such an offset; wasmtime compiles the load without a
/// bounds check (its 4 GiB reservation plus guard covers it), and the
/// monitor maps that one page of the guard, read-only to the guest.
pub const PAUSE_FLAG_INDEX: i32 = -0x1_0000;
/// See [`PAUSE_FLAG_INDEX`].
pub const PAUSE_FLAG_OFFSET: u32 = 0x2_0000;
/// See [`PAUSE_FLAG_INDEX`]: 4 GiB + 64 KiB, aligned for any host page
/// size up to 64 KiB.
pub const PAUSE_FLAG_ADDRESS: u64 = PAUSE_FLAG_INDEX as u32 as u64 + PAUSE_FLAG_OFFSET as u64;
const _: () = assert!(PAUSE_FLAG_ADDRESS == (1 << 32) + 0x1_0000);
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
    /// Tern's own transform ([`unwind`]), in Rust, linear in module size.
    #[default]
    Tern,
    /// Binaryen's Asyncify pass, run through `wasm-opt`: kept as a
    /// differential-testing oracle.
    BinaryenAsyncify,
}

impl Transform {
    /// Parses a transform name as given on the command line or in
    /// `TERN_TRANSFORM`: `tern` or `asyncify`.
    pub fn parse(name: &str) -> Result<Transform, String> {
        match name {
            "tern" | unwind::TRANSFORM_NAME => Ok(Transform::Tern),
            "asyncify" | asyncify::TRANSFORM_NAME => Ok(Transform::BinaryenAsyncify),
            other => Err(format!(
                "unknown transform `{other}`: use `tern` (the default) or `asyncify`"
            )),
        }
    }

    /// The name and version recorded for modules this transform makes.
    pub fn id(&self, opts: &Options) -> Result<TransformId, PrepareError> {
        Ok(match self {
            Transform::Tern => TransformId {
                name: unwind::TRANSFORM_NAME.to_string(),
                version: unwind::transform_version(),
            },
            Transform::BinaryenAsyncify => TransformId {
                name: asyncify::TRANSFORM_NAME.to_string(),
                version: asyncify::transform_version(&opts.wasm_opt, opts.opt_level)?,
            },
        })
    }
}

/// True when this build can resume a guest whose module was made by the
/// transform `name` at `version`.
pub fn resumable(name: &str, version: &str) -> bool {
    match name {
        unwind::TRANSFORM_NAME => unwind::resumable(version),
        asyncify::TRANSFORM_NAME => asyncify::resumable(version),
        _ => false,
    }
}

/// What [`resumable`] accepts, for error messages.
pub fn resumable_description() -> String {
    let passes: Vec<String> = asyncify::RESUMABLE_PASS_VERSIONS
        .iter()
        .map(|v| format!("tern-{v}-*"))
        .collect();
    format!(
        "{} {} or {} {}",
        unwind::TRANSFORM_NAME,
        unwind::transform_version(),
        asyncify::TRANSFORM_NAME,
        passes.join(", ")
    )
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
    /// Tern's transform, or the one `TERN_TRANSFORM` names (an unknown name
    /// falls back to the default; `tern prepare --transform` reports it).
    fn default() -> Self {
        Options {
            transform: std::env::var("TERN_TRANSFORM")
                .ok()
                .and_then(|t| Transform::parse(&t).ok())
                .unwrap_or_default(),
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
    /// Tern's transform failed.
    #[error(transparent)]
    Unwind(#[from] unwind::UnwindError),
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
    let transform = opts.transform.id(opts)?;
    let module = match opts.transform {
        Transform::Tern => unwind::run(&with_points)?,
        Transform::BinaryenAsyncify => {
            check::asyncify_limits(wasm)?;
            asyncify::run(&with_points, &opts.wasm_opt, opts.opt_level)?
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
