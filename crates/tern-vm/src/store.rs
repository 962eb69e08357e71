//! The data every guest's wasmtime `Store` carries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::limits::{GuestLimiter, Limits};
use crate::memory::PauseFlag;
use crate::suspend::SuspendState;
use crate::wasi::WasiCtx;

/// Shared between a running guest and whoever may ask it to pause (a timer,
/// the node daemon). Cheap to clone; `Send + Sync`.
#[derive(Debug, Default)]
pub struct Control {
    pause: AtomicBool,
    /// The flag prepared code reads at its migration points, once the
    /// guest's memory exists.
    flag: OnceLock<PauseFlag>,
    /// Wakes a guest sleeping in a blocking WASI call when a pause comes.
    wake: Condvar,
    lock: Mutex<()>,
}

impl Control {
    /// True once a pause was requested and not yet cleared.
    pub fn pause_requested(&self) -> bool {
        self.pause.load(Ordering::Acquire)
    }

    /// Sets or clears the pause request; a request wakes a guest sleeping
    /// in [`Control::sleep_unless_paused`].
    pub fn set_pause(&self, on: bool) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.pause.store(on, Ordering::Release);
        self.write_flag(on);
        if on {
            self.wake.notify_all();
        }
    }

    /// Connects the guest's pause flag, raised now if a pause is pending.
    pub(crate) fn attach_flag(&self, flag: PauseFlag) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.flag.set(flag).is_ok() {
            self.write_flag(self.pause_requested());
        }
    }

    fn write_flag(&self, on: bool) {
        if let Some(flag) = self.flag.get() {
            // mprotect of one page of the guest's own reservation fails only
            // when the kernel is out of memory for mappings; the guest then
            // runs on and the pause comes at its next blocking call or exit.
            if let Err(e) = flag.set(on) {
                eprintln!("tern: raising a guest's pause flag failed: {e}");
            }
        }
    }

    /// Sleeps for `d`, or less if a pause is requested meanwhile.
    pub fn sleep_unless_paused(&self, d: Duration) {
        let end = Instant::now() + d;
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while !self.pause_requested() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            g = self
                .wake
                .wait_timeout(g, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The `T` of `wasmtime::Store<T>` for every guest.
pub struct StoreData {
    /// The guest's WASI preview1 host state.
    pub wasi: WasiCtx,
    /// Pause requests from outside the guest.
    pub control: Arc<Control>,
    /// Runtime bookkeeping for unwinding and rewinding.
    pub(crate) suspend: SuspendState,
    /// Migration points still to pass before a requested pause is taken
    /// ([`crate::Guest::pause_after_points`]).
    pub(crate) skip_points: u64,
    /// The module's migration points decide by themselves, from the pause
    /// flag, whether to stop (`tern-unwind`): a point that calls
    /// `tern.yield` has already decided, and the host starts unwinding.
    pub(crate) inline_points: bool,
    /// Refuses memory and table growth past the guest's limits.
    pub(crate) limiter: GuestLimiter,
}

impl StoreData {
    /// A store for a guest with the given WASI host.
    pub fn new(wasi: WasiCtx) -> Self {
        StoreData {
            wasi,
            control: Arc::new(Control::default()),
            suspend: SuspendState::default(),
            skip_points: 0,
            inline_points: false,
            limiter: GuestLimiter::new(&Limits::default()),
        }
    }

    /// True when the guest should stop at its next migration point. Blocking
    /// WASI calls poll this while they wait.
    pub fn pause_requested(&self) -> bool {
        self.control.pause_requested()
    }
}
