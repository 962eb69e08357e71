//! Writing images.

use std::collections::HashSet;
use std::io::Write;
use std::num::NonZeroUsize;

use serde::Serialize;

use crate::memory::{encode_memory, PARALLEL_THRESHOLD};
use crate::wire::HashWriter;
use crate::{
    EncodeError, Global, GlobalValue, ImageRef, SectionKind, FORMAT_MAJOR, FORMAT_MINOR, MAGIC,
    MAX_GLOBALS, MAX_GLOBALS_SECTION_LEN, MAX_HOST_LEN, MAX_MEMORY_BYTES, MAX_META_LEN,
    MAX_MODULE_LEN, MAX_STACK_LEN, MAX_STRING_LEN, WASM_PAGE_SIZE,
};

/// Knobs for [`encode_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Threads compressing memory. `None`: all available cores when the
    /// memory is larger than a few MiB, else one. The output is the same
    /// whatever the count.
    pub threads: Option<NonZeroUsize>,
}

/// What [`encode`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EncodeStats {
    /// Bytes written, trailer included.
    pub bytes_written: u64,
    /// Size of the linear memory.
    pub memory_bytes: u64,
    /// Non-zero pages stored.
    pub pages_present: u64,
    /// Pages stored raw.
    pub pages_raw: u64,
    /// Pages stored lz4-compressed.
    pub pages_lz4: u64,
    /// Memory runs written.
    pub runs: u64,
    /// Payload bytes of the memory section.
    pub memory_section_bytes: u64,
}

/// Encodes `image` into `out` with default options; see [`encode_with`].
pub fn encode<W: Write>(image: &ImageRef<'_>, out: W) -> Result<EncodeStats, EncodeError> {
    encode_with(image, out, &EncodeOptions::default())
}

/// Encodes `image` into `out`. Everything is validated against the limits
/// before the first byte is written, so a failed encode only ever leaves a
/// partial image behind when `out` itself fails. `out` is buffered
/// internally.
pub fn encode_with<W: Write>(
    image: &ImageRef<'_>,
    out: W,
    options: &EncodeOptions,
) -> Result<EncodeStats, EncodeError> {
    validate(image)?;
    let meta = postcard::to_stdvec(image.meta).map_err(|e| EncodeError::MetaEncoding(e.into()))?;
    check_len("metadata", meta.len(), MAX_META_LEN)?;
    let globals = encode_globals(image.globals);
    check_len("globals section", globals.len(), MAX_GLOBALS_SECTION_LEN)?;

    let threads = match options.threads {
        Some(threads) => threads,
        None if image.memory.len() >= PARALLEL_THRESHOLD => {
            std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
        }
        None => NonZeroUsize::MIN,
    };
    let memory = encode_memory(image.memory, threads);
    let counts = memory.counts();

    let mut w = HashWriter::new(out);
    let write = |w: &mut HashWriter<W>| -> std::io::Result<()> {
        w.put(&MAGIC)?;
        w.put(&FORMAT_MAJOR.to_le_bytes())?;
        w.put(&FORMAT_MINOR.to_le_bytes())?;
        w.put(&crate::KNOWN_FLAGS.to_le_bytes())?;
        w.put(&(SectionKind::ALL.len() as u32).to_le_bytes())?;
        for kind in SectionKind::ALL {
            let payload: &[u8] = match kind {
                SectionKind::Meta => &meta,
                SectionKind::Module => image.module,
                SectionKind::Globals => &globals,
                SectionKind::Stack => image.stack,
                SectionKind::Host => image.host,
                SectionKind::Memory => &[],
            };
            let len = match kind {
                SectionKind::Memory => counts.section_len,
                _ => payload.len() as u64,
            };
            w.put(&kind.id().to_le_bytes())?;
            w.put(&len.to_le_bytes())?;
            match kind {
                SectionKind::Memory => memory.write(w)?,
                _ => w.put(payload)?,
            }
        }
        Ok(())
    };
    write(&mut w).map_err(EncodeError::Write)?;
    let bytes_written = w.finish().map_err(EncodeError::Write)?;
    Ok(EncodeStats {
        bytes_written,
        memory_bytes: image.memory.len() as u64,
        pages_present: counts.pages_present,
        pages_raw: counts.pages_raw,
        pages_lz4: counts.pages_lz4,
        runs: counts.runs,
        memory_section_bytes: counts.section_len,
    })
}

fn check_len(what: &'static str, len: usize, limit: u64) -> Result<(), EncodeError> {
    let len = len as u64;
    if len > limit {
        return Err(EncodeError::TooLarge { what, len, limit });
    }
    Ok(())
}

fn check_string(what: &'static str, s: &str) -> Result<(), EncodeError> {
    if s.len() > MAX_STRING_LEN {
        return Err(EncodeError::StringTooLong {
            what,
            len: s.len() as u64,
            limit: MAX_STRING_LEN as u64,
        });
    }
    Ok(())
}

/// Checks every limit the decoder enforces, so that nothing is written that
/// could not be read back.
fn validate(image: &ImageRef<'_>) -> Result<(), EncodeError> {
    for (what, s) in image.meta.strings() {
        check_string(what, s)?;
    }
    check_len("module", image.module.len(), MAX_MODULE_LEN)?;
    check_len("memory", image.memory.len(), MAX_MEMORY_BYTES)?;
    if !image.memory.len().is_multiple_of(WASM_PAGE_SIZE) {
        return Err(EncodeError::MemoryNotWasmPages {
            len: image.memory.len() as u64,
        });
    }
    check_len("stack", image.stack.len(), MAX_STACK_LEN)?;
    check_len("host state", image.host.len(), MAX_HOST_LEN)?;
    if image.globals.len() > MAX_GLOBALS as usize {
        return Err(EncodeError::TooManyGlobals {
            count: image.globals.len() as u64,
            limit: u64::from(MAX_GLOBALS),
        });
    }
    let mut names = HashSet::with_capacity(image.globals.len());
    for global in image.globals {
        check_string("global name", &global.name)?;
        if !names.insert(global.name.as_str()) {
            return Err(EncodeError::DuplicateGlobal {
                name: global.name.clone(),
            });
        }
    }
    Ok(())
}

/// The globals payload: count u32, then per global: name length u32, name
/// (UTF-8), wasm value-type byte, value (4, 8 or 16 bytes).
fn encode_globals(globals: &[Global]) -> Vec<u8> {
    let size: usize = globals.iter().map(|g| 4 + g.name.len() + 1 + 16).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(globals.len() as u32).to_le_bytes());
    for global in globals {
        out.extend_from_slice(&(global.name.len() as u32).to_le_bytes());
        out.extend_from_slice(global.name.as_bytes());
        out.push(global.value.type_code());
        match global.value {
            GlobalValue::I32(v) | GlobalValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GlobalValue::I64(v) | GlobalValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GlobalValue::V128(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}
