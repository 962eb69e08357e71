//! What the controller must not forget: the nodes that joined, where each
//! guest was placed, the moves it made and the energy each guest drew. The
//! rest (node load, guest states) it learns again by polling the nodes.
//!
//! Two stores hold it. [`FileStore`] (no `--etcd`): `state.json` in the
//! data directory, replaced whole by write, fsync and rename, so that a
//! controller killed at any instant restarts from the last state it
//! acted on. [`EtcdStore`]: the same document under one etcd key, written
//! only by the leader, in a transaction fenced by its election (a deposed
//! leader's write fails).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tern_api::MoveRecord;

/// Moves kept in the state (the oldest go first).
pub const MAX_MOVES: usize = 1000;

/// Where a guest was placed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Placed {
    /// Node name.
    pub node: String,
    /// When the cluster first saw it, ms since the epoch.
    pub first_seen_ms: u64,
    /// Module hash it started from, if the controller started it.
    #[serde(default)]
    pub module: Option<String>,
    /// Energy drawn for it so far, joules.
    #[serde(default)]
    pub energy_j: f64,
    /// It ended (exited, failed, stopped) or was lost; kept for `cluster`.
    #[serde(default)]
    pub ended: Option<String>,
}

/// The controller's durable state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Node name -> API address.
    pub nodes: BTreeMap<String, String>,
    /// Guest id -> where.
    pub guests: BTreeMap<String, Placed>,
    /// Moves, oldest first.
    pub moves: Vec<MoveRecord>,
    /// Next move's sequence number.
    pub next_seq: u64,
}

impl State {
    /// Appends a move, dropping the oldest beyond [`MAX_MOVES`].
    pub fn push_move(&mut self, m: MoveRecord) {
        self.moves.push(m);
        if self.moves.len() > MAX_MOVES {
            let extra = self.moves.len() - MAX_MOVES;
            self.moves.drain(..extra);
        }
    }

    /// The move with sequence number `seq`.
    pub fn move_mut(&mut self, seq: u64) -> Option<&mut MoveRecord> {
        self.moves.iter_mut().find(|m| m.seq == seq)
    }
}

/// Where the state lives.
pub trait Store: Send + Sync {
    /// The state as last saved (empty at first).
    fn load(&self) -> Result<State, String>;
    /// Replaces the saved state, durably.
    fn save(&self, s: &State) -> Result<(), String>;
    /// One line for logs and `tern cluster`.
    fn describe(&self) -> String;
}

/// `state.json` in the data directory.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<FileStore, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(FileStore {
            path: dir.join("state.json"),
        })
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<State, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is damaged: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }

    fn save(&self, s: &State) -> Result<(), String> {
        use std::io::Write;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let bytes = serde_json::to_vec(s).map_err(|e| e.to_string())?;
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", self.path.display());
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
        tmp.write_all(&bytes).map_err(fail)?;
        tmp.as_file().sync_all().map_err(fail)?;
        tmp.persist(&self.path).map_err(|e| fail(e.error))?;
        // The rename is durable once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)
    }

    fn describe(&self) -> String {
        self.path
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

/// The state under one etcd key, written by the leader only.
pub struct EtcdStore {
    etcd: tern_etcd::Etcd,
    key: String,
    election: std::sync::Mutex<tern_etcd::Election>,
}

/// etcd key prefix of everything Tern keeps there.
pub const ETCD_PREFIX: &str = "/tern";

impl EtcdStore {
    /// The store at `etcd`, writing as `election`'s leader.
    pub fn new(etcd: tern_etcd::Etcd, election: tern_etcd::Election) -> EtcdStore {
        EtcdStore {
            etcd,
            key: format!("{ETCD_PREFIX}/controller/state"),
            election: std::sync::Mutex::new(election),
        }
    }

    /// The election (to campaign and to ask who leads).
    pub fn election(&self) -> std::sync::MutexGuard<'_, tern_etcd::Election> {
        self.election.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<State, String> {
        match self.etcd.get(&self.key).map_err(|e| e.to_string())? {
            Some(kv) => serde_json::from_slice(&kv.value)
                .map_err(|e| format!("etcd key {} is damaged: {e}", self.key)),
            None => Ok(State::default()),
        }
    }

    fn save(&self, s: &State) -> Result<(), String> {
        let bytes = serde_json::to_vec(s).map_err(|e| e.to_string())?;
        let ok = self
            .election()
            .txn_as_leader(vec![tern_etcd::Op::put(&self.key, &bytes, None)])
            .map_err(|e| e.to_string())?;
        if ok {
            Ok(())
        } else {
            Err("this controller no longer leads: its write was refused".into())
        }
    }

    fn describe(&self) -> String {
        format!("etcd {}", self.etcd.endpoints().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_store_round_trips_and_starts_empty() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        assert_eq!(s.load().unwrap(), State::default());
        let mut st = State::default();
        st.nodes.insert("a".into(), "127.0.0.1:1".into());
        st.next_seq = 7;
        s.save(&st).unwrap();
        assert_eq!(s.load().unwrap(), st);
        std::fs::write(d.path().join("state.json"), b"{").unwrap();
        assert!(s.load().unwrap_err().contains("damaged"));
    }
}
