//! Modules by content: a module travels to a node once, as raw bytes
//! addressed by their BLAKE3 hash (`PUT /v1/modules/HASH`), and guests start
//! from the hash. The node prepares and compiles a module as it arrives, so
//! that neither a boot nor a migration bringing a guest of that module waits
//! on the compiler.
//!
//! On disk, under the data directory:
//!
//! ```text
//! modules/<hash>.wasm              a module as uploaded
//! modules/prepared/<digest>.wasm   prepared modules by their own digest:
//!                                  what migrations name (protocol 3), so a
//!                                  guest arriving with a module this node
//!                                  holds does not bring it again
//! ```
//!
//! Compiled code lives in the runtime's compile cache, keyed by the
//! prepared digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tern_api::{check_module_hash, module_hash, ModuleState, ModuleStatus};

use crate::Error;

/// Longest a boot waits for a module still compiling.
const COMPILE_WAIT: Duration = Duration::from_secs(600);

/// The modules a node holds.
pub struct Modules {
    dir: PathBuf,
    /// Modules stored since the node started, by hash; modules found on
    /// disk at start are `Ready` (their compiled code is cached, or is
    /// made on first use).
    states: Mutex<BTreeMap<String, (ModuleState, Option<String>)>>,
    changed: Condvar,
}

impl Modules {
    /// Opens (creating) `data_dir/modules`.
    pub fn open(data_dir: &Path) -> Result<Modules, String> {
        let dir = data_dir.join("modules");
        std::fs::create_dir_all(dir.join("prepared"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Modules {
            dir,
            states: Mutex::new(BTreeMap::new()),
            changed: Condvar::new(),
        })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    fn prepared_path(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir
            .join("prepared")
            .join(format!("{}.wasm", tern_prepare::hex(digest)))
    }

    /// Where module `hash` stands, if this node holds it.
    pub fn status(&self, hash: &str) -> Result<Option<ModuleStatus>, Error> {
        check_module_hash(hash).map_err(Error::BadRequest)?;
        let Ok(meta) = std::fs::metadata(self.path(hash)) else {
            return Ok(None);
        };
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let (state, error) = states
            .get(hash)
            .cloned()
            .unwrap_or((ModuleState::Ready, None));
        Ok(Some(ModuleStatus {
            hash: hash.to_string(),
            bytes: meta.len(),
            state,
            error,
        }))
    }

    /// Every module this node holds.
    pub fn list(&self) -> Vec<ModuleStatus> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<ModuleStatus> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hash = name.strip_suffix(".wasm")?;
                self.status(hash).ok().flatten()
            })
            .collect();
        out.sort_by(|a, b| a.hash.cmp(&b.hash));
        out
    }

    /// Stores `bytes` as module `hash` (which must be their hash). Returns
    /// true when it is new here and must now be compiled ([`Self::compiled`]
    /// says when that is done); false when the node held it already.
    pub fn store(&self, hash: &str, bytes: &[u8]) -> Result<bool, Error> {
        check_module_hash(hash).map_err(Error::BadRequest)?;
        let actual = module_hash(bytes);
        if actual != hash {
            return Err(Error::BadRequest(format!(
                "the module sent has BLAKE3 hash {actual}, not the {hash} it was sent as"
            )));
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(Error::BadRequest(
                "not a WebAssembly module (no \\0asm magic)".into(),
            ));
        }
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let failed = matches!(states.get(hash), Some((ModuleState::Failed, _)));
        if self.path(hash).is_file() && !failed {
            return Ok(false);
        }
        write_atomic(&self.path(hash), bytes)
            .map_err(|e| Error::Internal(format!("cannot store module {hash}: {e}")))?;
        states.insert(hash.to_string(), (ModuleState::Compiling, None));
        Ok(true)
    }

    /// Module `hash` finished compiling, or could not be.
    pub fn compiled(&self, hash: &str, result: Result<(), String>) {
        let entry = match result {
            Ok(()) => (ModuleState::Ready, None),
            Err(e) => (ModuleState::Failed, Some(e)),
        };
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_string(), entry);
        self.changed.notify_all();
    }

    /// The bytes of module `hash`, once it is compiled (waiting for that if
    /// it is under way).
    pub fn get(&self, hash: &str) -> Result<Vec<u8>, Error> {
        check_module_hash(hash).map_err(Error::BadRequest)?;
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let (states, _) = self
            .changed
            .wait_timeout_while(states, COMPILE_WAIT, |s| {
                matches!(s.get(hash), Some((ModuleState::Compiling, _)))
            })
            .unwrap_or_else(|e| e.into_inner());
        if let Some((ModuleState::Failed, why)) = states.get(hash) {
            return Err(Error::BadRequest(format!(
                "module {hash} cannot run here: {}",
                why.as_deref().unwrap_or("it failed to compile")
            )));
        }
        drop(states);
        std::fs::read(self.path(hash)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!(
                "no module {hash} on this node: store it first (PUT /v1/modules/{hash})"
            )),
            _ => Error::Internal(format!("cannot read module {hash}: {e}")),
        })
    }

    /// The prepared module whose digest is `digest`, if this node holds it
    /// whole.
    pub fn prepared(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.prepared_path(digest)).ok()?;
        (tern_prepare::digest(&bytes) == *digest).then_some(bytes)
    }

    /// Keeps a prepared module (its digest is `digest`) for guests that
    /// arrive with it later. Best effort: without it, a module is only
    /// sent again.
    pub fn keep_prepared(&self, digest: &[u8; 32], bytes: &[u8]) {
        let path = self.prepared_path(digest);
        if !path.is_file() {
            let _ = write_atomic(&path, bytes);
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that
/// a reader (or a node restarted after a crash) never sees half a module.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_is_stored_once_under_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let m = Modules::open(dir.path()).unwrap();
        let bytes = b"\0asm\x01\0\0\0".to_vec();
        let hash = module_hash(&bytes);
        assert_eq!(m.status(&hash).unwrap(), None);
        assert!(m.store(&hash, &bytes).unwrap());
        assert_eq!(
            m.status(&hash).unwrap().unwrap().state,
            ModuleState::Compiling
        );
        assert!(!m.store(&hash, &bytes).unwrap(), "stored twice");
        m.compiled(&hash, Ok(()));
        assert_eq!(m.get(&hash).unwrap(), bytes);
        assert_eq!(m.list().len(), 1);
    }

    #[test]
    fn wrong_hashes_and_non_modules_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = Modules::open(dir.path()).unwrap();
        let bytes = b"\0asm\x01\0\0\0".to_vec();
        let other = module_hash(b"something else");
        let e = m.store(&other, &bytes).unwrap_err();
        assert!(e.to_string().contains("not the"), "{e}");
        assert!(matches!(m.store("ABC", &bytes), Err(Error::BadRequest(_))));
        let text = b"hello".to_vec();
        let e = m.store(&module_hash(&text), &text).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        assert!(matches!(m.get(&other), Err(Error::NotFound(_))));
    }

    #[test]
    fn a_failed_compile_is_reported_and_may_be_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let m = Modules::open(dir.path()).unwrap();
        let bytes = b"\0asm\x01\0\0\0".to_vec();
        let hash = module_hash(&bytes);
        m.store(&hash, &bytes).unwrap();
        m.compiled(&hash, Err("no start function".into()));
        let e = m.get(&hash).unwrap_err();
        assert!(e.to_string().contains("no start function"), "{e}");
        assert!(m.store(&hash, &bytes).unwrap());
    }

    #[test]
    fn prepared_modules_are_found_by_digest_only_when_whole() {
        let dir = tempfile::tempdir().unwrap();
        let m = Modules::open(dir.path()).unwrap();
        let bytes = b"prepared".to_vec();
        let digest = tern_prepare::digest(&bytes);
        assert_eq!(m.prepared(&digest), None);
        m.keep_prepared(&digest, &bytes);
        assert_eq!(m.prepared(&digest), Some(bytes));
        std::fs::write(m.prepared_path(&digest), b"damaged").unwrap();
        assert_eq!(m.prepared(&digest), None);
    }
}
