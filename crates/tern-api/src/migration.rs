//! Migrations as the API shows them: progress while one runs, the report
//! once it is done, and the requests that start one.

use serde::{Deserialize, Serialize};

/// Where a migration is, for progress bars.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// `connecting`, `offering the module`, `sending the module`,
    /// `destination compiling the module (N s)`, `copying`, `stopping`,
    /// `handover`, `done`.
    pub phase: String,
    /// Current pre-copy round (1-based; 0 before the first).
    pub round: u32,
    /// Bytes sent so far.
    pub bytes_sent: u64,
    /// Pages sent so far.
    pub pages_sent: u64,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
}

/// One pre-copy round (the last one is the stop-and-copy round).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundStat {
    /// 1-based round number.
    pub round: u32,
    /// Pages sent (zero pages included as markers).
    pub pages: u64,
    /// Bytes on the wire.
    pub bytes: u64,
    /// Milliseconds the round took.
    pub ms: f64,
}

/// What a migration did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Migration id.
    pub migration_id: String,
    /// Guest id.
    pub guest: String,
    /// Destination address.
    pub destination: String,
    /// Destination node name.
    pub destination_node: String,
    /// `cold` or `precopy`.
    pub strategy: String,
    /// Dirty-tracking method (`none` for cold).
    pub dirty_tracking: String,
    /// Why the preferred tracking method was not used, if it was not.
    pub dirty_tracking_fallback: Option<String>,
    /// Connect to commit, in milliseconds.
    pub total_ms: f64,
    /// Guest paused to guest released to run on the destination, in ms.
    pub downtime_ms: f64,
    /// Part of the downtime spent reaching a migration point.
    pub pause_ms: f64,
    /// Part of the downtime between `Final` sent and `Restored` received
    /// (the destination finishing the guest).
    pub restore_ms: f64,
    /// Bytes on the wire, both ways, frames included.
    pub bytes_sent: u64,
    /// Pages sent, zero markers included.
    pub pages_sent: u64,
    /// Rounds, the stop-and-copy round included.
    pub rounds: u32,
    /// Per round.
    pub round_stats: Vec<RoundStat>,
    /// Guest memory size at the end, in bytes.
    pub memory_bytes: u64,
    /// Pages of the guest's memory the destination still held from when
    /// the guest last left it (0: it held none).
    #[serde(default)]
    pub base_pages: u64,
    /// Non-zero pages not sent because the destination held them already.
    #[serde(default)]
    pub pages_reused: u64,
    /// Page bytes those saved (`pages_reused` x 4096).
    #[serde(default)]
    pub bytes_saved: u64,
    /// Bytes of module sent (0: the destination held it already).
    #[serde(default)]
    pub module_bytes: u64,
    /// Post-copy only: how the memory followed the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy: Option<PostcopyReport>,
}

/// How a post-copy migration's memory followed the guest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PostcopyReport {
    /// Pages the destination saw the guest wait for (fetched on demand; a
    /// fault the push resolved before it was read is not counted).
    pub faults: u64,
    /// Fault service time at the destination (fault to page in place),
    /// milliseconds: median.
    pub fault_p50_ms: f64,
    /// 99th percentile.
    pub fault_p99_ms: f64,
    /// Largest.
    pub fault_max_ms: f64,
    /// From the guest's resumption at the destination until every page was
    /// there, milliseconds.
    pub all_local_ms: f64,
    /// Pages sent because the destination asked for them.
    pub pages_requested: u64,
    /// Pages pushed in the background.
    pub pages_pushed: u64,
}

/// `POST /v1/guests/ID/migrate`: move a guest to another node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MigrateRequest {
    /// The destination node's API address.
    pub to: String,
    /// `cold` or `precopy` (default `precopy`).
    #[serde(default)]
    pub strategy: Option<String>,
    /// Pre-copy downtime budget in milliseconds.
    #[serde(default)]
    pub max_downtime_ms: Option<u64>,
    /// Dirty tracking: `auto`, `uffd` or `hash`.
    #[serde(default)]
    pub dirty: Option<String>,
    /// The migration's id, chosen by the caller (a controller records it
    /// before asking, so that after a crash it can ask how the move
    /// ended); default: the node picks one. 1 to 64 of `[a-z0-9-]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_id: Option<String>,
}

/// The reply to a [`MigrateRequest`]: the migration runs in the background.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrateStarted {
    /// Its id, for `GET /v1/migrations/MID`.
    pub migration: String,
}

/// Where a migration a node sends stands.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// Under way.
    #[default]
    Running,
    /// The guest runs at the destination.
    Done,
    /// The guest runs on at the source.
    Failed,
}

/// `GET /v1/migrations/MID`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MigrationStatus {
    /// Migration id.
    pub id: String,
    /// Guest id.
    pub guest: String,
    /// Running, done or failed.
    pub state: MigrationState,
    /// Progress so far.
    pub progress: Progress,
    /// The report, once done.
    pub report: Option<Report>,
    /// Why it failed.
    pub error: Option<String>,
}
