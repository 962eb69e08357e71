//! The contract between Tern's nodes, its controller and its CLI.
//!
//! Every request, reply and state that crosses a node's HTTP/JSON API is a
//! type here ([`types`], [`migration`]), so that the node serving it, the
//! CLI and the controller calling it cannot disagree on a field or a state
//! name; [`client::NodeClient`] makes the calls. Errors cross the wire as
//! [`types::ErrorBody`] with a 4xx or 5xx status.

pub mod client;
pub mod cluster;
pub mod migration;
pub mod types;

pub use client::{ControllerClient, NodeClient};
pub use cluster::{
    ClusterView, JoinRequest, Joined, Located, MoveRecord, MoveRequest, MoveState, NodeHealth,
    NodeView,
};
pub use migration::{
    MigrateRequest, MigrationState, MigrationStatus, PostcopyReport, Progress, Report, RoundStat,
};
pub use types::{
    check_module_hash, module_hash, BootSpec, CheckpointReply, CheckpointRequest, Created,
    ErrorBody, GuestLimits, GuestRecord, GuestState, ModuleState, ModuleStatus, NodeClass,
    NodeInfo, PowerModel, RestoreRequest,
};
