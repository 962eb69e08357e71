//! The data every guest's wasmtime `Store` carries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::suspend::SuspendState;
use crate::wasi::WasiCtx;

/// Shared between a running guest and whoever may ask it to pause (a timer,
/// the node daemon). Cheap to clone; `Send + Sync`.
#[derive(Debug, Default)]
pub struct Control {
    pause: AtomicBool,
}

impl Control {
    /// True once a pause was requested and not yet cleared.
    pub fn pause_requested(&self) -> bool {
        self.pause.load(Ordering::Acquire)
    }

    /// Sets or clears the pause request.
    pub fn set_pause(&self, on: bool) {
        self.pause.store(on, Ordering::Release);
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
}

impl StoreData {
    /// A store for a guest with the given WASI host.
    pub fn new(wasi: WasiCtx) -> Self {
        StoreData {
            wasi,
            control: Arc::new(Control::default()),
            suspend: SuspendState::default(),
        }
    }

    /// True when the guest should stop at its next migration point. Blocking
    /// WASI calls poll this while they wait.
    pub fn pause_requested(&self) -> bool {
        self.control.pause_requested()
    }
}
