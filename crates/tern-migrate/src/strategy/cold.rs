//! Cold migration: stop and copy.
//!
//! Nothing moves while the guest runs. Once it is paused, every page the
//! destination lacks goes in one pass: with no base, every non-zero page;
//! with a base ([`crate::base`]), every page whose bytes differ from it.
//! The baseline the other strategies are measured against: the simplest,
//! and the longest downtime.

use crate::pages::{PAGE, RUN_PAGES};
use crate::source::Options;
use crate::MigrateError;

use super::{Copying, FirstCopy, Memory, Mover, Sender};

/// The cold strategy (it keeps no state).
pub(crate) struct Cold;

impl Mover for Cold {
    fn tracking(&self) -> (String, Option<String>) {
        ("none".to_string(), None)
    }

    fn live(&mut self, _: &mut Copying<'_>, _: &Options) -> Result<(), MigrateError> {
        Ok(())
    }

    fn last(&mut self, c: &mut Copying<'_>) -> Result<u64, MigrateError> {
        send_all(c.link, c.mem, &mut c.first)
    }
}

/// Sends every page of memory the destination needs (the guest is paused).
fn send_all(
    link: &mut crate::transport::Link,
    mem: &Memory,
    first_copy: &mut FirstCopy,
) -> Result<u64, MigrateError> {
    let mut s = Sender::new(link, mem, first_copy.skip_zero());
    let mut buf = vec![0u8; RUN_PAGES as usize * PAGE];
    let pages = (mem.len() / PAGE) as u32;
    let mut first = 0u32;
    while first < pages {
        let n = RUN_PAGES.min(pages - first);
        let bytes = &mut buf[..n as usize * PAGE];
        mem.read(first as usize * PAGE, bytes)?;
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            let index = first + i as u32;
            if first_copy.wanted(index, page) {
                s.push(index, page);
            }
        }
        first += n;
    }
    s.finish()
}
