//! Error types.

use std::path::PathBuf;

use crate::{SectionKind, FORMAT_MAJOR, FORMAT_MINOR};

/// A boxed error from a dependency (postcard, lz4), kept opaque so this
/// crate's API does not expose those crates' types.
type DepError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an image could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A blob, the memory or the encoded metadata or globals exceed a limit.
    #[error("{what} too large: {len} bytes, limit {limit}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The memory is not a whole number of wasm pages.
    #[error("memory size {len} is not a multiple of 64 KiB")]
    MemoryNotWasmPages {
        /// Memory size in bytes.
        len: u64,
    },
    /// A string is longer than [`MAX_STRING_LEN`](crate::MAX_STRING_LEN).
    #[error("{what} too long: {len} bytes, limit {limit}")]
    StringTooLong {
        /// Which string.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// More than [`MAX_GLOBALS`](crate::MAX_GLOBALS) globals.
    #[error("too many globals: {count}, limit {limit}")]
    TooManyGlobals {
        /// Number of globals.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// Two globals share a name.
    #[error("duplicate global {name:?}")]
    DuplicateGlobal {
        /// The name.
        name: String,
    },
    /// The metadata could not be serialized.
    #[error("cannot encode metadata")]
    MetaEncoding(#[source] DepError),
    /// The output failed.
    #[error("write failed")]
    Write(#[source] std::io::Error),
}

/// Why bytes could not be decoded as an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes do not start with [`MAGIC`](crate::MAGIC).
    #[error("not a Tern image")]
    NotAnImage,
    /// The image is shorter than its header and sections say.
    #[error("truncated image: {actual} bytes, need at least {needed}")]
    Truncated {
        /// Bytes needed (at least).
        needed: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The trailer checksum does not match the content.
    #[error("corrupt image: checksum mismatch")]
    ChecksumMismatch {
        /// Checksum stored in the trailer.
        stored: u64,
        /// Checksum of the content.
        computed: u64,
    },
    /// The major version differs from [`FORMAT_MAJOR`].
    #[error(
        "unsupported image format {major}.{minor}: this build reads {FORMAT_MAJOR}.x \
         (up to {FORMAT_MAJOR}.{FORMAT_MINOR})"
    )]
    UnsupportedVersion {
        /// The image's major version.
        major: u16,
        /// The image's minor version.
        minor: u16,
    },
    /// The header has flag bits this build does not know.
    #[error("unsupported image flags {flags:#x} in format {major}.{minor}")]
    UnsupportedFlags {
        /// All flags of the image.
        flags: u32,
        /// The image's major version.
        major: u16,
        /// The image's minor version.
        minor: u16,
    },
    /// A section of unknown kind is not marked optional.
    #[error(
        "unknown required section kind {kind:#x} in image format {major}.{minor}: \
         this build reads up to {FORMAT_MAJOR}.{FORMAT_MINOR}"
    )]
    UnknownSection {
        /// The section's kind.
        kind: u32,
        /// The image's major version.
        major: u16,
        /// The image's minor version.
        minor: u16,
    },
    /// The header announces more than [`MAX_SECTIONS`](crate::MAX_SECTIONS).
    #[error("too many sections: {count}, limit {limit}")]
    TooManySections {
        /// Announced count.
        count: u32,
        /// The limit.
        limit: u32,
    },
    /// A known section is larger than its limit.
    #[error("{section} section too large: {len} bytes, limit {limit}")]
    SectionTooLarge {
        /// The section.
        section: SectionKind,
        /// Its payload length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A known section appears twice.
    #[error("duplicate {0} section")]
    DuplicateSection(SectionKind),
    /// A required section is absent.
    #[error("missing {0} section")]
    MissingSection(SectionKind),
    /// A value inside a section exceeds a limit (memory size, global count,
    /// string length).
    #[error("{section} section: {what} too large: {value}, limit {limit}")]
    LimitExceeded {
        /// The section.
        section: SectionKind,
        /// What exceeds the limit.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The checksum is valid but the sections do not fill the file exactly.
    #[error("malformed image: {what}")]
    Layout {
        /// What is wrong.
        what: String,
    },
    /// A section's content is invalid.
    #[error("malformed {section} section: {what}")]
    Malformed {
        /// The section.
        section: SectionKind,
        /// What is wrong.
        what: String,
    },
    /// The `meta` payload is not a postcard-encoded [`Meta`](crate::Meta).
    #[error("malformed meta section: undecodable metadata")]
    MetaUndecodable(#[source] DepError),
    /// The buffer given to
    /// [`ImageView::write_memory_into`](crate::ImageView::write_memory_into)
    /// is shorter than the memory.
    #[error("memory destination too small: {len} bytes, need {needed}")]
    DestinationTooSmall {
        /// Memory size.
        needed: u64,
        /// Destination length.
        len: u64,
    },
    /// A memory run's lz4 block is invalid.
    #[error("malformed memory section: bad lz4 data in run at page {first_page}")]
    Lz4 {
        /// First page of the run.
        first_page: u64,
        /// The decompressor's error.
        #[source]
        source: DepError,
    },
}

impl DecodeError {
    pub(crate) fn malformed(section: SectionKind, what: impl Into<String>) -> Self {
        DecodeError::Malformed {
            section,
            what: what.into(),
        }
    }
}

/// Why [`MemoryImage::write_into`](crate::MemoryImage::write_into) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryImageError {
    /// The destination is shorter than the memory.
    #[error("destination too small: {len} bytes, need {needed}")]
    DestinationTooSmall {
        /// Memory size.
        needed: u64,
        /// Destination length.
        len: u64,
    },
    /// A run lies (partly) beyond the memory size.
    #[error("page run at page {first_page} lies outside the memory")]
    RunOutOfBounds {
        /// First page of the run.
        first_page: u64,
    },
    /// A run's length is not a multiple of [`PAGE_SIZE`](crate::PAGE_SIZE).
    #[error("page run at page {first_page} is {len} bytes, not whole pages")]
    RunNotWholePages {
        /// First page of the run.
        first_page: u64,
        /// Its length in bytes.
        len: u64,
    },
}

/// Why [`read_file`](crate::read_file) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be opened.
    #[error("cannot open image {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be read.
    #[error("cannot read image {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit.
    #[error("image {} too large: {len} bytes, limit {limit}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least).
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The file's content is not a valid image.
    #[error("invalid image {}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
}

/// Why [`write_file`](crate::write_file) failed. The destination is left as
/// it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The path has no file name.
    #[error("image path {} has no file name", path.display())]
    InvalidPath {
        /// The path.
        path: PathBuf,
    },
    /// The temporary file could not be created.
    #[error("cannot create temporary file {}", path.display())]
    CreateTemp {
        /// The temporary file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding or writing the image failed.
    #[error("cannot write image {}", path.display())]
    Encode {
        /// The destination.
        path: PathBuf,
        /// What failed.
        #[source]
        source: EncodeError,
    },
    /// The temporary file could not be flushed to disk.
    #[error("cannot sync {}", path.display())]
    Sync {
        /// The temporary file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The temporary file could not be renamed over the destination.
    #[error("cannot rename {} to {}", from.display(), to.display())]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The directory could not be synced after the rename (the image is in
    /// place but may not survive a crash).
    #[error("cannot sync directory {}", path.display())]
    SyncDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
