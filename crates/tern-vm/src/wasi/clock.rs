//! Guest clocks. The monotonic and CPU-time clocks continue across a restore
//! from where they were at capture, so they never go backwards for the guest,
//! whatever host the guest moves to.

use rustix::time::{clock_getres, clock_gettime, ClockId, Timespec};

use super::errno::Errno;
use super::state::ClockState;
use super::types::{CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME, CLOCK_REALTIME, CLOCK_THREAD_CPUTIME};

fn ns(t: Timespec) -> u64 {
    let v = i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
    u64::try_from(v).unwrap_or(0)
}

fn host_ns(id: ClockId) -> u64 {
    ns(clock_gettime(id))
}

/// Live clock state: guest clock values at a host reference point.
#[derive(Debug, Clone)]
pub(crate) struct Clocks {
    guest_mono_base: u64,
    host_mono_base: u64,
    guest_cpu_base: u64,
    host_cpu_base: u64,
}

impl Clocks {
    /// Fresh clocks: the guest monotonic clock reads as the host's.
    pub(crate) fn new() -> Clocks {
        let mono = host_ns(ClockId::Monotonic);
        let cpu = host_ns(ClockId::ProcessCPUTime);
        Clocks {
            guest_mono_base: mono,
            host_mono_base: mono,
            guest_cpu_base: cpu,
            host_cpu_base: cpu,
        }
    }

    /// Clocks continuing from saved guest values.
    pub(crate) fn resume(saved: &ClockState) -> Clocks {
        Clocks {
            guest_mono_base: saved.monotonic_ns,
            host_mono_base: host_ns(ClockId::Monotonic),
            guest_cpu_base: saved.cpu_time_ns,
            host_cpu_base: host_ns(ClockId::ProcessCPUTime),
        }
    }

    /// The values to save.
    pub(crate) fn save(&self) -> ClockState {
        ClockState {
            monotonic_ns: self.monotonic(),
            cpu_time_ns: self.cpu_time(),
            realtime_ns: host_ns(ClockId::Realtime),
        }
    }

    /// Guest monotonic time in nanoseconds.
    pub(crate) fn monotonic(&self) -> u64 {
        let now = host_ns(ClockId::Monotonic);
        self.guest_mono_base
            .saturating_add(now.saturating_sub(self.host_mono_base))
    }

    /// Guest CPU time (process and thread; the guest is single-threaded).
    pub(crate) fn cpu_time(&self) -> u64 {
        let now = host_ns(ClockId::ProcessCPUTime);
        self.guest_cpu_base
            .saturating_add(now.saturating_sub(self.host_cpu_base))
    }

    /// Wall-clock time: the host's.
    pub(crate) fn realtime(&self) -> u64 {
        host_ns(ClockId::Realtime)
    }

    /// `clock_time_get`.
    pub(crate) fn time_get(&self, id: u32) -> Result<u64, Errno> {
        match id {
            CLOCK_REALTIME => Ok(self.realtime()),
            CLOCK_MONOTONIC => Ok(self.monotonic()),
            CLOCK_PROCESS_CPUTIME | CLOCK_THREAD_CPUTIME => Ok(self.cpu_time()),
            _ => Err(Errno::Inval),
        }
    }

    /// `clock_res_get`.
    pub(crate) fn res_get(&self, id: u32) -> Result<u64, Errno> {
        let host = match id {
            CLOCK_REALTIME => ClockId::Realtime,
            CLOCK_MONOTONIC => ClockId::Monotonic,
            CLOCK_PROCESS_CPUTIME | CLOCK_THREAD_CPUTIME => ClockId::ProcessCPUTime,
            _ => return Err(Errno::Inval),
        };
        Ok(ns(clock_getres(host)).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_continues_after_resume() {
        let saved = ClockState {
            monotonic_ns: u64::MAX / 2,
            cpu_time_ns: 5,
            realtime_ns: 0,
        };
        let c = Clocks::resume(&saved);
        let a = c.monotonic();
        let b = c.monotonic();
        assert!(a >= saved.monotonic_ns && b >= a);
        assert!(c.cpu_time() >= 5);
        assert_eq!(c.time_get(9), Err(Errno::Inval));
        assert!(c.res_get(CLOCK_MONOTONIC).unwrap() >= 1);
    }
}
