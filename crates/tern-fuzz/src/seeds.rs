//! Seed inputs, made by Tern's real encoders so that they follow the
//! formats as written today, plus the files checked in under
//! `crates/tern-fuzz/seeds/<target>/` (hand-written inputs and the inputs
//! of past failures).

use std::path::{Path, PathBuf};

use tern_image::{Global, GlobalValue, ImageRef, Meta, TransformId, WASM_PAGE_SIZE};
use tern_migrate::base::hash_messages;
use tern_migrate::pages::{Batcher, PAGE};
use tern_migrate::proto::{self, GuestInfo, Message, Strategy};
use tern_vm::host::{SavedHost, HOST_STATE_VERSION};
use tern_vm::suspend::PendingCall;
use tern_vm::wasi::{WasiConfig, WasiCtx};

use crate::mutate::Rng;

/// The names of the targets, as used for seed and corpus directories.
pub const TARGETS: [&str; 3] = ["image_decode", "proto_frames", "api_bodies"];

/// Every seed of `target`: generated ones first, then the checked-in files
/// in name order.
pub fn all(target: &str) -> Vec<Vec<u8>> {
    let mut seeds = match target {
        "image_decode" => images(),
        "proto_frames" => frames(),
        "api_bodies" => bodies(),
        _ => Vec::new(),
    };
    seeds.extend(checked_in(target));
    seeds
}

/// The directory of `target`'s checked-in seeds.
pub fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
}

/// The checked-in seeds of `target`, in file name order.
pub fn checked_in(target: &str) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir(target)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn meta(guest_id: &str) -> Meta {
    Meta {
        tern_version: "0.1.0".into(),
        transform: TransformId {
            name: "tern-unwind".into(),
            version: "3".into(),
        },
        original_digest: [0x11; 32],
        prepared_digest: [0x22; 32],
        created_unix_ms: 1_764_000_000_000,
        source_arch: "x86_64".into(),
        guest_id: guest_id.into(),
    }
}

/// Host state as a guest's capture writes it.
pub fn host_state() -> Vec<u8> {
    let wasi = WasiCtx::new(WasiConfig {
        args: vec!["guest".into(), "--rounds".into(), "3".into()],
        env: vec![("LANG".into(), "C".into())],
        ..WasiConfig::default()
    })
    .map(|ctx| ctx.save());
    let Ok(wasi) = wasi else {
        return Vec::new();
    };
    SavedHost {
        version: HOST_STATE_VERSION,
        guest_id: "g-1".into(),
        wasi,
        pending: PendingCall::Yield,
        generation: 2,
        limits: Default::default(),
    }
    .encode()
}

/// A small valid command module: `_start` and `memory` exported.
pub fn command_module() -> Vec<u8> {
    crate::smith::required_exports()
}

/// One wasm page with pages of every kind: compressible (lz4), random
/// (raw), adjacent present pages, zero pages between them, the last byte.
fn small_memory() -> Vec<u8> {
    let mut mem = vec![0u8; WASM_PAGE_SIZE];
    let mut rng = Rng::new(1);
    for (i, b) in mem[..PAGE].iter_mut().enumerate() {
        *b = b"tern fuzz seed "[i % 15];
    }
    mem[PAGE..2 * PAGE].copy_from_slice(&rng.bytes(PAGE));
    for (i, b) in mem[5 * PAGE..8 * PAGE].iter_mut().enumerate() {
        *b = (i / 64) as u8;
    }
    let last = mem.len() - 1;
    mem[last] = 0xee;
    mem
}

fn globals() -> Vec<Global> {
    vec![
        Global {
            name: "__stack_pointer".into(),
            value: GlobalValue::I32(65_000),
        },
        Global {
            name: "tern_g1".into(),
            value: GlobalValue::I64(u64::MAX),
        },
        Global {
            name: "f".into(),
            value: GlobalValue::F32(f32::NAN.to_bits()),
        },
        Global {
            name: "d".into(),
            value: GlobalValue::F64(1.5f64.to_bits()),
        },
        Global {
            name: "v".into(),
            value: GlobalValue::V128(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        },
    ]
}

fn encode(image: &ImageRef<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    tern_image::encode(image, &mut out).expect("seed images encode");
    out
}

/// Images: a guest's checkpoint, an empty one, and one of a newer minor
/// with an optional section this build does not know.
pub fn images() -> Vec<Vec<u8>> {
    let meta = meta("g-1");
    let memory = small_memory();
    let globals = globals();
    let host = host_state();
    let module = command_module();
    let full = encode(&ImageRef {
        meta: &meta,
        module: &module,
        memory: &memory,
        globals: &globals,
        stack: &[7u8; 48],
        host: &host,
    });
    let empty = encode(&ImageRef {
        meta: &meta,
        module: b"",
        memory: &[],
        globals: &[],
        stack: b"",
        host: b"",
    });
    let newer = with_optional_section(&empty);
    let mut seeds = vec![full, empty, newer];
    // A prepared module with a stack a restore can rebuild; no memory, so
    // that most mutations land in the module and the stack.
    if let Some((module, stack)) = prepared_with_stack() {
        seeds.push(encode(&ImageRef {
            meta: &meta,
            module: &module,
            memory: &[],
            globals: &[],
            stack: &stack,
            host: &host,
        }));
    }
    seeds
}

/// Tern's transform of a command whose `_start` calls a function with a
/// loop, and the deepest saved stack (up to two frames) that the resume
/// code accepts for it, found by trying frames.
pub fn prepared_with_stack() -> Option<(Vec<u8>, Vec<u8>)> {
    use tern_prepare::resume::{build, StackFrame};
    let options = tern_prepare::Options {
        transform: tern_prepare::Transform::Tern,
        wasm_opt: "wasm-opt".into(),
        opt_level: 0,
    };
    let module = tern_prepare::prepare(&crate::smith::looping_command(), &options)
        .ok()?
        .module;
    let frames: Vec<StackFrame> = (0..8)
        .flat_map(|func| (0..4).map(move |site| StackFrame { func, site }))
        .collect();
    let pairs = frames
        .iter()
        .flat_map(|&outer| frames.iter().map(move |&inner| vec![outer, inner]));
    let singles = frames.iter().map(|&frame| vec![frame]);
    let stack = pairs
        .chain(singles)
        .find(|stack| build(&module, stack).is_ok())?;
    // The blob holds the innermost frame first: site, function, size.
    let blob = stack
        .iter()
        .rev()
        .flat_map(|f| [f.site, f.func, 12].into_iter().flat_map(u32::to_le_bytes))
        .collect();
    Some((module, blob))
}

/// `image` as a newer minor would write it: minor 7 and one more,
/// optional, section of an unknown kind before the trailer.
fn with_optional_section(image: &[u8]) -> Vec<u8> {
    let body_len = image.len() - tern_image::TRAILER_LEN;
    let mut out = image[..body_len].to_vec();
    out[10..12].copy_from_slice(&7u16.to_le_bytes());
    let count = u32::from_le_bytes([out[16], out[17], out[18], out[19]]) + 1;
    out[16..20].copy_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(tern_image::SECTION_OPTIONAL | 0x40).to_le_bytes());
    out.extend_from_slice(&5u64.to_le_bytes());
    out.extend_from_slice(b"extra");
    out.extend_from_slice(&[0; 8]);
    crate::reseal(&mut out);
    out
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    proto::send(&mut out, msg).expect("seed messages encode");
    out
}

/// Migration frames: every message as the real source and destination
/// send it, each alone and all as one conversation, and frames whose
/// length claims more than the limit.
pub fn frames() -> Vec<Vec<u8>> {
    let meta = meta("g-1");
    let memory = small_memory();
    let mut batcher = Batcher::new(false);
    let mut runs = Vec::new();
    for (index, page) in memory.chunks(PAGE).enumerate() {
        runs.extend(batcher.push(index as u32, page).into_iter().flatten());
    }
    runs.extend(batcher.finish());
    let guest = GuestInfo {
        id: "g-1".into(),
        name: "counter".into(),
    };
    let mut messages = vec![
        Message::Hello {
            magic: proto::MAGIC,
            version: proto::PROTOCOL_VERSION,
            node: "server".into(),
            arch: "x86_64".into(),
            listen: "127.0.0.1:7071".into(),
        },
        Message::Welcome {
            version: proto::PROTOCOL_VERSION,
            node: "board".into(),
            arch: "aarch64".into(),
        },
        Message::Begin {
            migration_id: "m-1".into(),
            guest,
            strategy: Strategy::Precopy,
            meta: postcard::to_allocvec(&meta).expect("metadata encodes"),
            module_len: 40,
            memory_size: memory.len() as u64,
        },
        Message::ModuleChunk(command_module()),
    ];
    messages.extend(hash_messages(&memory[..4 * PAGE]));
    messages.extend([
        Message::Pages {
            memory_size: memory.len() as u64,
            runs,
        },
        Message::LogChunk(b"round 1\nround 2\n".to_vec()),
        Message::Sync,
        Message::Synced,
        Message::Final {
            memory_size: memory.len() as u64,
            globals: globals(),
            stack: vec![3; 32],
            host: host_state(),
            log_len: 16,
        },
        Message::Restored,
        Message::Commit,
        Message::Abort("the destination ran out of memory".into()),
        Message::Resolve {
            migration_id: "m-1".into(),
        },
        Message::Owner { destination: true },
    ]);
    let mut seeds: Vec<Vec<u8>> = messages.iter().map(frame).collect();
    seeds.push(messages.iter().flat_map(frame).collect());
    // Frames claiming 4 GiB and one byte over the limit.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&frame(&Message::Commit));
    seeds.push(huge);
    let mut over = (proto::MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
    over.extend_from_slice(&[0; 64]);
    seeds.push(over);
    seeds
}

/// API bodies: boot specs with a real module (which then goes through
/// preparation) and bytes the structure-aware generator turns into specs.
pub fn bodies() -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let spec = tern_node::BootSpec {
        name: "hello".into(),
        module_b64: b64.encode(command_module()),
        args: vec!["3".into(), "a b".into()],
        env: vec![("HOME".into(), "/".into())],
        dirs: vec![("/tmp/work".into(), "/data".into())],
        max_memory: Some(64 << 20),
        ..Default::default()
    };
    let mut seeds = vec![
        serde_json::to_vec(&spec).expect("a BootSpec serializes"),
        serde_json::to_vec_pretty(&spec).expect("a BootSpec serializes"),
    ];
    // Structure-aware: these bytes are read by `arbitrary`.
    let mut rng = Rng::new(0x5eed);
    seeds.extend((0..4).map(|i| rng.bytes(256 << i)));
    seeds
}
