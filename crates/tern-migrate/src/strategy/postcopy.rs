//! Post-copy: resume first, then move memory.
//!
//! Nothing moves while the guest runs, and nothing of its memory moves
//! while it is paused: `Final` carries only its execution and host state,
//! so the downtime does not depend on the memory's size or dirty rate. The
//! destination resumes the guest with its memory registered for
//! missing-page faults ([`tern_vm::lazy`]). After `Commit` the source
//! serves the memory ([`serve`]): pages the destination asks for
//! (`PageRequest`, a guest waiting on them) go before anything else; in
//! between, the rest is pushed in order from just past the last page asked
//! for (a guest touching a page tends to touch the next ones). Every page
//! goes once. `AllSent` closes the stream; the destination answers
//! `AllLocal` with what the guest waited for.
//!
//! The source's copy of the guest (paused, never resumed) is the only one
//! of the pages not sent yet: it stays until `AllLocal`.

use std::time::Instant;

use crate::pages::{encode_run, PAGE, RUN_PAGES};
use crate::proto::{self, Message, PostcopyStats};
use crate::source::Options;
use crate::MigrateError;

use super::{Copying, Mover};

/// The post-copy strategy: moves nothing before the switch.
pub(crate) struct Postcopy;

impl Mover for Postcopy {
    fn tracking(&self) -> (String, Option<String>) {
        ("none".to_string(), None)
    }

    fn live(&mut self, _: &mut Copying<'_>, _: &Options) -> Result<(), MigrateError> {
        Ok(())
    }

    fn last(&mut self, _: &mut Copying<'_>) -> Result<u64, MigrateError> {
        Ok(0)
    }
}

/// Which pages have gone.
struct Sent {
    bits: Vec<u64>,
    pages: u32,
    left: u32,
    /// No page below this is left to send.
    low: u32,
}

impl Sent {
    fn new(pages: u32) -> Sent {
        Sent {
            bits: vec![0; pages.div_ceil(64) as usize],
            pages,
            left: pages,
            low: 0,
        }
    }
    fn has(&self, i: u32) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u32) {
        if !self.has(i) {
            self.bits[(i / 64) as usize] |= 1 << (i % 64);
            self.left -= 1;
        }
        while self.low < self.pages && self.has(self.low) {
            self.low += 1;
        }
    }

    /// The first page not sent at or after `from`, else the first of all.
    fn next(&self, from: u32) -> Option<u32> {
        if self.left == 0 {
            return None;
        }
        (from.max(self.low)..self.pages)
            .find(|&i| !self.has(i))
            .or_else(|| (self.low..from.min(self.pages)).find(|&i| !self.has(i)))
    }
}

/// What serving the memory took.
pub(crate) struct Served {
    /// Pages sent because the destination asked.
    pub(crate) requested: u64,
    /// Pages pushed in the background.
    pub(crate) pushed: u64,
    /// The destination's measurements.
    pub(crate) stats: PostcopyStats,
}

/// Serves the guest's memory to the destination, which runs the guest
/// (after `Commit`), until it has every page.
pub(crate) fn serve(c: &mut Copying<'_>) -> Result<Served, MigrateError> {
    let pages = (c.mem.len() / PAGE) as u32;
    let mut sent = Sent::new(pages);
    let mut buf = vec![0u8; RUN_PAGES as usize * PAGE];
    let (mut requested, mut pushed) = (0u64, 0u64);
    let mut cursor = 0u32;
    let mut last_show = Instant::now();
    while sent.left > 0 {
        // Requests first: a guest is waiting on them.
        while c.link.readable()? {
            match c.link.recv()? {
                Message::PageRequest { first, count } => {
                    let end = first.saturating_add(count).min(pages);
                    for i in first.min(end)..end {
                        if !sent.has(i) {
                            send_run(c, &mut buf, i, 1)?;
                            sent.set(i);
                            requested += 1;
                        }
                    }
                    c.link.flush()?;
                    cursor = end;
                }
                other => return Err(proto::unexpected(&other, "PageRequest")),
            }
        }
        // Then one run of the rest, from the cursor on.
        let Some(first) = sent.next(cursor) else {
            break;
        };
        let mut n = 1;
        while n < RUN_PAGES && first + n < pages && !sent.has(first + n) {
            n += 1;
        }
        send_run(c, &mut buf, first, n)?;
        c.link.flush()?;
        for i in first..first + n {
            sent.set(i);
        }
        pushed += n as u64;
        cursor = first + n;
        if last_show.elapsed().as_millis() >= 200 {
            last_show = Instant::now();
            c.prog.pages_sent = requested + pushed;
            c.prog.bytes_sent = c.link.bytes;
            c.show();
        }
    }
    c.link.send_now(&Message::AllSent)?;
    // Requests still in flight ask for pages already sent: pass over them.
    let stats = loop {
        match c.link.recv()? {
            Message::PageRequest { .. } => continue,
            Message::AllLocal(stats) => break stats,
            other => return Err(proto::unexpected(&other, "AllLocal")),
        }
    };
    Ok(Served {
        requested,
        pushed,
        stats,
    })
}

/// Queues pages `first..first + count` as one run (zero runs carry no
/// bytes: the destination places zero pages).
fn send_run(
    c: &mut Copying<'_>,
    buf: &mut [u8],
    first: u32,
    count: u32,
) -> Result<(), MigrateError> {
    let bytes = &mut buf[..count as usize * PAGE];
    c.mem.read(first as usize * PAGE, bytes)?;
    let run = encode_run(first, bytes, false, true)
        .ok_or_else(|| MigrateError::Encode("a run of pages was dropped".into()))?;
    c.link.send(&Message::Pages {
        memory_size: c.mem.len() as u64,
        runs: vec![run],
    })
}
