//! Bounds-checked little-endian reading and checksummed writing.

use std::io::{self, BufWriter, Write};

use xxhash_rust::xxh3::Xxh3;

use crate::{DecodeError, SectionKind};

/// Reads little-endian fields from a section payload; running out of bytes is
/// a [`DecodeError::Malformed`] naming the section and the field.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    section: SectionKind,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], section: SectionKind) -> Self {
        Reader {
            rest: bytes,
            section,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(DecodeError::malformed(
                self.section,
                format!("ends inside {what}"),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let section = self.section;
        self.bytes(N, what)?
            .first_chunk::<N>()
            .copied()
            .ok_or_else(|| DecodeError::malformed(section, format!("ends inside {what}")))
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u128(&mut self, what: &str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array(what)?))
    }
}

/// Little-endian fixed-width field at `offset` of `bytes`, if present.
pub(crate) fn field<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..)?.first_chunk::<N>().copied()
}

/// A buffered writer that hashes and counts everything written through it.
pub(crate) struct HashWriter<W: Write> {
    inner: BufWriter<W>,
    hasher: Xxh3,
    written: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner: BufWriter::with_capacity(256 * 1024, inner),
            hasher: Xxh3::new(),
            written: 0,
        }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the trailer (the checksum of everything so far), flushes and
    /// returns the total number of bytes written.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        let checksum = self.hasher.digest();
        self.inner.write_all(&checksum.to_le_bytes())?;
        self.inner.flush()?;
        Ok(self.written + crate::TRAILER_LEN as u64)
    }
}
