//! The sending side of a migration.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_vm::dirty::{DirtyTracker, Prefer};
use tern_vm::memory::MemoryHandle;
use tern_vm::Captured;

use crate::base::Base;
use crate::pages::{is_zero, Batcher, PAGE, RUN_PAGES};
use crate::proto::{self, GuestInfo, Message, Strategy, LOG_CHUNK, MODULE_CHUNK};
use crate::session;
use crate::transport::{Link, Tls};
use crate::MigrateError;

/// A pre-copy round this short ends the rounds whatever the trend.
const MIN_ROUND: Duration = Duration::from_millis(1);

/// What the node gives the migration for the guest it moves.
pub trait SourceGuest {
    /// Who the guest is.
    fn info(&self) -> GuestInfo;
    /// The prepared module and the metadata an image of it would carry.
    fn module(&self) -> Result<(Arc<[u8]>, tern_image::Meta), MigrateError>;
    /// The guest's memory, readable while it runs.
    fn memory(&self) -> Result<MemoryHandle, MigrateError>;
    /// Pauses the guest at its next migration point and returns once it is
    /// paused; [`MigrateError::Ended`] if it ended first.
    fn pause(&self) -> Result<(), MigrateError>;
    /// Captures the paused guest's globals, stack and host state.
    fn capture(&self) -> Result<Captured, MigrateError>;
    /// Everything the guest printed so far (stdout and stderr interleaved).
    fn log(&self) -> Result<Vec<u8>, MigrateError>;
    /// The migration failed after `pause`: run the guest here again.
    fn resume(&self);
    /// The destination restored the guest: record durably that it now owns
    /// it, before `Commit` goes out. An error here keeps the guest here.
    fn hand_over(&self, migration_id: &str) -> Result<(), MigrateError>;
}

/// How to migrate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cold or pre-copy.
    pub strategy: Strategy,
    /// Pre-copy stops its rounds when the last one is predicted to fit this.
    pub max_downtime: Duration,
    /// Pre-copy stops after this many rounds whatever happens.
    pub max_rounds: u32,
    /// Which dirty-tracking method to use.
    pub dirty: Prefer,
    /// Id of this migration.
    pub migration_id: String,
    /// This node's name (sent in `Hello`).
    pub node: String,
    /// Where this node listens for migrations (for the destination's `Resolve`).
    pub listen: String,
    /// How long to wait for the destination's `Restored` after `Final`.
    pub ack_timeout: Duration,
    /// Mutual TLS with the destination (None: plain TCP).
    pub tls: Option<Tls>,
    /// The destination's node name, when known: with TLS, its certificate
    /// must carry it.
    pub expect_node: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            strategy: Strategy::Precopy,
            max_downtime: Duration::from_millis(50),
            max_rounds: 30,
            dirty: Prefer::Auto,
            migration_id: String::new(),
            node: String::new(),
            listen: String::new(),
            ack_timeout: Duration::from_secs(60),
            tls: None,
            expect_node: None,
        }
    }
}

pub use tern_api::migration::{Progress, Report, RoundStat};

/// Decides which pages the first full copy sends when the destination holds
/// a base: only pages whose bytes it does not hold already.
struct FirstCopy<'b> {
    base: &'b Base,
    reused: u64,
}

impl FirstCopy<'_> {
    /// True when page `index` with bytes `page` must be sent.
    fn wanted(&mut self, index: u32, page: &[u8]) -> bool {
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
    fn skip_zero(&self) -> bool {
        self.base.pages() == 0
    }
}

/// Sends the pages a tracker or a memory scan hands over, batching them.
struct Sender<'a> {
    link: &'a mut Link,
    mem: &'a MemoryHandle,
    batch: Batcher,
    error: Option<MigrateError>,
}

impl<'a> Sender<'a> {
    fn new(link: &'a mut Link, mem: &'a MemoryHandle, skip_zero: bool) -> Self {
        Sender {
            link,
            mem,
            batch: Batcher::new(skip_zero),
            error: None,
        }
    }

    fn push(&mut self, index: u32, page: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(runs) = self.batch.push(index, page) {
            self.send(runs);
        }
    }

    fn send(&mut self, runs: Vec<crate::proto::PageRun>) {
        let msg = Message::Pages {
            memory_size: self.mem.len() as u64,
            runs,
        };
        if let Err(e) = self.link.send(&msg) {
            self.error = Some(e);
        }
    }

    /// Sends what is left; returns the pages sent.
    fn finish(mut self) -> Result<u64, MigrateError> {
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

/// Sends every page of memory the destination needs (cold migration: the
/// guest is paused).
fn send_all(
    link: &mut Link,
    mem: &MemoryHandle,
    first_copy: &mut FirstCopy,
) -> Result<u64, MigrateError> {
    let mut s = Sender::new(link, mem, first_copy.skip_zero());
    let mut buf = vec![0u8; RUN_PAGES as usize * PAGE];
    let pages = (mem.len() / PAGE) as u32;
    let mut first = 0u32;
    while first < pages {
        let n = RUN_PAGES.min(pages - first);
        let bytes = &mut buf[..n as usize * PAGE];
        mem.read(first as usize * PAGE, bytes)
            .map_err(|e| MigrateError::Memory(e.to_string()))?;
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            let index = first + i as u32;
            if first_copy.wanted(index, page) {
                s.push(index, page);
            }
        }
        first += n;
    }
    s.finish()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Moves `guest` to the node listening for migrations at `to`. On success
/// the destination runs the guest and this node has let go (after
/// [`SourceGuest::hand_over`]); on failure the guest runs here again.
pub fn migrate(
    guest: &dyn SourceGuest,
    to: &str,
    opts: &Options,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, MigrateError> {
    let t0 = Instant::now();
    let mut prog = Progress {
        phase: "connecting".into(),
        ..Progress::default()
    };
    progress(&prog);
    let connect_err = |source| MigrateError::Connect {
        addr: to.to_string(),
        source,
    };
    let addr = to
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| connect_err(std::io::Error::other("no address")))?;
    let mut link =
        Link::connect(addr, Duration::from_secs(10), opts.tls.as_ref()).map_err(connect_err)?;
    link.set_read_timeout(Some(Duration::from_secs(30)))?;
    let session::Welcomed {
        version,
        node: destination_node,
    } = session::hello(&mut link, proto::PROTOCOL_VERSION, &opts.node, &opts.listen)?;
    if let Some(expected) = opts.expect_node.as_deref().filter(|_| opts.tls.is_some()) {
        if expected != destination_node {
            return Err(MigrateError::Protocol(format!(
                "expected node {expected:?} at {to} but node {destination_node:?} answered"
            )));
        }
    }

    let info = guest.info();
    let (module, meta) = guest.module()?;
    let mem = guest.memory()?;
    session::begin(
        &mut link,
        &session::Begin {
            migration_id: opts.migration_id.clone(),
            guest: info.clone(),
            strategy: opts.strategy,
            meta: postcard::to_allocvec(&meta).map_err(|e| MigrateError::Encode(e.to_string()))?,
            module_len: module.len() as u64,
            memory_size: mem.len() as u64,
        },
    )?;
    // From protocol 3 on, the destination says whether it holds the
    // module already; before, it always wants it.
    let wanted = if version >= 3 {
        link.flush()?;
        prog.phase = "offering the module".into();
        progress(&prog);
        match recv_working(&mut link, &mut prog, progress)? {
            Message::ModuleWanted(w) => w,
            other => return Err(proto::unexpected(&other, "ModuleWanted")),
        }
    } else {
        true
    };
    let module_start = link.bytes;
    if wanted {
        prog.phase = "sending the module".into();
        progress(&prog);
        for chunk in module.chunks(MODULE_CHUNK) {
            link.send(&Message::ModuleChunk(chunk.to_vec()))?;
        }
    }
    let module_bytes = link.bytes - module_start;
    // The destination says what it still holds of the guest from when it
    // last left it (after compiling the module, which protocol 3 reports
    // as it goes).
    link.flush()?;
    let base = Base::receive(|| recv_working(&mut link, &mut prog, progress))?;
    let mut first_copy = FirstCopy {
        base: &base,
        reused: 0,
    };
    prog.memory_bytes = mem.len() as u64;
    prog.phase = "copying".into();

    let mut rounds = Vec::new();
    let mut pages_sent = 0u64;
    let mut tracking = "none".to_string();
    let mut fallback = None;
    let mut tracker: Option<(DirtyTracker, usize)> = match opts.strategy {
        Strategy::Cold => None,
        Strategy::Precopy => {
            // SAFETY: the handle keeps the mapping alive for the tracker's
            // whole life, and [base, base + len) is guest memory, readable.
            let t = unsafe { DirtyTracker::start(mem.base(), mem.len(), opts.dirty) }
                .map_err(|e| MigrateError::Memory(e.to_string()))?;
            tracking = t.method().to_string();
            fallback = t.fallback_reason().map(str::to_string);
            let tracked = mem.len();
            let mut tracker = (t, tracked);
            precopy_rounds(
                &mut link,
                &mem,
                &mut tracker,
                &mut first_copy,
                opts,
                &mut rounds,
                &mut pages_sent,
                &mut prog,
                progress,
            )?;
            Some(tracker)
        }
    };

    // Stop and copy. From here until `Restored` any failure resumes the guest.
    prog.phase = "stopping".into();
    progress(&prog);
    let t_pause = Instant::now();
    guest.pause()?;
    let pause_ms = ms(t_pause.elapsed());
    let mut t_final = t_pause;
    let result = (|| -> Result<(), MigrateError> {
        let t_round = Instant::now();
        let bytes_before = link.bytes;
        let n = match tracker.as_mut() {
            None => send_all(&mut link, &mem, &mut first_copy)?,
            Some((t, tracked)) => {
                grow(t, tracked, &mem)?;
                let mut s = Sender::new(&mut link, &mem, false);
                t.collect_pages(|i, p| s.push(i, p))
                    .map_err(|e| MigrateError::Memory(e.to_string()))?;
                s.finish()?
            }
        };
        pages_sent += n;
        let captured = guest.capture()?;
        let log = guest.log()?;
        for chunk in log.chunks(LOG_CHUNK) {
            link.send(&Message::LogChunk(chunk.to_vec()))?;
        }
        link.send(&Message::Final {
            memory_size: captured.memory_size,
            globals: captured.globals,
            stack: captured.stack,
            host: captured.host,
            log_len: log.len() as u64,
        })?;
        link.flush()?;
        rounds.push(RoundStat {
            round: rounds.len() as u32 + 1,
            pages: n,
            bytes: link.bytes - bytes_before,
            ms: ms(t_round.elapsed()),
        });
        prog.phase = "handover".into();
        prog.bytes_sent = link.bytes;
        prog.pages_sent = pages_sent;
        progress(&prog);
        link.set_read_timeout(Some(opts.ack_timeout))?;
        t_final = Instant::now();
        link.expect("Restored", |m| match m {
            Message::Restored => Ok(()),
            other => Err(other),
        })
    })();
    let restore_ms = ms(t_final.elapsed());
    if let Err(e) = result {
        // The destination never confirmed: the guest stays (and runs) here.
        link.abort(&e);
        guest.resume();
        return Err(e);
    }
    // The destination has the guest, paused. Record the handoff, then let go.
    if let Err(e) = guest.hand_over(&opts.migration_id) {
        link.abort(&e);
        guest.resume();
        return Err(e);
    }
    if let Some(marker) = std::env::var_os("TERN_TEST_HANG_BEFORE_COMMIT") {
        // Fault injection for tests: stop between the handoff and Commit and
        // say so through a file, so a test can kill the node (SIGKILL) at
        // exactly this moment.
        let _ = std::fs::write(marker, opts.migration_id.as_bytes());
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    // Best effort: the handoff is recorded, so a destination that misses
    // the Commit learns the outcome through `Resolve`.
    let _ = link.send(&Message::Commit).and_then(|_| link.flush());
    let downtime = t_pause.elapsed();
    prog.phase = "done".into();
    progress(&prog);
    Ok(Report {
        migration_id: opts.migration_id.clone(),
        guest: info.id,
        destination: to.to_string(),
        destination_node,
        strategy: opts.strategy.name().into(),
        dirty_tracking: tracking,
        dirty_tracking_fallback: fallback,
        total_ms: ms(t0.elapsed()),
        downtime_ms: ms(downtime),
        pause_ms,
        restore_ms,
        bytes_sent: link.bytes,
        pages_sent,
        rounds: rounds.len() as u32,
        round_stats: rounds,
        memory_bytes: mem.len() as u64,
        base_pages: base.pages(),
        pages_reused: first_copy.reused,
        bytes_saved: first_copy.reused * PAGE as u64,
        module_bytes,
    })
}

/// The next message from the destination, passing over its `Working` notes
/// (protocol 3): each one shows as progress (`destination compiling the
/// module (12 s)`) and, by arriving, keeps the read timeout from expiring
/// while the destination is busy.
fn recv_working(
    link: &mut Link,
    prog: &mut Progress,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Message, MigrateError> {
    loop {
        match link.recv()? {
            Message::Working { what, elapsed_ms } => {
                prog.phase = format!("destination {what} ({} s)", elapsed_ms / 1000);
                progress(prog);
            }
            other => return Ok(other),
        }
    }
}

/// Extends tracking to memory the guest grew since the last look.
fn grow(t: &mut DirtyTracker, tracked: &mut usize, mem: &MemoryHandle) -> Result<(), MigrateError> {
    let now = mem.len();
    if now > *tracked {
        // SAFETY: the handle keeps the mapping alive; memory only grows, so
        // [base, base + now) is guest memory, readable and writable.
        unsafe { t.extend(now) }.map_err(|e| MigrateError::Memory(e.to_string()))?;
        *tracked = now;
    }
    Ok(())
}

/// Runs pre-copy rounds while the guest runs, until the next round is
/// predicted to fit the downtime budget (judged by the last round: what it
/// sent is what the guest dirtied in the round before), the rounds stop
/// shrinking, or the round limit.
#[allow(clippy::too_many_arguments)]
fn precopy_rounds(
    link: &mut Link,
    mem: &MemoryHandle,
    tracker: &mut (DirtyTracker, usize),
    first_copy: &mut FirstCopy,
    opts: &Options,
    rounds: &mut Vec<RoundStat>,
    pages_sent: &mut u64,
    prog: &mut Progress,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), MigrateError> {
    let (t, tracked) = tracker;
    let mut shrinking_fails = 0;
    let mut prev = u64::MAX;
    loop {
        let round = rounds.len() as u32 + 1;
        prog.round = round;
        progress(prog);
        let t_round = Instant::now();
        let before = link.bytes;
        let n = if round == 1 {
            // Everything that is not zero and not held by the destination.
            let mut s = Sender::new(link, mem, first_copy.skip_zero());
            t.copy_all(|i, p| {
                if first_copy.wanted(i, p) {
                    s.push(i, p)
                }
            });
            s.finish()?
        } else {
            grow(t, tracked, mem)?;
            let mut s = Sender::new(link, mem, false);
            t.collect_pages(|i, p| s.push(i, p))
                .map_err(|e| MigrateError::Memory(e.to_string()))?;
            s.finish()?
        };
        // Wait until the destination has applied the round.
        link.send(&Message::Sync)?;
        link.flush()?;
        link.expect("Synced", |m| match m {
            Message::Synced => Ok(()),
            other => Err(other),
        })?;
        *pages_sent += n;
        let elapsed = t_round.elapsed();
        let bytes = link.bytes - before;
        rounds.push(RoundStat {
            round,
            pages: n,
            bytes,
            ms: ms(elapsed),
        });
        prog.bytes_sent = link.bytes;
        prog.pages_sent = *pages_sent;
        progress(prog);
        if round == 1 {
            continue;
        }
        if round >= opts.max_rounds {
            return Ok(());
        }
        // This round sent what the guest dirtied during the previous one;
        // the next will be about as large. Judge it at the link's pace
        // (at least 10 MB/s so a tiny round cannot promise a huge rate).
        let secs = elapsed.as_secs_f64();
        let bandwidth = if secs > 0.0 {
            (bytes as f64 / secs).max(10e6)
        } else {
            f64::INFINITY
        };
        let predicted = Duration::from_secs_f64(bytes as f64 / bandwidth);
        // Within budget, another round is still worth it while rounds halve:
        // it costs little and shortens the pause further.
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
