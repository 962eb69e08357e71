//! The node's durable record of its guests, kept in `DATA_DIR/guests.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use tern_api::GuestRecord;
use tern_api::GuestState;

/// The on-disk registry.
pub struct Registry {
    path: PathBuf,
    /// Guests by id.
    pub guests: BTreeMap<String, GuestRecord>,
}

impl Registry {
    /// Loads `dir/guests.json` (empty if absent). Guests recorded as running
    /// or paused did not survive the daemon: they are marked `lost`.
    pub fn load(dir: &Path) -> Result<Registry, String> {
        let path = dir.join("guests.json");
        let mut guests: BTreeMap<String, GuestRecord> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is damaged: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        for g in guests.values_mut() {
            if g.state.is_live() {
                g.state = GuestState::Lost;
                g.error = Some("the node daemon stopped while the guest ran".into());
            }
        }
        let r = Registry { path, guests };
        r.save()?;
        Ok(r)
    }

    /// Writes the registry atomically and durably (temp file, fsync, rename).
    pub fn save(&self) -> Result<(), String> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.guests).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}
