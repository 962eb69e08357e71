//! Round trips, determinism, corruption and limits of the image format.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use proptest::prelude::*;
use tern_image::{
    decode, encode, encode_with, inspect, read_file, read_file_with_limit, view, write_file,
    DecodeError, EncodeError, EncodeOptions, Global, GlobalValue, ImageRef, MemoryImage,
    MemoryImageError, Meta, PageRun, ReadError, SectionKind, TransformId, WriteError, FORMAT_MAJOR,
    FORMAT_MINOR, HEADER_LEN, MAGIC, PAGE_SIZE, SECTION_HEADER_LEN, SECTION_OPTIONAL, TRAILER_LEN,
    WASM_PAGE_SIZE,
};

/// Small deterministic generator for seeded loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn meta() -> Meta {
    Meta {
        tern_version: "0.1.0".into(),
        transform: TransformId {
            name: "asyncify".into(),
            version: "2".into(),
        },
        original_digest: [0xaa; 32],
        prepared_digest: [0xbb; 32],
        created_unix_ms: 1_720_000_000_123,
        source_arch: "aarch64".into(),
        guest_id: "guest-42".into(),
    }
}

fn globals() -> Vec<Global> {
    vec![
        Global {
            name: "__stack_pointer".into(),
            value: GlobalValue::I32(65536),
        },
        Global {
            name: "big".into(),
            value: GlobalValue::I64(u64::MAX - 1),
        },
        Global {
            name: "nan".into(),
            value: GlobalValue::F32(0x7fc0_0001),
        },
        Global {
            name: "pi".into(),
            value: GlobalValue::F64(std::f64::consts::PI.to_bits()),
        },
        Global {
            name: "vec".into(),
            value: GlobalValue::V128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        },
    ]
}

fn image_ref<'a>(meta: &'a Meta, memory: &'a [u8], globals: &'a [Global]) -> ImageRef<'a> {
    ImageRef {
        meta,
        module: b"\0asm\x01\0\0\0module bytes",
        memory,
        globals,
        stack: b"stack frames",
        host: b"host state",
    }
}

fn encode_vec(image: &ImageRef<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let stats = encode(image, &mut out).expect("encode");
    assert_eq!(stats.bytes_written, out.len() as u64);
    out
}

fn assert_round_trip(image: &ImageRef<'_>) -> Vec<u8> {
    let bytes = encode_vec(image);
    let decoded = decode(&bytes).expect("decode");
    assert_eq!(&decoded.meta, image.meta);
    assert_eq!(decoded.module, image.module);
    assert_eq!(decoded.globals, image.globals);
    assert_eq!(decoded.stack, image.stack);
    assert_eq!(decoded.host, image.host);
    assert_eq!(decoded.format, (FORMAT_MAJOR, FORMAT_MINOR));
    assert_eq!(decoded.memory, MemoryImage::from_memory(image.memory));
    assert_eq!(decoded.memory.to_bytes().unwrap(), image.memory);
    let view = view(&bytes).expect("view");
    assert_eq!(view.memory_size(), image.memory.len() as u64);
    assert_eq!(view.pages_present(), decoded.memory.pages_present());
    let mut direct = vec![0u8; image.memory.len() + WASM_PAGE_SIZE];
    view.write_memory_into(&mut direct)
        .expect("write_memory_into");
    assert!(direct[..image.memory.len()] == *image.memory);
    assert!(direct[image.memory.len()..].iter().all(|&b| b == 0));
    if !image.memory.is_empty() {
        let mut short = vec![0u8; image.memory.len() - 1];
        assert!(matches!(
            view.write_memory_into(&mut short),
            Err(DecodeError::DestinationTooSmall { .. })
        ));
    }
    let summary = inspect(&bytes).expect("inspect");
    assert_eq!(summary.total_bytes, bytes.len() as u64);
    assert_eq!(summary.memory.pages_present, decoded.memory.pages_present());
    assert_eq!(summary.memory.size_bytes, image.memory.len() as u64);
    bytes
}

/// A memory of `wasm_pages` pages with a mix of zero, constant, text-like
/// and random 4 KiB pages.
fn mixed_memory(wasm_pages: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut mem = vec![0u8; wasm_pages * WASM_PAGE_SIZE];
    for page in mem.chunks_mut(PAGE_SIZE) {
        match rng.below(5) {
            0 | 1 => {}
            2 => page.fill(0xff),
            3 => {
                for (i, b) in page.iter_mut().enumerate() {
                    *b = b"hello tern "[i % 11];
                }
            }
            _ => rng.fill(page),
        }
    }
    mem
}

#[test]
fn round_trip_various_memories() {
    let meta = meta();
    let globals = globals();
    let mut random = vec![0u8; 3 * WASM_PAGE_SIZE];
    Rng(7).fill(&mut random);
    let mut sparse = vec![0u8; 40 * WASM_PAGE_SIZE];
    sparse[0] = 1;
    sparse[PAGE_SIZE * 255 + 17] = 2; // last page of the first 1 MiB group
    sparse[PAGE_SIZE * 256] = 3; // first page of the next one
    let last = sparse.len() - 1;
    sparse[last] = 4;
    let memories: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0; WASM_PAGE_SIZE],
        vec![0xff; WASM_PAGE_SIZE],
        vec![0x5a; 64 * WASM_PAGE_SIZE], // runs longer than 256 pages
        random,
        sparse,
        mixed_memory(17, 1),
        mixed_memory(100, 2), // > 4 MiB: compressed on several threads
    ];
    for memory in &memories {
        assert_round_trip(&image_ref(&meta, memory, &globals));
    }
}

#[test]
fn empty_blobs_and_no_globals_round_trip() {
    let meta = Meta {
        tern_version: String::new(),
        transform: TransformId {
            name: String::new(),
            version: String::new(),
        },
        original_digest: [0; 32],
        prepared_digest: [0; 32],
        created_unix_ms: 0,
        source_arch: String::new(),
        guest_id: String::new(),
    };
    let image = ImageRef {
        meta: &meta,
        module: &[],
        memory: &[],
        globals: &[],
        stack: &[],
        host: &[],
    };
    assert_round_trip(&image);
}

#[test]
fn compression_choice() {
    let meta = meta();
    let mut random = vec![0u8; 16 * WASM_PAGE_SIZE];
    Rng(99).fill(&mut random);
    let mut out = Vec::new();
    let stats = encode(&image_ref(&meta, &random, &[]), &mut out).unwrap();
    assert_eq!(stats.pages_raw, 256);
    assert_eq!(stats.pages_lz4, 0);

    let text: Vec<u8> = (0..16 * WASM_PAGE_SIZE)
        .map(|i| (i % 7) as u8 + 1)
        .collect();
    let mut out = Vec::new();
    let stats = encode(&image_ref(&meta, &text, &[]), &mut out).unwrap();
    assert_eq!(stats.pages_lz4, 256);
    assert_eq!(stats.runs, 1, "256 consecutive pages make one run");
    assert!(out.len() < text.len() / 20);
}

#[test]
fn zero_pages_are_not_stored() {
    let meta = meta();
    let memory = vec![0u8; 64 << 20];
    let mut out = Vec::new();
    let stats = encode(&image_ref(&meta, &memory, &[]), &mut out).unwrap();
    assert_eq!(stats.pages_present, 0);
    assert_eq!(stats.runs, 0);
    assert!(out.len() < 1024, "{} bytes", out.len());
    let decoded = decode(&out).unwrap();
    assert_eq!(decoded.memory.size_bytes, 64 << 20);
    assert!(decoded.memory.runs.is_empty());
}

#[test]
fn output_is_deterministic_across_thread_counts() {
    let meta = meta();
    let globals = globals();
    let memory = mixed_memory(160, 3); // 10 MiB
    let image = image_ref(&meta, &memory, &globals);
    let mut reference = Vec::new();
    let options = EncodeOptions {
        threads: NonZeroUsize::new(1),
    };
    encode_with(&image, &mut reference, &options).unwrap();
    for threads in [2, 3, 8] {
        let mut out = Vec::new();
        let options = EncodeOptions {
            threads: NonZeroUsize::new(threads),
        };
        encode_with(&image, &mut out, &options).unwrap();
        assert!(out == reference, "{threads} threads gave different bytes");
    }
    let mut again = Vec::new();
    encode(&image, &mut again).unwrap();
    assert!(again == reference);
}

// ---- corruption ----

fn small_image() -> Vec<u8> {
    let meta = meta();
    let globals = globals();
    let mut memory = vec![0u8; 2 * WASM_PAGE_SIZE];
    memory[5000..5100].fill(9);
    Rng(5).fill(&mut memory[70_000..74_000]);
    encode_vec(&image_ref(&meta, &memory, &globals))
}

#[test]
fn flipping_any_byte_is_detected() {
    let bytes = small_image();
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[pos] ^= mask;
            assert!(
                decode(&bad).is_err(),
                "flip {mask:#x} at {pos} not detected"
            );
            assert!(inspect(&bad).is_err());
        }
    }
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let bytes = small_image();
    for len in 0..bytes.len() {
        match decode(&bytes[..len]) {
            Err(DecodeError::Truncated { actual, needed }) => {
                assert_eq!(actual, len as u64);
                assert!(needed > actual);
            }
            other => panic!("truncation to {len} gave {other:?}"),
        }
    }
}

#[test]
fn random_bit_flips_truncations_and_garbage_never_pass() {
    let meta = meta();
    let globals = globals();
    let memory = mixed_memory(6, 11);
    let bytes = encode_vec(&image_ref(&meta, &memory, &globals));
    let mut rng = Rng(0x1234_5678);
    for _ in 0..3000 {
        let mut bad = bytes.clone();
        let bit = rng.below(bad.len() * 8);
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(decode(&bad).is_err());
    }
    for _ in 0..500 {
        let len = rng.below(bytes.len());
        assert!(decode(&bytes[..len]).is_err());
        let mut longer = bytes.clone();
        longer.extend((0..=rng.below(20)).map(|_| rng.next() as u8));
        assert!(decode(&longer).is_err());
    }
    for _ in 0..2000 {
        let mut garbage = vec![0u8; rng.below(4096)];
        rng.fill(&mut garbage);
        if rng.below(2) == 0 && garbage.len() >= 8 {
            garbage[..8].copy_from_slice(&MAGIC);
        }
        assert!(decode(&garbage).is_err());
    }
}

/// xxh3-64, the trailer checksum (the crate's own dependency).
fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Rewrites the trailer so the checksum matches whatever the content is.
fn reseal(bytes: &mut Vec<u8>) {
    let body = bytes.len() - TRAILER_LEN;
    bytes.truncate(body);
    let sum = xxh3(bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
}

#[test]
fn resealed_mutations_never_panic() {
    // Mutations whose checksum is fixed up reach the section parsers.
    let meta = meta();
    let globals = globals();
    let memory = mixed_memory(4, 21);
    let bytes = encode_vec(&image_ref(&meta, &memory, &globals));
    let mut rng = Rng(0xfeed);
    let mut rejected = 0;
    for round in 0..4000 {
        let mut bad = bytes.clone();
        let body = bad.len() - TRAILER_LEN;
        for _ in 0..=rng.below(4) {
            let pos = rng.below(body);
            bad[pos] = match rng.below(3) {
                0 => bad[pos] ^ (1 << rng.below(8)),
                1 => rng.next() as u8,
                _ => [0, 0xff, 0x80, 0x7f][rng.below(4)],
            };
        }
        if round % 7 == 0 {
            // Cut the body somewhere.
            let cut = HEADER_LEN + rng.below(body - HEADER_LEN);
            bad.drain(cut..body);
        }
        reseal(&mut bad);
        if decode(&bad).is_err() {
            rejected += 1;
        }
        let _ = inspect(&bad);
    }
    // Most bytes are raw page data, where a change is still a valid image.
    assert!(rejected > 400, "only {rejected} mutations rejected");
}

// ---- hand-built images ----

struct Section {
    kind: u32,
    payload: Vec<u8>,
}

fn sections_of(bytes: &[u8]) -> Vec<Section> {
    inspect(bytes)
        .unwrap()
        .sections
        .iter()
        .map(|s| {
            let start = s.offset as usize + SECTION_HEADER_LEN;
            Section {
                kind: s.kind,
                payload: bytes[start..start + s.payload_bytes as usize].to_vec(),
            }
        })
        .collect()
}

fn build(major: u16, minor: u16, flags: u32, sections: &[Section]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for s in sections {
        out.extend_from_slice(&s.kind.to_le_bytes());
        out.extend_from_slice(&(s.payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&s.payload);
    }
    let sum = xxh3(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn with_payload(bytes: &[u8], kind: SectionKind, payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut sections = sections_of(bytes);
    if let Some(s) = sections.iter_mut().find(|s| s.kind == kind.id()) {
        payload(&mut s.payload);
    }
    build(FORMAT_MAJOR, FORMAT_MINOR, 0, &sections)
}

#[test]
fn rebuilding_an_image_gives_the_same_bytes() {
    let bytes = small_image();
    assert_eq!(
        build(FORMAT_MAJOR, FORMAT_MINOR, 0, &sections_of(&bytes)),
        bytes
    );
}

#[test]
fn wrong_magic_is_not_an_image() {
    let mut bytes = small_image();
    bytes[0] = b'X';
    let err = decode(&bytes).unwrap_err();
    assert!(matches!(err, DecodeError::NotAnImage));
    assert_eq!(err.to_string(), "not a Tern image");
    assert!(matches!(decode(b"hello"), Err(DecodeError::NotAnImage)));
    assert!(matches!(
        decode(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
        Err(DecodeError::NotAnImage)
    ));
    assert!(matches!(
        decode(b"TERN"),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn wrong_major_version_is_unsupported() {
    let bytes = small_image();
    let bumped = build(FORMAT_MAJOR + 1, 3, 0, &sections_of(&bytes));
    let err = decode(&bumped).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnsupportedVersion { major, minor: 3 } if major == FORMAT_MAJOR + 1)
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}.3", FORMAT_MAJOR + 1)), "{msg}");
    assert!(
        msg.contains(&format!("{FORMAT_MAJOR}.{FORMAT_MINOR}")),
        "{msg}"
    );
    // Even with a broken checksum the version is what gets reported.
    let mut raw = bytes.clone();
    raw[8..10].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(
        decode(&raw),
        Err(DecodeError::UnsupportedVersion { major: 0, .. })
    ));
}

#[test]
fn checksum_mismatch_message() {
    let mut bytes = small_image();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    let err = decode(&bytes).unwrap_err();
    assert!(matches!(err, DecodeError::ChecksumMismatch { .. }));
    assert_eq!(err.to_string(), "corrupt image: checksum mismatch");
    let mut bytes = small_image();
    bytes[HEADER_LEN + SECTION_HEADER_LEN + 3] ^= 0x10; // inside meta
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::ChecksumMismatch { .. })
    ));
}

#[test]
fn newer_minor_skips_optional_unknown_sections_only() {
    let bytes = small_image();
    let mut sections = sections_of(&bytes);
    sections.insert(
        2,
        Section {
            kind: SECTION_OPTIONAL | 0x77,
            payload: b"future data".to_vec(),
        },
    );
    let newer = build(FORMAT_MAJOR, FORMAT_MINOR + 1, 0, &sections);
    let image = decode(&newer).expect("optional section skipped");
    assert_eq!(image.format, (FORMAT_MAJOR, FORMAT_MINOR + 1));
    assert_eq!(image.host, b"host state");
    let summary = inspect(&newer).unwrap();
    assert_eq!(summary.sections.len(), 7);
    assert!(summary.sections[2].optional && summary.sections[2].known.is_none());

    sections[2].kind = 0x77;
    let required = build(FORMAT_MAJOR, FORMAT_MINOR + 1, 0, &sections);
    let err = decode(&required).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnknownSection { kind: 0x77, .. }),
        "{err:?}"
    );

    // Fields appended to meta by a newer minor are ignored; not by this one.
    let mut sections = sections_of(&bytes);
    sections[0].payload.extend_from_slice(b"new field");
    assert!(decode(&build(FORMAT_MAJOR, FORMAT_MINOR + 1, 0, &sections)).is_ok());
    assert!(matches!(
        decode(&build(FORMAT_MAJOR, FORMAT_MINOR, 0, &sections)),
        Err(DecodeError::Malformed {
            section: SectionKind::Meta,
            ..
        })
    ));

    // Unknown flags are never ignored.
    let flagged = build(FORMAT_MAJOR, FORMAT_MINOR, 4, &sections_of(&bytes));
    assert!(matches!(
        decode(&flagged),
        Err(DecodeError::UnsupportedFlags { flags: 4, .. })
    ));
}

#[test]
fn missing_and_duplicate_sections() {
    let bytes = small_image();
    let mut sections = sections_of(&bytes);
    let stack = sections.remove(3);
    assert_eq!(stack.kind, SectionKind::Stack.id());
    assert!(matches!(
        decode(&build(FORMAT_MAJOR, FORMAT_MINOR, 0, &sections)),
        Err(DecodeError::MissingSection(SectionKind::Stack))
    ));
    let mut sections = sections_of(&bytes);
    let dup = Section {
        kind: SectionKind::Module.id(),
        payload: Vec::new(),
    };
    sections.push(dup);
    assert!(matches!(
        decode(&build(FORMAT_MAJOR, FORMAT_MINOR, 0, &sections)),
        Err(DecodeError::DuplicateSection(SectionKind::Module))
    ));
}

#[test]
fn oversize_length_fields_are_rejected_before_allocating() {
    let bytes = small_image();
    // A module section claiming 2 GiB, checksum fixed: rejected by limit.
    let mut huge = bytes.clone();
    let module_len_at = inspect(&bytes).unwrap().sections[1].offset as usize + 4;
    huge[module_len_at..module_len_at + 8].copy_from_slice(&(2u64 << 30).to_le_bytes());
    reseal(&mut huge);
    let err = decode(&huge).unwrap_err();
    assert!(
        matches!(err, DecodeError::SectionTooLarge { section: SectionKind::Module, len, .. } if len == 2 << 30),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "module section too large: 2147483648 bytes, limit 1073741824"
    );

    // Section count beyond the limit.
    let mut many = bytes.clone();
    many[16..20].copy_from_slice(&100_000u32.to_le_bytes());
    reseal(&mut many);
    assert!(matches!(
        decode(&many),
        Err(DecodeError::TooManySections { count: 100_000, .. })
    ));

    // Memory size beyond 4 GiB.
    let big_memory = with_payload(&bytes, SectionKind::Memory, |p| {
        p[..8].copy_from_slice(&(8u64 << 30).to_le_bytes())
    });
    assert!(matches!(
        decode(&big_memory),
        Err(DecodeError::LimitExceeded {
            section: SectionKind::Memory,
            what: "memory size",
            ..
        })
    ));

    // Global count beyond the limit, and one the payload cannot hold.
    for (count, limit_error) in [(2_000_000u32, true), (900_000, false)] {
        let many_globals = with_payload(&bytes, SectionKind::Globals, |p| {
            p[..4].copy_from_slice(&count.to_le_bytes())
        });
        let err = decode(&many_globals).unwrap_err();
        if limit_error {
            assert!(
                matches!(
                    err,
                    DecodeError::LimitExceeded {
                        what: "global count",
                        ..
                    }
                ),
                "{err:?}"
            );
        } else {
            assert!(
                matches!(
                    err,
                    DecodeError::Malformed {
                        section: SectionKind::Globals,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    // A global name longer than 64 KiB.
    let long_name = with_payload(&bytes, SectionKind::Globals, |p| {
        p[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes())
    });
    assert!(matches!(
        decode(&long_name),
        Err(DecodeError::LimitExceeded {
            what: "global name length",
            ..
        })
    ));
}

/// The memory payload of `small_image` and the offset of its first run.
fn memory_runs_case(edit: impl FnOnce(&mut Vec<u8>)) -> Result<tern_image::Image, DecodeError> {
    decode(&with_payload(&small_image(), SectionKind::Memory, edit))
}

#[test]
fn malformed_memory_runs_are_rejected() {
    // Layout of the first run header: size u64 at 0, then first_page u64
    // at 8, page_count u32 at 16, encoding u8 at 20, length u32 at 21.
    let check = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let err = memory_runs_case(|p| edit(p)).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Malformed {
                    section: SectionKind::Memory,
                    ..
                } | DecodeError::Lz4 { .. }
            ),
            "{name}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("malformed memory section: "),
            "{name}: {msg}"
        );
        assert!(!msg.ends_with('.') && !msg.contains('\n'), "{msg}");
    };
    check("size not wasm pages", &|p| {
        p[..8].copy_from_slice(&4096u64.to_le_bytes())
    });
    check("page count 0", &|p| {
        p[16..20].copy_from_slice(&0u32.to_le_bytes())
    });
    check("page count 300", &|p| {
        p[16..20].copy_from_slice(&300u32.to_le_bytes())
    });
    check("beyond size", &|p| {
        p[8..16].copy_from_slice(&1000u64.to_le_bytes())
    });
    check("bad encoding", &|p| p[20] = 9);
    check("raw length", &|p| {
        let len = u32::from_le_bytes(p[21..25].try_into().unwrap());
        p[21..25].copy_from_slice(&(len + 1).to_le_bytes());
    });
    check("cut run", &|p| p.truncate(p.len() - 1));
    check("overlap", &|p| {
        // Duplicate the first run at the end: it then precedes the last one.
        let first_run_len = 17 + u32::from_le_bytes(p[21..25].try_into().unwrap()) as usize;
        let run = p[8..8 + first_run_len].to_vec();
        p.extend_from_slice(&run);
    });
}

#[test]
fn corrupt_run_in_large_memory_is_found_by_parallel_decode() {
    let meta = meta();
    let memory: Vec<u8> = (0..8 << 20).map(|i| (i % 13) as u8 + 1).collect();
    let bytes = encode_vec(&image_ref(&meta, &memory, &[]));
    let edited = with_payload(&bytes, SectionKind::Memory, |p| {
        // Find the last run and replace its lz4 block by one that decodes
        // to a single byte (a token of one literal).
        let mut at = 8;
        let mut last = at;
        while at < p.len() {
            last = at;
            at += 17 + u32::from_le_bytes(p[at + 13..at + 17].try_into().unwrap()) as usize;
        }
        assert_eq!(p[last + 12], 1, "last run is lz4");
        p.truncate(last + 17);
        p[last + 13..last + 17].copy_from_slice(&2u32.to_le_bytes());
        p.extend_from_slice(&[0x10, 0xaa]);
    });
    let v = view(&edited).unwrap();
    let mut dst = vec![0u8; memory.len()];
    let err = v.write_memory_into(&mut dst).unwrap_err();
    assert!(err.to_string().contains("lz4 data gives 1 bytes"), "{err}");
    let err2 = v.decode_memory().unwrap_err();
    assert_eq!(err.to_string(), err2.to_string());
    assert!(decode(&edited).is_err());
}

#[test]
fn bad_lz4_data_is_rejected() {
    let meta = meta();
    let memory: Vec<u8> = (0..WASM_PAGE_SIZE).map(|i| (i % 13) as u8 + 1).collect();
    let bytes = encode_vec(&image_ref(&meta, &memory, &[]));
    assert_eq!(inspect(&bytes).unwrap().memory.pages_lz4, 16);
    let mut rng = Rng(77);
    for _ in 0..300 {
        let edited = with_payload(&bytes, SectionKind::Memory, |p| {
            let pos = 25 + rng.below(p.len() - 25);
            p[pos] ^= 1 << rng.below(8);
        });
        if let Ok(image) = decode(&edited) {
            // A change that still decompresses must show in the memory.
            assert_ne!(image.memory.to_bytes().unwrap(), memory);
        }
    }
}

// ---- encode-side validation ----

#[test]
fn encode_rejects_what_decode_would_refuse() {
    let meta = meta();
    let mut out = Vec::new();
    let odd = vec![1u8; PAGE_SIZE];
    let err = encode(&image_ref(&meta, &odd, &[]), &mut out).unwrap_err();
    assert!(matches!(err, EncodeError::MemoryNotWasmPages { len: 4096 }));
    assert!(out.is_empty());

    let dup = [globals()[0].clone(), globals()[0].clone()];
    let err = encode(&image_ref(&meta, &[], &dup), &mut out).unwrap_err();
    assert!(matches!(err, EncodeError::DuplicateGlobal { .. }));

    let mut long = meta.clone();
    long.guest_id = "x".repeat(64 * 1024 + 1);
    let err = encode(&image_ref(&long, &[], &[]), &mut out).unwrap_err();
    assert!(matches!(
        err,
        EncodeError::StringTooLong {
            what: "guest id",
            ..
        }
    ));

    let host = vec![0u8; (64 << 20) + 1];
    let mut image = image_ref(&meta, &[], &[]);
    image.host = &host;
    let err = encode(&image, &mut out).unwrap_err();
    assert!(matches!(
        err,
        EncodeError::TooLarge {
            what: "host state",
            ..
        }
    ));
    assert!(out.is_empty());
}

#[test]
fn failing_writer_reports_write_error() {
    struct Broken(usize);
    impl std::io::Write for Broken {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 < buf.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let meta = meta();
    let memory = mixed_memory(8, 4);
    let err = encode(&image_ref(&meta, &memory, &[]), Broken(1000)).unwrap_err();
    assert!(matches!(err, EncodeError::Write(_)));
    assert_eq!(err.to_string(), "write failed");
}

// ---- MemoryImage ----

#[test]
fn memory_image_helpers() {
    let mut mem = vec![0u8; 5 * PAGE_SIZE + 100];
    mem[PAGE_SIZE] = 1;
    mem[2 * PAGE_SIZE + 5] = 2;
    mem[4 * PAGE_SIZE + 1] = 3;
    mem[5 * PAGE_SIZE + 99] = 4; // partial last page
    let image = MemoryImage::from_memory(&mem);
    assert_eq!(image.runs.len(), 2);
    assert_eq!(image.runs[0].first_page, 1);
    assert_eq!(image.runs[0].data.len(), 2 * PAGE_SIZE);
    assert_eq!(image.runs[1].first_page, 4);
    assert_eq!(image.runs[1].data.len(), 2 * PAGE_SIZE);
    assert_eq!(image.pages_present(), 4);
    assert_eq!(image.to_bytes().unwrap(), mem);

    let mut small = vec![0u8; 10];
    assert!(matches!(
        image.write_into(&mut small),
        Err(MemoryImageError::DestinationTooSmall { .. })
    ));
    let outside = MemoryImage {
        size_bytes: PAGE_SIZE as u64,
        runs: vec![PageRun {
            first_page: 1,
            data: vec![1; PAGE_SIZE],
        }],
    };
    assert!(matches!(
        outside.write_into(&mut vec![0; 2 * PAGE_SIZE]),
        Err(MemoryImageError::RunOutOfBounds { first_page: 1 })
    ));
    let ragged = MemoryImage {
        size_bytes: 2 * PAGE_SIZE as u64,
        runs: vec![PageRun {
            first_page: 0,
            data: vec![1; 10],
        }],
    };
    assert!(matches!(
        ragged.write_into(&mut vec![0; 2 * PAGE_SIZE]),
        Err(MemoryImageError::RunNotWholePages { .. })
    ));
    let huge_page = MemoryImage {
        size_bytes: PAGE_SIZE as u64,
        runs: vec![PageRun {
            first_page: u64::MAX,
            data: vec![1; PAGE_SIZE],
        }],
    };
    assert!(huge_page.write_into(&mut vec![0; PAGE_SIZE]).is_err());
}

// ---- files ----

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-image-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn write_and_read_file() {
    let dir = scratch_dir("rw");
    let path = dir.join("guest.tern");
    let meta = meta();
    let globals = globals();
    let memory = mixed_memory(3, 8);
    let image = image_ref(&meta, &memory, &globals);
    let stats = write_file(&path, &image).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), stats.bytes_written);
    let read = read_file(&path).unwrap();
    assert_eq!(read.memory.to_bytes().unwrap(), memory);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "temp file left"
    );

    // Overwrite in place.
    write_file(&path, &image_ref(&meta, &[], &[])).unwrap();
    assert!(read_file(&path).unwrap().memory.runs.is_empty());

    let err = read_file_with_limit(&path, 10).unwrap_err();
    assert!(matches!(err, ReadError::TooLarge { limit: 10, .. }));

    std::fs::write(&path, b"garbage").unwrap();
    let err = read_file(&path).unwrap_err();
    assert!(matches!(
        err,
        ReadError::Decode {
            source: DecodeError::NotAnImage,
            ..
        }
    ));
    assert!(err.to_string().contains("guest.tern"));

    let err = read_file(&dir.join("missing")).unwrap_err();
    assert!(matches!(err, ReadError::Open { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failed_write_file_leaves_no_file() {
    let dir = scratch_dir("fail");
    let meta = meta();
    let image = image_ref(&meta, &[], &[]);

    // Directory missing: nothing can be created.
    let path = dir.join("no/such/dir/guest.tern");
    assert!(matches!(
        write_file(&path, &image),
        Err(WriteError::CreateTemp { .. })
    ));
    assert!(!path.exists());

    // Encoding fails after the temp file exists.
    let odd = vec![1u8; 100];
    let path = dir.join("bad.tern");
    let err = write_file(&path, &image_ref(&meta, &odd, &[])).unwrap_err();
    assert!(matches!(err, WriteError::Encode { .. }));
    assert!(!path.exists());

    // Rename onto a directory fails: the temp file is removed.
    let target = dir.join("occupied");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    assert!(matches!(
        write_file(&target, &image),
        Err(WriteError::Rename { .. })
    ));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("occupied")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- property tests ----

fn global_value() -> impl Strategy<Value = GlobalValue> {
    prop_oneof![
        any::<u32>().prop_map(GlobalValue::I32),
        any::<u64>().prop_map(GlobalValue::I64),
        any::<u32>().prop_map(GlobalValue::F32),
        any::<u64>().prop_map(GlobalValue::F64),
        any::<u128>().prop_map(GlobalValue::V128),
    ]
}

prop_compose! {
    fn arb_meta()(
        tern_version in ".{0,20}",
        name in ".{0,20}",
        version in "[0-9.]{0,8}",
        original_digest in any::<[u8; 32]>(),
        prepared_digest in any::<[u8; 32]>(),
        created_unix_ms in any::<u64>(),
        source_arch in "[a-z0-9_]{0,12}",
        guest_id in ".{0,40}",
    ) -> Meta {
        Meta {
            tern_version,
            transform: TransformId { name, version },
            original_digest,
            prepared_digest,
            created_unix_ms,
            source_arch,
            guest_id,
        }
    }
}

prop_compose! {
    /// A sparse memory: a size in wasm pages and some pages filled with
    /// random, constant or repetitive content.
    fn arb_memory()(
        wasm_pages in 0usize..48,
        fills in prop::collection::vec((any::<u16>(), 0u8..3, any::<u64>()), 0..40),
    ) -> Vec<u8> {
        let mut mem = vec![0u8; wasm_pages * WASM_PAGE_SIZE];
        let pages = mem.len() / PAGE_SIZE;
        if pages > 0 {
            for (at, kind, seed) in fills {
                let page = at as usize % pages;
                let span = 1 + (seed as usize % 40).min(pages - page - 1);
                let bytes = &mut mem[page * PAGE_SIZE..(page + span) * PAGE_SIZE];
                match kind {
                    0 => Rng(seed | 1).fill(bytes),
                    1 => bytes.fill(seed as u8 | 1),
                    _ => bytes.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8),
                }
            }
        }
        mem
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_round_trip(
        meta in arb_meta(),
        memory in arb_memory(),
        globals in prop::collection::btree_map(".{0,16}", global_value(), 0..20),
        module in prop::collection::vec(any::<u8>(), 0..300),
        stack in prop::collection::vec(any::<u8>(), 0..300),
        host in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let globals: Vec<Global> = globals
            .into_iter()
            .map(|(name, value)| Global { name, value })
            .collect();
        let image = ImageRef { meta: &meta, module: &module, memory: &memory, globals: &globals, stack: &stack, host: &host };
        let mut bytes = Vec::new();
        encode(&image, &mut bytes).unwrap();
        let decoded = decode(&bytes).unwrap();
        prop_assert_eq!(&decoded.meta, &meta);
        prop_assert_eq!(&decoded.globals, &globals);
        prop_assert_eq!(&decoded.module, &module);
        prop_assert_eq!(&decoded.stack, &stack);
        prop_assert_eq!(&decoded.host, &host);
        prop_assert_eq!(&decoded.memory, &MemoryImage::from_memory(&memory));
        prop_assert!(decoded.memory.to_bytes().unwrap() == memory);
    }

    #[test]
    fn prop_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 20 {
            bytes[..8].copy_from_slice(&MAGIC);
            bytes[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
            reseal(&mut bytes);
        }
        let _ = inspect(&bytes);
        prop_assert!(decode(&bytes).is_err());
    }
}

/// Throughput check: `cargo test -p tern-image --release -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; run in release"]
fn bench_encode_decode_1gib() {
    let meta = meta();
    let size = 1usize << 30;
    let mut random = vec![0u8; size];
    Rng(3).fill(&mut random[..size / 4]); // 256 MiB random, rest zero
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero", vec![0u8; size]),
        ("quarter random", random),
        ("mixed", mixed_memory(size / WASM_PAGE_SIZE, 9)),
    ];
    for (name, memory) in &cases {
        let image = image_ref(&meta, memory, &[]);
        let start = std::time::Instant::now();
        let stats = encode(&image, std::io::sink()).unwrap();
        let sink_time = start.elapsed();
        let mut out = Vec::with_capacity(stats.bytes_written as usize);
        let start = std::time::Instant::now();
        encode(&image, &mut out).unwrap();
        let vec_time = start.elapsed();
        let start = std::time::Instant::now();
        let decoded = decode(&out).unwrap();
        let decode_time = start.elapsed();
        let mut restored = vec![0u8; size];
        let start = std::time::Instant::now();
        decoded.memory.write_into(&mut restored).unwrap();
        let copy_time = start.elapsed();
        assert!(restored == *memory);
        let mut direct = vec![0u8; size];
        direct.fill(0); // fault the pages in, as a live guest memory would be
        let start = std::time::Instant::now();
        let v = view(&out).unwrap();
        let view_time = start.elapsed();
        v.write_memory_into(&mut direct).unwrap();
        let direct_time = start.elapsed();
        println!(
            "{name:>15}: encode->sink {sink_time:?} ({:.2} GB/s), encode->vec {vec_time:?}, \
             {} bytes ({} raw + {} lz4 pages), decode {decode_time:?}, write_into {copy_time:?}, view {view_time:?} + direct restore {direct_time:?}",
            size as f64 / sink_time.as_secs_f64() / 1e9,
            out.len(),
            stats.pages_raw,
            stats.pages_lz4,
        );
        assert!(direct == *memory);
    }
}
