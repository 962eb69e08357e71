//! The sending side of a migration: [`migrate`].
//!
//! One migration is, in order: the session handshake
//! (`crate::session`); `Begin` and the module (unless the destination
//! holds it); the destination's base ([`crate::base`]); the strategy's
//! copying while the guest runs (`crate::strategy`); then the handoff
//! ([`crate::handoff`]): pause, last pages, log and `Final`, `Restored`,
//! the handoff recorded, `Commit`. Every failure goes through the handoff's
//! state machine, which decides whether the guest must be resumed here.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_vm::dirty::Prefer;
use tern_vm::memory::MemoryHandle;
use tern_vm::Captured;

use crate::base::Base;
use crate::handoff::Handoff;
use crate::pages::PAGE;
use crate::proto::{self, GuestInfo, Message, Strategy, LOG_CHUNK, MODULE_CHUNK};
use crate::session;
use crate::strategy::{self, ms, Copying, FirstCopy, Memory, Mover};
use crate::transport::{Link, Tls};
use crate::MigrateError;

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

pub use tern_api::migration::{PostcopyReport, Progress, Report, RoundStat};

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
    let prog = Progress {
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
    let run = Run {
        guest,
        to,
        opts,
        version: proto::PROTOCOL_VERSION,
        t0,
        prog,
    };
    run.over(&mut link, progress, |g| g.memory().map(Memory::Guest))
}

/// One migration on a connected link.
pub(crate) struct Run<'a> {
    pub(crate) guest: &'a dyn SourceGuest,
    /// The destination's address (for the report and errors).
    pub(crate) to: &'a str,
    pub(crate) opts: &'a Options,
    /// The protocol version offered in `Hello` ([`proto::PROTOCOL_VERSION`]
    /// but in tests).
    pub(crate) version: u32,
    /// When the migration started.
    pub(crate) t0: Instant,
    /// Progress so far.
    pub(crate) prog: Progress,
}

impl Run<'_> {
    /// Runs the migration over `link`, the guest's memory given by
    /// `memory` (a stand-in in tests). Every failure goes through the
    /// handoff, which resumes the guest here if it was paused.
    pub(crate) fn over(
        mut self,
        link: &mut Link,
        progress: &mut dyn FnMut(&Progress),
        memory: impl FnOnce(&dyn SourceGuest) -> Result<Memory, MigrateError>,
    ) -> Result<Report, MigrateError> {
        let mut handoff = Handoff::new(self.guest);
        let result = self.session(link, &mut handoff, progress, memory);
        if let Err(e) = &result {
            // Illegal only once handed over, where nothing fails.
            let _ = handoff.fail(link, e);
        }
        result
    }

    fn session(
        &mut self,
        link: &mut Link,
        handoff: &mut Handoff<'_>,
        progress: &mut dyn FnMut(&Progress),
        memory: impl FnOnce(&dyn SourceGuest) -> Result<Memory, MigrateError>,
    ) -> Result<Report, MigrateError> {
        let (guest, opts) = (self.guest, self.opts);
        let session::Welcomed {
            version,
            node: destination_node,
        } = session::hello(link, self.version, &opts.node, &opts.listen)?;
        if let Some(expected) = opts.expect_node.as_deref().filter(|_| opts.tls.is_some()) {
            if expected != destination_node {
                return Err(MigrateError::Protocol(format!(
                    "expected node {expected:?} at {} but node {destination_node:?} answered",
                    self.to
                )));
            }
        }

        if opts.strategy == Strategy::Postcopy && version < proto::POSTCOPY_VERSION {
            return Err(MigrateError::Protocol(format!(
                "node {destination_node:?} speaks migration protocol {version}; post-copy needs {}",
                proto::POSTCOPY_VERSION
            )));
        }
        let info = guest.info();
        let (module, meta) = guest.module()?;
        let mem = memory(guest)?;
        session::begin(
            link,
            &session::Begin {
                migration_id: opts.migration_id.clone(),
                guest: info.clone(),
                strategy: opts.strategy,
                meta: postcard::to_allocvec(&meta)
                    .map_err(|e| MigrateError::Encode(e.to_string()))?,
                module_len: module.len() as u64,
                memory_size: mem.len() as u64,
            },
        )?;
        let module_bytes = self.send_module(link, version, &module, progress)?;
        // The destination says what it still holds of the guest from when it
        // last left it (after compiling the module, which protocol 3 reports
        // as it goes).
        link.flush()?;
        let prog = &mut self.prog;
        let base = Base::receive(|| recv_working(link, prog, progress))?;
        prog.memory_bytes = mem.len() as u64;
        prog.phase = "copying".into();
        let mut c = Copying {
            link,
            mem: &mem,
            first: FirstCopy::new(base),
            rounds: Vec::new(),
            pages_sent: 0,
            prog,
            progress,
        };
        let mut mover = strategy::start(opts.strategy, &mem, opts)?;
        mover.live(&mut c, opts)?;

        // Stop and copy. From here until `Restored` any failure resumes the
        // guest (`Handoff::fail`).
        c.prog.phase = "stopping".into();
        c.show();
        let t_pause = Instant::now();
        handoff.pause()?;
        let pause_ms = ms(t_pause.elapsed());
        let mut t_final = t_pause;
        let restored = stop_and_copy(&mut c, &mut *mover, guest, opts).and_then(|()| {
            t_final = Instant::now();
            handoff.await_restored(c.link)
        });
        let restore_ms = ms(t_final.elapsed());
        restored?;
        // The destination has the guest, paused. Record the handoff, then
        // let go.
        handoff.hand_over(&opts.migration_id)?;
        if let Some(marker) = std::env::var_os("TERN_TEST_HANG_BEFORE_COMMIT") {
            // Fault injection for tests: stop between the handoff and Commit
            // and say so through a file, so a test can kill the node
            // (SIGKILL) at exactly this moment.
            let _ = std::fs::write(marker, opts.migration_id.as_bytes());
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        handoff.commit(c.link)?;
        let downtime = t_pause.elapsed();
        // Post-copy: the destination runs the guest; its memory follows.
        let postcopy = if opts.strategy == Strategy::Postcopy {
            c.prog.phase = "post-copy".into();
            c.show();
            let served = strategy::postcopy::serve(&mut c)?;
            c.pages_sent += served.requested + served.pushed;
            let st = &served.stats;
            let ms_of = |us: u64| us as f64 / 1000.0;
            Some(PostcopyReport {
                faults: st.faults,
                fault_p50_ms: ms_of(st.p50_us),
                fault_p99_ms: ms_of(st.p99_us),
                fault_max_ms: ms_of(st.max_us),
                all_local_ms: ms_of(st.all_local_us),
                pages_requested: served.requested,
                pages_pushed: served.pushed,
            })
        } else {
            None
        };
        c.prog.phase = "done".into();
        c.show();
        let (tracking, fallback) = mover.tracking();
        Ok(Report {
            migration_id: opts.migration_id.clone(),
            guest: info.id,
            destination: self.to.to_string(),
            destination_node,
            strategy: opts.strategy.name().into(),
            dirty_tracking: tracking,
            dirty_tracking_fallback: fallback,
            total_ms: ms(self.t0.elapsed()),
            downtime_ms: ms(downtime),
            pause_ms,
            restore_ms,
            bytes_sent: c.link.bytes,
            pages_sent: c.pages_sent,
            rounds: c.rounds.len() as u32,
            round_stats: c.rounds,
            memory_bytes: mem.len() as u64,
            base_pages: c.first.base.pages(),
            pages_reused: c.first.reused,
            bytes_saved: c.first.reused * PAGE as u64,
            module_bytes,
            postcopy,
        })
    }

    /// Offers the module (protocol 3: the destination may hold it) and
    /// sends it if wanted (always before 3); returns the bytes it took.
    fn send_module(
        &mut self,
        link: &mut Link,
        version: u32,
        module: &[u8],
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<u64, MigrateError> {
        let prog = &mut self.prog;
        // From protocol 3 on, the destination says whether it holds the
        // module already; before, it always wants it.
        let wanted = if version >= 3 {
            link.flush()?;
            prog.phase = "offering the module".into();
            progress(prog);
            match recv_working(link, prog, progress)? {
                Message::ModuleWanted(w) => w,
                other => return Err(proto::unexpected(&other, "ModuleWanted")),
            }
        } else {
            true
        };
        let module_start = link.bytes;
        if wanted {
            prog.phase = "sending the module".into();
            progress(prog);
            for chunk in module.chunks(MODULE_CHUNK) {
                link.send(&Message::ModuleChunk(chunk.to_vec()))?;
            }
        }
        Ok(link.bytes - module_start)
    }
}

/// With the guest paused: the last pages, the log and `Final`; then waits
/// for `Restored` no longer than the ack timeout.
fn stop_and_copy(
    c: &mut Copying<'_>,
    mover: &mut dyn Mover,
    guest: &dyn SourceGuest,
    opts: &Options,
) -> Result<(), MigrateError> {
    let t_round = Instant::now();
    let bytes_before = c.link.bytes;
    let n = mover.last(c)?;
    c.pages_sent += n;
    let captured = guest.capture()?;
    let log = guest.log()?;
    for chunk in log.chunks(LOG_CHUNK) {
        c.link.send(&Message::LogChunk(chunk.to_vec()))?;
    }
    c.link.send(&Message::Final {
        memory_size: captured.memory_size,
        globals: captured.globals,
        stack: captured.stack,
        host: captured.host,
        log_len: log.len() as u64,
    })?;
    c.link.flush()?;
    c.rounds.push(RoundStat {
        round: c.rounds.len() as u32 + 1,
        pages: n,
        bytes: c.link.bytes - bytes_before,
        ms: ms(t_round.elapsed()),
    });
    c.prog.phase = "handover".into();
    c.prog.bytes_sent = c.link.bytes;
    c.prog.pages_sent = c.pages_sent;
    c.show();
    c.link.set_read_timeout(Some(opts.ack_timeout))
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
