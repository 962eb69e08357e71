//! Nodes and guests as the API shows them, and the requests that act on
//! them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of machine a node is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum NodeClass {
    /// A fast, power-hungry machine (an x86_64 server).
    #[default]
    Server,
    /// A slow, frugal one (an aarch64 board).
    Board,
}

impl NodeClass {
    /// The power model of a node of this class when `--power` gives none
    /// (sources in `docs/controller.md`): a server, per core of a
    /// two-socket Xeon (SPECpower); a board, a Raspberry Pi 4 (measured
    /// by its vendor and reviewers: 2.7 W idle, 6.4 W with four busy cores).
    pub fn default_power(self) -> PowerModel {
        match self {
            NodeClass::Server => PowerModel {
                idle_w: 50.0,
                busy_w: 150.0,
            },
            NodeClass::Board => PowerModel {
                idle_w: 2.7,
                busy_w: 6.4,
            },
        }
    }

    /// Lower-case name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeClass::Server => "server",
            NodeClass::Board => "board",
        }
    }
}

impl fmt::Display for NodeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "server" => Ok(NodeClass::Server),
            "board" => Ok(NodeClass::Board),
            _ => Err(format!("unknown node class `{s}` (server, board)")),
        }
    }
}

/// `GET /v1/node`: a node's facts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Server or board.
    pub class: NodeClass,
    /// ISA (`x86_64`, `aarch64`).
    pub arch: String,
    /// HTTP API address.
    pub api: String,
    /// Migration listener address.
    pub migrate: String,
    /// Tern version.
    pub version: String,
    /// Migration protocol version.
    pub protocol: u32,
    /// CPU capacity in cores (`tern node --cpus`; default: the cores, or
    /// the cgroup CPU quota, the node has).
    #[serde(default)]
    pub cpus: f64,
    /// Power model: watts drawn idle and fully busy (`--power`).
    #[serde(default)]
    pub power: PowerModel,
    /// Measured speed of one core against a reference x86_64 core (1.0):
    /// a short calibration when the node starts.
    #[serde(default)]
    pub speed: f64,
}

/// A node's power draw, linear in its CPU use: `idle_w + (busy_w - idle_w)
/// * used / cpus`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PowerModel {
    /// Watts drawn with nothing running.
    pub idle_w: f64,
    /// Watts drawn with every core busy.
    pub busy_w: f64,
}

impl Default for PowerModel {
    fn default() -> Self {
        NodeClass::Server.default_power()
    }
}

impl PowerModel {
    /// Watts drawn using `used` of `cpus` cores.
    pub fn watts(&self, used: f64, cpus: f64) -> f64 {
        let u = if cpus > 0.0 {
            (used / cpus).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.idle_w + (self.busy_w - self.idle_w) * u
    }
}

impl std::str::FromStr for PowerModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not IDLE_W,BUSY_W (watts, e.g. 2.7,6.4)");
        let (i, b) = s.split_once(',').ok_or_else(bad)?;
        let idle_w: f64 = i.trim().parse().map_err(|_| bad())?;
        let busy_w: f64 = b.trim().parse().map_err(|_| bad())?;
        if !(idle_w >= 0.0 && busy_w >= idle_w && busy_w < 100_000.0) {
            return Err(format!(
                "power `{s}`: watts must satisfy 0 <= IDLE_W <= BUSY_W"
            ));
        }
        Ok(PowerModel { idle_w, busy_w })
    }
}

/// Where a guest stands on a node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum GuestState {
    /// Running.
    Running,
    /// Paused for a checkpoint or a migration.
    Paused,
    /// Ended with an exit status.
    Exited,
    /// Ended by a trap or a host error.
    Failed,
    /// Ended by a resource limit.
    Limited,
    /// Stopped by `tern stop`.
    Stopped,
    /// Stopped after a checkpoint.
    Checkpointed,
    /// Moved to another node (see `moved_to`).
    Moved,
    /// Gone with a node daemon that stopped while it ran.
    Lost,
}

impl GuestState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::Running => "running",
            GuestState::Paused => "paused",
            GuestState::Exited => "exited",
            GuestState::Failed => "failed",
            GuestState::Limited => "limited",
            GuestState::Stopped => "stopped",
            GuestState::Checkpointed => "checkpointed",
            GuestState::Moved => "moved",
            GuestState::Lost => "lost",
        }
    }

    /// Running or paused: the guest still lives on this node.
    pub fn is_live(self) -> bool {
        matches!(self, GuestState::Running | GuestState::Paused)
    }

    /// Parses [`GuestState::as_str`]'s names.
    pub fn parse(s: &str) -> Option<GuestState> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

impl fmt::Display for GuestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits a guest runs under (as the node enforces them).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestLimits {
    /// Most bytes of linear memory; `None`: 4 GiB.
    pub max_memory: Option<u64>,
    /// Most open descriptors.
    pub max_fds: u32,
    /// Relative CPU weight (1024 = normal).
    pub cpu_weight: Option<u32>,
    /// CPU cap in thousandths of a core.
    pub cpu_quota_millicores: Option<u32>,
}

/// What a node knows of one guest (`GET /v1/guests/ID`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestRecord {
    /// Guest id.
    pub id: String,
    /// Name (the module's file name unless given).
    pub name: String,
    /// Where it stands.
    pub state: GuestState,
    /// Exit status once exited.
    pub exit_code: Option<i32>,
    /// Failure message, for `failed`; how it ended, for `limited`.
    pub error: Option<String>,
    /// For `limited`: the limit that ended it (`memory`, `table`, `fds`,
    /// `log`).
    #[serde(default)]
    pub limit: Option<String>,
    /// The limits the guest runs under here.
    #[serde(default)]
    pub limits: Option<GuestLimits>,
    /// How its CPU weight and quota are enforced here (`cgroup DIR`,
    /// `nice N`).
    #[serde(default)]
    pub cpu_control: Option<String>,
    /// Node the guest moved to (API address), for `moved`.
    pub moved_to: Option<String>,
    /// Migration that moved it away, for `moved`.
    pub moved_by: Option<String>,
    /// Node it came from, if it arrived by migration.
    pub came_from: Option<String>,
    /// Milliseconds since the epoch when this node got the guest.
    pub since_unix_ms: u64,
    /// Linear memory size now, while it lives here.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU time it used on this node, in milliseconds.
    #[serde(default)]
    pub cpu_ms: Option<u64>,
}

impl GuestRecord {
    /// The state as `ps` shows it: a guest ended by a limit names it
    /// (`limited:memory`).
    pub fn state_label(&self) -> String {
        match &self.limit {
            Some(l) => format!("{}:{l}", self.state),
            None => self.state.to_string(),
        }
    }
}

/// `POST /v1/guests`: boot a guest.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BootSpec {
    /// Name shown by `ps`.
    pub name: String,
    /// The module, by the BLAKE3 hash (64 hex digits) it was stored under
    /// on the node (`PUT /v1/modules/HASH`). Give this or `module_b64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The wasm module itself, base64 (the older way: it travels on every
    /// boot).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module_b64: String,
    /// Guest arguments (after argv[0]).
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Preopened directories: host path, guest name.
    pub dirs: Vec<(String, String)>,
    /// Memory limit in bytes (default: the node's `--max-memory`; more
    /// than that is refused).
    #[serde(default)]
    pub max_memory: Option<u64>,
    /// Most open descriptors (default 1024).
    #[serde(default)]
    pub max_fds: Option<u32>,
    /// CPU weight, 1 to 10000 (default 100, an equal share).
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    /// CPU quota in cores, e.g. 0.25 (default: none; needs cgroups).
    #[serde(default)]
    pub cpu_quota: Option<f64>,
}

/// The reply to a boot or a restore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Created {
    /// The guest's id.
    pub id: String,
}

/// `POST /v1/restore`: restore an image file on the node's filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreRequest {
    /// Absolute path on the node.
    pub path: String,
}

/// `POST /v1/guests/ID/checkpoint`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointRequest {
    /// Where the node writes the image (absolute path on the node).
    pub path: String,
    /// Keep the guest running after the checkpoint.
    #[serde(default)]
    pub leave_running: bool,
}

/// The reply to a [`CheckpointRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointReply {
    /// Where the image is.
    pub image: String,
    /// Its size.
    pub image_bytes: u64,
    /// The guest's memory size.
    pub memory_bytes: u64,
    /// Memory pages present in the image.
    pub pages: u64,
}

/// Every error reply's body, with a 4xx or 5xx status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// One line naming the problem.
    pub error: String,
}

/// Where a module stored on a node stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModuleState {
    /// Stored; being prepared and compiled.
    Compiling,
    /// Prepared and compiled: guests start from it without waiting.
    Ready,
    /// It cannot run here (see `error`).
    Failed,
}

/// `GET /v1/modules/HASH`, and the reply to `PUT /v1/modules/HASH`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModuleStatus {
    /// BLAKE3 hash of the module's bytes, 64 hex digits.
    pub hash: String,
    /// Its size.
    pub bytes: u64,
    /// Compiling, ready or failed.
    pub state: ModuleState,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// The BLAKE3 hash of a module, as the API names it (64 lower-case hex
/// digits).
pub fn module_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Checks a module hash given by a caller: 64 lower-case hex digits.
pub fn check_module_hash(s: &str) -> Result<(), String> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a module hash (64 lower-case hex digits of BLAKE3)",
            s.chars().take(80).collect::<String>()
        ))
    }
}
