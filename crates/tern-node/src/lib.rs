//! Tern's node daemon: runs guests, answers an HTTP/JSON API for the CLI
//! and the controller, exports Prometheus metrics, and sends and receives
//! live migrations.
//!
//! Threads, not tasks: every guest runs on its own thread ([`runner`]), every
//! migration and every API request on one of its own. The HTTP API
//! ([`api`]) and the migration listener are two TCP ports: `--listen` and
//! `--migrate-listen` (default: the next port). State that must survive the
//! daemon lives in the data directory: `guests.json` (the [`registry`]),
//! `migrations.jsonl` (every migration report) and `guests/<id>/log` (each
//! guest's whole output, which moves with the guest).
//!
//! The crate by concern: [`config`] (how a node is started), [`node`] (its
//! guests' lives), [`migration`] (guests leaving and arriving), [`api`]
//! (the HTTP server; the request and reply types are `tern_api`'s, shared
//! with the CLI and the controller), [`error`] (one error type, one HTTP
//! status per kind), [`metrics`], [`events`] (ids and the JSON log).
//!
//! Each guest runs under resource limits ([`limits`], [`cpu`],
//! `docs/limits.md`): one guest running out of memory, descriptors, log
//! space or CPU share ends or slows that guest, never the node.

pub mod api;
pub mod capacity;
pub mod config;
pub mod cpu;
pub mod departed;
pub mod error;
pub mod http;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod migration;
pub mod modules;
pub mod node;
pub mod registry;
pub mod runner;

pub use config::{NodeConfig, NodeTls};
pub use error::Error;
pub use ids::{new_id, now_ms};
pub use migration::Dest;
pub use node::Node;
pub use tern_api::{BootSpec, MigrationStatus, NodeInfo};
