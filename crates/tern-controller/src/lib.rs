//! Tern's controller: the cluster offloads by itself.
//!
//! Nodes join it (`tern node --join URL`, or register in etcd with
//! `--etcd`); it polls each node's API every tick ([`controller`]), places
//! new guests and moves running ones by a [`policy`] (throughput: offload
//! an overloaded server to boards and bring guests back when it has room;
//! energy: most work per joule within a throughput floor), and records
//! every move with its reason. Its durable [`state`] lives in its data
//! directory (crash-safe) or in etcd, where several controllers elect one
//! leader and only the leader acts ([`api`] serves every one of them).
//! `docs/controller.md` tells the whole story.

pub mod api;
pub mod controller;
pub mod metrics;
pub mod policy;
pub mod state;

pub use controller::{Controller, ControllerConfig};
pub use tern_node::Error;
