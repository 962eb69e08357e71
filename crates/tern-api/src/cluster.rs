//! The controller's API: nodes joining, guests placed and followed, the
//! cluster as the controller sees it, and the moves it made.

use serde::{Deserialize, Serialize};

use crate::types::{GuestRecord, NodeInfo};

/// `POST /v1/nodes`: a node joins (and, repeated, says it is alive).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinRequest {
    /// The node's API address, as the controller should reach it.
    pub api: String,
}

/// The controller's reply to a join.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Joined {
    /// The node's name, as its API told the controller.
    pub name: String,
    /// The controller's name.
    pub controller: String,
}

/// Where a node stands, as the controller last saw it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeHealth {
    /// It answered the last poll.
    Up,
    /// It has not answered for longer than the controller's node timeout:
    /// its guests are reported lost, not rescheduled.
    Down,
}

/// One node in `tern cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    /// What the node says of itself.
    pub info: NodeInfo,
    /// Up or down.
    pub health: NodeHealth,
    /// Guests running there now (its load).
    pub runnable: u32,
    /// CPU cores its guests used over the last poll interval.
    pub cpu_used: f64,
    /// Power drawn now by the node's power model, in watts.
    pub power_w: f64,
    /// Energy drawn since the controller first saw it, in joules.
    pub energy_j: f64,
    /// Its guests, as it reported them.
    pub guests: Vec<GuestRecord>,
}

/// Where a move stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MoveState {
    /// Recorded, about to be asked of the source node.
    Starting,
    /// The source node is migrating the guest.
    Running,
    /// The guest runs at the destination.
    Done,
    /// The guest runs on at the source.
    Failed,
}

impl MoveState {
    /// The state as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::Starting => "starting",
            MoveState::Running => "running",
            MoveState::Done => "done",
            MoveState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for MoveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One move, with the reason the controller made it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MoveRecord {
    /// Sequence number, from 1, never reused.
    pub seq: u64,
    /// The migration id (chosen by the controller).
    pub migration: String,
    /// The guest.
    pub guest: String,
    /// Source node name.
    pub from: String,
    /// Destination node name.
    pub to: String,
    /// Why: `overload`, `return`, `energy`, `requested`.
    pub reason: String,
    /// The numbers behind the decision, in one line.
    pub detail: String,
    /// Where it stands.
    pub state: MoveState,
    /// When the controller decided, ms since the epoch.
    pub decided_ms: u64,
    /// When the source node accepted it.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When it ended.
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// Downtime the migration reported.
    #[serde(default)]
    pub downtime_ms: Option<f64>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterView {
    /// The answering controller's name.
    pub controller: String,
    /// The controller that leads (with etcd; else this one).
    pub leader: Option<String>,
    /// `throughput` or `energy`.
    pub policy: String,
    /// Where the state lives: `DIR` or `etcd ENDPOINTS`.
    pub store: String,
    /// Every node.
    pub nodes: Vec<NodeView>,
    /// The most recent moves, oldest first.
    pub moves: Vec<MoveRecord>,
    /// Energy per finished guest, by guest id, in joules (the power model's
    /// share of each node's draw while the guest ran there).
    pub energy_per_guest_j: Vec<(String, f64)>,
}

/// `GET /v1/guests/ID` on a controller: where a guest is now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Located {
    /// Guest id.
    pub id: String,
    /// Node name.
    pub node: String,
    /// That node's API address.
    pub api: String,
    /// The guest as that node reports it.
    pub record: Option<GuestRecord>,
}

/// `POST /v1/guests/ID/migrate` on a controller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MoveRequest {
    /// Destination node name (or API address).
    pub to: String,
}
