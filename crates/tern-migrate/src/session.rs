//! How a session between two nodes starts, on both sides.
//!
//! Every connection opens the same way, whoever made it and whatever for:
//!
//! ```text
//! connector                                 listener
//!   | Hello{magic, version, node, arch, listen} ->|  magic, version and (TLS)
//!   |<- Welcome{version, node, arch}              |  certificate name checked
//!   |                                             |  (Abort(why) instead)
//!   | Begin{...} ->   a migration, or             |
//!   | Resolve{migration_id} ->                    |  who owns a guest?
//!   |<- Owner{destination}                        |
//! ```
//!
//! * [`hello`] is the connector's side (the source, or a destination
//!   asking `Resolve`), [`welcome`] the listener's. The listener accepts
//!   [`proto::OLDEST_VERSION`]`..=`[`proto::PROTOCOL_VERSION`] (checked by
//!   [`proto::check_hello`]) and answers with the version both speak; a
//!   version outside it is refused with [`MigrateError::Version`] and an
//!   `Abort` saying so. With TLS each side checks that the node name the
//!   other claims is the one in its certificate ([`Link::check_claim`]).
//! * [`begin`] is the source saying a guest is coming; [`opening`] is the
//!   listener reading what the connection is for ([`Opening`]).
//! * [`ask_owner`] and [`answer_owner`] are the `Resolve` question and its
//!   answer (see [`crate::handoff`] for when it is asked).

use crate::proto::{self, GuestInfo, Message, Strategy};
use crate::transport::Link;
use crate::MigrateError;

/// What the listener said in `Welcome`, as the connector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Welcomed {
    /// The version both sides speak from now on.
    pub(crate) version: u32,
    /// The listener's node name (checked against its certificate).
    pub(crate) node: String,
}

/// What the connector said in `Hello`, as the listener sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Greeted {
    /// The version both sides speak from now on.
    pub(crate) version: u32,
    /// The connector's node name (checked against its certificate).
    pub(crate) node: String,
    /// Where the connector listens for migrations (for `Resolve`).
    pub(crate) listen: String,
}

/// The connector's side: sends `Hello` speaking `version` (always
/// [`proto::PROTOCOL_VERSION`] but in tests), waits for `Welcome` and checks the
/// name the listener claims.
pub(crate) fn hello(
    link: &mut Link,
    version: u32,
    node: &str,
    listen: &str,
) -> Result<Welcomed, MigrateError> {
    link.send_now(&Message::Hello {
        magic: proto::MAGIC,
        version,
        node: node.to_string(),
        arch: std::env::consts::ARCH.into(),
        listen: listen.to_string(),
    })?;
    let welcomed = link.expect("Welcome", |m| match m {
        Message::Welcome { version, node, .. } => Ok(Welcomed { version, node }),
        other => Err(other),
    })?;
    // The listener answers with the version both speak: never newer than
    // offered, never older than this build speaks.
    if welcomed.version > version || welcomed.version < proto::OLDEST_VERSION {
        return Err(MigrateError::Version {
            theirs: welcomed.version,
            oldest: proto::OLDEST_VERSION,
            newest: version,
        });
    }
    link.check_claim(&welcomed.node)?;
    Ok(welcomed)
}

/// The listener's side: reads `Hello`, checks magic, version and claimed
/// name, and answers `Welcome` as node `node`. A refused `Hello` is
/// answered with `Abort(why)`.
pub(crate) fn welcome(link: &mut Link, node: &str) -> Result<Greeted, MigrateError> {
    let hello = link.recv()?;
    let checked = proto::check_hello(&hello).and_then(|(version, node, listen)| {
        link.check_claim(&node)?;
        Ok(Greeted {
            version,
            node,
            listen,
        })
    });
    let greeted = match checked {
        Ok(g) => g,
        Err(e) => {
            link.abort(&e);
            return Err(e);
        }
    };
    link.send_now(&Message::Welcome {
        version: greeted.version,
        node: node.to_string(),
        arch: std::env::consts::ARCH.into(),
    })?;
    Ok(greeted)
}

/// The start of a migration: the guest that is coming and what to expect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Begin {
    /// Id of this migration (for `Resolve`).
    pub(crate) migration_id: String,
    /// The guest.
    pub(crate) guest: GuestInfo,
    /// How memory moves (for the destination's records).
    pub(crate) strategy: Strategy,
    /// postcard-encoded [`tern_image::Meta`].
    pub(crate) meta: Vec<u8>,
    /// Length of the prepared module.
    pub(crate) module_len: u64,
    /// Memory size in bytes.
    pub(crate) memory_size: u64,
}

/// The source's side: queues `Begin` (the caller flushes when it wants an
/// answer).
pub(crate) fn begin(link: &mut Link, b: &Begin) -> Result<(), MigrateError> {
    link.send(&Message::Begin {
        migration_id: b.migration_id.clone(),
        guest: b.guest.clone(),
        strategy: b.strategy,
        meta: b.meta.clone(),
        module_len: b.module_len,
        memory_size: b.memory_size,
    })
}

/// What a connection is for, once welcomed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Opening {
    /// A guest is coming.
    Begin(Begin),
    /// The connector asks who owns the guest of `migration_id`.
    Resolve(String),
}

/// The listener's side: reads what the connection is for.
pub(crate) fn opening(link: &mut Link) -> Result<Opening, MigrateError> {
    link.expect("Begin or Resolve", |m| match m {
        Message::Begin {
            migration_id,
            guest,
            strategy,
            meta,
            module_len,
            memory_size,
        } => Ok(Opening::Begin(Begin {
            migration_id,
            guest,
            strategy,
            meta,
            module_len,
            memory_size,
        })),
        Message::Resolve { migration_id } => Ok(Opening::Resolve(migration_id)),
        other => Err(other),
    })
}

/// The destination's question on a fresh session with the source: does the
/// destination own `migration_id`'s guest?
pub(crate) fn ask_owner(link: &mut Link, migration_id: &str) -> Result<bool, MigrateError> {
    link.send_now(&Message::Resolve {
        migration_id: migration_id.to_string(),
    })?;
    link.expect("Owner", |m| match m {
        Message::Owner { destination } => Ok(destination),
        other => Err(other),
    })
}

/// The source's answer to `Resolve`.
pub(crate) fn answer_owner(link: &mut Link, destination: bool) -> Result<(), MigrateError> {
    link.send_now(&Message::Owner { destination })
}
