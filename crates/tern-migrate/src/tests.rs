//! The source and the destination talking over an in-process pipe
//! ([`Link::pipe`]), with a fake guest on the source and, on the other end,
//! either the real destination ([`serve_link`]) over a fake host or a
//! scripted destination.
//!
//! A full migration through `Commit` against the real destination needs a
//! real prepared module and wasmtime guest ([`DestHost::adopt`] takes a
//! [`tern_vm::Guest`], built by [`tern_vm::Incoming`]), which the
//! end-to-end tests (`tests/all/migrate.rs`) cover. Here the real
//! destination is driven as far as a fake can take it (the handshake, the
//! version check, `Resolve`, and a failure before `Restored`), and the
//! source's whole run, through `Commit`, against a destination scripted
//! message by message, as the real one speaks.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use tern_vm::memory::MemoryHandle;
use tern_vm::wasi::OutputSink;
use tern_vm::{Captured, Guest, Runtime};

use crate::base::hash_messages;
use crate::dest::{serve_link, DestHost, Served};
use crate::handoff::State;
use crate::pages::{apply_run, PAGE};
use crate::proto::{
    GuestInfo, Message, PostcopyStats, Strategy, OLDEST_VERSION, POSTCOPY_VERSION, PROTOCOL_VERSION,
};
use crate::session::{self, Opening};
use crate::source::{Options, Progress, Report, Run, SourceGuest};
use crate::strategy::Memory;
use crate::transport::Link;
use crate::MigrateError;

fn meta() -> tern_image::Meta {
    tern_image::Meta {
        tern_version: "test".into(),
        transform: tern_image::TransformId {
            name: "no-such-transform".into(),
            version: "0".into(),
        },
        original_digest: [1; 32],
        prepared_digest: [2; 32],
        created_unix_ms: 0,
        source_arch: std::env::consts::ARCH.into(),
        guest_id: "g1".into(),
    }
}

/// A guest that is a few pages of bytes and a log; it records what the
/// migration asked of it.
struct FakeGuest {
    log: Vec<u8>,
    calls: Mutex<Vec<&'static str>>,
    refuse_hand_over: bool,
}

impl FakeGuest {
    fn new() -> FakeGuest {
        FakeGuest {
            log: b"hello from the guest\n".to_vec(),
            calls: Mutex::new(Vec::new()),
            refuse_hand_over: false,
        }
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, what: &'static str) {
        self.calls.lock().unwrap().push(what);
    }
}

impl SourceGuest for FakeGuest {
    fn info(&self) -> GuestInfo {
        GuestInfo {
            id: "g1".into(),
            name: "fake".into(),
        }
    }
    fn module(&self) -> Result<(Arc<[u8]>, tern_image::Meta), MigrateError> {
        Ok((Arc::from(&b"\0asm not really a module"[..]), meta()))
    }
    fn memory(&self) -> Result<MemoryHandle, MigrateError> {
        Err(MigrateError::Memory("a fake has no guest memory".into()))
    }
    fn pause(&self) -> Result<(), MigrateError> {
        self.call("pause");
        Ok(())
    }
    fn capture(&self) -> Result<Captured, MigrateError> {
        Ok(Captured {
            meta: meta(),
            module: self.module()?.0,
            globals: Vec::new(),
            stack: vec![1, 2, 3],
            host: vec![4, 5],
            memory_size: memory().len() as u64,
        })
    }
    fn log(&self) -> Result<Vec<u8>, MigrateError> {
        Ok(self.log.clone())
    }
    fn resume(&self) {
        self.call("resume");
    }
    fn hand_over(&self, _: &str) -> Result<(), MigrateError> {
        self.call("hand_over");
        if self.refuse_hand_over {
            return Err(MigrateError::Local("the disk is full".into()));
        }
        Ok(())
    }
}

/// 16 pages: every third one holds bytes, the rest are zero.
fn memory() -> Vec<u8> {
    let mut mem = vec![0u8; 16 * PAGE];
    for (i, page) in mem.chunks_mut(PAGE).enumerate() {
        if i % 3 == 0 {
            page.fill(i as u8 + 1);
        }
    }
    mem
}

fn options(strategy: Strategy) -> Options {
    Options {
        strategy,
        migration_id: "m1".into(),
        node: "src".into(),
        listen: String::new(),
        ..Options::default()
    }
}

/// Runs the source's side over `link`, speaking `version`.
fn source(
    guest: &FakeGuest,
    link: &mut Link,
    opts: &Options,
    version: u32,
    phases: &mut Vec<String>,
) -> Result<Report, MigrateError> {
    let run = Run {
        guest,
        to: "pipe",
        opts,
        version,
        t0: Instant::now(),
        prog: Progress::default(),
    };
    let mut progress = |p: &Progress| {
        if phases.last() != Some(&p.phase) {
            phases.push(p.phase.clone());
        }
    };
    run.over(link, &mut progress, |_| Ok(Memory::Bytes(memory())))
}

/// How the scripted destination ends.
#[derive(Clone, Copy)]
enum End {
    /// `Restored`, then waits for `Commit`.
    Restore,
    /// `Abort` instead of `Restored`.
    Abort,
    /// Hangs up instead of `Restored`.
    HangUp,
    /// `Restored`, `Commit`, then post-copy: asks for a few pages and takes
    /// the rest as they are pushed.
    Postcopy,
}

/// What the scripted destination received.
#[derive(Debug, Default)]
struct Received {
    begin: Option<session::Begin>,
    memory: Vec<u8>,
    log: Vec<u8>,
    stack: Vec<u8>,
    last: Option<Message>,
    /// Pages that arrived before `Final`.
    pages_before_final: usize,
}

/// A destination speaking the protocol message by message, as
/// [`serve_link`] does, with no guest to build.
fn scripted(mut link: Link, end: End) -> thread::JoinHandle<Result<Received, MigrateError>> {
    thread::spawn(move || {
        let mut got = Received::default();
        let greeted = session::welcome(&mut link, "dst")?;
        assert_eq!(greeted.node, "src");
        let Opening::Begin(begin) = session::opening(&mut link)? else {
            panic!("not a Begin");
        };
        assert_eq!(greeted.version, PROTOCOL_VERSION);
        link.send_now(&Message::ModuleWanted(true))?;
        let mut module = 0;
        while module < begin.module_len {
            match link.recv()? {
                Message::ModuleChunk(c) => module += c.len() as u64,
                other => panic!("{}", other.kind()),
            }
        }
        link.send(&Message::Working {
            what: "compiling the module".into(),
            elapsed_ms: 0,
        })?;
        for m in hash_messages(&[]) {
            link.send(&m)?;
        }
        link.flush()?;
        got.memory = vec![0; begin.memory_size as usize];
        got.begin = Some(begin);
        loop {
            match link.recv()? {
                Message::Pages { memory_size, runs } => {
                    got.memory.resize(memory_size as usize, 0);
                    for run in &runs {
                        apply_run(&mut got.memory, run)?;
                        got.pages_before_final += run.count as usize;
                    }
                }
                Message::LogChunk(bytes) => got.log.extend(bytes),
                Message::Sync => link.send_now(&Message::Synced)?,
                Message::Final { stack, log_len, .. } => {
                    assert_eq!(log_len, got.log.len() as u64);
                    got.stack = stack;
                    break;
                }
                other => panic!("{}", other.kind()),
            }
        }
        match end {
            End::Restore => {
                link.send_now(&Message::Restored)?;
                got.last = Some(link.recv()?);
            }
            End::Abort => {
                link.send_now(&Message::Abort("cannot restore here".into()))?;
                got.last = link.recv().ok();
            }
            End::HangUp => drop(link),
            End::Postcopy => {
                link.send_now(&Message::Restored)?;
                got.last = Some(link.recv()?);
                for p in [9u32, 2, 15] {
                    link.send(&Message::PageRequest { first: p, count: 1 })?;
                }
                link.flush()?;
                loop {
                    match link.recv()? {
                        Message::Pages { runs, .. } => {
                            for run in &runs {
                                apply_run(&mut got.memory, run)?;
                            }
                        }
                        Message::AllSent => break,
                        other => panic!("{}", other.kind()),
                    }
                }
                link.send_now(&Message::AllLocal(PostcopyStats {
                    faults: 3,
                    p50_us: 250,
                    p99_us: 900,
                    max_us: 1000,
                    all_local_us: 5000,
                }))?;
            }
        }
        Ok(got)
    })
}

#[test]
fn a_cold_migration_runs_through_commit() {
    let (mut src, dst) = Link::pipe().unwrap();
    let dest = scripted(dst, End::Restore);
    let guest = FakeGuest::new();
    let mut phases = Vec::new();
    let report = source(
        &guest,
        &mut src,
        &options(Strategy::Cold),
        PROTOCOL_VERSION,
        &mut phases,
    )
    .unwrap();
    let got = dest.join().unwrap().unwrap();

    // The destination holds the guest as it was; the source let go.
    assert_eq!(got.memory, memory());
    assert_eq!(got.log, guest.log);
    assert_eq!(got.stack, vec![1, 2, 3]);
    assert_eq!(got.last, Some(Message::Commit));
    let begin = got.begin.unwrap();
    assert_eq!(begin.migration_id, "m1");
    assert_eq!(begin.strategy, Strategy::Cold);
    assert_eq!(guest.calls(), ["pause", "hand_over"]);

    assert_eq!(report.destination_node, "dst");
    assert_eq!(report.strategy, "cold");
    assert_eq!(report.dirty_tracking, "none");
    assert_eq!(report.rounds, 1);
    // One run of 16 pages (a run with any non-zero page travels whole,
    // lz4-compressed; only all-zero runs are dropped).
    assert_eq!(report.pages_sent, 16);
    assert_eq!(report.memory_bytes, memory().len() as u64);
    assert_eq!(report.base_pages, 0);
    assert!(report.module_bytes > 0);
    assert_eq!(report.bytes_sent, src.bytes);
    assert_eq!(
        phases,
        [
            "offering the module",
            "sending the module",
            "destination compiling the module (0 s)",
            "stopping",
            "handover",
            "done"
        ]
    );
}

#[test]
fn a_postcopy_migration_resumes_first_and_serves_every_page_after() {
    let (mut src, dst) = Link::pipe().unwrap();
    let dest = scripted(dst, End::Postcopy);
    let guest = FakeGuest::new();
    let mut phases = Vec::new();
    let report = source(
        &guest,
        &mut src,
        &options(Strategy::Postcopy),
        PROTOCOL_VERSION,
        &mut phases,
    )
    .unwrap();
    let got = dest.join().unwrap().unwrap();

    // Nothing of memory before the switch; all of it after, each page once.
    assert_eq!(got.pages_before_final, 0);
    assert_eq!(got.memory, memory());
    assert_eq!(got.last, Some(Message::Commit));
    assert_eq!(got.begin.unwrap().strategy, Strategy::Postcopy);
    assert_eq!(guest.calls(), ["pause", "hand_over"]);
    assert_eq!(report.strategy, "postcopy");
    assert_eq!(report.pages_sent, 16);
    let pc = report.postcopy.expect("a post-copy report");
    assert_eq!(pc.pages_requested + pc.pages_pushed, 16);
    assert_eq!(pc.faults, 3);
    assert_eq!(pc.fault_p50_ms, 0.25);
    assert_eq!(pc.all_local_ms, 5.0);
    assert_eq!(report.bytes_sent, src.bytes);
    assert!(phases.contains(&"post-copy".to_string()), "{phases:?}");
}

#[test]
fn postcopy_is_refused_before_anything_moves_by_an_older_destination() {
    let (mut src, dst) = Link::pipe().unwrap();
    let t = thread::spawn(move || {
        let mut dst = dst;
        // An older destination: answers with the version before post-copy.
        let _ = dst.recv();
        dst.send_now(&Message::Welcome {
            version: POSTCOPY_VERSION - 1,
            node: "dst".into(),
            arch: "x".into(),
        })
        .unwrap();
        dst.recv().ok()
    });
    let guest = FakeGuest::new();
    let e = source(
        &guest,
        &mut src,
        &options(Strategy::Postcopy),
        PROTOCOL_VERSION,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("post-copy needs 4"), "{e}");
    // Never paused; nothing followed the hello: the destination sees the
    // connection close.
    assert!(guest.calls().is_empty());
    drop(src);
    assert!(t.join().unwrap().is_none());
}

#[test]
fn a_welcome_outside_the_offered_versions_is_refused() {
    let (mut src, dst) = Link::pipe().unwrap();
    let t = thread::spawn(move || {
        let mut dst = dst;
        let _ = dst.recv();
        dst.send_now(&Message::Welcome {
            version: PROTOCOL_VERSION + 1,
            node: "dst".into(),
            arch: "x".into(),
        })
        .unwrap();
    });
    let e = session::hello(&mut src, PROTOCOL_VERSION, "src", "").unwrap_err();
    assert!(matches!(e, MigrateError::Version { .. }), "{e}");
    t.join().unwrap();
}

#[test]
fn a_destination_failing_before_restored_leaves_the_guest_at_the_source() {
    for end in [End::Abort, End::HangUp] {
        let (mut src, dst) = Link::pipe().unwrap();
        let dest = scripted(dst, end);
        let guest = FakeGuest::new();
        let e = source(
            &guest,
            &mut src,
            &options(Strategy::Cold),
            PROTOCOL_VERSION,
            &mut Vec::new(),
        )
        .unwrap_err();
        let got = dest.join().unwrap().unwrap();
        match end {
            End::Abort => {
                assert!(
                    matches!(&e, MigrateError::Aborted(why) if why == "cannot restore here"),
                    "{e}"
                );
                // The source said why it gave up (the destination's own
                // Abort, echoed); never Commit.
                assert!(
                    matches!(got.last, Some(Message::Abort(_))),
                    "{:?}",
                    got.last
                );
            }
            _ => assert!(matches!(e, MigrateError::Receive(_)), "{e}"),
        }
        // Paused, never handed over, resumed here.
        assert_eq!(guest.calls(), ["pause", "resume"]);
    }
}

#[test]
fn a_handoff_that_cannot_be_recorded_keeps_the_guest_at_the_source() {
    let (mut src, dst) = Link::pipe().unwrap();
    let dest = scripted(dst, End::Restore);
    let guest = FakeGuest {
        refuse_hand_over: true,
        ..FakeGuest::new()
    };
    let e = source(
        &guest,
        &mut src,
        &options(Strategy::Cold),
        PROTOCOL_VERSION,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("the disk is full"), "{e}");
    let got = dest.join().unwrap().unwrap();
    assert!(
        matches!(&got.last, Some(Message::Abort(why)) if why.contains("the disk is full")),
        "{:?}",
        got.last
    );
    assert_eq!(guest.calls(), ["pause", "hand_over", "resume"]);
}

#[test]
fn pre_copy_needs_a_guest_memory_and_fails_before_the_pause() {
    let (mut src, dst) = Link::pipe().unwrap();
    let dest = scripted(dst, End::Restore);
    let guest = FakeGuest::new();
    let e = source(
        &guest,
        &mut src,
        &options(Strategy::Precopy),
        PROTOCOL_VERSION,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(matches!(e, MigrateError::Memory(_)), "{e}");
    drop(src);
    // The destination sees the connection close; the guest never paused.
    assert!(matches!(
        dest.join().unwrap(),
        Err(MigrateError::Receive(_))
    ));
    assert!(guest.calls().is_empty());
}

/// A node that cannot run guests: enough for the real destination up to
/// building one.
struct FakeHost {
    rt: Runtime,
    discarded: Mutex<u32>,
}

impl FakeHost {
    fn new() -> FakeHost {
        FakeHost {
            rt: Runtime::new(None).unwrap(),
            discarded: Mutex::new(0),
        }
    }
}

impl DestHost for FakeHost {
    fn runtime(&self) -> &Runtime {
        &self.rt
    }
    fn node_name(&self) -> String {
        "dst".into()
    }
    fn open_log(&self, _: &GuestInfo, _: &[u8]) -> Result<(OutputSink, OutputSink), String> {
        Err("a fake keeps no logs".into())
    }
    fn adopt(&self, _: GuestInfo, _: Guest, _: &str, _: &str) {
        panic!("a fake host cannot run a guest");
    }
    fn discard(&self, _: &GuestInfo) {
        *self.discarded.lock().unwrap() += 1;
    }
    fn handed_over(&self, migration_id: &str) -> bool {
        migration_id == "m-gone"
    }
    fn base_image(&self, _: &GuestInfo) -> Option<std::path::PathBuf> {
        None
    }
    fn base_unusable(&self, _: &GuestInfo, _: &std::path::Path, _: &str) {}
}

/// The real destination serving one session over a pipe.
fn real_dest(link: Link) -> thread::JoinHandle<(Result<Served, MigrateError>, u32)> {
    thread::spawn(move || {
        let host = FakeHost::new();
        let served = serve_link(link, &host);
        let discarded = *host.discarded.lock().unwrap();
        (served, discarded)
    })
}

#[test]
fn a_version_the_destination_does_not_speak_is_refused() {
    let (mut src, dst) = Link::pipe().unwrap();
    let dest = real_dest(dst);
    let guest = FakeGuest::new();
    let e = source(
        &guest,
        &mut src,
        &options(Strategy::Cold),
        PROTOCOL_VERSION + 1,
        &mut Vec::new(),
    )
    .unwrap_err();
    // The source hears why, before anything of the guest left.
    assert!(
        matches!(&e, MigrateError::Aborted(why) if why.contains(&format!("version {}", PROTOCOL_VERSION + 1))),
        "{e}"
    );
    let (served, discarded) = dest.join().unwrap();
    match served {
        Err(MigrateError::Version {
            theirs,
            oldest,
            newest,
        }) => assert_eq!(
            (theirs, oldest, newest),
            (PROTOCOL_VERSION + 1, OLDEST_VERSION, PROTOCOL_VERSION)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(discarded, 0);
    assert!(guest.calls().is_empty());
}

#[test]
fn the_previous_version_is_spoken_and_an_older_one_refused() {
    for (version, accepted) in [
        (PROTOCOL_VERSION, true),
        (OLDEST_VERSION, true),
        (OLDEST_VERSION - 1, false),
    ] {
        let (mut a, mut b) = Link::pipe().unwrap();
        let listener = thread::spawn(move || session::welcome(&mut b, "dst"));
        let hello = session::hello(&mut a, version, "src", "127.0.0.1:1");
        let welcome = listener.join().unwrap();
        if accepted {
            let w = hello.unwrap();
            assert_eq!((w.version, w.node.as_str()), (version, "dst"));
            let g = welcome.unwrap();
            assert_eq!(
                (g.version, g.node.as_str(), g.listen.as_str()),
                (version, "src", "127.0.0.1:1")
            );
        } else {
            assert!(matches!(hello, Err(MigrateError::Aborted(_))));
            assert!(matches!(welcome, Err(MigrateError::Version { .. })));
        }
    }
}

#[test]
fn a_destination_that_cannot_build_the_guest_aborts_before_the_pause() {
    let (mut src, dst) = Link::pipe().unwrap();
    let dest = real_dest(dst);
    let guest = FakeGuest::new();
    let mut phases = Vec::new();
    let e = source(
        &guest,
        &mut src,
        &options(Strategy::Cold),
        PROTOCOL_VERSION,
        &mut phases,
    )
    .unwrap_err();
    // The fake module's transform is unknown: refused while "compiling".
    assert!(
        matches!(&e, MigrateError::Aborted(why) if why.contains("no-such-transform")),
        "{e}"
    );
    assert!(!phases.iter().any(|p| p == "stopping"), "{phases:?}");
    let (served, discarded) = dest.join().unwrap();
    assert!(matches!(served, Err(MigrateError::Guest(_))), "{served:?}");
    // No log was opened, so nothing to discard; the guest never paused.
    assert_eq!(discarded, 0);
    assert!(guest.calls().is_empty());
}

#[test]
fn the_destination_answers_resolve() {
    for (migration, destination) in [("m-gone", true), ("m-kept", false)] {
        let (mut a, b) = Link::pipe().unwrap();
        let dest = real_dest(b);
        session::hello(&mut a, PROTOCOL_VERSION, "src", "").unwrap();
        assert_eq!(session::ask_owner(&mut a, migration).unwrap(), destination);
        assert_eq!(dest.join().unwrap().0.unwrap(), Served::Resolved);
    }
}

#[test]
fn the_handoff_ends_committed_or_resumed() {
    use crate::handoff::Handoff;
    let guest = FakeGuest::new();
    let (mut a, mut b) = Link::pipe().unwrap();

    // The whole way: Restored, recorded, Commit.
    let mut h = Handoff::new(&guest);
    assert_eq!(h.state(), State::SourceOwns);
    h.pause().unwrap();
    assert_eq!(h.state(), State::Paused);
    // Commit before Restored is refused, and changes nothing.
    assert!(h.commit(&mut a).is_err());
    assert!(h.hand_over("m1").is_err());
    assert_eq!(h.state(), State::Paused);
    b.send_now(&Message::Restored).unwrap();
    h.await_restored(&mut a).unwrap();
    assert_eq!(h.state(), State::DestRestored);
    h.hand_over("m1").unwrap();
    assert_eq!(h.state(), State::HandedOver);
    // Once handed over, no failure takes the guest back.
    let why = MigrateError::Local("late".into());
    assert!(h.fail(&mut a, &why).is_err());
    assert_eq!(h.state(), State::HandedOver);
    h.commit(&mut a).unwrap();
    assert_eq!(h.state(), State::Committed);
    assert_eq!(b.recv().unwrap(), Message::Commit);
    assert_eq!(guest.calls(), ["pause", "hand_over"]);

    // A failure while paused: Abort, then resume.
    let guest = FakeGuest::new();
    let mut h = Handoff::new(&guest);
    h.pause().unwrap();
    assert_eq!(h.fail(&mut a, &why).unwrap(), State::ResumedAtSource);
    assert_eq!(b.recv().unwrap(), Message::Abort("late".into()));
    assert_eq!(guest.calls(), ["pause", "resume"]);
    assert!(h.pause().is_err());

    // A failure before the pause: nothing sent, nothing resumed.
    let guest = FakeGuest::new();
    let mut h = Handoff::new(&guest);
    assert_eq!(h.fail(&mut a, &why).unwrap(), State::Kept);
    assert!(guest.calls().is_empty());
    drop(a);
    assert!(matches!(b.recv(), Err(MigrateError::Receive(_))));
}
