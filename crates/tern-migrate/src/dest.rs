//! The receiving side of a migration.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tern_vm::wasi::OutputSink;
use tern_vm::{Guest, Incoming, Runtime};

use std::collections::HashMap;

use tern_vm::lazy::LazyMemory;

use crate::base::hash_messages;
use crate::pages::{apply_run, decode_into, PAGE};
use crate::proto::{
    self, GuestInfo, Message, PageRun, PostcopyStats, RunData, Strategy, MAX_FRAME, MAX_MODULE,
};
use crate::session::{self, Begin, Greeted, Opening};
use crate::transport::{Link, Tls};
use crate::MigrateError;

/// What the node gives the receiving side.
pub trait DestHost {
    /// The runtime to rebuild guests on.
    fn runtime(&self) -> &Runtime;
    /// This node's name (sent in `Welcome`).
    fn node_name(&self) -> String;
    /// Sets up the log of an arriving guest with what it printed so far, and
    /// returns the sinks its stdout and stderr go to from now on.
    fn open_log(&self, guest: &GuestInfo, log: &[u8]) -> Result<(OutputSink, OutputSink), String>;
    /// This node owns the (paused) guest now: run it.
    fn adopt(&self, guest: GuestInfo, g: Guest, migration_id: &str, from_node: &str);
    /// The migration of `guest` failed after `open_log`: forget it.
    fn discard(&self, guest: &GuestInfo);
    /// Source side of `Resolve`: true if this node handed `migration_id`'s
    /// guest over (the destination must run it).
    fn handed_over(&self, migration_id: &str) -> bool;
    /// The image this node kept of `guest` when it last left, if any: the
    /// base the source then sends only the difference to.
    fn base_image(&self, guest: &GuestInfo) -> Option<PathBuf>;
    /// The base image at `path` could not be used, for `why` (the source
    /// then sends everything).
    fn base_unusable(&self, guest: &GuestInfo, path: &Path, why: &str);
    /// Mutual TLS for migrations (None: plain TCP).
    fn tls(&self) -> Option<&Tls> {
        None
    }
    /// Most bytes of output log an arriving guest may bring: the log is
    /// held in memory until `Final`, so a peer must not be able to send
    /// more than this.
    fn max_log(&self) -> u64 {
        DEFAULT_MAX_LOG
    }
    /// The prepared module whose BLAKE3 digest is `digest`, when this node
    /// holds it (protocol 3: then the source does not send it).
    fn module(&self, _digest: &[u8; 32]) -> Option<Vec<u8>> {
        None
    }
    /// A module arrived and compiled: keep it for the next guest that
    /// brings the same one.
    fn keep_module(&self, _digest: &[u8; 32], _module: &[u8]) {}
    /// Post-copy: the adopted guest's memory can no longer arrive (`why`).
    /// The guest stays blocked on the pages it lacks, never reading them as
    /// zero; the host reports it lost.
    fn lost(&self, _guest: &GuestInfo, _why: &str) {}
}

/// Most log bytes accepted from a peer when the host sets no limit.
pub const DEFAULT_MAX_LOG: u64 = 1 << 30;

/// Largest base image read (guest memory is at most 4 GiB).
const MAX_BASE_IMAGE: u64 = 5 << 30;

/// What a served connection was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// A guest arrived and runs here now.
    Adopted {
        /// Guest id.
        guest: String,
    },
    /// A `Resolve` question was answered.
    Resolved,
}

/// Serves one connection accepted by the node's migration listener.
pub fn serve(stream: TcpStream, host: &dyn DestHost) -> Result<Served, MigrateError> {
    // A peer that says nothing for this long is dropped.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(MigrateError::Receive)?;
    let link = Link::accept(stream, host.tls()).map_err(MigrateError::Receive)?;
    serve_link(link, host)
}

/// Serves one session on a link whatever carries it (a TCP or TLS
/// connection, or an in-process pipe in tests).
pub(crate) fn serve_link(mut c: Link, host: &dyn DestHost) -> Result<Served, MigrateError> {
    let greeted = session::welcome(&mut c, &host.node_name())?;
    match session::opening(&mut c)? {
        Opening::Resolve(migration_id) => {
            session::answer_owner(&mut c, host.handed_over(&migration_id))?;
            Ok(Served::Resolved)
        }
        Opening::Begin(begin) => receive(&mut c, host, begin, greeted),
    }
}

/// Fills `incoming`'s memory from the image at `path` of the same guest and
/// module; returns the memory size it covers.
fn load_base(
    incoming: &mut Incoming,
    path: &Path,
    meta: &tern_image::Meta,
    memory_size: u64,
) -> Result<u64, String> {
    let bytes = tern_image::read_bytes(path, MAX_BASE_IMAGE).map_err(|e| e.to_string())?;
    let view = tern_image::view(&bytes).map_err(|e| e.to_string())?;
    if view.meta.guest_id != meta.guest_id || view.meta.prepared_digest != meta.prepared_digest {
        return Err("it is of another guest or module".into());
    }
    if view.memory_size() > memory_size {
        return Err(format!(
            "its memory ({} bytes) is larger than the guest's ({memory_size} bytes)",
            view.memory_size()
        ));
    }
    incoming.load_memory(&view).map_err(|e| e.to_string())?;
    Ok(view.memory_size())
}

fn receive(
    c: &mut Link,
    host: &dyn DestHost,
    b: Begin,
    from: Greeted,
) -> Result<Served, MigrateError> {
    // Everything up to `Restored`: any failure aborts, and the source keeps
    // (and resumes) the guest.
    let mut log_opened = false;
    let postcopy = b.strategy == Strategy::Postcopy;
    let built = (|| -> Result<(Guest, Option<LazyMemory>), MigrateError> {
        // Refused before anything moves where pages cannot be fetched on
        // demand (no userfaultfd, as under qemu-user).
        if postcopy {
            tern_vm::lazy::available().map_err(|e| MigrateError::Local(e.to_string()))?;
        }
        let meta: tern_image::Meta = postcard::from_bytes(&b.meta)
            .map_err(|e| MigrateError::Protocol(format!("malformed metadata: {e}")))?;
        if b.module_len > MAX_MODULE {
            return Err(MigrateError::Protocol(format!(
                "module of {} bytes exceeds the {MAX_MODULE}-byte limit",
                b.module_len
            )));
        }
        // Protocol 3: a module this node holds is not sent again.
        let held = if from.version >= 3 {
            host.module(&meta.prepared_digest)
        } else {
            None
        };
        if from.version >= 3 {
            c.send_now(&Message::ModuleWanted(held.is_none()))?;
        }
        let arrived = held.is_none();
        let mut module = held.unwrap_or_default();
        while arrived && (module.len() as u64) < b.module_len {
            match c.recv()? {
                Message::ModuleChunk(bytes) => {
                    if module.len() as u64 + bytes.len() as u64 > b.module_len {
                        return Err(MigrateError::Protocol(
                            "module longer than announced".into(),
                        ));
                    }
                    module.extend_from_slice(&bytes);
                }
                other => return Err(proto::unexpected(&other, "ModuleChunk")),
            }
        }
        let rt = host.runtime();
        let mut incoming = working(c, from.version, "compiling the module", || {
            Incoming::new(rt, &module, &meta)
        })?
        .map_err(|e| MigrateError::Guest(e.to_string()))?;
        if arrived {
            host.keep_module(&meta.prepared_digest, &module);
        }
        drop(module);
        let grow = |incoming: &mut Incoming, size: u64| {
            incoming
                .set_memory_size(size)
                .map_err(|e| MigrateError::Guest(e.to_string()))
        };
        // Start from the guest as it left this node, if it did, and tell
        // the source what that holds. A base that cannot be used is no
        // base: the source then sends everything.
        // (Post-copy places every page itself: no base.)
        let base = match host.base_image(&b.guest).filter(|_| !postcopy) {
            Some(path) => {
                let loaded = working(c, from.version, "loading the guest's last image", || {
                    load_base(&mut incoming, &path, &meta, b.memory_size)
                })?;
                loaded
                    .map_err(|why| host.base_unusable(&b.guest, &path, &why))
                    .ok()
            }
            None => None,
        };
        let held = base.map_or(0, |size| size as usize);
        for msg in hash_messages(&incoming.memory_mut()[..held]) {
            c.send(&msg)?;
        }
        c.flush()?;
        grow(&mut incoming, b.memory_size)?;
        let mut log = Vec::new();
        loop {
            match c.recv()? {
                Message::Pages { .. } if postcopy => {
                    return Err(MigrateError::Protocol(
                        "pages before Final in a post-copy migration".into(),
                    ))
                }
                Message::Pages { memory_size, runs } => {
                    grow(&mut incoming, memory_size)?;
                    let mem = incoming.memory_mut();
                    for run in &runs {
                        apply_run(mem, run)?;
                    }
                }
                Message::LogChunk(bytes) => {
                    if (log.len() + bytes.len()) as u64 > host.max_log() {
                        return Err(MigrateError::Protocol(format!(
                            "the guest's output log is larger than this node accepts ({} bytes)",
                            host.max_log()
                        )));
                    }
                    log.extend_from_slice(&bytes)
                }
                Message::Sync => c.send_now(&Message::Synced)?,
                Message::Final {
                    memory_size,
                    globals,
                    stack,
                    host: host_state,
                    log_len,
                } => {
                    if log_len != log.len() as u64 {
                        return Err(MigrateError::Protocol(format!(
                            "log of {} bytes announced, {} received",
                            log_len,
                            log.len()
                        )));
                    }
                    grow(&mut incoming, memory_size)?;
                    let (out, err) = host.open_log(&b.guest, &log).map_err(MigrateError::Local)?;
                    log_opened = true;
                    let g = incoming
                        .finish(&globals, stack, &host_state, out, err)
                        .map_err(|e| MigrateError::Guest(e.to_string()))?;
                    if !postcopy {
                        return Ok((g, None));
                    }
                    // Its memory arrives as it runs: every page faults
                    // until placed.
                    let handle = g
                        .memory_handle()
                        .map_err(|e| MigrateError::Guest(e.to_string()))?;
                    let lazy = LazyMemory::arm(handle, memory_size as usize)
                        .map_err(|e| MigrateError::Local(e.to_string()))?;
                    return Ok((g, Some(lazy)));
                }
                other => return Err(proto::unexpected(&other, "Pages, LogChunk or Final")),
            }
        }
    })();
    let (guest, lazy) = match built {
        Ok(built) => built,
        Err(e) => {
            c.abort(&e);
            if log_opened {
                host.discard(&b.guest);
            }
            return Err(e);
        }
    };
    // Restored: from now on the source may let go at any moment.
    let sent = c.send_now(&Message::Restored);
    let answer = sent.and_then(|_| c.recv());
    let ours = match answer {
        Ok(Message::Commit) => true,
        Ok(other) => {
            // An explicit Abort (or nonsense) means the source kept it.
            let _ = proto::unexpected(&other, "Commit");
            false
        }
        Err(_) => resolve(&from.listen, &b.migration_id, host),
    };
    if ours {
        host.adopt(b.guest.clone(), guest, &b.migration_id, &from.node);
        if let Some(mut lazy) = lazy {
            let resumed = Instant::now();
            if let Err(e) = postcopy_receive(c, &mut lazy, resumed) {
                // The pages it lacks cannot come: unregistering would let
                // them read as zero, so the memory stays registered (and the
                // guest waits on them) for as long as this process lives.
                std::mem::forget(lazy);
                host.lost(&b.guest, &e.to_string());
                return Err(e);
            }
        }
        Ok(Served::Adopted { guest: b.guest.id })
    } else {
        host.discard(&b.guest);
        Err(MigrateError::Aborted(
            "the source kept the guest after the connection broke".into(),
        ))
    }
}

/// Post-copy, once the guest runs: asks for each page it waits on, places
/// every page that arrives (asked for or pushed), and answers `AllSent`
/// with `AllLocal` once every page is in place.
fn postcopy_receive(
    c: &mut Link,
    lazy: &mut LazyMemory,
    resumed: Instant,
) -> Result<PostcopyStats, MigrateError> {
    let local = |e: std::io::Error| MigrateError::Memory(e.to_string());
    let mut waiting: HashMap<u32, Instant> = HashMap::new();
    let mut service_us: Vec<u64> = Vec::new();
    let mut faults = Vec::new();
    let mut buf = Vec::new();
    let mut heard = Instant::now();
    loop {
        let (message, fault) = c.ready(Some(lazy.fault_fd()), Duration::from_millis(500))?;
        if fault {
            faults.clear();
            lazy.faults(&mut faults).map_err(local)?;
            let before = waiting.len();
            for &p in &faults {
                if !lazy.is_placed(p) && !waiting.contains_key(&p) {
                    waiting.insert(p, Instant::now());
                    c.send(&Message::PageRequest { first: p, count: 1 })?;
                }
            }
            if waiting.len() > before {
                c.flush()?;
            }
        }
        if !message {
            if heard.elapsed() > POSTCOPY_SILENCE {
                return Err(MigrateError::Receive(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the source sent nothing for {} s with {} pages still missing",
                        POSTCOPY_SILENCE.as_secs(),
                        lazy.missing()
                    ),
                )));
            }
            continue;
        }
        heard = Instant::now();
        match c.recv()? {
            Message::Pages { runs, .. } => {
                for run in &runs {
                    place_run(lazy, run, &mut buf)?;
                    for i in run.first..run.first.saturating_add(run.count) {
                        if let Some(t) = waiting.remove(&i) {
                            service_us.push(t.elapsed().as_micros() as u64);
                        }
                    }
                }
            }
            Message::AllSent => {
                if !lazy.is_complete() {
                    return Err(MigrateError::Protocol(format!(
                        "the source sent everything but {} pages are missing",
                        lazy.missing()
                    )));
                }
                service_us.sort_unstable();
                let at = |q: usize| {
                    service_us
                        .get((service_us.len() * q / 100).min(service_us.len().saturating_sub(1)))
                        .copied()
                        .unwrap_or(0)
                };
                let stats = PostcopyStats {
                    faults: service_us.len() as u64,
                    p50_us: at(50),
                    p99_us: at(99),
                    max_us: service_us.last().copied().unwrap_or(0),
                    all_local_us: resumed.elapsed().as_micros() as u64,
                };
                c.send_now(&Message::AllLocal(stats.clone()))?;
                return Ok(stats);
            }
            other => return Err(proto::unexpected(&other, "Pages or AllSent")),
        }
    }
}

/// How long post-copy waits for the source before the guest is given up.
const POSTCOPY_SILENCE: Duration = Duration::from_secs(30);

/// Places one run of pages that arrived in post-copy.
fn place_run(lazy: &mut LazyMemory, run: &PageRun, buf: &mut Vec<u8>) -> Result<(), MigrateError> {
    let bad = |e: std::io::Error| MigrateError::Protocol(e.to_string());
    if run.encoding == RunData::Zero {
        lazy.place_zero(run.first, run.count).map_err(bad)?;
        return Ok(());
    }
    let len = (run.count as usize)
        .checked_mul(PAGE)
        .filter(|&l| l <= MAX_FRAME)
        .ok_or_else(|| MigrateError::Protocol(format!("run of {} pages is too long", run.count)))?;
    buf.resize(len, 0);
    decode_into(run, buf)?;
    lazy.place(run.first, buf).map_err(bad)?;
    Ok(())
}

/// Runs `step` on a thread of its own and, from protocol 3 on, tells the
/// source it is under way every [`proto::WORKING_EVERY`]: a long step
/// (compiling a large module under emulation takes tens of seconds) must
/// not look like a dead peer to the source's read timeout.
fn working<T: Send>(
    c: &mut Link,
    version: u32,
    what: &str,
    step: impl FnOnce() -> T + Send,
) -> Result<T, MigrateError> {
    if version < 3 {
        return Ok(step());
    }
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("tern-mig-step".into())
            .stack_size(tern_vm::GUEST_THREAD_STACK)
            .spawn_scoped(s, step)
            .map_err(|e| MigrateError::Local(format!("{what}: {e}")))?;
        let mut next = Instant::now();
        loop {
            if handle.is_finished() {
                // A panic in the step is the step's failure, reported as one.
                return handle
                    .join()
                    .map_err(|_| MigrateError::Local(format!("{what} failed")));
            }
            if Instant::now() >= next {
                c.send_now(&Message::Working {
                    what: what.to_string(),
                    elapsed_ms: t0.elapsed().as_millis() as u64,
                })?;
                next += proto::WORKING_EVERY;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// The connection broke after `Restored` and before `Commit`: ask the source
/// who owns the guest. A source whose port refuses connections is gone, and
/// its copy of the guest with it: then this node runs the guest.
fn resolve(source: &str, migration_id: &str, host: &dyn DestHost) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ask_owner(source, migration_id, host) {
            Ok(destination) => return destination,
            Err(Some(refused)) if refused => return true,
            _ if Instant::now() >= deadline => return false,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `Err(Some(true))` when the source refused the connection.
fn ask_owner(source: &str, migration_id: &str, host: &dyn DestHost) -> Result<bool, Option<bool>> {
    let addr = source
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(None)?;
    let mut c = Link::connect(addr, Duration::from_secs(2), host.tls())
        .map_err(|e| Some(e.kind() == std::io::ErrorKind::ConnectionRefused))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|_| None)?;
    let mut q = || -> Result<bool, MigrateError> {
        session::hello(&mut c, proto::PROTOCOL_VERSION, &host.node_name(), "")?;
        session::ask_owner(&mut c, migration_id)
    };
    q().map_err(|_| None)
}
