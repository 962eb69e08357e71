//! Per-guest resource limits: what one guest may take from the process it
//! runs in, so that no guest can take a node (or `tern run`) down.
//!
//! The runtime enforces two of them itself:
//!
//! - **Memory**: a wasmtime [`ResourceLimiter`] on the guest's store refuses
//!   to grow linear memory past [`Limits::max_memory`]. `memory.grow` then
//!   returns -1 to the guest, as WASI hosts do when memory runs out: the
//!   guest's `malloc` returns NULL and the program usually exits with an
//!   error. Table growth is capped at [`MAX_TABLE_ELEMENTS`].
//! - **Descriptors**: the WASI descriptor table holds at most
//!   [`Limits::max_fds`] entries; an open past it fails with `EMFILE`.
//!
//! The CPU fields are carried for the node, which enforces them on the
//! guest's thread (cgroup or nice). All of [`Limits`] travels with the guest
//! in its host state ([`crate::host::SavedHost`]), so a checkpoint, a
//! restore and a migration keep them.
//!
//! A refusal is remembered ([`LimitHit`]): when the guest then ends badly
//! (a non-zero exit or a trap), callers report that it ended by its limit.

use std::fmt;

use serde::{Deserialize, Serialize};
use wasmtime::ResourceLimiter;

/// Descriptors a guest may hold open unless told otherwise.
pub const DEFAULT_MAX_FDS: u32 = 1024;

/// Most elements any one table of a guest may grow to: 1 Mi function
/// references is far more than real programs use (their indirect-call
/// table is fixed at link time) and costs at most 16 MiB.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Largest linear memory a wasm32 guest can have at all.
pub const WASM32_MAX_MEMORY: u64 = 1 << 32;

/// The limits of one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most bytes of linear memory; `None`: the wasm32 maximum of 4 GiB.
    pub max_memory: Option<u64>,
    /// Most open descriptors, stdio and preopens included.
    pub max_fds: u32,
    /// Relative CPU weight on a node (cgroup `cpu.shares`, 1024 = normal);
    /// `None`: the node's default. Enforced by the node, not here.
    pub cpu_weight: Option<u32>,
    /// Hard CPU cap in thousandths of a core (250 = a quarter core);
    /// `None`: no cap. Enforced by the node, not here.
    pub cpu_quota_millicores: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory: None,
            max_fds: DEFAULT_MAX_FDS,
            cpu_weight: None,
            cpu_quota_millicores: None,
        }
    }
}

/// A limit the guest ran into: the last request the runtime refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// Growing linear memory to `wanted` bytes was refused.
    Memory {
        /// The guest's memory limit in bytes.
        limit: u64,
        /// The size the guest asked for.
        wanted: u64,
    },
    /// Growing a table to `wanted` elements was refused.
    Table {
        /// The table limit in elements.
        limit: u64,
        /// The size the guest asked for.
        wanted: u64,
    },
    /// Opening a descriptor was refused with `EMFILE`.
    Fds {
        /// The guest's descriptor limit.
        limit: u32,
    },
}

impl LimitHit {
    /// A short name of the limit: `memory`, `table` or `fds`.
    pub fn kind(&self) -> &'static str {
        match self {
            LimitHit::Memory { .. } => "memory",
            LimitHit::Table { .. } => "table",
            LimitHit::Fds { .. } => "fds",
        }
    }
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitHit::Memory { limit, wanted } => write!(
                f,
                "memory limit of {} (it asked for {})",
                size(*limit),
                size(*wanted)
            ),
            LimitHit::Table { limit, wanted } => {
                write!(f, "table limit of {limit} elements (it asked for {wanted})")
            }
            LimitHit::Fds { limit } => write!(f, "limit of {limit} open descriptors"),
        }
    }
}

/// `bytes` for people: `64 MiB`, `1 GiB`, `64.2 MiB`, `512 KiB`, `100 bytes`.
pub fn size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 3] = [(40, "TiB"), (30, "GiB"), (20, "MiB")];
    for (shift, unit) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    if bytes >= 1 << 20 {
        return format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64);
    }
    if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        return format!("{} KiB", bytes >> 10);
    }
    format!("{bytes} bytes")
}

/// The store's [`ResourceLimiter`]: refuses growth past the guest's limits
/// and remembers the last refusal.
#[derive(Debug)]
pub(crate) struct GuestLimiter {
    /// Most bytes of linear memory.
    pub(crate) max_memory: u64,
    /// The last refusal.
    pub(crate) hit: Option<LimitHit>,
}

impl GuestLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        GuestLimiter {
            max_memory: limits.max_memory.unwrap_or(WASM32_MAX_MEMORY),
            hit: None,
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max_memory {
            self.hit = Some(LimitHit::Memory {
                limit: self.max_memory,
                wanted: desired as u64,
            });
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit = Some(LimitHit::Table {
                limit: MAX_TABLE_ELEMENTS as u64,
                wanted: desired as u64,
            });
            return Ok(false);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(64 << 20), "64 MiB");
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(1536 << 10), "1.5 MiB");
        assert_eq!(size(65728 << 10), "64.2 MiB");
        assert_eq!(size(512 << 10), "512 KiB");
        assert_eq!(size(100), "100 bytes");
        assert_eq!(size((64 << 20) + 1), "64.0 MiB");
    }

    #[test]
    fn limiter_refuses_past_the_cap_and_remembers() {
        let mut l = GuestLimiter::new(&Limits {
            max_memory: Some(2 << 16),
            ..Limits::default()
        });
        assert!(l.memory_growing(0, 2 << 16, None).unwrap());
        assert_eq!(l.hit, None);
        assert!(!l.memory_growing(2 << 16, 3 << 16, None).unwrap());
        assert_eq!(
            l.hit,
            Some(LimitHit::Memory {
                limit: 2 << 16,
                wanted: 3 << 16
            })
        );
        assert!(l.table_growing(0, 10, None).unwrap());
        assert!(!l.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).unwrap());
        assert_eq!(l.hit.map(|h| h.kind()), Some("table"));
    }
}
