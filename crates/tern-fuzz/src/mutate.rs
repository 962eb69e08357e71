//! A small deterministic mutator for the fixed-seed runs on stable Rust:
//! bit flips, byte edits, insertions and deletions, length-field tweaks
//! and splices between seeds, driven by a seeded PRNG so that a failing
//! run can be replayed exactly (`TERN_FUZZ_SEED`).

/// SplitMix64: tiny, fast and good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `count` random bytes.
    pub fn bytes(&mut self, count: usize) -> Vec<u8> {
        (0..count).map(|_| self.next_u64() as u8).collect()
    }
}

/// Values that sit on the edges decoders check: zero, one, powers of two
/// and their neighbours, the frame and memory limits, all ones.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    4095,
    4096,
    4097,
    0xffff,
    0x1_0000,
    256,
    257,
    1 << 20,
    (8 << 20) - 1,
    8 << 20,
    (8 << 20) + 1,
    1 << 30,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX as u64 - 1,
    u32::MAX as u64,
    1 << 32,
    (1 << 32) + 0x1_0000,
    i64::MAX as u64,
    u64::MAX - 1,
    u64::MAX,
];

/// A mutation of `input`: one to four edits stacked, some taking bytes
/// from other members of `corpus`. The result is at most `max_len` bytes.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        edit(rng, &mut out, corpus);
    }
    out.truncate(max_len);
    out
}

fn edit(rng: &mut Rng, out: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = out.len();
    match rng.below(10) {
        // Flip one bit.
        0 | 1 if len > 0 => {
            let at = rng.below(len);
            out[at] ^= 1 << rng.below(8);
        }
        // Set a byte to a random or an edge value.
        2 if len > 0 => {
            let at = rng.below(len);
            out[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => 0x80,
                _ => rng.next_u64() as u8,
            };
        }
        // Insert a few random bytes.
        3 => {
            let at = rng.below(len + 1);
            let count = 1 + rng.below(16);
            let bytes = rng.bytes(count);
            out.splice(at..at, bytes);
        }
        // Delete a range.
        4 if len > 0 => {
            let at = rng.below(len);
            let count = 1 + rng.below((len - at).min(64));
            out.drain(at..at + count);
        }
        // Duplicate a range elsewhere.
        5 if len > 0 => {
            let from = rng.below(len);
            let count = 1 + rng.below((len - from).min(256));
            let chunk = out[from..from + count].to_vec();
            let at = rng.below(len + 1);
            out.splice(at..at, chunk);
        }
        // Rewrite what may be a length or count field: a little-endian
        // integer of 1, 2, 4 or 8 bytes set to an edge value or nudged.
        6 | 7 => {
            let width = 1 << rng.below(4);
            if len < width {
                return;
            }
            let at = rng.below(len - width + 1);
            let field = &mut out[at..at + width];
            let mut raw = [0u8; 8];
            raw[..width].copy_from_slice(field);
            let old = u64::from_le_bytes(raw);
            let new = if rng.below(2) == 0 {
                INTERESTING[rng.below(INTERESTING.len())]
            } else {
                let delta = 1 + rng.below(16) as u64;
                if rng.below(2) == 0 {
                    old.wrapping_add(delta)
                } else {
                    old.wrapping_sub(delta)
                }
            };
            field.copy_from_slice(&new.to_le_bytes()[..width]);
        }
        // Splice: keep a prefix, continue with another seed's suffix.
        8 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            out.truncate(cut);
            out.extend_from_slice(&other[from..]);
        }
        // Truncate.
        _ => {
            let keep = rng.below(len + 1);
            out.truncate(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_mutations() {
        let corpus = vec![b"hello world".to_vec(), vec![0u8; 40]];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|i| mutate(&mut rng, &corpus[i % 2], &corpus, 64))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(7).iter().all(|m| m.len() <= 64));
        // Most mutations change the input.
        let changed = run(9)
            .iter()
            .enumerate()
            .filter(|(i, m)| **m != corpus[i % 2])
            .count();
        assert!(
            changed > 150,
            "only {changed} of 200 mutations changed anything"
        );
    }
}
