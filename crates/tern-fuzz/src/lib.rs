//! Fuzz targets for every decoder of untrusted input in Tern.
//!
//! A node is reachable over the network: images arrive as files (restore)
//! and as a base kept on disk, migration streams arrive on the migration
//! port, and request bodies arrive on the HTTP API. Each target here feeds
//! arbitrary bytes to one of those decoders and checks more than "no
//! panic" where that is cheap:
//!
//! * [`image_decode`]: `tern_image::{view, inspect, decode, read_file_with_limit}`,
//!   what a restore decodes beside memory (the host state,
//!   [`tern_vm::host::SavedHost::decode`]; the saved stack and the
//!   continuation built from it, `tern_prepare::resume`), and memory
//!   decompression. Anything accepted re-encodes and decodes to the same
//!   content.
//! * [`proto_frames`]: the migration frame reader ([`tern_migrate::proto::recv`]),
//!   the handshake check, page runs ([`tern_migrate::pages::apply_run`]) and
//!   base hashes ([`tern_migrate::base::Base::receive`]). Any decoded message
//!   re-encodes to a frame that decodes to an equal message, and a frame
//!   longer than the limit is refused after reading its length alone.
//! * [`api_bodies`]: a node API body as JSON into [`tern_node::BootSpec`],
//!   the base64 module in it, and the validation and preparation a boot
//!   runs on the module (`tern_prepare::prepare`). The same bytes also drive
//!   a structure-aware [`BootSpec`] whose module comes from `wasm-smith`.
//!
//! The targets are plain functions: `tests/fuzz.rs` runs them on stable Rust
//! over a seed corpus ([`seeds`]) and fixed-seed mutations ([`mutate`]);
//! the cargo-fuzz targets in the repository's `fuzz/` directory run them
//! under libFuzzer. `docs/fuzzing.md` says how to run both.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod mutate;
pub mod seeds;
mod smith;

use std::io::Read;

use arbitrary::{Arbitrary, Unstructured};
use tern_image::{Image, ImageRef, HEADER_LEN, PAGE_SIZE, TRAILER_LEN};
use tern_migrate::base::Base;
use tern_migrate::pages::{apply_run, encode_run, PAGE};
use tern_migrate::proto::{self, Message, RunData, MAX_FRAME};
use tern_migrate::MigrateError;
use tern_node::BootSpec;

/// Largest decompressed memory the image target materializes. Images may
/// describe up to 4 GiB of memory in a few kilobytes (all but the pages
/// stored are zero, and lz4 packs a run of equal bytes 255 to 1); the
/// target checks those through [`tern_image::view`] alone, so that one
/// input never costs more than this much memory.
pub const MAX_FUZZ_MEMORY: u64 = 16 << 20;

/// Memory, in pages, that [`proto_frames`] applies page runs to: runs
/// beyond it must be refused like runs beyond a guest's memory.
pub const PROTO_MEMORY_PAGES: usize = 64;

// ---------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------

/// Image decoding: `data` as an image file, as is and with its trailer
/// checksum recomputed (random mutations nearly always break the checksum,
/// which would keep them from ever reaching the section parsers).
pub fn image_decode(data: &[u8]) {
    check_image(data);
    if data.len() >= HEADER_LEN + TRAILER_LEN {
        let mut resealed = data.to_vec();
        reseal(&mut resealed);
        check_image(&resealed);
        check_image_file(&resealed);
    }
}

/// Replaces the last 8 bytes of `image` with the xxh3-64 of the rest, as
/// the encoder writes it.
pub fn reseal(image: &mut [u8]) {
    let Some(body_len) = image.len().checked_sub(TRAILER_LEN) else {
        return;
    };
    let (body, trailer) = image.split_at_mut(body_len);
    trailer.copy_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
}

fn check_image(bytes: &[u8]) {
    let view = tern_image::view(bytes);
    let inspected = tern_image::inspect(bytes);
    let view = match view {
        Ok(view) => view,
        Err(_) => {
            assert!(inspected.is_err(), "inspect accepts what view refuses");
            return;
        }
    };
    let summary = view.summary();
    assert_eq!(
        inspected.ok().as_ref(),
        Some(&summary),
        "inspect and view disagree"
    );
    assert_eq!(summary.total_bytes, bytes.len() as u64);
    assert!(view
        .memory_size()
        .is_multiple_of(tern_image::WASM_PAGE_SIZE as u64));
    assert!(view.pages_present() * PAGE_SIZE as u64 <= view.memory_size());

    // The restore path decodes the host state from the image as well.
    if let Ok(host) = tern_vm::host::SavedHost::decode(view.host) {
        let again = tern_vm::host::SavedHost::decode(&host.encode())
            .expect("re-encoded host state decodes");
        assert_eq!(again.guest_id, host.guest_id);
        assert_eq!(again.wasi, host.wasi);
        assert_eq!(again.pending, host.pending);
        assert_eq!(again.generation, host.generation);
    }

    check_stack(view.module, view.stack);

    if view.memory_size() > MAX_FUZZ_MEMORY {
        return;
    }
    // Restore: decompress straight into a zeroed memory, as a guest's.
    let mut flat = vec![0u8; view.memory_size() as usize];
    let direct = view.write_memory_into(&mut flat);
    // Too small a destination is refused, not overrun.
    if let Some(short) = flat.len().checked_sub(1) {
        let mut small = vec![0u8; short];
        assert!(view.write_memory_into(&mut small).is_err());
    }
    let decoded = tern_image::decode(bytes);
    match (&direct, &decoded) {
        (Ok(()), Ok(image)) => {
            let from_runs = image.memory.to_bytes().expect("decoded memory lays out");
            assert!(from_runs == flat, "decode and write_memory_into disagree");
            assert_eq!(image.memory.pages_present(), view.pages_present());
            check_reencode(image, &flat);
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "decode and write_memory_into disagree: {:?} vs {:?}",
            direct.err(),
            decoded.err()
        ),
    }
}

/// The saved stack, as a restore reads it: its frames, then the
/// continuation built from them and the image's module. A restore compiles
/// the module (which validates it) before it builds the continuation, so
/// only modules that pass Tern's own check of a prepared module get here.
fn check_stack(module: &[u8], stack: &[u8]) {
    use tern_prepare::resume;
    let Ok(frames) = resume::frames(stack) else {
        return;
    };
    // A frame is at least its 12-byte header.
    assert!(frames.len() <= stack.len() / 12);
    // Each distinct frame becomes a module: keep the work per input small.
    if frames.is_empty() || frames.len() > 16 {
        return;
    }
    if tern_prepare::check::check_prepared(module).is_err() {
        return;
    }
    if let Ok(cont) = resume::build(module, &frames) {
        assert_eq!(cont.chain.len(), frames.len());
        for (frame, &copy) in frames.iter().zip(&cont.chain) {
            assert_eq!(cont.copies.get(copy).map(|c| c.0), Some(*frame));
        }
        for (_, copy) in &cont.copies {
            wasmparser::Validator::new()
                .validate_all(copy)
                .expect("a continuation copy is valid wasm");
        }
    }
}

/// An accepted image encodes again (the limits the decoder enforced are
/// those the encoder checks) and that encoding decodes to the same content
/// and re-encodes to the same bytes.
fn check_reencode(image: &Image, memory: &[u8]) {
    let image_ref = ImageRef {
        meta: &image.meta,
        module: &image.module,
        memory,
        globals: &image.globals,
        stack: &image.stack,
        host: &image.host,
    };
    let mut bytes = Vec::new();
    tern_image::encode(&image_ref, &mut bytes).expect("a decoded image encodes again");
    let again = tern_image::decode(&bytes).expect("a re-encoded image decodes");
    assert_eq!(again.meta, image.meta);
    assert_eq!(again.module, image.module);
    assert_eq!(again.globals, image.globals);
    assert_eq!(again.stack, image.stack);
    assert_eq!(again.host, image.host);
    assert_eq!(again.memory.size_bytes, image.memory.size_bytes);
    assert!(
        again.memory.to_bytes().ok().as_deref() == Some(memory),
        "memory changed through a re-encode"
    );
    let mut twice = Vec::new();
    tern_image::encode(&image_ref, &mut twice).expect("encodes again");
    assert!(twice == bytes, "encoding is not deterministic");
}

/// The path a restore from disk takes: `read_file_with_limit` must agree
/// with `decode`, and refuse a file over the limit before decoding it.
fn check_image_file(bytes: &[u8]) {
    // Only images that pass the checksum and framing are worth the disk
    // round trip; the rest fail in `view` the same way from a file.
    let Ok(view) = tern_image::view(bytes) else {
        return;
    };
    if view.memory_size() > MAX_FUZZ_MEMORY {
        return;
    }
    let path = scratch_file();
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    let len = bytes.len() as u64;
    let from_file = tern_image::read_file_with_limit(&path, len);
    let direct = tern_image::decode(bytes);
    match (&from_file, &direct) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(tern_image::ReadError::Decode { .. }), Err(_)) => {}
        _ => panic!("read_file and decode disagree"),
    }
    let too_large = tern_image::read_file_with_limit(&path, len - 1);
    assert!(
        matches!(too_large, Err(tern_image::ReadError::TooLarge { .. })),
        "a file over the limit is read"
    );
    let raw = tern_image::read_bytes(&path, len).expect("reads the file back");
    assert!(raw == bytes);
    let _ = std::fs::remove_file(&path);
}

fn scratch_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "tern-fuzz-{}-{:?}.tern",
        std::process::id(),
        std::thread::current().id()
    ))
}

// ---------------------------------------------------------------------
// Migration protocol
// ---------------------------------------------------------------------

/// Migration frames: `data` as the bytes a peer sends (a stream of
/// length-prefixed frames), and as the payload of one frame.
pub fn proto_frames(data: &[u8]) {
    let mut messages = Vec::new();
    let mut stream = CountingReader::new(data);
    loop {
        let before = stream.read;
        let claimed = data
            .get(before..before + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes);
        match proto::recv(&mut stream) {
            Ok((msg, n)) => {
                assert_eq!(n as usize, stream.read - before, "recv miscounts its bytes");
                messages.push(msg);
            }
            Err(e) => {
                if let Some(len) = claimed.filter(|&len| len as usize > MAX_FRAME) {
                    assert!(
                        matches!(e, MigrateError::Protocol(_)),
                        "frame of {len} bytes: {e}"
                    );
                    assert_eq!(
                        stream.read - before,
                        4,
                        "an oversized frame was read past its length"
                    );
                }
                break;
            }
        }
    }
    // The same bytes as one frame's payload, which reaches postcard
    // whatever the first four bytes are.
    if data.len() <= MAX_FRAME {
        let mut frame = (data.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(data);
        if let Ok((msg, _)) = proto::recv(&mut frame.as_slice()) {
            messages.push(msg);
        }
    }
    for msg in &messages {
        check_message(msg);
    }
    check_base(&messages);
}

/// A reader that counts what was taken from it.
struct CountingReader<'a> {
    data: &'a [u8],
    read: usize,
}

impl<'a> CountingReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        CountingReader { data, read: 0 }
    }
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = self.data.get(self.read..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        Ok(n)
    }
}

fn check_message(msg: &Message) {
    // Re-encoding: the frame decodes to an equal message, and encoding that
    // gives the same bytes again.
    let mut wire = Vec::new();
    let sent = proto::send(&mut wire, msg).expect("a decoded message encodes within the limit");
    assert_eq!(sent as usize, wire.len());
    let (again, n) = proto::recv(&mut wire.as_slice()).expect("a re-encoded frame decodes");
    assert_eq!(n as usize, wire.len());
    assert_eq!(&again, msg, "message changed through a re-encode");
    let mut wire2 = Vec::new();
    proto::send(&mut wire2, &again).expect("encodes again");
    assert!(wire2 == wire, "message encoding is not canonical");

    // The handshake check.
    if let Ok((version, node, listen)) = proto::check_hello(msg) {
        let Message::Hello {
            magic,
            version: v,
            node: n,
            listen: l,
            ..
        } = msg
        else {
            panic!("check_hello accepted a {}", msg.kind());
        };
        assert_eq!(*magic, proto::MAGIC);
        assert!((proto::OLDEST_VERSION..=proto::PROTOCOL_VERSION).contains(&version));
        assert_eq!((version, &node, &listen), (*v, n, l));
    }
    let _ = proto::unexpected(msg, "nothing");

    match msg {
        Message::Pages { runs, .. } => check_runs(runs),
        Message::Begin { meta, .. } => {
            // The destination decodes the image metadata from `Begin`.
            if let Ok(meta) = postcard::from_bytes::<tern_image::Meta>(meta) {
                let bytes = postcard::to_allocvec(&meta).expect("metadata encodes");
                let again: tern_image::Meta =
                    postcard::from_bytes(&bytes).expect("re-encoded metadata decodes");
                assert_eq!(again, meta);
            }
        }
        Message::Final { host, .. } => {
            // And the host state from `Final`.
            if let Ok(state) = tern_vm::host::SavedHost::decode(host) {
                let again = tern_vm::host::SavedHost::decode(&state.encode())
                    .expect("re-encoded host state decodes");
                assert_eq!(again.wasi, state.wasi);
            }
        }
        _ => {}
    }
}

/// Applies page runs to a small memory as the destination does; whatever
/// is applied must be what the run says, and what the source would encode
/// from that memory must apply to the same bytes.
fn check_runs(runs: &[tern_migrate::proto::PageRun]) {
    let mut mem = vec![0u8; PROTO_MEMORY_PAGES * PAGE];
    for run in runs {
        let before = mem.clone();
        let Ok(()) = apply_run(&mut mem, run) else {
            // A refused run leaves memory alone, except an lz4 block that
            // fails part way (the source is then aborted anyway).
            if run.encoding != RunData::Lz4 {
                assert!(mem == before, "a refused run changed memory");
            }
            mem = before;
            continue;
        };
        let start = run.first as usize * PAGE;
        let len = run.count as usize * PAGE;
        let region = &mem[start..start + len];
        match run.encoding {
            RunData::Zero => assert!(region.iter().all(|&b| b == 0)),
            RunData::Raw => assert!(region == run.data.as_slice()),
            RunData::Lz4 => {
                let unpacked = lz4_decompress(&run.data, len);
                assert!(
                    unpacked.as_deref() == Some(region),
                    "lz4 run applied wrongly"
                );
            }
        }
        assert!(
            mem[..start] == before[..start] && mem[start + len..] == before[start + len..],
            "a run wrote outside its pages"
        );
        if let Some(encoded) = encode_run(run.first, region, false, true) {
            let mut copy = before.clone();
            apply_run(&mut copy, &encoded).expect("an encoded run applies");
            assert!(copy == mem, "encode_run does not round-trip");
        }
    }
}

fn lz4_decompress(data: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    let n = lz4_flex::block::decompress_into(data, &mut out).ok()?;
    (n == len).then_some(out)
}

/// Feeds every `BaseHashes` message, in order, to the source's base reader.
fn check_base(messages: &[Message]) {
    let hashes: Vec<&Message> = messages
        .iter()
        .filter(|m| matches!(m, Message::BaseHashes { .. }))
        .collect();
    if hashes.is_empty() {
        return;
    }
    let mut it = hashes.iter();
    let mut received = 0u64;
    let base = Base::receive(|| {
        let msg = it
            .next()
            .ok_or_else(|| MigrateError::Receive(std::io::ErrorKind::UnexpectedEof.into()))?;
        if let Message::BaseHashes { hashes, .. } = msg {
            received += hashes.len() as u64 / 16;
        }
        Ok((*msg).clone())
    });
    if let Ok(base) = base {
        assert_eq!(
            base.pages(),
            received,
            "base holds other hashes than received"
        );
        assert!(base.pages() <= tern_image::MAX_MEMORY_BYTES / PAGE as u64);
    }
}

// ---------------------------------------------------------------------
// Node API bodies
// ---------------------------------------------------------------------

/// Node API request bodies: `data` as the JSON body of `POST /v1/guests`
/// (and, as text, the values a migrate body parses), and as the bytes a
/// structure-aware [`BootSpec`] is built from.
pub fn api_bodies(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<BootSpec>(data) {
        check_boot_spec(&spec);
    }
    // Generic JSON: the other bodies are small structs of these values.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let text = serde_json::to_vec(&value).expect("a JSON value serializes");
        let again: serde_json::Value =
            serde_json::from_slice(&text).expect("serialized JSON parses");
        assert_eq!(again, value);
    }
    // The strings of a migrate body.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(strategy) = text.parse::<tern_migrate::Strategy>() {
            assert_eq!(strategy.name().parse(), Ok(strategy));
        }
        let _ = text.parse::<tern_vm::dirty::Prefer>();
    }
    let mut u = Unstructured::new(data);
    if let Ok(input) = BootInput::arbitrary(&mut u) {
        check_boot_spec(&input.into_spec());
    }
}

fn check_boot_spec(spec: &BootSpec) {
    let json = serde_json::to_vec(spec).expect("a BootSpec serializes");
    let again: BootSpec = serde_json::from_slice(&json).expect("a serialized BootSpec parses");
    assert_eq!(
        serde_json::to_vec(&again).ok().as_deref(),
        Some(json.as_slice()),
        "BootSpec changed through JSON"
    );
    boot_module(&spec.module_b64);
}

/// What `Node::boot` does with the module before anything runs: base64,
/// then validation and preparation.
fn boot_module(module_b64: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let Ok(wasm) = b64.decode(module_b64.as_bytes()) else {
        return;
    };
    assert_eq!(b64.encode(&wasm), module_b64, "base64 is not canonical");
    prepare_module(&wasm);
}

/// Validation and Tern's transform on arbitrary module bytes: an error is
/// fine, a panic is not, and whatever is prepared must pass the checks a
/// restore makes of it.
pub fn prepare_module(wasm: &[u8]) {
    if tern_prepare::check::check_command(wasm).is_err() {
        return;
    }
    let options = tern_prepare::Options {
        transform: tern_prepare::Transform::Tern,
        wasm_opt: "wasm-opt".into(),
        opt_level: 0,
    };
    if let Ok(prepared) = tern_prepare::prepare(wasm, &options) {
        tern_prepare::check::check_prepared(&prepared.module)
            .expect("prepare made a module its own check refuses");
        assert_eq!(
            prepared.prepared_digest,
            tern_prepare::digest(&prepared.module)
        );
        assert_eq!(prepared.original_digest, tern_prepare::digest(wasm));
    }
}

/// A [`BootSpec`] as `arbitrary` builds it: strings of any content, and a
/// module that is either arbitrary bytes or a valid WASI command from
/// `wasm-smith`.
#[derive(Debug, Arbitrary)]
pub struct BootInput {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dirs: Vec<(String, String)>,
    module: ModuleInput,
}

/// Where a [`BootInput`]'s module comes from.
#[derive(Debug)]
pub enum ModuleInput {
    /// Arbitrary bytes.
    Bytes(Vec<u8>),
    /// A valid command module generated by `wasm-smith`.
    Smith(Vec<u8>),
    /// Text that is not base64.
    NotBase64(String),
}

impl<'a> Arbitrary<'a> for ModuleInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=3)? {
            0 => ModuleInput::Bytes(Vec::arbitrary(u)?),
            1 => ModuleInput::NotBase64(String::arbitrary(u)?),
            _ => ModuleInput::Smith(smith::command_module(u)?),
        })
    }
}

impl BootInput {
    /// The spec a client would send.
    pub fn into_spec(self) -> BootSpec {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        BootSpec {
            name: self.name,
            module_b64: match self.module {
                ModuleInput::Bytes(bytes) | ModuleInput::Smith(bytes) => b64.encode(bytes),
                ModuleInput::NotBase64(text) => text,
            },
            args: self.args,
            env: self.env,
            dirs: self.dirs,
            ..Default::default()
        }
    }
}
