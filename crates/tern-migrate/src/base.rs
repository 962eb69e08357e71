//! Migrating back with only the difference.
//!
//! A node keeps the image of a guest that left it (its *base*, for a while:
//! see the node's `--keep-departed`). When that guest comes back, the
//! destination loads the base into the arriving guest's memory and sends
//! the source one 16-byte hash per page of it ([`Message::BaseHashes`]);
//! the source then sends only the pages whose hash differs. Comparing
//! content, not history, keeps this correct whatever happened to the guest
//! in between: a page is skipped only when the destination already holds
//! exactly its bytes (up to a 128-bit hash collision).

use crate::pages::PAGE;
use crate::proto::Message;
use crate::MigrateError;

/// Hashes per `BaseHashes` message (4 MiB of hashes, 1 GiB of memory).
pub const HASHES_PER_MESSAGE: usize = 1 << 18;

/// Most pages a base can cover: a wasm32 memory's 4 GiB.
pub const MAX_BASE_PAGES: usize = (tern_image::MAX_MEMORY_BYTES / PAGE as u64) as usize;

/// The 128-bit hash of one page that bases are compared by.
pub fn page_hash(page: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(page)
}

/// The `BaseHashes` messages describing `mem` (a whole number of pages).
pub fn hash_messages(mem: &[u8]) -> Vec<Message> {
    let total = (mem.len() / PAGE) as u32;
    if total == 0 {
        return vec![Message::BaseHashes {
            total: 0,
            first: 0,
            hashes: Vec::new(),
        }];
    }
    mem.chunks(HASHES_PER_MESSAGE * PAGE)
        .enumerate()
        .map(|(n, chunk)| {
            let mut hashes = Vec::with_capacity(chunk.len() / PAGE * 16);
            for page in chunk.chunks_exact(PAGE) {
                hashes.extend_from_slice(&page_hash(page).to_le_bytes());
            }
            Message::BaseHashes {
                total,
                first: (n * HASHES_PER_MESSAGE) as u32,
                hashes,
            }
        })
        .collect()
}

/// What the destination holds, as the source sees it.
#[derive(Debug, Default)]
pub struct Base {
    hashes: Vec<u128>,
}

impl Base {
    /// Pages the base covers.
    pub fn pages(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// True when page `index` of the destination already holds `page`.
    pub fn holds(&self, index: u32, page: &[u8]) -> bool {
        self.hashes
            .get(index as usize)
            .is_some_and(|h| *h == page_hash(page))
    }

    /// Receives the base from `recv` (one or more `BaseHashes` messages).
    pub fn receive(
        mut recv: impl FnMut() -> Result<Message, MigrateError>,
    ) -> Result<Base, MigrateError> {
        let mut hashes: Vec<u128> = Vec::new();
        loop {
            let (total, first, bytes) = match recv()? {
                Message::BaseHashes {
                    total,
                    first,
                    hashes,
                } => (total as usize, first as usize, hashes),
                other => return Err(crate::proto::unexpected(&other, "BaseHashes")),
            };
            // The peer's count bounds what is kept: never more than a
            // memory can hold, whatever it announces.
            if total > MAX_BASE_PAGES {
                return Err(MigrateError::Protocol(format!(
                    "base of {total} pages announced, more than a memory of \
                     {MAX_BASE_PAGES} pages"
                )));
            }
            if first != hashes.len() || bytes.len() % 16 != 0 {
                return Err(MigrateError::Protocol(format!(
                    "base hashes out of order: page {first} after {} pages, {} bytes",
                    hashes.len(),
                    bytes.len()
                )));
            }
            if bytes.is_empty() && total > 0 {
                return Err(MigrateError::Protocol("empty base hash message".into()));
            }
            if hashes.len() + bytes.len() / 16 > total {
                return Err(MigrateError::Protocol(format!(
                    "more base hashes than the {total} pages announced"
                )));
            }
            hashes.extend(
                bytes
                    .chunks_exact(16)
                    .map(|h| u128::from_le_bytes(h.try_into().expect("16-byte chunk"))),
            );
            if hashes.len() == total {
                return Ok(Base { hashes });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_over_several_messages() {
        let pages = HASHES_PER_MESSAGE + 3;
        let mut mem = vec![0u8; pages * PAGE];
        for (i, page) in mem.chunks_mut(PAGE).enumerate() {
            page[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        let msgs = hash_messages(&mem);
        assert_eq!(msgs.len(), 2);
        let mut it = msgs.into_iter();
        let base = Base::receive(|| Ok(it.next().unwrap())).unwrap();
        assert_eq!(base.pages(), pages as u64);
        assert!(base.holds(5, &mem[5 * PAGE..6 * PAGE]));
        assert!(!base.holds(5, &mem[6 * PAGE..7 * PAGE]));
        assert!(!base.holds(pages as u32, &mem[..PAGE]));
    }

    #[test]
    fn no_base_is_one_empty_message() {
        let mut it = hash_messages(&[]).into_iter();
        let base = Base::receive(|| Ok(it.next().unwrap())).unwrap();
        assert_eq!(base.pages(), 0);
        assert!(!base.holds(0, &[0u8; PAGE]));
    }

    #[test]
    fn out_of_order_or_overlong_hashes_are_refused() {
        let m = |total, first, n: usize| Message::BaseHashes {
            total,
            first,
            hashes: vec![0; n],
        };
        let mut it = vec![m(4, 1, 16)].into_iter();
        assert!(Base::receive(|| Ok(it.next().unwrap())).is_err());
        let mut it = vec![m(1, 0, 32)].into_iter();
        assert!(Base::receive(|| Ok(it.next().unwrap())).is_err());
        let mut it = vec![m(2, 0, 15)].into_iter();
        assert!(Base::receive(|| Ok(it.next().unwrap())).is_err());
    }

    #[test]
    fn a_base_larger_than_any_memory_is_refused_up_front() {
        // A peer announcing u32::MAX pages could otherwise stream 64 GiB of
        // hashes into the source, 8 MiB frame after 8 MiB frame.
        let mut sent = 0;
        let result = Base::receive(|| {
            if sent == 3 {
                return Err(MigrateError::Receive(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            sent += 1;
            Ok(Message::BaseHashes {
                total: u32::MAX,
                first: ((sent - 1) * HASHES_PER_MESSAGE) as u32,
                hashes: vec![0; HASHES_PER_MESSAGE * 16],
            })
        });
        assert!(matches!(result, Err(MigrateError::Protocol(_))));
        assert_eq!(sent, 1, "hashes kept past an impossible total");
        // The largest real memory still fits.
        let total = MAX_BASE_PAGES as u32;
        let mut first = 0u32;
        let base = Base::receive(|| {
            let n = HASHES_PER_MESSAGE as u32;
            let msg = Message::BaseHashes {
                total,
                first,
                hashes: vec![0; n as usize * 16],
            };
            first += n;
            Ok(msg)
        })
        .unwrap();
        assert_eq!(base.pages(), MAX_BASE_PAGES as u64);
    }
}
