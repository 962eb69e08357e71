//! The migration wire protocol: length-delimited frames of postcard
//! messages over one TCP connection.
//!
//! ```text
//! frame  = length u32 (little-endian, at most MAX_FRAME) | postcard(Message)
//! ```
//!
//! A connection starts with [`Message::Hello`] from the side that connected
//! and [`Message::Welcome`] from the listener; both carry a protocol version.
//! A listener accepts [`PROTOCOL_VERSION`] and the one before it
//! ([`OLDEST_VERSION`]) and answers with the version both will speak. The
//! full sequence, with the ownership state machine, is `docs/migration.md`.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::MigrateError;

/// First bytes of every `Hello`: a listener that sees anything else hangs up.
pub const MAGIC: [u8; 8] = *b"TERNMIG\0";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest version this build still accepts: the previous one
/// (`PROTOCOL_VERSION - 1`).
pub const OLDEST_VERSION: u32 = 3;
/// The first version with post-copy ([`Strategy::Postcopy`]).
pub const POSTCOPY_VERSION: u32 = 4;
/// How often a side busy with a long step (compiling a module, loading a
/// base image) says so with [`Message::Working`] (protocol 3), well inside
/// the peer's read timeout.
pub const WORKING_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Largest frame accepted or sent, in bytes (payload, without the length).
pub const MAX_FRAME: usize = 8 << 20;
/// Largest module chunk in one frame.
pub const MODULE_CHUNK: usize = 4 << 20;
/// Largest module accepted.
pub const MAX_MODULE: u64 = 1 << 30;
/// Largest guest log carried in one frame; longer logs take several.
pub const LOG_CHUNK: usize = 4 << 20;

/// How memory moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Stop the guest, copy everything, resume at the destination.
    Cold,
    /// Copy while the guest runs, in rounds of what it dirtied, then stop
    /// it for the last round.
    Precopy,
    /// Stop the guest, send only its execution and host state, resume it
    /// at the destination at once; its memory follows, each page fetched
    /// when first touched or pushed in the background (protocol 4).
    Postcopy,
}

impl Strategy {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Cold => "cold",
            Strategy::Precopy => "precopy",
            Strategy::Postcopy => "postcopy",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cold" => Ok(Strategy::Cold),
            "precopy" | "pre-copy" => Ok(Strategy::Precopy),
            "postcopy" | "post-copy" => Ok(Strategy::Postcopy),
            _ => Err(format!("unknown strategy `{s}` (cold, precopy, postcopy)")),
        }
    }
}

/// How a run of pages is encoded in a [`Message::Pages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunData {
    /// Every page of the run is zero; no bytes follow.
    Zero,
    /// The pages' bytes as they are.
    Raw,
    /// One lz4 block that decompresses to exactly the run's bytes.
    Lz4,
}

/// Consecutive 4 KiB pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Index of the first page (byte offset / 4096).
    pub first: u32,
    /// Number of pages.
    pub count: u32,
    /// Encoding of `data`.
    pub encoding: RunData,
    /// The encoded bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Who the guest is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// Guest id (survives migration).
    pub id: String,
    /// Human-readable name.
    pub name: String,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Connector -> listener, first.
    Hello {
        /// [`MAGIC`].
        magic: [u8; 8],
        /// The connector's [`PROTOCOL_VERSION`].
        version: u32,
        /// Connector's node name.
        node: String,
        /// Connector's ISA (`x86_64`, `aarch64`).
        arch: String,
        /// Where the connector listens for migrations (for `Resolve`).
        listen: String,
    },
    /// Listener -> connector: accepted, speaking `version`.
    Welcome {
        /// The version both sides now speak.
        version: u32,
        /// Listener's node name.
        node: String,
        /// Listener's ISA.
        arch: String,
    },
    /// Source -> destination: a guest is coming. Module chunks follow (up to
    /// protocol 2 always; from 3 only when the destination answers
    /// [`Message::ModuleWanted`] with true).
    Begin {
        /// Id of this migration (for `Resolve`).
        migration_id: String,
        /// The guest.
        guest: GuestInfo,
        /// Strategy, for the destination's records.
        strategy: Strategy,
        /// postcard-encoded [`tern_image::Meta`].
        #[serde(with = "serde_bytes")]
        meta: Vec<u8>,
        /// Length of the prepared module that follows in chunks.
        module_len: u64,
        /// Memory size in bytes.
        memory_size: u64,
    },
    /// Source -> destination: part of the module.
    ModuleChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Destination -> source (protocol 2), after the last module chunk: the
    /// guest's memory as this node kept it when the guest left (its base),
    /// as one 16-byte [`crate::pages::page_hash`] per 4 KiB page. The source
    /// then sends only the pages that differ. Repeated until `first` plus
    /// the hashes in this message reaches `total`; `total` 0: no base.
    BaseHashes {
        /// Pages the base covers (from page 0).
        total: u32,
        /// Index of the first page hashed in this message.
        first: u32,
        /// The hashes, 16 bytes each.
        #[serde(with = "serde_bytes")]
        hashes: Vec<u8>,
    },
    /// Source -> destination: pages, with the memory size they belong to.
    Pages {
        /// Memory size now (it may have grown).
        memory_size: u64,
        /// The runs.
        runs: Vec<PageRun>,
    },
    /// Source -> destination: part of the guest's output so far.
    LogChunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Source -> destination: the guest is paused; the rest of its state.
    Final {
        /// Memory size in bytes.
        memory_size: u64,
        /// Exported mutable globals.
        globals: Vec<tern_image::Global>,
        /// The unwound stack.
        #[serde(with = "serde_bytes")]
        stack: Vec<u8>,
        /// Encoded host state.
        #[serde(with = "serde_bytes")]
        host: Vec<u8>,
        /// Total bytes of log sent in `LogChunk`s.
        log_len: u64,
    },
    /// Source -> destination, after a pre-copy round: answer `Synced` once
    /// everything before has been applied. Keeps the destination's backlog
    /// out of the downtime and measures the link's real pace.
    Sync,
    /// Destination -> source: everything before `Sync` is applied.
    Synced,
    /// Destination -> source: the guest is restored and ready to run.
    Restored,
    /// Source -> destination: the source let go; run the guest.
    Commit,
    /// Either way: the migration is off, with why.
    Abort(String),
    /// Destination -> source, on a new connection, when the connection broke
    /// after `Restored` and before `Commit`: who owns the guest?
    Resolve {
        /// The migration in question.
        migration_id: String,
    },
    /// Source -> destination: the answer to `Resolve`.
    Owner {
        /// True when the source let go (the destination must run the guest).
        destination: bool,
    },
    /// Destination -> source (protocol 3), right after `Begin`: true when
    /// the module must be sent; false when this node already holds the
    /// module whose digest `Begin`'s metadata names (a module travels once
    /// per node).
    ModuleWanted(bool),
    /// Either way (protocol 3): busy with a long step, still there. Sent
    /// when the step starts and every [`WORKING_EVERY`] until it ends.
    Working {
        /// The step, in a few words (`compiling the module`).
        what: String,
        /// Milliseconds since it started.
        elapsed_ms: u64,
    },
    /// Destination -> source in post-copy (protocol 4): the guest waits for
    /// these pages; send them before anything else.
    PageRequest {
        /// Index of the first page.
        first: u32,
        /// Number of pages.
        count: u32,
    },
    /// Source -> destination in post-copy: every page has been sent.
    AllSent,
    /// Destination -> source in post-copy: every page is in place; what the
    /// guest waited for on the way.
    AllLocal(PostcopyStats),
}

/// What a guest waited for in post-copy, measured at the destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PostcopyStats {
    /// Pages the guest touched before they arrived (each fetched on demand).
    pub faults: u64,
    /// Fault service time (fault read to page in place), microseconds:
    /// median, 99th percentile and largest.
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// See `p50_us`.
    pub max_us: u64,
    /// From the guest's resumption to the last page in place, microseconds.
    pub all_local_us: u64,
}

impl Message {
    /// A short name for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Begin { .. } => "Begin",
            Message::ModuleChunk(_) => "ModuleChunk",
            Message::BaseHashes { .. } => "BaseHashes",
            Message::Pages { .. } => "Pages",
            Message::LogChunk(_) => "LogChunk",
            Message::Final { .. } => "Final",
            Message::Sync => "Sync",
            Message::Synced => "Synced",
            Message::Restored => "Restored",
            Message::Commit => "Commit",
            Message::Abort(_) => "Abort",
            Message::Resolve { .. } => "Resolve",
            Message::Owner { .. } => "Owner",
            Message::ModuleWanted(_) => "ModuleWanted",
            Message::Working { .. } => "Working",
            Message::PageRequest { .. } => "PageRequest",
            Message::AllSent => "AllSent",
            Message::AllLocal(_) => "AllLocal",
        }
    }
}

/// Writes one frame; returns the bytes put on the wire.
pub fn send<W: Write>(w: &mut W, msg: &Message) -> Result<u64, MigrateError> {
    let payload = postcard::to_allocvec(msg).map_err(|e| MigrateError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(MigrateError::Encode(format!(
            "{} message of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
            msg.kind(),
            payload.len()
        )));
    }
    let len = (payload.len() as u32).to_le_bytes();
    w.write_all(&len).map_err(MigrateError::Send)?;
    w.write_all(&payload).map_err(MigrateError::Send)?;
    Ok(4 + payload.len() as u64)
}

/// Reads one frame; a length over [`MAX_FRAME`], a short read or an
/// undecodable payload is an error, never a panic or a large allocation.
pub fn recv<R: Read>(r: &mut R) -> Result<(Message, u64), MigrateError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(MigrateError::Receive)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(MigrateError::Protocol(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(MigrateError::Receive)?;
    let msg = postcard::from_bytes(&payload)
        .map_err(|e| MigrateError::Protocol(format!("malformed frame: {e}")))?;
    Ok((msg, 4 + len as u64))
}

/// Expects a message of one kind; anything else (an `Abort` included) is an error.
pub fn unexpected(got: &Message, want: &str) -> MigrateError {
    match got {
        Message::Abort(why) => MigrateError::Aborted(why.clone()),
        other => MigrateError::Protocol(format!("expected {want}, got {}", other.kind())),
    }
}

/// The listener's side of the handshake: checks magic and version.
pub fn check_hello(msg: &Message) -> Result<(u32, String, String), MigrateError> {
    match msg {
        Message::Hello {
            magic,
            version,
            node,
            listen,
            ..
        } => {
            if *magic != MAGIC {
                return Err(MigrateError::Protocol("not a Tern migration peer".into()));
            }
            if *version < OLDEST_VERSION || *version > PROTOCOL_VERSION {
                return Err(MigrateError::Version {
                    theirs: *version,
                    oldest: OLDEST_VERSION,
                    newest: PROTOCOL_VERSION,
                });
            }
            Ok((*version, node.clone(), listen.clone()))
        }
        other => Err(unexpected(other, "Hello")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msgs = vec![
            Message::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                node: "a".into(),
                arch: "x86_64".into(),
                listen: "127.0.0.1:1".into(),
            },
            Message::Pages {
                memory_size: 65536,
                runs: vec![PageRun {
                    first: 3,
                    count: 1,
                    encoding: RunData::Raw,
                    data: vec![7; 4096],
                }],
            },
            Message::Commit,
        ];
        let mut wire = Vec::new();
        let mut total = 0;
        for m in &msgs {
            total += send(&mut wire, m).unwrap();
        }
        assert_eq!(total, wire.len() as u64);
        let mut r = &wire[..];
        for m in &msgs {
            assert_eq!(&recv(&mut r).unwrap().0, m);
        }
        assert!(matches!(recv(&mut r), Err(MigrateError::Receive(_))));
    }

    #[test]
    fn oversized_truncated_and_garbage_frames_fail_cleanly() {
        let mut big = (MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
        big.extend([0; 16]);
        assert!(matches!(
            recv(&mut &big[..]),
            Err(MigrateError::Protocol(_))
        ));
        let mut wire = Vec::new();
        send(&mut wire, &Message::Commit).unwrap();
        send(&mut wire, &Message::Abort("x".repeat(100))).unwrap();
        let cut = &wire[..wire.len() - 10];
        let mut r = cut;
        recv(&mut r).unwrap();
        assert!(matches!(recv(&mut r), Err(MigrateError::Receive(_))));
        let garbage = [5u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            recv(&mut &garbage[..]),
            Err(MigrateError::Protocol(_))
        ));
    }

    #[test]
    fn hello_checks_magic_and_versions() {
        let hello = |magic, version| Message::Hello {
            magic,
            version,
            node: "n".into(),
            arch: "x".into(),
            listen: String::new(),
        };
        assert!(check_hello(&hello(MAGIC, PROTOCOL_VERSION)).is_ok());
        assert!(matches!(
            check_hello(&hello(*b"GET / HT", PROTOCOL_VERSION)),
            Err(MigrateError::Protocol(_))
        ));
        assert!(matches!(
            check_hello(&hello(MAGIC, PROTOCOL_VERSION + 1)),
            Err(MigrateError::Version { .. })
        ));
        assert!(check_hello(&Message::Commit).is_err());
    }
}
