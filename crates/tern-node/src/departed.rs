//! Images of guests that left this node, kept for a while (`--keep-departed`)
//! within a size budget (`--keep-departed-size`), so that a guest coming back
//! is sent only the pages that changed since it left (`tern_migrate::base`).
//!
//! One file per guest, `<data-dir>/departed/<id>.tern`: a full image written
//! on the guest's thread right after the handoff, off the migration's
//! critical path. Expired images go first, then the oldest while the total
//! is over budget.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tern_vm::Guest;

/// The departed-guest store of one node.
pub struct Departed {
    dir: PathBuf,
    keep: Duration,
    budget: u64,
    lock: Mutex<()>,
}

impl Departed {
    /// The store under `data_dir`, keeping images `keep` long and at most
    /// `budget` bytes in all (either 0: keep nothing). Sweeps at once.
    pub fn open(data_dir: &Path, keep: Duration, budget: u64) -> Result<Departed, String> {
        let dir = data_dir.join("departed");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let d = Departed {
            dir,
            keep,
            budget,
            lock: Mutex::new(()),
        };
        d.sweep();
        Ok(d)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.tern"))
    }

    /// True when an image of a guest with `memory_bytes` of memory may be
    /// kept at all (the image is never larger than its memory plus module).
    pub fn admits(&self, memory_bytes: u64) -> bool {
        !self.keep.is_zero() && memory_bytes < self.budget
    }

    /// Writes the image of `guest`, paused and already running elsewhere,
    /// then sweeps. Returns the image's size in bytes.
    pub fn store(&self, id: &str, guest: &mut Guest) -> Result<u64, String> {
        let stats = guest
            .save_image(&self.path(id))
            .map_err(|e| e.to_string())?;
        self.sweep();
        if !self.path(id).exists() {
            return Err(format!(
                "its image ({} bytes) does not fit the {}-byte budget",
                stats.image_bytes, self.budget
            ));
        }
        Ok(stats.image_bytes)
    }

    /// The kept image of guest `id`, if there is one still in time.
    pub fn find(&self, id: &str) -> Option<PathBuf> {
        self.sweep();
        let path = self.path(id);
        path.exists().then_some(path)
    }

    /// Forgets guest `id`'s image (it runs here again).
    pub fn remove(&self, id: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Deletes expired images, then the oldest ones while over budget.
    pub fn sweep(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut kept = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let Ok(md) = e.metadata() else { continue };
            let age = md
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let is_image = path.extension().is_some_and(|x| x == "tern");
            if !is_image || age > self.keep || self.budget == 0 {
                // Expired, or the leftover of a write cut short long ago.
                if is_image || age > Duration::from_secs(3600) {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            kept.push((age, md.len(), path));
        }
        // Youngest first: the oldest are dropped while over budget.
        kept.sort_by_key(|k| k.0);
        let mut total = 0u64;
        for (_, len, path) in kept {
            total += len;
            if total > self.budget {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image(d: &Departed, id: &str, len: usize) {
        std::fs::write(d.path(id), vec![1u8; len]).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tern-departed-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn oldest_images_go_first_when_over_budget() {
        let dir = temp_dir("budget");
        let d = Departed::open(&dir, Duration::from_secs(600), 250).unwrap();
        fake_image(&d, "a", 100);
        std::thread::sleep(Duration::from_millis(20));
        fake_image(&d, "b", 100);
        std::thread::sleep(Duration::from_millis(20));
        fake_image(&d, "c", 100);
        d.sweep();
        assert!(d.find("a").is_none());
        assert!(d.find("b").is_some());
        assert!(d.find("c").is_some());
        assert!(d.admits(200));
        assert!(!d.admits(250));
        d.remove("b");
        assert!(d.find("b").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn expired_images_and_zero_budgets_keep_nothing() {
        let dir = temp_dir("expiry");
        let d = Departed::open(&dir, Duration::from_millis(50), 1000).unwrap();
        fake_image(&d, "a", 10);
        assert!(d.find("a").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(d.find("a").is_none());
        let off = Departed::open(&dir, Duration::ZERO, 1000).unwrap();
        assert!(!off.admits(1));
        let off = Departed::open(&dir, Duration::from_secs(60), 0).unwrap();
        fake_image(&off, "z", 1);
        assert!(off.find("z").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
