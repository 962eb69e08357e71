//! The host state saved in an image beside memory and globals.

use serde::{Deserialize, Serialize};

use crate::suspend::PendingCall;
use crate::wasi::WasiState;

/// Version of [`SavedHost`]'s encoding. A reader accepts exactly the versions
/// it knows (currently only this one).
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
    /// Encodes with postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data to a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and checks the version.
    pub fn decode(bytes: &[u8]) -> Result<Self, HostStateError> {
        // The version comes first and is a postcard varint.
        let (version, _): (u32, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| HostStateError::Malformed(e.to_string()))?;
        if version != HOST_STATE_VERSION {
            return Err(HostStateError::Version(version));
        }
        postcard::from_bytes(bytes).map_err(|e| HostStateError::Malformed(e.to_string()))
    }
}
