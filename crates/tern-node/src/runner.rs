//! One guest running on its own thread, driven by commands while paused.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

use tern_migrate::{GuestInfo, MigrateError, SourceGuest};

use crate::cpu::Placement;
use crate::limits::LogBudget;
use tern_vm::memory::MemoryHandle;
use tern_vm::{CaptureStats, Captured, Guest, Outcome, PauseHandle};

/// Where a guest's thread is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Running guest code.
    Running,
    /// Paused at a migration point, waiting for a command.
    Paused,
    /// Exited with a status.
    Exited(i32),
    /// Trapped or failed.
    Failed(String),
    /// Stopped by a user (or checkpointed without --leave-running).
    Stopped,
    /// Handed over to another node.
    Released,
    /// Ended by one of its limits (`docs/limits.md`).
    Limited {
        /// Which: `memory`, `table`, `fds` or `log`.
        limit: String,
        /// One line saying how it ended.
        message: String,
        /// Its exit status, if it exited.
        exit_code: Option<i32>,
    },
}

impl RunState {
    /// True once the guest will not run here again.
    pub fn is_final(&self) -> bool {
        !matches!(self, RunState::Running | RunState::Paused)
    }
}

type Reply<T> = Sender<Result<T, String>>;

/// Called on the guest's thread when it will not run here again.
pub type OnFinal = Arc<dyn Fn(&GuestInfo, &RunState) + Send + Sync>;

/// Runs on the guest's thread with the released (paused) guest, after its
/// state says `Released`: e.g. keeps its image for a return.
pub type AfterRelease = Box<dyn FnOnce(&mut Guest) + Send>;

enum Cmd {
    Resume,
    Capture(Reply<Captured>),
    Save(PathBuf, Reply<CaptureStats>),
    Release(Option<AfterRelease>),
    Stop,
}

struct Shared {
    state: Mutex<RunState>,
    changed: Condvar,
}

/// Handle to a guest's thread.
pub struct Runner {
    /// Id and name.
    pub info: GuestInfo,
    shared: Arc<Shared>,
    cmds: Mutex<Sender<Cmd>>,
    pause: PauseHandle,
    /// The guest's memory while it may still run here; dropped when it
    /// ends, so the mapping is freed once nothing else reads it.
    memory: Arc<Mutex<Option<MemoryHandle>>>,
    module: Arc<[u8]>,
    meta: tern_image::Meta,
    log: PathBuf,
    /// Serializes pause/resume sequences (checkpoint, migrate, stop).
    pub op: Mutex<()>,
    /// The guest thread's kernel id (0 until it starts), for its CPU time.
    tid: Arc<std::sync::atomic::AtomicI32>,
}

impl Runner {
    /// Starts `guest` (fresh or paused after a restore) on its own thread,
    /// which first enters the guest's CPU `placement`. The guest ends when
    /// its output passes `budget`. `on_final` runs on that thread when the
    /// guest will not run again.
    pub fn start(
        info: GuestInfo,
        guest: Guest,
        log: PathBuf,
        budget: Arc<LogBudget>,
        placement: Placement,
        on_final: OnFinal,
    ) -> Result<Arc<Runner>, String> {
        budget.attach(guest.pause_handle());
        let memory = Arc::new(Mutex::new(Some(
            guest.memory_handle().map_err(|e| e.to_string())?,
        )));
        let memory_in_thread = memory.clone();
        let (tx, rx) = channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(RunState::Running),
            changed: Condvar::new(),
        });
        let runner = Arc::new(Runner {
            info: info.clone(),
            shared: shared.clone(),
            cmds: Mutex::new(tx),
            pause: guest.pause_handle(),
            memory,
            module: guest.module(),
            meta: guest.meta(),
            log,
            op: Mutex::new(()),
            tid: Arc::new(std::sync::atomic::AtomicI32::new(0)),
        });
        let tid = runner.tid.clone();
        std::thread::Builder::new()
            .name(format!("guest-{}", info.id))
            .stack_size(tern_vm::GUEST_THREAD_STACK)
            .spawn(move || {
                tid.store(
                    rustix::thread::gettid().as_raw_nonzero().get(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                let cpu = placement.enter();
                let (end, after) = drive(guest, &rx, &shared, &budget);
                drop(cpu);
                memory_in_thread
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                on_final(&info, &end);
                set(&shared, end);
                if let Some((mut guest, after)) = after {
                    after(&mut guest);
                }
            })
            .map_err(|e| format!("cannot start the guest thread: {e}"))?;
        Ok(runner)
    }

    /// CPU time the guest's thread used, in milliseconds (None once it
    /// ended, or where /proc does not say).
    pub fn cpu_ms(&self) -> Option<u64> {
        let tid = self.tid.load(std::sync::atomic::Ordering::Relaxed);
        if tid == 0 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces), from the
        // third on: utime and stime are the 14th and 15th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut f = rest.split_whitespace().skip(11);
        let utime: u64 = f.next()?.parse().ok()?;
        let stime: u64 = f.next()?.parse().ok()?;
        let hz = rustix::param::clock_ticks_per_second().max(1);
        Some((utime + stime) * 1000 / hz)
    }

    /// The guest's memory size, while it may still run here.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.len() as u64)
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The guest's log file.
    pub fn log_path(&self) -> &PathBuf {
        &self.log
    }

    /// Waits until the state is not `Running` (or `pred` says stop waiting).
    fn wait_while(&self, pred: impl Fn(&RunState) -> bool) -> RunState {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        while pred(&s) {
            s = self
                .shared
                .changed
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
        s.clone()
    }

    /// Waits for the guest to end here (exit, failure, stop or handover).
    pub fn wait_final(&self) -> RunState {
        self.wait_while(|s| !s.is_final())
    }

    /// Pauses the guest; returns once paused (or its final state if it ended).
    pub fn pause_now(&self) -> RunState {
        if self.state() == RunState::Running {
            self.pause.request();
        }
        self.wait_while(|s| *s == RunState::Running)
    }

    fn send(&self, c: Cmd) -> Result<(), String> {
        self.cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(c)
            .map_err(|_| "the guest is no longer running".to_string())
    }

    /// Resumes a paused guest.
    pub fn resume_now(&self) {
        if self.state() == RunState::Paused {
            set(&self.shared, RunState::Running);
            let _ = self.send(Cmd::Resume);
        }
    }

    /// Writes the paused guest's image.
    pub fn save(&self, path: PathBuf) -> Result<CaptureStats, String> {
        let (tx, rx) = channel();
        self.send(Cmd::Save(path, tx))?;
        rx.recv()
            .map_err(|_| "the guest thread ended".to_string())?
    }

    /// Ends a paused guest: `Stopped`.
    pub fn stop_paused(&self) {
        let _ = self.send(Cmd::Stop);
        self.wait_final();
    }

    /// Ends a paused guest that now runs elsewhere: `Released`; `after`
    /// then runs on the guest's thread with the guest.
    pub fn release(&self, after: Option<AfterRelease>) {
        let _ = self.send(Cmd::Release(after));
        self.wait_final();
    }
}

fn set(shared: &Shared, s: RunState) {
    *shared.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    shared.changed.notify_all();
}

type Released = Option<(Guest, AfterRelease)>;

fn drive(
    mut guest: Guest,
    rx: &Receiver<Cmd>,
    shared: &Shared,
    budget: &LogBudget,
) -> (RunState, Released) {
    loop {
        let ran = guest.run();
        if budget.exhausted() {
            // Paused (or ended) for its log: it ends here.
            return (
                RunState::Limited {
                    limit: "log".into(),
                    message: format!("ended: {}", budget.message()),
                    exit_code: match ran {
                        Ok(Outcome::Exited(c)) => Some(c),
                        _ => None,
                    },
                },
                None,
            );
        }
        let hit = guest.limit_hit();
        match (ran, hit) {
            (Ok(Outcome::Exited(code)), Some(hit)) if code != 0 => {
                let end = RunState::Limited {
                    limit: hit.kind().into(),
                    message: format!("ended by its {hit}: exit status {code}"),
                    exit_code: Some(code),
                };
                return (end, None);
            }
            (Ok(Outcome::Exited(code)), _) => return (RunState::Exited(code), None),
            (Err(e), Some(hit)) => {
                let end = RunState::Limited {
                    limit: hit.kind().into(),
                    message: format!("trapped after reaching its {hit}: {e}"),
                    exit_code: None,
                };
                return (end, None);
            }
            (Err(e), None) => return (RunState::Failed(e.to_string()), None),
            (Ok(Outcome::Paused), _) => {}
        }
        set(shared, RunState::Paused);
        loop {
            match rx.recv() {
                Ok(Cmd::Resume) => break,
                Ok(Cmd::Capture(tx)) => {
                    let _ = tx.send(guest.capture().map_err(|e| e.to_string()));
                }
                Ok(Cmd::Save(path, tx)) => {
                    let _ = tx.send(guest.save_image(&path).map_err(|e| e.to_string()));
                }
                Ok(Cmd::Release(after)) => return (RunState::Released, after.map(|a| (guest, a))),
                Ok(Cmd::Stop) | Err(_) => return (RunState::Stopped, None),
            }
        }
    }
}

/// A runner seen as the source of a migration, with the node's handoff hook.
pub struct Outgoing<'a> {
    /// The guest.
    pub runner: &'a Runner,
    /// Records the handoff durably (called before `Commit`).
    pub hand_over: &'a dyn Fn(&str) -> Result<(), String>,
}

impl SourceGuest for Outgoing<'_> {
    fn info(&self) -> GuestInfo {
        self.runner.info.clone()
    }
    fn module(&self) -> Result<(Arc<[u8]>, tern_image::Meta), MigrateError> {
        Ok((self.runner.module.clone(), self.runner.meta.clone()))
    }
    fn memory(&self) -> Result<MemoryHandle, MigrateError> {
        self.runner
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| MigrateError::Guest("the guest has ended".into()))
    }
    fn pause(&self) -> Result<(), MigrateError> {
        match self.runner.pause_now() {
            RunState::Paused => Ok(()),
            RunState::Exited(c) => Err(MigrateError::Ended(c)),
            other => Err(MigrateError::Guest(format!("the guest is {other:?}"))),
        }
    }
    fn capture(&self) -> Result<Captured, MigrateError> {
        let (tx, rx) = channel();
        self.runner
            .send(Cmd::Capture(tx))
            .map_err(MigrateError::Guest)?;
        rx.recv()
            .map_err(|_| MigrateError::Guest("the guest thread ended".into()))?
            .map_err(MigrateError::Guest)
    }
    fn log(&self) -> Result<Vec<u8>, MigrateError> {
        std::fs::read(&self.runner.log)
            .map_err(|e| MigrateError::Local(format!("reading the guest's log: {e}")))
    }
    fn resume(&self) {
        self.runner.resume_now();
    }
    fn hand_over(&self, migration_id: &str) -> Result<(), MigrateError> {
        (self.hand_over)(migration_id).map_err(MigrateError::Local)
    }
}
