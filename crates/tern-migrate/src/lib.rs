//! Tern's live migration: moving a running guest to another node with the
//! least downtime, the fewest bytes, and never a lost or duplicated guest.
//!
//! By concern:
//!
//! * [`transport`]: one framed link (`transport::Link`, crate-private)
//!   carrying [`proto`] messages over TCP, mutual TLS ([`Tls`]) or, in
//!   tests, an in-process pipe; both sides use it the same way.
//! * [`proto`]: the wire protocol (framed postcard messages).
//! * `session` (crate-private): how every session starts, on both sides:
//!   `Hello`/`Welcome` with the version check, then `Begin` (a migration)
//!   or `Resolve` (who owns a guest).
//! * [`handoff`]: the exactly-one-owner handoff as a state machine
//!   ([`handoff::State`]), driven by the source.
//! * `strategy` (crate-private): how memory moves, one module per
//!   strategy: `strategy::cold` (stop and copy) and `strategy::precopy`
//!   (rounds of dirty pages while the guest runs, tracked by
//!   [`tern_vm::dirty`]).
//! * [`base`] and [`pages`]: sending only what the destination lacks, and
//!   the page runs that carry it.
//! * [`source`]: the sending side, [`migrate`], over a [`SourceGuest`] the
//!   node implements: session, module, base, the strategy's copying, the
//!   handoff.
//! * [`dest`]: the receiving side, [`serve`], over a [`DestHost`]: builds
//!   the guest page by page while the source still runs
//!   ([`tern_vm::Incoming`]) and takes ownership only when the source lets go.
//!
//! # Exactly one owner
//!
//! The source keeps the paused guest until the destination says `Restored`.
//! Any failure before that (destination dead, connection cut, garbage)
//! resumes the guest on the source. On `Restored` the source records the
//! handoff, sends `Commit` and lets go; the destination runs the guest on
//! `Commit`. A destination that said `Restored` but lost the connection
//! before `Commit` asks the source (`Resolve`); if the source process is
//! gone (connection refused), its copy died with it and the destination
//! runs the guest. [`handoff`] has the source's state machine;
//! `docs/migration.md` has the sequence diagram and both sides' states.

pub mod base;
pub mod dest;
pub mod handoff;
pub mod pages;
pub mod proto;
mod session;
pub mod source;
mod strategy;
#[cfg(test)]
mod tests;
pub mod transport;

pub use dest::{serve, DestHost, Served};
pub use proto::{GuestInfo, Strategy, PROTOCOL_VERSION};
pub use source::{migrate, Options, Progress, Report, RoundStat, SourceGuest};
pub use transport::Tls;

/// Why a migration failed. Each names the step.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Connecting to the destination failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing to the peer failed.
    #[error("sending failed: {0}")]
    Send(std::io::Error),
    /// Reading from the peer failed (including a closed connection).
    #[error("receiving failed: {0}")]
    Receive(std::io::Error),
    /// A message could not be encoded.
    #[error("encoding a message failed: {0}")]
    Encode(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer speaks a version this build does not.
    #[error("peer speaks protocol version {theirs}, this build accepts {oldest}..={newest}")]
    Version {
        /// The peer's version.
        theirs: u32,
        /// Oldest accepted.
        oldest: u32,
        /// Newest accepted.
        newest: u32,
    },
    /// The peer gave up, saying why.
    #[error("the peer aborted: {0}")]
    Aborted(String),
    /// Reading or tracking guest memory failed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest could not be paused, captured or rebuilt.
    #[error("guest: {0}")]
    Guest(String),
    /// The guest ended before it could be moved.
    #[error("the guest ended before the migration (exit status {0})")]
    Ended(i32),
    /// The local node refused (e.g. recording the handoff failed).
    #[error("{0}")]
    Local(String),
}
