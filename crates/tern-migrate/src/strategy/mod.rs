//! How memory moves: one module per strategy, behind [`Mover`].
//!
//! * [`cold`]: nothing while the guest runs; every page the destination
//!   lacks once it is paused.
//! * [`precopy`]: rounds of dirty pages while the guest runs (tracked by
//!   [`tern_vm::dirty`]), then the last dirty pages once it is paused.
//! * [`postcopy`]: nothing before the switch; after it, pages as the
//!   destination's guest touches them, and the rest in the background.
//!
//! The source ([`crate::source`]) drives a [`Mover`] through the same two
//! steps whatever the strategy: [`Mover::live`] while the guest runs, then,
//! once [`crate::handoff`] has paused it, [`Mover::last`]. What is shared
//! lives here: which pages the first full copy skips because the
//! destination holds them already ([`FirstCopy`]), and the batching of
//! pages into `Pages` messages ([`Sender`]).

pub(crate) mod cold;
pub(crate) mod postcopy;
pub(crate) mod precopy;

use std::time::Duration;

use tern_vm::memory::MemoryHandle;

use crate::base::Base;
use crate::pages::{is_zero, Batcher};
use crate::proto::{Message, PageRun, Strategy};
use crate::source::{Options, Progress, RoundStat};
use crate::transport::Link;
use crate::MigrateError;

/// The memory of the guest being moved.
pub(crate) enum Memory {
    /// A guest's own memory (readable while it runs).
    Guest(MemoryHandle),
    /// Plain bytes standing in for a guest's memory in tests.
    #[cfg(test)]
    Bytes(Vec<u8>),
}

impl Memory {
    /// The size now, in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Memory::Guest(h) => h.len(),
            #[cfg(test)]
            Memory::Bytes(b) => b.len(),
        }
    }

    /// Copies `dst.len()` bytes at `offset`.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), MigrateError> {
        match self {
            Memory::Guest(h) => h
                .read(offset, dst)
                .map_err(|e| MigrateError::Memory(e.to_string())),
            #[cfg(test)]
            Memory::Bytes(b) => {
                let src = offset
                    .checked_add(dst.len())
                    .and_then(|end| b.get(offset..end))
                    .ok_or_else(|| MigrateError::Memory("read past the end".into()))?;
                dst.copy_from_slice(src);
                Ok(())
            }
        }
    }

    /// The guest memory handle (dirty tracking needs one).
    pub(crate) fn handle(&self) -> Option<&MemoryHandle> {
        match self {
            Memory::Guest(h) => Some(h),
            #[cfg(test)]
            Memory::Bytes(_) => None,
        }
    }
}

/// What a strategy works with while it copies.
pub(crate) struct Copying<'a> {
    /// The link to the destination.
    pub(crate) link: &'a mut Link,
    /// The guest's memory.
    pub(crate) mem: &'a Memory,
    /// What the first full copy skips.
    pub(crate) first: FirstCopy,
    /// One entry per round sent so far (the last one with the guest paused).
    pub(crate) rounds: Vec<RoundStat>,
    /// Pages sent so far.
    pub(crate) pages_sent: u64,
    /// Progress so far.
    pub(crate) prog: &'a mut Progress,
    /// Where progress is reported.
    pub(crate) progress: &'a mut dyn FnMut(&Progress),
}

impl Copying<'_> {
    /// Reports the progress so far.
    pub(crate) fn show(&mut self) {
        (self.progress)(self.prog);
    }
}

/// One strategy of moving memory.
pub(crate) trait Mover {
    /// The dirty-tracking method in use and, when it is not the one asked
    /// for, why (`none` for strategies that track nothing).
    fn tracking(&self) -> (String, Option<String>);
    /// Copies while the guest runs; returns when the rest is small enough
    /// to send with the guest paused.
    fn live(&mut self, c: &mut Copying<'_>, opts: &Options) -> Result<(), MigrateError>;
    /// With the guest paused: sends every page the destination still lacks
    /// (queued, not flushed); returns how many.
    fn last(&mut self, c: &mut Copying<'_>) -> Result<u64, MigrateError>;
}

/// The mover for `strategy` over `mem`.
pub(crate) fn start(
    strategy: Strategy,
    mem: &Memory,
    opts: &Options,
) -> Result<Box<dyn Mover>, MigrateError> {
    Ok(match strategy {
        Strategy::Cold => Box::new(cold::Cold),
        Strategy::Precopy => Box::new(precopy::Precopy::start(mem, opts.dirty)?),
        Strategy::Postcopy => Box::new(postcopy::Postcopy),
    })
}

/// Decides which pages the first full copy sends when the destination holds
/// a base: only pages whose bytes it does not hold already.
pub(crate) struct FirstCopy {
    /// What the destination holds.
    pub(crate) base: Base,
    /// Non-zero pages not sent because the destination holds them.
    pub(crate) reused: u64,
}

impl FirstCopy {
    /// Against `base`, nothing reused yet.
    pub(crate) fn new(base: Base) -> FirstCopy {
        FirstCopy { base, reused: 0 }
    }

    /// True when page `index` with bytes `page` must be sent.
    pub(crate) fn wanted(&mut self, index: u32, page: &[u8]) -> bool {
        if self.base.pages() == 0 {
            return true;
        }
        if self.base.holds(index, page) {
            if !is_zero(page) {
                self.reused += 1;
            }
            return false;
        }
        // Inside the base a differing page goes even when zero (the base
        // has other bytes there); past it the destination has zeroes.
        (index as u64) < self.base.pages() || !is_zero(page)
    }

    /// The batcher's zero rule: zero runs are dropped only with no base.
    pub(crate) fn skip_zero(&self) -> bool {
        self.base.pages() == 0
    }
}

/// Sends the pages a tracker or a memory scan hands over, batching them.
pub(crate) struct Sender<'a> {
    link: &'a mut Link,
    mem: &'a Memory,
    batch: Batcher,
    error: Option<MigrateError>,
}

impl<'a> Sender<'a> {
    /// Pages of `mem` over `link`; zero runs dropped when `skip_zero`.
    pub(crate) fn new(link: &'a mut Link, mem: &'a Memory, skip_zero: bool) -> Self {
        Sender {
            link,
            mem,
            batch: Batcher::new(skip_zero),
            error: None,
        }
    }

    /// Adds page `index` (sending a batch when one is full).
    pub(crate) fn push(&mut self, index: u32, page: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(runs) = self.batch.push(index, page) {
            self.send(runs);
        }
    }

    fn send(&mut self, runs: Vec<PageRun>) {
        // The size now: a running guest may have grown it since the start.
        let msg = Message::Pages {
            memory_size: self.mem.len() as u64,
            runs,
        };
        if let Err(e) = self.link.send(&msg) {
            self.error = Some(e);
        }
    }

    /// Sends what is left; returns the pages sent.
    pub(crate) fn finish(mut self) -> Result<u64, MigrateError> {
        let rest = self.batch.finish();
        if !rest.is_empty() {
            self.send(rest);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.batch.pages),
        }
    }
}

/// Milliseconds, for reports.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
