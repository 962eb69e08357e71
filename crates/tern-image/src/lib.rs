//! Tern's image format: one host-independent file layout for checkpoints,
//! migration streams and forks of a guest.
//!
//! An image holds everything needed to resume a WebAssembly guest on another
//! host, whatever its CPU or operating system: the prepared module, its linear
//! memory, its globals (by export name), the saved guest stack and the host
//! state. The full byte-level specification is `docs/image-format.md`; this
//! is the short version.
//!
//! # Layout
//!
//! All integers are little-endian and fixed-width.
//!
//! ```text
//! header   magic "TERNIMG\0" (8) | major u16 | minor u16 | flags u32 | section count u32
//! section  kind u32 | length u64 | payload (length bytes)     ... repeated count times
//! trailer  xxh3-64 of every byte before it (u64)
//! ```
//!
//! Section kinds are [`SectionKind`]s: `meta` (postcard-encoded [`Meta`]),
//! `module` (the prepared wasm bytes), `globals`, `stack`, `host` (opaque
//! bytes) and `memory`. The top bit of a kind, [`SECTION_OPTIONAL`], marks a
//! section that readers which do not know the kind may skip.
//!
//! The `memory` section stores the memory size (a multiple of the 64 KiB wasm
//! page) followed by runs of present [`PAGE_SIZE`] (4 KiB) pages. All-zero
//! pages are never stored. A run covers at most [`MAX_RUN_PAGES`] pages and
//! never crosses a 1 MiB-aligned boundary, so runs can be compressed and
//! decompressed in parallel while the output stays identical whatever the
//! thread count. Each run is stored raw or as an lz4 block, whichever is
//! smaller by at least 10%.
//!
//! # Reading
//!
//! [`decode`] returns an owned [`Image`] with memory decompressed into runs
//! of present pages ([`MemoryImage`]). To restore without that intermediate
//! copy, [`view`] validates the image and borrows it, and
//! [`ImageView::write_memory_into`] decompresses straight into the guest's
//! (zeroed) linear memory, on all cores. [`inspect`] summarizes an image
//! without decompressing anything; [`read_file`] reads a file with a size
//! cap and [`write_file`] writes one atomically.
//!
//! # Compatibility
//!
//! A reader requires the image's major version to equal [`FORMAT_MAJOR`].
//! Any minor version is accepted, older or newer; newer minors may only add
//! sections (which older readers skip when they carry [`SECTION_OPTIONAL`] and
//! reject with [`DecodeError::UnknownSection`] otherwise) and append fields to
//! the end of the `meta` payload (which older readers ignore). Header flags
//! must all be known ([`KNOWN_FLAGS`]).
//!
//! # Safety on untrusted input
//!
//! [`decode`] and [`inspect`] never panic. They check the trailer checksum
//! before looking at any section, bound every length before allocating
//! (see the `MAX_*` constants) and validate every memory run (sorted,
//! non-overlapping, inside the memory, decompressing to exactly its size).
//! The checksum detects corruption; it is not an authentication code.
//!
//! # Example
//!
//! ```
//! use tern_image::{decode, encode, inspect, Global, GlobalValue, ImageRef, Meta, TransformId};
//!
//! let meta = Meta {
//!     tern_version: "0.1.0".into(),
//!     transform: TransformId { name: "asyncify".into(), version: "1".into() },
//!     original_digest: [1; 32],
//!     prepared_digest: [2; 32],
//!     created_unix_ms: 1_700_000_000_000,
//!     source_arch: "x86_64".into(),
//!     guest_id: "guest-1".into(),
//! };
//! // Two wasm pages of memory; only one 4 KiB page is non-zero.
//! let mut memory = vec![0u8; 2 * 65536];
//! memory[70_000] = 42;
//! let globals = [Global { name: "counter".into(), value: GlobalValue::I32(7) }];
//! let image = ImageRef {
//!     meta: &meta,
//!     module: b"\0asm\x01\0\0\0",
//!     memory: &memory,
//!     globals: &globals,
//!     stack: &[],
//!     host: b"{}",
//! };
//!
//! let mut bytes = Vec::new();
//! let stats = encode(&image, &mut bytes)?;
//! assert_eq!(stats.pages_present, 1);
//! assert_eq!(stats.bytes_written, bytes.len() as u64);
//!
//! let summary = inspect(&bytes)?;
//! assert_eq!(summary.memory.size_bytes, memory.len() as u64);
//!
//! let decoded = decode(&bytes)?;
//! assert_eq!(decoded.meta, meta);
//! assert_eq!(decoded.globals, globals);
//! let mut restored = vec![0u8; memory.len()];
//! decoded.memory.write_into(&mut restored)?;
//! assert_eq!(restored, memory);
//!
//! // Any damage is detected.
//! bytes[30] ^= 1;
//! assert!(decode(&bytes).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod decode;
mod encode;
mod error;
mod file;
mod memory;
mod wire;

use serde::{Deserialize, Serialize};

pub use decode::{decode, inspect, view, ImageView, MemorySummary, SectionInfo, Summary};
pub use encode::{encode, encode_with, EncodeOptions, EncodeStats};
pub use error::{DecodeError, EncodeError, MemoryImageError, ReadError, WriteError};
pub use file::{read_bytes, read_file, read_file_with_limit, write_file, write_file_with};
pub use memory::{MemoryImage, PageRun};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The first eight bytes of every image.
pub const MAGIC: [u8; 8] = *b"TERNIMG\0";
/// Major format version: readers only accept images of exactly this major.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version this build writes; see the crate docs for what a
/// newer minor may change.
pub const FORMAT_MINOR: u16 = 0;
/// Header flag bits this build understands. An image with any other bit set
/// is rejected: flags announce changes that old readers cannot ignore.
pub const KNOWN_FLAGS: u32 = 0;

/// Size of the header: magic, major, minor, flags, section count.
pub const HEADER_LEN: usize = 8 + 2 + 2 + 4 + 4;
/// Size of a section header: kind (u32) and payload length (u64).
pub const SECTION_HEADER_LEN: usize = 4 + 8;
/// Size of the trailer: the xxh3-64 checksum.
pub const TRAILER_LEN: usize = 8;
/// Bit of a section kind marking a section that readers may skip when they do
/// not know its kind.
pub const SECTION_OPTIONAL: u32 = 1 << 31;

/// Granularity of the memory section: pages of 4 KiB, whatever the host's
/// own page size.
pub const PAGE_SIZE: usize = 4096;
/// The WebAssembly page size; the memory size is always a multiple of it.
pub const WASM_PAGE_SIZE: usize = 65536;
/// Most pages one memory run may hold (1 MiB). Runs also never cross a
/// `MAX_RUN_PAGES`-aligned page boundary.
pub const MAX_RUN_PAGES: u32 = 256;
/// Size of a memory run header: first page u64, page count u32, encoding u8,
/// encoded length u32.
pub const RUN_HEADER_LEN: usize = 8 + 4 + 1 + 4;
/// Run encoding: the pages' bytes as they are.
pub const ENCODING_RAW: u8 = 0;
/// Run encoding: one lz4 block (no frame, no size prefix).
pub const ENCODING_LZ4: u8 = 1;

/// Most sections one image may have.
pub const MAX_SECTIONS: u32 = 256;
/// Longest string (in bytes) in `meta` or as a global's name.
pub const MAX_STRING_LEN: usize = 64 * 1024;
/// Largest `meta` payload.
pub const MAX_META_LEN: u64 = MIB;
/// Largest `module` payload.
pub const MAX_MODULE_LEN: u64 = GIB;
/// Largest linear memory (the wasm32 limit).
pub const MAX_MEMORY_BYTES: u64 = 4 * GIB;
/// Largest `memory` payload: the size field plus every page stored raw in
/// one-page runs.
pub const MAX_MEMORY_SECTION_LEN: u64 =
    8 + MAX_MEMORY_BYTES + (MAX_MEMORY_BYTES / PAGE_SIZE as u64) * RUN_HEADER_LEN as u64;
/// Most globals one image may hold.
pub const MAX_GLOBALS: u32 = 1_000_000;
/// Largest `globals` payload.
pub const MAX_GLOBALS_SECTION_LEN: u64 = 64 * MIB;
/// Largest `stack` payload.
pub const MAX_STACK_LEN: u64 = GIB;
/// Largest `host` payload.
pub const MAX_HOST_LEN: u64 = 64 * MIB;
/// Largest file [`read_file`] accepts: every known section at its limit plus
/// 64 MiB for optional sections of newer minors.
pub const DEFAULT_MAX_FILE_LEN: u64 = HEADER_LEN as u64
    + (MAX_SECTIONS as u64) * SECTION_HEADER_LEN as u64
    + MAX_META_LEN
    + MAX_MODULE_LEN
    + MAX_MEMORY_SECTION_LEN
    + MAX_GLOBALS_SECTION_LEN
    + MAX_STACK_LEN
    + MAX_HOST_LEN
    + 64 * MIB
    + TRAILER_LEN as u64;

/// The sections this build knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    /// Postcard-encoded [`Meta`].
    Meta,
    /// The prepared wasm module.
    Module,
    /// Linear memory: size and runs of present pages.
    Memory,
    /// Global values, by export name.
    Globals,
    /// The saved guest stack (opaque to this crate).
    Stack,
    /// Host state (opaque to this crate).
    Host,
}

impl SectionKind {
    /// Every known kind, in the order [`encode`] writes them.
    pub const ALL: [SectionKind; 6] = [
        SectionKind::Meta,
        SectionKind::Module,
        SectionKind::Globals,
        SectionKind::Stack,
        SectionKind::Host,
        SectionKind::Memory,
    ];

    /// The kind's number in the file (without [`SECTION_OPTIONAL`]).
    pub const fn id(self) -> u32 {
        match self {
            SectionKind::Meta => 1,
            SectionKind::Module => 2,
            SectionKind::Memory => 3,
            SectionKind::Globals => 4,
            SectionKind::Stack => 5,
            SectionKind::Host => 6,
        }
    }

    /// The kind with number `id` ([`SECTION_OPTIONAL`] ignored), if known.
    pub const fn from_id(id: u32) -> Option<SectionKind> {
        match id & !SECTION_OPTIONAL {
            1 => Some(SectionKind::Meta),
            2 => Some(SectionKind::Module),
            3 => Some(SectionKind::Memory),
            4 => Some(SectionKind::Globals),
            5 => Some(SectionKind::Stack),
            6 => Some(SectionKind::Host),
            _ => None,
        }
    }

    /// Lower-case name, as used in messages.
    pub const fn name(self) -> &'static str {
        match self {
            SectionKind::Meta => "meta",
            SectionKind::Module => "module",
            SectionKind::Memory => "memory",
            SectionKind::Globals => "globals",
            SectionKind::Stack => "stack",
            SectionKind::Host => "host",
        }
    }

    /// Largest payload a section of this kind may have.
    pub const fn max_len(self) -> u64 {
        match self {
            SectionKind::Meta => MAX_META_LEN,
            SectionKind::Module => MAX_MODULE_LEN,
            SectionKind::Memory => MAX_MEMORY_SECTION_LEN,
            SectionKind::Globals => MAX_GLOBALS_SECTION_LEN,
            SectionKind::Stack => MAX_STACK_LEN,
            SectionKind::Host => MAX_HOST_LEN,
        }
    }
}

impl std::fmt::Display for SectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which prepare transform made the module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformId {
    /// Transform name.
    pub name: String,
    /// Transform version.
    pub version: String,
}

/// Image metadata (the `meta` section, postcard-encoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Version of Tern that wrote the image.
    pub tern_version: String,
    /// Transform that prepared the module.
    pub transform: TransformId,
    /// Digest of the module before preparation.
    pub original_digest: [u8; 32],
    /// Digest of the prepared module stored in the image.
    pub prepared_digest: [u8; 32],
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Architecture of the host that wrote the image (informative only).
    pub source_arch: String,
    /// Identity of the guest.
    pub guest_id: String,
}

impl Meta {
    /// The metadata's strings with their names, for limit checks.
    pub(crate) fn strings(&self) -> [(&'static str, &str); 5] {
        [
            ("tern version", &self.tern_version),
            ("transform name", &self.transform.name),
            ("transform version", &self.transform.version),
            ("source arch", &self.source_arch),
            ("guest id", &self.guest_id),
        ]
    }
}

/// A global's value; floats are kept as bit patterns so NaNs survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalValue {
    /// `i32`.
    I32(u32),
    /// `i64`.
    I64(u64),
    /// `f32` bits.
    F32(u32),
    /// `f64` bits.
    F64(u64),
    /// `v128`.
    V128(u128),
}

impl GlobalValue {
    /// The wasm value-type byte used in the file (`0x7f` i32 … `0x7b` v128).
    pub const fn type_code(self) -> u8 {
        match self {
            GlobalValue::I32(_) => 0x7f,
            GlobalValue::I64(_) => 0x7e,
            GlobalValue::F32(_) => 0x7d,
            GlobalValue::F64(_) => 0x7c,
            GlobalValue::V128(_) => 0x7b,
        }
    }
}

/// A global, saved by export name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Global {
    /// Export name.
    pub name: String,
    /// Value.
    pub value: GlobalValue,
}

/// Borrowed view used to write an image without copying guest memory.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    /// Metadata.
    pub meta: &'a Meta,
    /// Prepared wasm module.
    pub module: &'a [u8],
    /// Linear memory; its length must be a multiple of [`WASM_PAGE_SIZE`].
    pub memory: &'a [u8],
    /// Globals; names must be unique.
    pub globals: &'a [Global],
    /// Saved guest stack.
    pub stack: &'a [u8],
    /// Host state.
    pub host: &'a [u8],
}

/// A decoded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Metadata.
    pub meta: Meta,
    /// Prepared wasm module.
    pub module: Vec<u8>,
    /// Linear memory, decompressed.
    pub memory: MemoryImage,
    /// Globals in file order.
    pub globals: Vec<Global>,
    /// Saved guest stack.
    pub stack: Vec<u8>,
    /// Host state.
    pub host: Vec<u8>,
    /// Format version of the file: (major, minor).
    pub format: (u16, u16),
}
