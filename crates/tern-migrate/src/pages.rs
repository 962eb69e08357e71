//! Turning page lists into [`PageRun`]s on the source and applying them on
//! the destination.
//!
//! Runs group consecutive pages (at most [`RUN_PAGES`]). All-zero runs travel
//! as [`RunData::Zero`] with no bytes: a page that was dirtied back to zero
//! must still reach the destination, but costs nothing on the wire. Other
//! runs are lz4-compressed when that saves at least an eighth.

use crate::proto::{PageRun, RunData};
use crate::MigrateError;

/// Bytes per page on the wire (the image format's page).
pub const PAGE: usize = tern_image::PAGE_SIZE;
/// Most pages in one run (256 KiB).
pub const RUN_PAGES: u32 = 64;
/// Most raw bytes of pages in one `Pages` message (well under `MAX_FRAME`).
pub const BATCH_BYTES: usize = 2 << 20;

/// After a run that lz4 could not shrink, this many runs go raw without
/// trying: incompressible memory then costs one attempt in 16, not a
/// compression pass over everything.
const SKIP_AFTER_MISS: u32 = 15;

/// Encodes one run of page bytes. `skip_zero` drops an all-zero run
/// entirely (first copy: the destination starts from zeroes); `try_lz4`
/// says whether to attempt compression.
pub fn encode_run(first: u32, bytes: &[u8], skip_zero: bool, try_lz4: bool) -> Option<PageRun> {
    let count = (bytes.len() / PAGE) as u32;
    if is_zero(bytes) {
        return (!skip_zero).then(|| PageRun {
            first,
            count,
            encoding: RunData::Zero,
            data: Vec::new(),
        });
    }
    let len = bytes.len();
    let packed = try_lz4.then(|| lz4_flex::block::compress(bytes));
    let (encoding, data) = match packed {
        Some(p) if p.len() <= len - len / 8 => (RunData::Lz4, p),
        _ => (RunData::Raw, bytes.to_vec()),
    };
    Some(PageRun {
        first,
        count,
        encoding,
        data,
    })
}

/// True when every byte of `bytes` (a whole number of 8-byte words, as
/// pages and runs are) is zero.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8-byte chunk")) == 0)
}

/// Collects pages handed over one by one (in ascending order) into runs
/// and batches; the caller sends each finished batch.
pub struct Batcher {
    skip_zero: bool,
    first: u32,
    run: Vec<u8>,
    runs: Vec<PageRun>,
    raw: usize,
    skip_lz4: u32,
    /// Pages put in runs so far (zero markers included).
    pub pages: u64,
}

impl Batcher {
    /// A batcher; `skip_zero` as for [`encode_run`].
    pub fn new(skip_zero: bool) -> Batcher {
        Batcher {
            skip_zero,
            first: 0,
            run: Vec::with_capacity(RUN_PAGES as usize * PAGE),
            runs: Vec::new(),
            raw: 0,
            skip_lz4: 0,
            pages: 0,
        }
    }

    /// Adds page `index` with its bytes. Returns a full batch to send.
    pub fn push(&mut self, index: u32, page: &[u8]) -> Option<Vec<PageRun>> {
        let pages_in_run = (self.run.len() / PAGE) as u32;
        if pages_in_run > 0 && (self.first + pages_in_run != index || pages_in_run >= RUN_PAGES) {
            self.close_run();
        }
        if self.run.is_empty() {
            self.first = index;
        }
        self.run.extend_from_slice(page);
        (self.raw >= BATCH_BYTES).then(|| self.take())
    }

    fn close_run(&mut self) {
        let try_lz4 = self.skip_lz4 == 0;
        self.skip_lz4 = self.skip_lz4.saturating_sub(1);
        if let Some(run) = encode_run(self.first, &self.run, self.skip_zero, try_lz4) {
            if try_lz4 && run.encoding == RunData::Raw {
                self.skip_lz4 = SKIP_AFTER_MISS;
            }
            self.raw += run.data.len();
            self.pages += run.count as u64;
            self.runs.push(run);
        }
        self.run.clear();
    }

    fn take(&mut self) -> Vec<PageRun> {
        self.raw = 0;
        std::mem::take(&mut self.runs)
    }

    /// Ends the last run; returns what is left to send.
    pub fn finish(&mut self) -> Vec<PageRun> {
        if !self.run.is_empty() {
            self.close_run();
        }
        self.take()
    }
}

/// Writes one run into the destination's memory, checking every bound.
pub fn apply_run(mem: &mut [u8], run: &PageRun) -> Result<(), MigrateError> {
    let start = run.first as usize * PAGE;
    let len = run.count as usize * PAGE;
    let mem_len = mem.len();
    let dst = start
        .checked_add(len)
        .and_then(|end| mem.get_mut(start..end))
        .ok_or_else(|| {
            MigrateError::Protocol(format!(
                "pages {}..{} lie outside memory of {mem_len} bytes",
                run.first,
                run.first as u64 + run.count as u64,
            ))
        })?;
    decode_into(run, dst)
}

/// Decodes a run's bytes into `dst`, which is exactly the run's length.
pub fn decode_into(run: &PageRun, dst: &mut [u8]) -> Result<(), MigrateError> {
    let len = dst.len();
    match run.encoding {
        RunData::Zero => dst.fill(0),
        RunData::Raw => {
            if run.data.len() != len {
                return Err(MigrateError::Protocol(format!(
                    "raw run of {} pages carries {} bytes",
                    run.count,
                    run.data.len()
                )));
            }
            dst.copy_from_slice(&run.data);
        }
        RunData::Lz4 => {
            let n = lz4_flex::block::decompress_into(&run.data, dst)
                .map_err(|e| MigrateError::Protocol(format!("bad lz4 run: {e}")))?;
            if n != len {
                return Err(MigrateError::Protocol(format!(
                    "lz4 run of {} pages gives {n} bytes",
                    run.count
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batcher_runs_round_trip() {
        let mut mem = vec![0u8; 200 * PAGE];
        for (i, b) in mem.iter_mut().enumerate() {
            if !(i / PAGE).is_multiple_of(3) {
                *b = (i % 251) as u8;
            }
        }
        let order: Vec<u32> = (0..200).filter(|p: &u32| !p.is_multiple_of(7)).collect();
        let mut batcher = Batcher::new(true);
        let mut runs = Vec::new();
        for &p in &order {
            let at = p as usize * PAGE;
            runs.extend(batcher.push(p, &mem[at..at + PAGE]).into_iter().flatten());
        }
        runs.extend(batcher.finish());
        let mut copy = vec![0u8; mem.len()];
        for r in &runs {
            assert!(r.count <= RUN_PAGES);
            apply_run(&mut copy, r).unwrap();
        }
        for p in 0..200usize {
            let want: &[u8] = if p.is_multiple_of(7) {
                &[0; PAGE]
            } else {
                &mem[p * PAGE..(p + 1) * PAGE]
            };
            assert_eq!(&copy[p * PAGE..(p + 1) * PAGE], want, "page {p}");
        }
    }

    #[test]
    fn apply_rejects_out_of_bounds_and_bad_sizes() {
        let mut mem = vec![0u8; 4 * PAGE];
        let run = |first, count, encoding, data| PageRun {
            first,
            count,
            encoding,
            data,
        };
        assert!(apply_run(&mut mem, &run(3, 2, RunData::Zero, vec![])).is_err());
        assert!(apply_run(&mut mem, &run(u32::MAX, 2, RunData::Zero, vec![])).is_err());
        assert!(apply_run(&mut mem, &run(0, 1, RunData::Raw, vec![1; 10])).is_err());
        assert!(apply_run(&mut mem, &run(0, 1, RunData::Lz4, vec![1; 10])).is_err());
        apply_run(&mut mem, &run(1, 1, RunData::Raw, vec![9; PAGE])).unwrap();
        assert!(mem[PAGE..2 * PAGE].iter().all(|b| *b == 9));
        let packed = lz4_flex::block::compress(&[4u8; 2 * PAGE]);
        apply_run(&mut mem, &run(2, 2, RunData::Lz4, packed)).unwrap();
        assert!(mem[2 * PAGE..].iter().all(|b| *b == 4));
        apply_run(&mut mem, &run(1, 2, RunData::Zero, vec![])).unwrap();
        assert!(mem[PAGE..3 * PAGE].iter().all(|b| *b == 0));
    }
}
