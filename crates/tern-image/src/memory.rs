//! The memory section: zero-page detection, chunking, parallel lz4
//! compression and validated, parallel decompression.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::wire::{HashWriter, Reader};
use crate::{
    DecodeError, MemoryImageError, SectionKind, ENCODING_LZ4, ENCODING_RAW, MAX_MEMORY_BYTES,
    MAX_RUN_PAGES, PAGE_SIZE, RUN_HEADER_LEN, WASM_PAGE_SIZE,
};

/// Memory decoded from an image: its size and the non-zero pages, grouped in
/// maximal runs of consecutive pages. Pages not covered by a run are zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryImage {
    /// Size of the linear memory in bytes.
    pub size_bytes: u64,
    /// Present pages, sorted by `first_page`, not overlapping.
    pub runs: Vec<PageRun>,
}

/// Consecutive present pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRun {
    /// Index of the first page (in [`PAGE_SIZE`] units).
    pub first_page: u64,
    /// The pages' bytes; the length is a multiple of [`PAGE_SIZE`].
    pub data: Vec<u8>,
}

impl MemoryImage {
    /// The pages of `mem` that are not all zero, in maximal runs. A trailing
    /// partial page is padded with zeros in its run; `size_bytes` stays
    /// `mem.len()`.
    pub fn from_memory(mem: &[u8]) -> Self {
        let mut runs: Vec<PageRun> = Vec::new();
        let mut next_page = 0u64;
        for (index, page) in mem.chunks(PAGE_SIZE).enumerate() {
            let page_index = index as u64;
            if is_zero(page) {
                continue;
            }
            match runs.last_mut() {
                Some(run) if next_page == page_index => run.data.extend_from_slice(page),
                _ => runs.push(PageRun {
                    first_page: page_index,
                    data: page.to_vec(),
                }),
            }
            if let Some(run) = runs.last_mut() {
                run.data
                    .resize(run.data.len().next_multiple_of(PAGE_SIZE), 0);
            }
            next_page = page_index + 1;
        }
        MemoryImage {
            size_bytes: mem.len() as u64,
            runs,
        }
    }

    /// Number of present (stored) pages.
    pub fn pages_present(&self) -> u64 {
        self.runs
            .iter()
            .map(|run| (run.data.len() / PAGE_SIZE) as u64)
            .sum()
    }

    /// Copies the runs into `dst`, which is assumed zeroed and must be at
    /// least `size_bytes` long. Bytes of a run beyond `size_bytes` (padding of
    /// a partial last page) are not copied.
    pub fn write_into(&self, dst: &mut [u8]) -> Result<(), MemoryImageError> {
        let size = usize::try_from(self.size_bytes)
            .ok()
            .filter(|&size| size <= dst.len())
            .ok_or(MemoryImageError::DestinationTooSmall {
                needed: self.size_bytes,
                len: dst.len() as u64,
            })?;
        for run in &self.runs {
            let first_page = run.first_page;
            if !run.data.len().is_multiple_of(PAGE_SIZE) {
                return Err(MemoryImageError::RunNotWholePages {
                    first_page,
                    len: run.data.len() as u64,
                });
            }
            let out_of_bounds = MemoryImageError::RunOutOfBounds { first_page };
            let start = usize::try_from(first_page)
                .ok()
                .and_then(|page| page.checked_mul(PAGE_SIZE))
                .ok_or(out_of_bounds.clone())?;
            let end = start
                .checked_add(run.data.len())
                .ok_or(out_of_bounds.clone())?;
            // The run may pad a partial last page; only that padding may
            // extend past the memory size.
            if start >= size || end > size.next_multiple_of(PAGE_SIZE) {
                return Err(out_of_bounds);
            }
            let copy_end = end.min(size);
            let src = run
                .data
                .get(..copy_end - start)
                .ok_or(out_of_bounds.clone())?;
            dst.get_mut(start..copy_end)
                .ok_or(out_of_bounds)?
                .copy_from_slice(src);
        }
        Ok(())
    }

    /// The whole memory as one buffer of `size_bytes` bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MemoryImageError> {
        let len = usize::try_from(self.size_bytes).map_err(|_| {
            MemoryImageError::DestinationTooSmall {
                needed: self.size_bytes,
                len: usize::MAX as u64,
            }
        })?;
        let mut mem = vec![0u8; len];
        self.write_into(&mut mem)?;
        Ok(mem)
    }
}

/// True when every byte of `bytes` is zero. Works on 16-byte words, 256
/// bytes between early exits, which the compiler turns into vector ORs.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let (words, tail) = bytes.as_chunks::<16>();
    words.chunks(16).all(|block| {
        block
            .iter()
            .fold(0u128, |acc, word| acc | u128::from_ne_bytes(*word))
            == 0
    }) && tail.iter().all(|&b| b == 0)
}

/// Memory of this size or more is compressed on several threads.
pub(crate) const PARALLEL_THRESHOLD: usize = 4 << 20;
/// Pages handed to a worker at once: 4 aligned 1 MiB groups.
const BATCH_PAGES: usize = 4 * MAX_RUN_PAGES as usize;

/// How one encoded run's bytes are stored.
enum ChunkData {
    /// The pages themselves, taken from the memory at write time.
    Raw,
    /// An lz4 block at `start..start + len` of the batch's buffer.
    Lz4 { start: usize, len: usize },
}

struct Chunk {
    first_page: usize,
    pages: usize,
    data: ChunkData,
}

/// Encoded runs of one batch of pages.
#[derive(Default)]
struct Batch {
    chunks: Vec<Chunk>,
    lz4: Vec<u8>,
}

/// The memory section, ready to be written.
pub(crate) struct EncodedMemory<'a> {
    mem: &'a [u8],
    batches: Vec<Batch>,
}

/// Counts describing an encoded memory section.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MemoryCounts {
    pub(crate) pages_present: u64,
    pub(crate) pages_raw: u64,
    pub(crate) pages_lz4: u64,
    pub(crate) runs: u64,
    pub(crate) section_len: u64,
}

impl EncodedMemory<'_> {
    pub(crate) fn counts(&self) -> MemoryCounts {
        let mut counts = MemoryCounts {
            section_len: 8,
            ..MemoryCounts::default()
        };
        for chunk in self.batches.iter().flat_map(|batch| &batch.chunks) {
            let pages = chunk.pages as u64;
            counts.pages_present += pages;
            counts.runs += 1;
            counts.section_len += RUN_HEADER_LEN as u64;
            match chunk.data {
                ChunkData::Raw => {
                    counts.pages_raw += pages;
                    counts.section_len += pages * PAGE_SIZE as u64;
                }
                ChunkData::Lz4 { len, .. } => {
                    counts.pages_lz4 += pages;
                    counts.section_len += len as u64;
                }
            }
        }
        counts
    }

    /// Writes the section payload (not its header).
    pub(crate) fn write<W: std::io::Write>(&self, w: &mut HashWriter<W>) -> std::io::Result<()> {
        w.put(&(self.mem.len() as u64).to_le_bytes())?;
        for batch in &self.batches {
            for chunk in &batch.chunks {
                let (encoding, bytes) = match chunk.data {
                    ChunkData::Raw => (
                        ENCODING_RAW,
                        page_range(self.mem, chunk.first_page, chunk.pages),
                    ),
                    ChunkData::Lz4 { start, len } => (
                        ENCODING_LZ4,
                        batch.lz4.get(start..start + len).unwrap_or_default(),
                    ),
                };
                w.put(&(chunk.first_page as u64).to_le_bytes())?;
                w.put(&(chunk.pages as u32).to_le_bytes())?;
                w.put(&[encoding])?;
                w.put(&(bytes.len() as u32).to_le_bytes())?;
                w.put(bytes)?;
            }
        }
        Ok(())
    }
}

/// Pages `first..first + count` of `mem` (clamped to `mem`).
fn page_range(mem: &[u8], first: usize, count: usize) -> &[u8] {
    let start = (first * PAGE_SIZE).min(mem.len());
    let end = ((first + count) * PAGE_SIZE).min(mem.len());
    mem.get(start..end).unwrap_or_default()
}

/// Finds the present pages of `mem` and compresses them, on up to `threads`
/// threads. The result does not depend on the thread count: runs never cross
/// a [`MAX_RUN_PAGES`]-aligned boundary and batches are reassembled in order.
/// `mem.len()` must be a multiple of [`PAGE_SIZE`] (callers check it is a
/// multiple of [`WASM_PAGE_SIZE`]).
pub(crate) fn encode_memory(mem: &[u8], threads: NonZeroUsize) -> EncodedMemory<'_> {
    debug_assert!(mem.len().is_multiple_of(WASM_PAGE_SIZE));
    let total_pages = mem.len() / PAGE_SIZE;
    let batch_count = total_pages.div_ceil(BATCH_PAGES);
    let threads = threads.get().min(batch_count).max(1);

    let mut batches: Vec<Option<Batch>> = Vec::new();
    batches.resize_with(batch_count, || None);
    if threads > 1 {
        let next = AtomicUsize::new(0);
        let work = || {
            let mut scratch = Vec::new();
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= batch_count {
                    break done;
                }
                done.push((index, encode_batch(mem, index, &mut scratch)));
            }
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = (1..threads)
                .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
                .collect();
            let mut results = vec![work()];
            results.extend(handles.into_iter().filter_map(|h| h.join().ok()));
            for (index, batch) in results.into_iter().flatten() {
                if let Some(slot) = batches.get_mut(index) {
                    *slot = Some(batch);
                }
            }
        });
    }
    // Sequential path, and any batch whose worker died.
    let mut scratch = Vec::new();
    let batches = batches
        .into_iter()
        .enumerate()
        .map(|(index, batch)| batch.unwrap_or_else(|| encode_batch(mem, index, &mut scratch)))
        .collect();
    EncodedMemory { mem, batches }
}

/// Encodes batch `index`: pages `index * BATCH_PAGES ..`, split into runs of
/// present pages that stay inside their aligned group of `MAX_RUN_PAGES`.
fn encode_batch(mem: &[u8], index: usize, scratch: &mut Vec<u8>) -> Batch {
    let total_pages = mem.len() / PAGE_SIZE;
    let first = index * BATCH_PAGES;
    let end = (first + BATCH_PAGES).min(total_pages);
    let group = MAX_RUN_PAGES as usize;
    let mut batch = Batch::default();
    let mut page = first;
    while page < end {
        if is_zero(page_range(mem, page, 1)) {
            page += 1;
            continue;
        }
        let start = page;
        let group_end = (start / group + 1) * group;
        let limit = group_end.min(end);
        page += 1;
        while page < limit && !is_zero(page_range(mem, page, 1)) {
            page += 1;
        }
        let pages = page - start;
        let data = compress(page_range(mem, start, pages), scratch, &mut batch.lz4);
        batch.chunks.push(Chunk {
            first_page: start,
            pages,
            data,
        });
    }
    batch
}

/// Compresses `src` into `out` if that saves at least 10%.
fn compress(src: &[u8], scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> ChunkData {
    let max = lz4_flex::block::get_maximum_output_size(src.len());
    if scratch.len() < max {
        scratch.resize(max, 0);
    }
    match lz4_flex::block::compress_into(src, scratch) {
        Ok(len) if len <= src.len() - src.len() / 10 => match scratch.get(..len) {
            Some(compressed) => {
                let start = out.len();
                out.extend_from_slice(compressed);
                ChunkData::Lz4 { start, len }
            }
            None => ChunkData::Raw,
        },
        _ => ChunkData::Raw,
    }
}

/// One validated run of the memory section, still encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunRef<'a> {
    pub(crate) first_page: u64,
    pub(crate) pages: u32,
    pub(crate) encoding: u8,
    pub(crate) payload: &'a [u8],
}

/// The memory section with every run header validated.
#[derive(Debug)]
pub(crate) struct ParsedMemory<'a> {
    pub(crate) size_bytes: u64,
    pub(crate) runs: Vec<RunRef<'a>>,
}

const MEMORY: SectionKind = SectionKind::Memory;

/// Parses and validates the memory section without decompressing it.
pub(crate) fn parse_memory(payload: &[u8]) -> Result<ParsedMemory<'_>, DecodeError> {
    let mut r = Reader::new(payload, MEMORY);
    let size_bytes = r.u64("memory size")?;
    if size_bytes > MAX_MEMORY_BYTES {
        return Err(DecodeError::LimitExceeded {
            section: MEMORY,
            what: "memory size",
            value: size_bytes,
            limit: MAX_MEMORY_BYTES,
        });
    }
    if !size_bytes.is_multiple_of(WASM_PAGE_SIZE as u64) {
        return Err(DecodeError::malformed(
            MEMORY,
            format!("memory size {size_bytes} is not a multiple of 64 KiB"),
        ));
    }
    let total_pages = size_bytes / PAGE_SIZE as u64;
    let mut runs = Vec::new();
    let mut next_free = 0u64;
    while !r.is_empty() {
        let first_page = r.u64("run first page")?;
        let pages = r.u32("run page count")?;
        let encoding = r.u8("run encoding")?;
        let encoded_len = r.u32("run length")?;
        let at = |what: String| {
            DecodeError::malformed(MEMORY, format!("run at page {first_page}: {what}"))
        };
        if pages == 0 || pages > MAX_RUN_PAGES {
            return Err(at(format!("page count {pages} not in 1..={MAX_RUN_PAGES}")));
        }
        if first_page < next_free {
            return Err(at("overlaps or precedes the previous run".into()));
        }
        let end = first_page.saturating_add(u64::from(pages));
        if end > total_pages {
            return Err(at(format!(
                "ends at page {end}, beyond the memory's {total_pages} pages"
            )));
        }
        let raw_len = u64::from(pages) * PAGE_SIZE as u64;
        let encoded = u64::from(encoded_len);
        match encoding {
            ENCODING_RAW if encoded != raw_len => {
                return Err(at(format!("raw length {encoded}, expected {raw_len}")));
            }
            ENCODING_LZ4 if encoded == 0 || encoded > raw_len => {
                return Err(at(format!("lz4 length {encoded} not in 1..={raw_len}")));
            }
            ENCODING_RAW | ENCODING_LZ4 => {}
            other => return Err(at(format!("unknown encoding {other}"))),
        }
        let len =
            usize::try_from(encoded_len).map_err(|_| at("length does not fit in memory".into()))?;
        let payload = r.bytes(len, "run data")?;
        runs.push(RunRef {
            first_page,
            pages,
            encoding,
            payload,
        });
        next_free = end;
    }
    Ok(ParsedMemory { size_bytes, runs })
}

impl ParsedMemory<'_> {
    /// Number of stored pages.
    pub(crate) fn pages_present(&self) -> u64 {
        self.runs.iter().map(|run| u64::from(run.pages)).sum()
    }

    /// Decompresses every run into its own buffer, merging adjacent runs, on
    /// up to `threads` threads.
    pub(crate) fn decode(&self, threads: NonZeroUsize) -> Result<MemoryImage, DecodeError> {
        // Lay out the merged runs.
        let mut spans: Vec<(u64, u64, usize)> = Vec::new(); // first page, pages, run count
        for run in &self.runs {
            match spans.last_mut() {
                Some((first, pages, count)) if *first + *pages == run.first_page => {
                    *pages += u64::from(run.pages);
                    *count += 1;
                }
                _ => spans.push((run.first_page, u64::from(run.pages), 1)),
            }
        }
        let mut out = Vec::with_capacity(spans.len());
        for &(first_page, pages, _) in &spans {
            let len = usize::try_from(pages)
                .ok()
                .and_then(|pages| pages.checked_mul(PAGE_SIZE))
                .ok_or_else(too_big)?;
            out.push(PageRun {
                first_page,
                data: vec![0u8; len],
            });
        }

        // Pair each encoded run with its slice of the output.
        let mut jobs: Vec<(RunRef<'_>, &mut [u8])> = Vec::with_capacity(self.runs.len());
        let mut encoded = self.runs.iter();
        for (run, &(_, _, count)) in out.iter_mut().zip(&spans) {
            let mut rest = run.data.as_mut_slice();
            for source in encoded.by_ref().take(count) {
                let len = source.pages as usize * PAGE_SIZE;
                let (head, tail) = rest.split_at_mut_checked(len).ok_or_else(too_big)?;
                jobs.push((*source, head));
                rest = tail;
            }
        }
        run_jobs(&mut jobs, threads)?;
        drop(jobs);
        Ok(MemoryImage {
            size_bytes: self.size_bytes,
            runs: out,
        })
    }

    /// Decompresses every run straight into `dst` (a whole linear memory,
    /// assumed zeroed), on up to `threads` threads.
    pub(crate) fn write_into(
        &self,
        dst: &mut [u8],
        threads: NonZeroUsize,
    ) -> Result<(), DecodeError> {
        let size = usize::try_from(self.size_bytes)
            .ok()
            .filter(|&size| size <= dst.len())
            .ok_or(DecodeError::DestinationTooSmall {
                needed: self.size_bytes,
                len: dst.len() as u64,
            })?;
        let mut rest = dst.get_mut(..size).ok_or_else(too_big)?;
        let mut rest_start = 0usize;
        let mut jobs: Vec<(RunRef<'_>, &mut [u8])> = Vec::with_capacity(self.runs.len());
        for run in &self.runs {
            // Runs are sorted and disjoint (checked by `parse_memory`).
            let start = usize::try_from(run.first_page)
                .ok()
                .and_then(|page| page.checked_mul(PAGE_SIZE))
                .ok_or_else(too_big)?;
            let gap = start.checked_sub(rest_start).ok_or_else(too_big)?;
            let len = run.pages as usize * PAGE_SIZE;
            let (_, tail) = std::mem::take(&mut rest)
                .split_at_mut_checked(gap)
                .ok_or_else(too_big)?;
            let (head, tail) = tail.split_at_mut_checked(len).ok_or_else(too_big)?;
            jobs.push((*run, head));
            rest = tail;
            rest_start = start + len;
        }
        run_jobs(&mut jobs, threads)
    }
}

fn too_big() -> DecodeError {
    DecodeError::malformed(MEMORY, "memory does not fit in this host")
}

/// Decodes `jobs`, split in contiguous parts over up to `threads` threads
/// when there is enough data. The first failing run (in memory order) is
/// reported.
fn run_jobs(
    jobs: &mut [(RunRef<'_>, &mut [u8])],
    threads: NonZeroUsize,
) -> Result<(), DecodeError> {
    let total: usize = jobs.iter().map(|(_, dst)| dst.len()).sum();
    let threads = if total >= PARALLEL_THRESHOLD {
        threads.get().min(jobs.len()).max(1)
    } else {
        1
    };
    let per_thread = jobs.len().div_ceil(threads).max(1);
    let part_count = jobs.len().div_ceil(per_thread);
    let mut results: Vec<Option<Result<(), DecodeError>>> = Vec::new();
    results.resize_with(part_count, || None);
    if threads > 1 {
        std::thread::scope(|scope| {
            let mut parts = jobs.chunks_mut(per_thread);
            let first = parts.next();
            let handles: Vec<_> = parts
                .enumerate()
                .filter_map(|(i, part)| {
                    std::thread::Builder::new()
                        .spawn_scoped(scope, move || decode_jobs(part))
                        .ok()
                        .map(|handle| (i + 1, handle))
                })
                .collect();
            if let (Some(first), Some(slot)) = (first, results.first_mut()) {
                *slot = Some(decode_jobs(first));
            }
            for (i, handle) in handles {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(handle.join().unwrap_or_else(|_| Err(worker_failed())));
                }
            }
        });
    }
    // Sequential path, and parts whose thread could not be spawned.
    for (part, slot) in jobs.chunks_mut(per_thread).zip(results.iter_mut()) {
        if slot.is_none() {
            *slot = Some(decode_jobs(part));
        }
    }
    results.into_iter().flatten().collect()
}

fn worker_failed() -> DecodeError {
    DecodeError::malformed(MEMORY, "decompression worker failed")
}

fn decode_jobs(jobs: &mut [(RunRef<'_>, &mut [u8])]) -> Result<(), DecodeError> {
    for (run, dst) in jobs.iter_mut() {
        decode_run(run, dst)?;
    }
    Ok(())
}

fn decode_run(run: &RunRef<'_>, dst: &mut [u8]) -> Result<(), DecodeError> {
    let first_page = run.first_page;
    match run.encoding {
        ENCODING_LZ4 => {
            let len = lz4_flex::block::decompress_into(run.payload, dst).map_err(|e| {
                DecodeError::Lz4 {
                    first_page,
                    source: Box::new(e),
                }
            })?;
            if len != dst.len() {
                return Err(DecodeError::malformed(
                    MEMORY,
                    format!(
                        "run at page {first_page}: lz4 data gives {len} bytes, expected {}",
                        dst.len()
                    ),
                ));
            }
        }
        _ => {
            if run.payload.len() != dst.len() {
                return Err(DecodeError::malformed(
                    MEMORY,
                    format!("run at page {first_page}: wrong raw length"),
                ));
            }
            dst.copy_from_slice(run.payload);
        }
    }
    Ok(())
}
