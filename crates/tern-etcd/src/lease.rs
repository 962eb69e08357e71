//! [`LeaseKeeper`]: a lease kept alive from a background thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Error, Etcd};

/// A lease that a background thread renews every third of its TTL until
/// the keeper is dropped (which revokes it) or abandoned (which lets it
/// expire).
///
/// If etcd says the lease is gone, or no renewal succeeds for a whole TTL,
/// the thread stops and [`lost`](LeaseKeeper::lost) turns true: whatever
/// was attached to the lease must be presumed deleted.
pub struct LeaseKeeper {
    etcd: Etcd,
    id: i64,
    ttl: i64,
    lost: Arc<AtomicBool>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("lost", &self.lost())
            .finish()
    }
}

impl LeaseKeeper {
    /// Grants a lease of `ttl_secs` seconds and starts keeping it alive.
    pub fn start(etcd: Etcd, ttl_secs: i64) -> Result<LeaseKeeper, Error> {
        let lease = etcd.grant(ttl_secs)?;
        let ttl = Duration::from_secs(lease.ttl.unsigned_abs());
        let interval = ttl / 3;
        // A renewal that takes longer than the interval is as good as a
        // failed one; a shorter limit lets the thread retry in time.
        let renewer = etcd
            .clone()
            .with_timeout(interval.min(etcd.timeout()).max(Duration::from_millis(100)));
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let flag = Arc::clone(&lost);
        let id = lease.id;
        let thread = std::thread::Builder::new()
            .name(format!("etcd-lease-{id:x}"))
            .spawn(move || {
                let mut last_renewed = Instant::now();
                let mut wait = interval;
                loop {
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        // Told to stop, or the keeper is gone.
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    match renewer.keep_alive_once(id) {
                        Ok(_) => {
                            last_renewed = Instant::now();
                            wait = interval;
                        }
                        Err(Error::LeaseLost(_)) => break,
                        Err(_) => {
                            if last_renewed.elapsed() >= ttl {
                                break;
                            }
                            // Try again soon, but not in a tight loop.
                            wait = (interval / 4).max(Duration::from_millis(50));
                        }
                    }
                }
                flag.store(true, Ordering::SeqCst);
            })
            .map_err(|e| Error::Setup(format!("cannot start a lease thread: {e}")));
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                let _ = etcd.revoke(id);
                return Err(e);
            }
        };
        Ok(LeaseKeeper {
            etcd,
            id,
            ttl: lease.ttl,
            lost,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The lease's id, to attach keys to it.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The lease's TTL in seconds, as granted.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Whether the lease is gone or must be presumed gone: etcd said so, or
    /// could not be reached for a whole TTL. The keeper does not recover;
    /// start another.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Stops keeping the lease alive without revoking it, as a crash
    /// would: the lease and its keys expire after the TTL.
    pub fn abandon(mut self) {
        self.stop_thread();
        // Drop sees the thread gone and revokes nothing.
    }

    fn stop_thread(&mut self) -> bool {
        let Some(stop) = self.stop.take() else {
            return false;
        };
        let _ = stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        true
    }
}

impl Drop for LeaseKeeper {
    /// Stops the thread and revokes the lease, deleting its keys (errors
    /// are ignored: the lease expires anyway).
    fn drop(&mut self) {
        if self.stop_thread() && !self.lost() {
            let _ = self.etcd.revoke(self.id);
        }
    }
}
