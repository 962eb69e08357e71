//! A small synchronous etcd v3 client for Tern's controller: keys and
//! values, compare-and-swap transactions, leases kept alive from a
//! background thread, leader election fenced by the leader key's create
//! revision, and a throwaway local etcd for tests and demos.
//!
//! The controller keeps membership, placement and move records in etcd.
//! This crate talks to etcd through its JSON gateway (`POST /v3/kv/range`
//! and friends, keys and values base64 in the JSON), not through gRPC: that
//! needs no protoc, no generated code and no async runtime, and it blocks
//! like the rest of Tern's node code. The gateway serves on the ordinary
//! client port, under `/v3/` since etcd 3.4 (3.3 called it `/v3beta/`).
//!
//! Four things about the gateway shape the code (checked against etcd
//! 3.4.23): 64-bit integers travel as JSON strings (`"revision":"7"`);
//! fields holding zero, `false` or an empty value are left out, so a
//! missing `succeeded` means `false` and a missing value means empty;
//! `/v3/lease/keepalive` is a stream whose one reply comes wrapped in
//! `{"result": ...}`, with no `TTL` once the lease is gone; and error
//! replies end in an HTTP trailer that the HTTP client rejects after the
//! body, so bodies are read up to the first error.
//!
//! ```no_run
//! use tern_etcd::{Cmp, CmpOp, Etcd, Op};
//!
//! # fn main() -> Result<(), tern_etcd::Error> {
//! let etcd = Etcd::connect(&["http://127.0.0.1:2379".to_string()])?;
//! etcd.put("nodes/a", b"up", None)?;
//! // Create "owner" only if nobody has.
//! let reply = etcd.txn(
//!     vec![Cmp::create_revision("owner", CmpOp::Equal, 0)],
//!     vec![Op::put("owner", b"a", None)],
//!     vec![Op::get("owner")],
//! )?;
//! println!("we own it: {}", reply.succeeded);
//! # Ok(())
//! # }
//! ```

mod client;
mod election;
mod lease;
mod local;
mod wire;

pub use client::{Cmp, CmpOp, Etcd, Kv, Lease, Op, OpResponse, Status, TxnReply};
pub use election::Election;
pub use lease::LeaseKeeper;
pub use local::LocalEtcd;

/// What went wrong talking to etcd. Every variant displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint answered; `why` says what happened at each one tried.
    #[error("etcd unreachable at {}: {why}", .endpoints.join(", "))]
    Unreachable {
        /// The endpoints tried, in order.
        endpoints: Vec<String>,
        /// What failed, one clause per endpoint.
        why: String,
    },
    /// etcd answered with an error.
    #[error("etcd said {status}: {message}")]
    Server {
        /// The HTTP status of the reply.
        status: u16,
        /// etcd's message, or the start of the reply's body.
        message: String,
    },
    /// etcd's reply could not be understood.
    #[error("cannot decode etcd's reply: {0}")]
    Decode(String),
    /// A setup problem: no usable endpoint, no `etcd` binary, a local etcd
    /// that would not start.
    #[error("{0}")]
    Setup(String),
    /// The lease (its id) has expired or was revoked.
    #[error("etcd lease {0:x} is gone (expired or revoked)")]
    LeaseLost(i64),
}
