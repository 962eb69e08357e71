//! Pre-copy: copy while the guest runs, then stop it for the rest.
//!
//! Round 1 sends every page the destination lacks (as [`super::cold`] does,
//! base included) while the guest keeps running; each later round sends
//! the pages the guest wrote during the one before, as the dirty tracker
//! ([`tern_vm::dirty`]) reports them. After every round the source waits
//! for the destination's `Synced`, so its backlog stays out of the
//! downtime and the round's pace is the link's real one. The rounds stop
//! when the next one is predicted to fit the downtime budget, when they
//! stop shrinking, or at the round limit; then the guest is paused and
//! [`Mover::last`] sends what it dirtied in the last round.

use std::time::{Duration, Instant};

use tern_vm::dirty::{DirtyTracker, Prefer};

use crate::proto::Message;
use crate::source::{Options, RoundStat};
use crate::MigrateError;

use super::{ms, Copying, Memory, Mover, Sender};

/// A pre-copy round this short ends the rounds whatever the trend.
const MIN_ROUND: Duration = Duration::from_millis(1);

/// The pre-copy strategy: the dirty tracker and how much memory it covers.
pub(crate) struct Precopy {
    tracker: DirtyTracker,
    tracked: usize,
}

impl Precopy {
    /// Starts tracking writes to `mem` with the method `dirty` prefers.
    pub(crate) fn start(mem: &Memory, dirty: Prefer) -> Result<Precopy, MigrateError> {
        let h = mem
            .handle()
            .ok_or_else(|| MigrateError::Memory("pre-copy needs a guest's own memory".into()))?;
        // SAFETY: the handle keeps the mapping alive for the tracker's
        // whole life, and [base, base + len) is guest memory, readable.
        let tracker = unsafe { DirtyTracker::start(h.base(), h.len(), dirty) }
            .map_err(|e| MigrateError::Memory(e.to_string()))?;
        Ok(Precopy {
            tracker,
            tracked: h.len(),
        })
    }

    /// Extends tracking to memory the guest grew since the last look.
    fn grow(&mut self, mem: &Memory) -> Result<(), MigrateError> {
        let now = mem.len();
        if now > self.tracked {
            // SAFETY: the handle keeps the mapping alive; memory only grows,
            // so [base, base + now) is guest memory, readable and writable.
            unsafe { self.tracker.extend(now) }.map_err(|e| MigrateError::Memory(e.to_string()))?;
            self.tracked = now;
        }
        Ok(())
    }

    /// Sends the pages dirtied since the last look (queued, not flushed).
    fn send_dirty(&mut self, c: &mut Copying<'_>) -> Result<u64, MigrateError> {
        self.grow(c.mem)?;
        let mut s = Sender::new(c.link, c.mem, false);
        self.tracker
            .collect_pages(|i, p| s.push(i, p))
            .map_err(|e| MigrateError::Memory(e.to_string()))?;
        s.finish()
    }
}

impl Mover for Precopy {
    fn tracking(&self) -> (String, Option<String>) {
        (
            self.tracker.method().to_string(),
            self.tracker.fallback_reason().map(str::to_string),
        )
    }

    /// Runs rounds while the guest runs, until the next round is predicted
    /// to fit the downtime budget (judged by the last round: what it sent
    /// is what the guest dirtied in the round before), the rounds stop
    /// shrinking, or the round limit.
    fn live(&mut self, c: &mut Copying<'_>, opts: &Options) -> Result<(), MigrateError> {
        let mut shrinking_fails = 0;
        let mut prev = u64::MAX;
        loop {
            let round = c.rounds.len() as u32 + 1;
            c.prog.round = round;
            c.show();
            let t_round = Instant::now();
            let before = c.link.bytes;
            let n = if round == 1 {
                // Everything that is not zero and not held by the destination.
                let first = &mut c.first;
                let mut s = Sender::new(c.link, c.mem, first.skip_zero());
                self.tracker.copy_all(|i, p| {
                    if first.wanted(i, p) {
                        s.push(i, p)
                    }
                });
                s.finish()?
            } else {
                self.send_dirty(c)?
            };
            // Wait until the destination has applied the round.
            c.link.send(&Message::Sync)?;
            c.link.flush()?;
            c.link.expect("Synced", |m| match m {
                Message::Synced => Ok(()),
                other => Err(other),
            })?;
            c.pages_sent += n;
            let elapsed = t_round.elapsed();
            let bytes = c.link.bytes - before;
            c.rounds.push(RoundStat {
                round,
                pages: n,
                bytes,
                ms: ms(elapsed),
            });
            c.prog.bytes_sent = c.link.bytes;
            c.prog.pages_sent = c.pages_sent;
            c.show();
            if round == 1 {
                continue;
            }
            if round >= opts.max_rounds {
                return Ok(());
            }
            // This round sent what the guest dirtied during the previous
            // one; the next will be about as large. Judge it at the link's
            // pace (at least 10 MB/s so a tiny round cannot promise a huge
            // rate).
            let secs = elapsed.as_secs_f64();
            let bandwidth = if secs > 0.0 {
                (bytes as f64 / secs).max(10e6)
            } else {
                f64::INFINITY
            };
            let predicted = Duration::from_secs_f64(bytes as f64 / bandwidth);
            // Within budget, another round is still worth it while rounds
            // halve: it costs little and shortens the pause further.
            let halving = n.saturating_mul(2) < prev;
            if n == 0 || predicted <= MIN_ROUND || (predicted <= opts.max_downtime && !halving) {
                return Ok(());
            }
            // Rounds that stop shrinking will not converge: stop after three.
            if n.saturating_mul(20) >= prev.saturating_mul(19) {
                shrinking_fails += 1;
                if shrinking_fails >= 3 {
                    return Ok(());
                }
            } else {
                shrinking_fails = 0;
            }
            prev = n;
        }
    }

    fn last(&mut self, c: &mut Copying<'_>) -> Result<u64, MigrateError> {
        self.send_dirty(c)
    }
}
