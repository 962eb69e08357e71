//! The node's side of per-guest resource limits (`docs/limits.md`).
//!
//! tern-vm enforces a guest's memory and descriptor limits
//! ([`tern_vm::limits::Limits`]); the node chooses them (a guest's own
//! request, else the node's default, never above the node's maximum),
//! caps each guest's log ([`LogBudget`]) and places each guest's thread
//! under its CPU weight and quota ([`crate::cpu`]).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tern_vm::limits::{size, Limits};
use tern_vm::{Guest, PauseHandle};

/// Default most bytes of output a guest's log may hold.
pub const DEFAULT_MAX_LOG: u64 = 64 << 20;

/// The node's limits for its guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// Memory limit of guests that give none, and the most any guest may
    /// ask for; `None`: the wasm32 maximum, 4 GiB.
    pub max_memory: Option<u64>,
    /// Most bytes of a guest's log (stdout and stderr together).
    pub max_log: u64,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            max_memory: None,
            max_log: DEFAULT_MAX_LOG,
        }
    }
}

/// What a guest asks for when it boots ([`crate::BootSpec`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Requested {
    /// Memory limit in bytes.
    pub max_memory: Option<u64>,
    /// Descriptor limit.
    pub max_fds: Option<u32>,
    /// CPU weight, 1 to 10000.
    pub cpu_weight: Option<u32>,
    /// CPU quota in cores.
    pub cpu_quota: Option<f64>,
}

impl NodeLimits {
    /// The limits a new guest gets: its request, with the node's default
    /// for what it leaves out. A request above the node's maximum is
    /// refused with a one-line reason.
    pub fn for_boot(&self, r: &Requested) -> Result<Limits, String> {
        let mut l = Limits::default();
        if let Some(n) = r.max_fds {
            l.max_fds = n;
        }
        l.cpu_weight = r.cpu_weight;
        if let Some(w) = r.cpu_weight {
            if !(1..=10_000).contains(&w) {
                return Err(format!("CPU weight {w} is out of range (1 to 10000)"));
            }
        }
        if let Some(q) = r.cpu_quota {
            if !(0.01..=1024.0).contains(&q) {
                return Err(format!(
                    "CPU quota {q} is out of range (0.01 to 1024 cores)"
                ));
            }
            l.cpu_quota_millicores = Some((q * 1000.0).round() as u32);
        }
        l.max_memory = match (r.max_memory, self.max_memory) {
            (Some(want), Some(max)) if want > max => {
                return Err(format!(
                    "the guest asks for a memory limit of {}, above this node's maximum of {}",
                    size(want),
                    size(max)
                ))
            }
            (Some(want), _) => Some(want),
            (None, node) => node,
        };
        Ok(l)
    }

    /// Brings a guest that arrived with its own limits (a restore, a
    /// migration) within this node's maximum: a guest without a memory
    /// limit gets the node's, a larger one is lowered to it. Fails when the
    /// guest already has more memory than that.
    pub fn admit(&self, guest: &mut Guest) -> Result<(), String> {
        let mut l = guest.limits();
        let Some(max) = self.max_memory else {
            return Ok(());
        };
        if l.max_memory.is_none_or(|m| m > max) {
            l.max_memory = Some(max);
        }
        guest
            .set_limits(l)
            .map_err(|e| format!("{e}, this node's maximum"))
    }
}

/// Bounds the bytes written to one guest's log. Shared by its stdout and
/// stderr sinks; once a write would pass the limit, what fits is written,
/// then a line saying why the output stops, and the guest is asked to
/// pause so that its runner can end it ([`crate::runner`]).
pub struct LogBudget {
    limit: u64,
    used: AtomicU64,
    hit: AtomicBool,
    pause: OnceLock<PauseHandle>,
}

impl LogBudget {
    /// A budget of `limit` bytes of which `used` are spent (a log that
    /// arrived with a migration).
    pub fn new(limit: u64, used: u64) -> Arc<LogBudget> {
        Arc::new(LogBudget {
            limit,
            used: AtomicU64::new(used),
            hit: AtomicBool::new(false),
            pause: OnceLock::new(),
        })
    }

    /// Connects the guest, which is paused when the limit is reached.
    pub fn attach(&self, pause: PauseHandle) {
        let _ = self.pause.set(pause);
        if self.exhausted() {
            if let Some(p) = self.pause.get() {
                p.request();
            }
        }
    }

    /// True once output was refused for the limit.
    pub fn exhausted(&self) -> bool {
        self.hit.load(Ordering::Acquire)
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of `len` that may still be written, reserving them.
    fn take(&self, len: u64) -> u64 {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let grant = len.min(self.limit.saturating_sub(used));
            match self.used.compare_exchange_weak(
                used,
                used + grant,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return grant,
                Err(now) => used = now,
            }
        }
    }

    /// Marks the budget spent; true for the caller that did it first.
    fn exhaust(&self) -> bool {
        let first = !self.hit.swap(true, Ordering::AcqRel);
        if let Some(p) = self.pause.get() {
            p.request();
        }
        first
    }

    /// The message that ends the guest.
    pub fn message(&self) -> String {
        format!("its output reached the log limit of {}", size(self.limit))
    }
}

/// A log file writer under a [`LogBudget`].
pub struct LimitedLog<W> {
    inner: W,
    budget: Arc<LogBudget>,
}

impl<W: Write> LimitedLog<W> {
    /// Writes to `inner` within `budget`.
    pub fn new(inner: W, budget: Arc<LogBudget>) -> Self {
        LimitedLog { inner, budget }
    }
}

impl<W: Write> Write for LimitedLog<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let grant = self.budget.take(buf.len() as u64) as usize;
        if grant < buf.len() {
            if grant > 0 {
                self.inner.write_all(&buf[..grant])?;
            }
            if self.budget.exhaust() {
                let note = format!("\n[tern: output stopped: {}]\n", self.budget.message());
                self.inner.write_all(note.as_bytes())?;
            }
            // The guest sees EFBIG, as from a file past its size limit.
            return Err(rustix::io::Errno::FBIG.into());
        }
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_limits_default_and_maximum() {
        let node = NodeLimits {
            max_memory: Some(64 << 20),
            ..NodeLimits::default()
        };
        let l = node.for_boot(&Requested::default()).unwrap();
        assert_eq!(l.max_memory, Some(64 << 20));
        assert_eq!(l.max_fds, tern_vm::limits::DEFAULT_MAX_FDS);
        let r = Requested {
            max_memory: Some(16 << 20),
            max_fds: Some(10),
            cpu_quota: Some(0.25),
            ..Requested::default()
        };
        let l = node.for_boot(&r).unwrap();
        assert_eq!(
            (l.max_memory, l.max_fds, l.cpu_quota_millicores),
            (Some(16 << 20), 10, Some(250))
        );
        let too_much = Requested {
            max_memory: Some(1 << 30),
            ..Requested::default()
        };
        assert_eq!(
            node.for_boot(&too_much).unwrap_err(),
            "the guest asks for a memory limit of 1 GiB, above this node's maximum of 64 MiB"
        );
    }

    #[test]
    fn log_stops_at_the_budget() {
        let budget = LogBudget::new(10, 4);
        let mut out = LimitedLog::new(Vec::new(), budget.clone());
        out.write_all(b"abc").unwrap();
        assert!(!budget.exhausted());
        assert!(out.write_all(b"defgh").is_err());
        assert!(budget.exhausted());
        assert!(out.write_all(b"x").is_err());
        let text = String::from_utf8(out.inner).unwrap();
        assert_eq!(
            text,
            "abcdef\n[tern: output stopped: its output reached the log limit of 10 bytes]\n"
        );
    }
}
