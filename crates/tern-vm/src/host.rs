//! The host state saved in an image beside memory and globals.

use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::suspend::PendingCall;
use crate::wasi::WasiState;

/// Version of [`SavedHost`]'s encoding. A reader accepts exactly the versions
/// it knows (currently only this one).
///
/// Within a version, fields may be appended after the last one as
/// *extensions*: a reader ignores bytes after the fields it knows (postcard
/// stops at the end of the struct), and an older writer's state lacks the
/// newer fields, which then take their defaults. The one extension so far
/// is [`SavedHost::limits`].
pub const HOST_STATE_VERSION: u32 = 1;

/// Everything about a paused guest that is neither memory nor globals nor the
/// unwound stack: its identity, WASI state and the call it was suspended in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedHost {
    /// [`HOST_STATE_VERSION`] at the time of writing.
    pub version: u32,
    /// The guest's id; survives checkpoints and migrations.
    pub guest_id: String,
    /// WASI preview1 state: args, env, preopens, fds, clocks.
    pub wasi: WasiState,
    /// The host call the guest was suspended in.
    pub pending: PendingCall,
    /// How many times this guest has been checkpointed before this image.
    pub generation: u64,
    /// The guest's resource limits. An extension (see
    /// [`HOST_STATE_VERSION`]), encoded after the fields above; state
    /// written before limits existed gets [`Limits::default`].
    #[serde(skip)]
    pub limits: Limits,
}

/// Why host state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostStateError {
    /// Encoded by an unknown version.
    #[error(
        "host state version {0} is not supported (this build reads version {HOST_STATE_VERSION})"
    )]
    Version(u32),
    /// Could not be decoded.
    #[error("host state is malformed: {0}")]
    Malformed(String),
}

impl SavedHost {
    /// Encodes with postcard: the fields, then the extensions.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data to a Vec cannot fail.
        let mut out = postcard::to_allocvec(self).unwrap_or_default();
        out.extend(postcard::to_allocvec(&self.limits).unwrap_or_default());
        out
    }

    /// Decodes and checks the version.
    pub fn decode(bytes: &[u8]) -> Result<Self, HostStateError> {
        // The version comes first and is a postcard varint.
        let (version, _): (u32, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| HostStateError::Malformed(e.to_string()))?;
        if version != HOST_STATE_VERSION {
            return Err(HostStateError::Version(version));
        }
        let malformed = |e: postcard::Error| HostStateError::Malformed(e.to_string());
        let (mut host, rest): (SavedHost, _) =
            postcard::take_from_bytes(bytes).map_err(malformed)?;
        if !rest.is_empty() {
            host.limits = postcard::from_bytes(rest).map_err(malformed)?;
        }
        Ok(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasi::{ClockState, WasiState};

    fn host() -> SavedHost {
        SavedHost {
            version: HOST_STATE_VERSION,
            guest_id: "abc".into(),
            wasi: WasiState {
                args: vec!["prog".into()],
                env: vec![],
                preopens: vec![],
                fds: vec![],
                next_fd: 3,
                clock: ClockState {
                    monotonic_ns: 1,
                    cpu_time_ns: 2,
                    realtime_ns: 3,
                },
                exit_status: None,
            },
            pending: PendingCall::Yield,
            generation: 4,
            limits: Limits {
                max_memory: Some(64 << 20),
                max_fds: 16,
                cpu_weight: Some(512),
                cpu_quota_millicores: Some(250),
            },
        }
    }

    #[test]
    fn limits_round_trip() {
        let h = host();
        let back = SavedHost::decode(&h.encode()).unwrap();
        assert_eq!(back.limits, h.limits);
        assert_eq!(back.generation, 4);
    }

    #[test]
    fn state_from_before_limits_reads_with_defaults() {
        // What a writer without the extension wrote: the fields alone.
        let h = host();
        let old = postcard::to_allocvec(&h).unwrap();
        let back = SavedHost::decode(&old).unwrap();
        assert_eq!(back.limits, Limits::default());
        assert_eq!(back.guest_id, "abc");
        // And a reader without the extension reads the new encoding.
        let new = h.encode();
        assert!(new.len() > old.len());
        let fields: SavedHost = postcard::from_bytes(&new).unwrap();
        assert_eq!(fields.generation, 4);
    }
}
