//! A content-addressed cache of prepared modules.
//!
//! Entries live under `<dir>/prepared/<original digest>-<transform>-<version>.wasm`
//! plus a `.blake3` file holding the prepared module's digest, written after
//! it. Both are written atomically (temp file + rename), so concurrent
//! `tern run`s never see half a module; an entry without its digest, or whose
//! module does not match it, is rebuilt. Entries are validated when made, not
//! on every use: hashing a large module is cheap, validating it is not.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{digest, hex, prepare, Options, PrepareError, Prepared, TransformId};

/// Why the cache failed (preparing itself may fail with [`PrepareError`]).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Preparing the module failed.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The cache directory could not be written.
    #[error("writing the prepare cache at {path} failed: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `$XDG_CACHE_HOME/tern`, else `$HOME/.cache/tern`, else a temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TERN_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tern");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("tern");
    }
    std::env::temp_dir().join("tern-cache")
}

/// The prepare cache.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    /// The cache's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(
        &self,
        original_digest: &[u8; 32],
        opts: &Options,
    ) -> Result<(PathBuf, TransformId), PrepareError> {
        let id = opts.transform.id(opts)?;
        let key = format!(
            "{}-{}-{}",
            hex(original_digest),
            id.name,
            sanitize(&id.version)
        );
        Ok((self.dir.join("prepared").join(format!("{key}.wasm")), id))
    }

    /// True when the prepared form of `wasm` (with default options) is cached.
    pub fn is_cached(&self, wasm: &[u8]) -> bool {
        self.entry(&digest(wasm), &Options::default())
            .map(|(p, _)| p.is_file() && p.with_extension("blake3").is_file())
            .unwrap_or(false)
    }

    /// Returns the prepared form of `wasm`, from the cache when present.
    pub fn prepare(&self, wasm: &[u8], opts: &Options) -> Result<Prepared, CacheError> {
        let original_digest = digest(wasm);
        let (path, transform) = self.entry(&original_digest, opts)?;
        let digest_path = path.with_extension("blake3");
        if let (Ok(module), Ok(recorded)) =
            (std::fs::read(&path), std::fs::read_to_string(&digest_path))
        {
            // The entry was validated when it was made; its recorded digest
            // shows it is whole (hashing is far cheaper than validating a
            // large module on every run). A damaged entry is rebuilt.
            let prepared_digest = digest(&module);
            if recorded.trim() == hex(&prepared_digest) {
                return Ok(Prepared {
                    prepared_digest,
                    module,
                    original_digest,
                    transform,
                });
            }
        }
        let prepared = prepare(wasm, opts)?;
        let write = |p: &Path, bytes: &[u8]| {
            write_atomic(p, bytes).map_err(|source| CacheError::Write {
                path: p.to_path_buf(),
                source,
            })
        };
        write(&path, &prepared.module)?;
        write(&digest_path, hex(&prepared.prepared_digest).as_bytes())?;
        Ok(prepared)
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
