//! Loading and storing compiled modules in Tern's cache directory.

use std::io::Write;
use std::path::Path;

use wasmtime::{Engine, Module};

/// Loads a compiled module written by [`store`] for this engine; `None` when
/// there is none or it does not load (it is then compiled again).
pub(crate) fn load(engine: &Engine, path: &Path) -> Option<Module> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file lives in Tern's private cache directory and was written
    // by `store` from `Module::serialize` of this engine configuration (its
    // name carries the engine's compatibility hash); wasmtime additionally
    // checks the header (version, target, flags) and refuses a mismatch.
    unsafe { Module::deserialize_file(engine, path) }.ok()
}

/// Writes a serialized module atomically (temp file + rename).
pub(crate) fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
