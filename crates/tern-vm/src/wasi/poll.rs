//! The WASI calls that can block: `poll_oneoff` and `fd_read` on stdin.
//!
//! A wait for stdin polls in slices of at most [`SLICE`]; a wait for timers
//! sleeps until the deadline unless a pause request wakes it
//! ([`crate::store::Control::sleep_unless_paused`]). Both check for a pause
//! request after every wake-up. When one arrives they suspend the guest *before* doing
//! anything visible, recording in [`Pending`] what a restored call needs to
//! continue (the absolute deadlines), so the call is simply made again after
//! a restore.

use std::io;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use wasmtime::Caller;

use super::ctx::Handle;
use super::errno::Errno;
use super::linker::with_mem;
use super::types::*;
use super::Pending;
use crate::store::StoreData;
use crate::suspend::{self, Entry, PendingCall};

/// Longest single wait between pause checks.
pub(crate) const SLICE: Duration = Duration::from_millis(5);
/// Longest single sleep of a timer-only wait (a pause request ends it early).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Waits up to `timeout` for stdin to be readable (or at end of input).
fn stdin_ready(timeout: Duration) -> bool {
    let stdin = io::stdin();
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
    match poll(&mut fds, Some(&ts)) {
        Ok(0) => false,
        Ok(_) => !fds[0].revents().is_empty(),
        Err(rustix::io::Errno::INTR) => false,
        // Anything else (e.g. stdin closed): let the read report it.
        Err(_) => true,
    }
}

fn rewound(entry: Entry) -> Option<Pending> {
    match entry {
        Entry::Rewound(PendingCall::Wasi(p)) => Some(p),
        _ => None,
    }
}

/// `fd_read` on a descriptor that is the host's stdin.
pub(crate) fn fd_read_stdin(
    caller: &mut Caller<'_, StoreData>,
    fd: u32,
    iovs: u32,
    n: u32,
    out: u32,
) -> wasmtime::Result<i32> {
    let _ = rewound(suspend::enter_import(caller)?);
    // Validate everything before waiting.
    let mut nonblock = false;
    let check = with_mem(caller, |mem, ctx| {
        let e = ctx.entry(fd)?;
        e.need(RIGHT_FD_READ)?;
        nonblock = e.fdflags & FDFLAGS_NONBLOCK != 0;
        mem.iovecs(iovs, n)?;
        mem.write_u32(out, 0)
    })?;
    if check != 0 {
        return Ok(check);
    }
    loop {
        if stdin_ready(if nonblock { Duration::ZERO } else { SLICE }) {
            break;
        }
        if nonblock {
            return Ok(Errno::Again.raw());
        }
        if caller.data().pause_requested() {
            suspend::suspend(caller, PendingCall::Wasi(Pending::FdRead { fd }))?;
            return Ok(0);
        }
    }
    with_mem(caller, |mem, ctx| {
        if !matches!(ctx.entry(fd)?.handle, Handle::Stdin) {
            return Err(Errno::Badf);
        }
        let iovs = mem.iovecs(iovs, n)?;
        let total: usize = iovs.iter().map(|&(_, l)| l as usize).sum();
        let mut buf = vec![0u8; total.min(1 << 20)];
        let got = if buf.is_empty() {
            0
        } else {
            loop {
                match rustix::io::read(io::stdin(), &mut buf[..]) {
                    Ok(n) => break n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let done = mem.scatter(&iovs, &buf[..got])?;
        mem.write_u32(out, done as u32)
    })
}

enum Sub {
    Clock { deadline: u64 },
    Read(u32),
    Write(u32),
    Bad(Errno, u8),
}

struct Event {
    userdata: u64,
    error: Errno,
    kind: u8,
    nbytes: u64,
    flags: u16,
}

/// `poll_oneoff`.
pub(crate) fn poll_oneoff(
    caller: &mut Caller<'_, StoreData>,
    inp: u32,
    outp: u32,
    nsubs: u32,
    nevents: u32,
) -> wasmtime::Result<i32> {
    let saved = match rewound(suspend::enter_import(caller)?) {
        Some(Pending::PollOneoff { deadlines }) => Some(deadlines),
        _ => None,
    };
    if nsubs == 0 {
        return Ok(Errno::Inval.raw());
    }
    // Read the subscriptions and fix absolute deadlines.
    let mut subs: Vec<(u64, Sub)> = Vec::new();
    let parsed = with_mem(caller, |mem, ctx| {
        mem.slice(inp, nsubs.checked_mul(48).ok_or(Errno::Fault)?)?;
        mem.slice(outp, nsubs.checked_mul(32).ok_or(Errno::Fault)?)?;
        mem.slice(nevents, 4)?;
        let now = ctx.clocks.monotonic();
        for i in 0..nsubs {
            let b = inp + i * 48;
            let userdata = mem.read_u64(b)?;
            let tag = mem.read_u8(b + 8)?;
            let sub = match tag {
                EVENTTYPE_CLOCK => {
                    let id = mem.read_u32(b + 16)?;
                    let timeout = mem.read_u64(b + 24)?;
                    let flags = mem.read_u16(b + 40)?;
                    let abs = flags & SUBCLOCKFLAGS_ABSTIME != 0;
                    let restored = saved
                        .as_ref()
                        .and_then(|d| d.get(i as usize).copied().flatten());
                    let deadline = match (restored, id) {
                        (Some(d), _) => Some(d),
                        (None, CLOCK_MONOTONIC) if abs => Some(timeout),
                        (None, CLOCK_REALTIME) if abs => {
                            let wall = ctx.clocks.realtime();
                            Some(now.saturating_add(timeout.saturating_sub(wall)))
                        }
                        (None, CLOCK_PROCESS_CPUTIME | CLOCK_THREAD_CPUTIME) if abs => {
                            let cpu = ctx.clocks.cpu_time();
                            Some(now.saturating_add(timeout.saturating_sub(cpu)))
                        }
                        (
                            None,
                            CLOCK_MONOTONIC
                            | CLOCK_REALTIME
                            | CLOCK_PROCESS_CPUTIME
                            | CLOCK_THREAD_CPUTIME,
                        ) => Some(now.saturating_add(timeout)),
                        _ => None,
                    };
                    match deadline {
                        Some(deadline) => Sub::Clock { deadline },
                        None => Sub::Bad(Errno::Inval, EVENTTYPE_CLOCK),
                    }
                }
                EVENTTYPE_FD_READ => Sub::Read(mem.read_u32(b + 16)?),
                EVENTTYPE_FD_WRITE => Sub::Write(mem.read_u32(b + 16)?),
                _ => return Err(Errno::Inval),
            };
            subs.push((userdata, sub));
        }
        Ok(())
    })?;
    if parsed != 0 {
        return Ok(parsed);
    }
    let deadlines: Vec<Option<u64>> = subs
        .iter()
        .map(|(_, s)| match s {
            Sub::Clock { deadline } => Some(*deadline),
            _ => None,
        })
        .collect();
    let waits_on_stdin = {
        let ctx = &caller.data().wasi;
        subs.iter().any(|(_, s)| {
            matches!(s, Sub::Read(fd)
                if matches!(ctx.fds.get(fd).map(|e| &e.handle), Some(Handle::Stdin)))
        })
    };
    loop {
        let mut events = Vec::new();
        let mut stdin_checked: Option<bool> = None;
        {
            let ctx = &caller.data().wasi;
            let now = ctx.clocks.monotonic();
            for (userdata, sub) in &subs {
                let userdata = *userdata;
                let ev = |kind, error, nbytes| Event {
                    userdata,
                    error,
                    kind,
                    nbytes,
                    flags: 0,
                };
                match sub {
                    Sub::Clock { deadline } => {
                        if *deadline <= now {
                            events.push(ev(EVENTTYPE_CLOCK, Errno::Success, 0));
                        }
                    }
                    Sub::Bad(e, kind) => events.push(ev(*kind, *e, 0)),
                    Sub::Read(fd) => match ctx.fds.get(fd).map(|e| (e, &e.handle)) {
                        None => events.push(ev(EVENTTYPE_FD_READ, Errno::Badf, 0)),
                        Some((e, Handle::File(f))) => {
                            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                            events.push(ev(
                                EVENTTYPE_FD_READ,
                                Errno::Success,
                                size.saturating_sub(e.offset),
                            ));
                        }
                        Some((_, Handle::Stdin)) => {
                            let ready =
                                *stdin_checked.get_or_insert_with(|| stdin_ready(Duration::ZERO));
                            if ready {
                                events.push(ev(EVENTTYPE_FD_READ, Errno::Success, 1));
                            }
                        }
                        Some(_) => events.push(ev(EVENTTYPE_FD_READ, Errno::Badf, 0)),
                    },
                    Sub::Write(fd) => match ctx.fds.get(fd).map(|e| &e.handle) {
                        Some(Handle::File(_) | Handle::Stdout(_) | Handle::Stderr(_)) => {
                            events.push(ev(EVENTTYPE_FD_WRITE, Errno::Success, 0));
                        }
                        None => events.push(ev(EVENTTYPE_FD_WRITE, Errno::Badf, 0)),
                        Some(_) => events.push(ev(EVENTTYPE_FD_WRITE, Errno::Badf, 0)),
                    },
                }
            }
            if events.is_empty() {
                // Nothing yet: wait until the nearest deadline (a pause
                // request wakes the wait), or one slice when stdin is watched.
                let next = deadlines.iter().flatten().min().copied();
                let mut wait = if waits_on_stdin { SLICE } else { MAX_SLEEP };
                if let Some(d) = next {
                    wait = wait.min(Duration::from_nanos(d.saturating_sub(now)));
                }
                if caller.data().pause_requested() {
                    suspend::suspend(
                        caller,
                        PendingCall::Wasi(Pending::PollOneoff {
                            deadlines: deadlines.clone(),
                        }),
                    )?;
                    return Ok(0);
                }
                if waits_on_stdin {
                    stdin_ready(wait);
                } else {
                    caller.data().control.sleep_unless_paused(wait);
                }
                continue;
            }
        }
        return with_mem(caller, |mem, _| {
            for (i, e) in events.iter().enumerate() {
                let b = outp + (i as u32) * 32;
                let mut raw = [0u8; 32];
                raw[0..8].copy_from_slice(&e.userdata.to_le_bytes());
                raw[8..10].copy_from_slice(&(e.error as u16).to_le_bytes());
                raw[10] = e.kind;
                raw[16..24].copy_from_slice(&e.nbytes.to_le_bytes());
                raw[24..26].copy_from_slice(&e.flags.to_le_bytes());
                mem.write_bytes(b, &raw)?;
            }
            mem.write_u32(nevents, events.len() as u32)
        });
    }
}
