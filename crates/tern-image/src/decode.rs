//! Reading images.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::memory::{parse_memory, ParsedMemory};
use crate::wire::{field, Reader};
use crate::{
    DecodeError, Global, GlobalValue, Image, MemoryImage, Meta, SectionKind, ENCODING_LZ4,
    FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, KNOWN_FLAGS, MAGIC, MAX_GLOBALS, MAX_SECTIONS,
    MAX_STRING_LEN, SECTION_HEADER_LEN, SECTION_OPTIONAL, TRAILER_LEN,
};

/// What [`inspect`] reports about an image, without decompressing memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Format version: (major, minor).
    pub format: (u16, u16),
    /// Header flags.
    pub flags: u32,
    /// Size of the whole image.
    pub total_bytes: u64,
    /// The trailer checksum (verified).
    pub checksum: u64,
    /// Every section in file order, skipped ones included.
    pub sections: Vec<SectionInfo>,
    /// Metadata.
    pub meta: Meta,
    /// Size of the module.
    pub module_bytes: u64,
    /// Number of globals.
    pub globals: u64,
    /// Size of the saved stack.
    pub stack_bytes: u64,
    /// Size of the host state.
    pub host_bytes: u64,
    /// The memory section.
    pub memory: MemorySummary,
}

/// One section as found in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionInfo {
    /// The kind as stored, [`SECTION_OPTIONAL`] bit included.
    pub kind: u32,
    /// The kind, if this build knows it.
    pub known: Option<SectionKind>,
    /// Whether the section is marked optional.
    pub optional: bool,
    /// Offset of the section header in the image.
    pub offset: u64,
    /// Payload length.
    pub payload_bytes: u64,
}

/// The memory section of an image, as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemorySummary {
    /// Size of the linear memory.
    pub size_bytes: u64,
    /// Non-zero pages stored.
    pub pages_present: u64,
    /// Pages stored raw.
    pub pages_raw: u64,
    /// Pages stored lz4-compressed.
    pub pages_lz4: u64,
    /// Runs stored.
    pub runs: u64,
    /// Payload bytes of the memory section.
    pub section_bytes: u64,
}

/// A validated image borrowing its bytes, memory still encoded: what
/// [`view`] returns. Restoring from a view decompresses memory straight into
/// the guest's linear memory ([`ImageView::write_memory_into`]), with no
/// intermediate copy.
pub struct ImageView<'a> {
    /// Metadata.
    pub meta: Meta,
    /// Prepared wasm module.
    pub module: &'a [u8],
    /// Globals in file order.
    pub globals: Vec<Global>,
    /// Saved guest stack.
    pub stack: &'a [u8],
    /// Host state.
    pub host: &'a [u8],
    /// Format version of the image: (major, minor).
    pub format: (u16, u16),
    flags: u32,
    checksum: u64,
    sections: Vec<SectionInfo>,
    memory: ParsedMemory<'a>,
    memory_section_bytes: u64,
}

impl std::fmt::Debug for ImageView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageView")
            .field("meta", &self.meta)
            .field("module_bytes", &self.module.len())
            .field("globals", &self.globals)
            .field("stack_bytes", &self.stack.len())
            .field("host_bytes", &self.host.len())
            .field("format", &self.format)
            .field("memory_size", &self.memory.size_bytes)
            .field("memory_runs", &self.memory.runs.len())
            .finish_non_exhaustive()
    }
}

impl ImageView<'_> {
    /// Size of the linear memory in bytes.
    pub fn memory_size(&self) -> u64 {
        self.memory.size_bytes
    }

    /// Number of non-zero pages stored.
    pub fn pages_present(&self) -> u64 {
        self.memory.pages_present()
    }

    /// Decompresses the memory into `dst`, which must be at least
    /// [`memory_size`](Self::memory_size) bytes and is assumed zeroed: pages
    /// not stored are not written. Large memories are decompressed on all
    /// cores. On error `dst` may be partly written.
    pub fn write_memory_into(&self, dst: &mut [u8]) -> Result<(), DecodeError> {
        self.memory.write_into(dst, threads())
    }

    /// Decompresses the memory into runs of present pages.
    pub fn decode_memory(&self) -> Result<MemoryImage, DecodeError> {
        self.memory.decode(threads())
    }

    /// Copies everything into an owned [`Image`], decompressing memory.
    pub fn to_image(&self) -> Result<Image, DecodeError> {
        Ok(Image {
            meta: self.meta.clone(),
            module: self.module.to_vec(),
            memory: self.decode_memory()?,
            globals: self.globals.clone(),
            stack: self.stack.to_vec(),
            host: self.host.to_vec(),
            format: self.format,
        })
    }

    /// Summarizes the image (what [`inspect`] returns).
    pub fn summary(&self) -> Summary {
        let mut memory = MemorySummary {
            size_bytes: self.memory.size_bytes,
            section_bytes: self.memory_section_bytes,
            ..MemorySummary::default()
        };
        for run in &self.memory.runs {
            let pages = u64::from(run.pages);
            memory.runs += 1;
            memory.pages_present += pages;
            if run.encoding == ENCODING_LZ4 {
                memory.pages_lz4 += pages;
            } else {
                memory.pages_raw += pages;
            }
        }
        let total_bytes = HEADER_LEN as u64
            + self
                .sections
                .iter()
                .map(|s| SECTION_HEADER_LEN as u64 + s.payload_bytes)
                .sum::<u64>()
            + TRAILER_LEN as u64;
        Summary {
            format: self.format,
            flags: self.flags,
            total_bytes,
            checksum: self.checksum,
            sections: self.sections.clone(),
            meta: self.meta.clone(),
            module_bytes: self.module.len() as u64,
            globals: self.globals.len() as u64,
            stack_bytes: self.stack.len() as u64,
            host_bytes: self.host.len() as u64,
            memory,
        }
    }
}

fn threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Decodes a whole image, decompressing memory (on several threads when it
/// is large). Never panics, whatever `bytes` holds.
pub fn decode(bytes: &[u8]) -> Result<Image, DecodeError> {
    view(bytes)?.to_image()
}

/// Validates an image and summarizes it without decompressing memory (lz4
/// data is checked only when memory is decompressed).
pub fn inspect(bytes: &[u8]) -> Result<Summary, DecodeError> {
    Ok(view(bytes)?.summary())
}

fn truncated(needed: u64, actual: usize) -> DecodeError {
    DecodeError::Truncated {
        needed,
        actual: actual as u64,
    }
}

/// Where the sections say the image ends (trailer included), reading only
/// section headers, or `Err` with how many bytes are needed at least when the
/// sections run past the end of `bytes`.
fn layout_end(bytes: &[u8], count: u32) -> Result<u64, u64> {
    let mut pos = HEADER_LEN as u64;
    for _ in 0..count {
        let header_end = pos + SECTION_HEADER_LEN as u64;
        let len = usize::try_from(pos + 4)
            .ok()
            .and_then(|at| field::<8>(bytes, at))
            .map(u64::from_le_bytes)
            .ok_or(header_end + TRAILER_LEN as u64)?;
        pos = header_end.checked_add(len).ok_or(u64::MAX)?;
        if pos > bytes.len() as u64 {
            return Err(pos.saturating_add(TRAILER_LEN as u64));
        }
    }
    Ok(pos + TRAILER_LEN as u64)
}

/// Validates an image without decompressing its memory: checks the framing
/// (magic, version, checksum, section table), parses every section and
/// validates every memory run header. Never panics, whatever `bytes` holds.
pub fn view(bytes: &[u8]) -> Result<ImageView<'_>, DecodeError> {
    // Magic.
    match bytes.first_chunk::<8>() {
        Some(magic) if *magic != MAGIC => return Err(DecodeError::NotAnImage),
        Some(_) => {}
        None if MAGIC.starts_with(bytes) => {
            return Err(truncated((HEADER_LEN + TRAILER_LEN) as u64, bytes.len()))
        }
        None => return Err(DecodeError::NotAnImage),
    }
    // Version: checked before the checksum, since another major may frame
    // or checksum the file differently.
    let (Some(major), Some(minor), Some(flags), Some(count)) = (
        field::<2>(bytes, 8).map(u16::from_le_bytes),
        field::<2>(bytes, 10).map(u16::from_le_bytes),
        field::<4>(bytes, 12).map(u32::from_le_bytes),
        field::<4>(bytes, 16).map(u32::from_le_bytes),
    ) else {
        return Err(truncated((HEADER_LEN + TRAILER_LEN) as u64, bytes.len()));
    };
    if major != FORMAT_MAJOR {
        return Err(DecodeError::UnsupportedVersion { major, minor });
    }

    // Checksum, before any section is looked at.
    let Some((body, trailer)) = bytes
        .len()
        .checked_sub(TRAILER_LEN)
        .filter(|&n| n >= HEADER_LEN)
        .and_then(|n| bytes.split_at_checked(n))
    else {
        return Err(truncated((HEADER_LEN + TRAILER_LEN) as u64, bytes.len()));
    };
    let stored = trailer
        .first_chunk::<8>()
        .copied()
        .map(u64::from_le_bytes)
        .ok_or(truncated((HEADER_LEN + TRAILER_LEN) as u64, bytes.len()))?;
    let computed = xxh3_64(body);
    if stored != computed {
        // Tell a cut-off file from a damaged one by what its section
        // headers claim.
        return Err(match layout_end(bytes, count) {
            Err(needed) => truncated(needed, bytes.len()),
            Ok(end) if end > bytes.len() as u64 => truncated(end, bytes.len()),
            Ok(_) => DecodeError::ChecksumMismatch { stored, computed },
        });
    }

    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::UnsupportedFlags {
            flags,
            major,
            minor,
        });
    }
    if count > MAX_SECTIONS {
        return Err(DecodeError::TooManySections {
            count,
            limit: MAX_SECTIONS,
        });
    }

    // Section table.
    let mut sections = Vec::with_capacity(count as usize);
    let mut payloads: [Option<&[u8]>; 6] = [None; 6];
    let mut rest = body.get(HEADER_LEN..).unwrap_or_default();
    let mut offset = HEADER_LEN as u64;
    for index in 0..count {
        let layout = |what: String| DecodeError::Layout { what };
        let (header, after) = rest
            .split_at_checked(SECTION_HEADER_LEN)
            .ok_or_else(|| layout(format!("section {index} header runs into the trailer")))?;
        let (Some(kind), Some(len)) = (
            field::<4>(header, 0).map(u32::from_le_bytes),
            field::<8>(header, 4).map(u64::from_le_bytes),
        ) else {
            return Err(layout(format!("section {index} header is short")));
        };
        let known = SectionKind::from_id(kind);
        let optional = kind & SECTION_OPTIONAL != 0;
        if let Some(section) = known {
            if len > section.max_len() {
                return Err(DecodeError::SectionTooLarge {
                    section,
                    len,
                    limit: section.max_len(),
                });
            }
        }
        let (payload, after) = usize::try_from(len)
            .ok()
            .and_then(|len| after.split_at_checked(len))
            .ok_or_else(|| layout(format!("section {index} runs into the trailer")))?;
        sections.push(SectionInfo {
            kind,
            known,
            optional,
            offset,
            payload_bytes: len,
        });
        offset += (SECTION_HEADER_LEN as u64) + len;
        rest = after;
        match known {
            Some(section) => {
                let slot = payloads
                    .get_mut(slot_of(section))
                    .ok_or(DecodeError::MissingSection(section))?;
                if slot.replace(payload).is_some() {
                    return Err(DecodeError::DuplicateSection(section));
                }
            }
            None if optional => {}
            None => return Err(DecodeError::UnknownSection { kind, major, minor }),
        }
    }
    if !rest.is_empty() {
        return Err(DecodeError::Layout {
            what: format!(
                "{} bytes between the last section and the trailer",
                rest.len()
            ),
        });
    }
    let payload = |section: SectionKind| {
        payloads
            .get(slot_of(section))
            .copied()
            .flatten()
            .ok_or(DecodeError::MissingSection(section))
    };

    let meta = parse_meta(payload(SectionKind::Meta)?, minor)?;
    let module = payload(SectionKind::Module)?;
    let memory_payload = payload(SectionKind::Memory)?;
    let memory = parse_memory(memory_payload)?;
    let globals = parse_globals(payload(SectionKind::Globals)?)?;
    let stack = payload(SectionKind::Stack)?;
    let host = payload(SectionKind::Host)?;
    Ok(ImageView {
        meta,
        module,
        globals,
        stack,
        host,
        format: (major, minor),
        flags,
        checksum: stored,
        sections,
        memory,
        memory_section_bytes: memory_payload.len() as u64,
    })
}

fn slot_of(section: SectionKind) -> usize {
    SectionKind::ALL
        .iter()
        .position(|&k| k == section)
        .unwrap_or(usize::MAX)
}

/// Parses `meta`. Images of a newer minor may append fields, which are
/// ignored; otherwise trailing bytes are an error.
fn parse_meta(payload: &[u8], minor: u16) -> Result<Meta, DecodeError> {
    let (meta, rest) = postcard::take_from_bytes::<Meta>(payload)
        .map_err(|e| DecodeError::MetaUndecodable(e.into()))?;
    let newer_minor = minor > FORMAT_MINOR;
    if !rest.is_empty() && !newer_minor {
        return Err(DecodeError::malformed(
            SectionKind::Meta,
            format!("{} unexpected trailing bytes", rest.len()),
        ));
    }
    for (what, s) in meta.strings() {
        if s.len() > MAX_STRING_LEN {
            return Err(DecodeError::LimitExceeded {
                section: SectionKind::Meta,
                what,
                value: s.len() as u64,
                limit: MAX_STRING_LEN as u64,
            });
        }
    }
    Ok(meta)
}

/// Smallest encoding of one global: name length, empty name, type, i32.
const MIN_GLOBAL_LEN: usize = 4 + 1 + 4;

fn parse_globals(payload: &[u8]) -> Result<Vec<Global>, DecodeError> {
    const GLOBALS: SectionKind = SectionKind::Globals;
    let mut r = Reader::new(payload, GLOBALS);
    let count = r.u32("global count")?;
    if count > MAX_GLOBALS {
        return Err(DecodeError::LimitExceeded {
            section: GLOBALS,
            what: "global count",
            value: u64::from(count),
            limit: u64::from(MAX_GLOBALS),
        });
    }
    if (count as usize).saturating_mul(MIN_GLOBAL_LEN) > r.remaining() {
        return Err(DecodeError::malformed(
            GLOBALS,
            format!("{count} globals cannot fit in {} bytes", r.remaining()),
        ));
    }
    let mut globals = Vec::with_capacity(count as usize);
    let mut names = HashSet::with_capacity(count as usize);
    for index in 0..count {
        let name_len = r.u32("global name length")?;
        if name_len as usize > MAX_STRING_LEN {
            return Err(DecodeError::LimitExceeded {
                section: GLOBALS,
                what: "global name length",
                value: u64::from(name_len),
                limit: MAX_STRING_LEN as u64,
            });
        }
        let name =
            std::str::from_utf8(r.bytes(name_len as usize, "global name")?).map_err(|_| {
                DecodeError::malformed(GLOBALS, format!("global {index}: name is not UTF-8"))
            })?;
        if !names.insert(name) {
            return Err(DecodeError::malformed(
                GLOBALS,
                format!("duplicate global {name:?}"),
            ));
        }
        let value = match r.u8("global type")? {
            0x7f => GlobalValue::I32(r.u32("global value")?),
            0x7e => GlobalValue::I64(r.u64("global value")?),
            0x7d => GlobalValue::F32(r.u32("global value")?),
            0x7c => GlobalValue::F64(r.u64("global value")?),
            0x7b => GlobalValue::V128(r.u128("global value")?),
            other => {
                return Err(DecodeError::malformed(
                    GLOBALS,
                    format!("global {name:?}: unknown type {other:#x}"),
                ))
            }
        };
        globals.push(Global {
            name: name.to_owned(),
            value,
        });
    }
    if !r.is_empty() {
        return Err(DecodeError::malformed(
            GLOBALS,
            format!("{} unexpected trailing bytes", r.remaining()),
        ));
    }
    Ok(globals)
}
