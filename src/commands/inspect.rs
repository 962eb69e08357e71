//! `tern inspect`: show what an image holds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use tern_image::{GlobalValue, Image};
use tern_vm::host::SavedHost;
use tern_vm::suspend::PendingCall;
use tern_vm::wasi::WasiState;

/// Arguments of `tern inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The image file.
    #[arg(value_name = "FILE")]
    image_file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    file: String,
    file_bytes: u64,
    format_version: String,
    guest_id: String,
    generation: u64,
    tern_version: String,
    created_unix_ms: u64,
    source_arch: String,
    transform: String,
    original_module_blake3: String,
    prepared_module_blake3: String,
    module_bytes: usize,
    memory_bytes: u64,
    memory_pages: u64,
    pages_present: u64,
    globals: Vec<(String, String)>,
    stack_bytes: usize,
    suspended_in: String,
    host: WasiState,
}

fn global_text(v: &GlobalValue) -> String {
    match v {
        GlobalValue::I32(x) => format!("i32 {}", *x as i32),
        GlobalValue::I64(x) => format!("i64 {}", *x as i64),
        GlobalValue::F32(x) => format!("f32 {}", f32::from_bits(*x)),
        GlobalValue::F64(x) => format!("f64 {}", f64::from_bits(*x)),
        GlobalValue::V128(x) => format!("v128 {x:#034x}"),
    }
}

fn report(path: &std::path::Path, image: &Image, host: SavedHost) -> Report {
    let pending = match &host.pending {
        PendingCall::Yield => "migration point (tern.yield)".to_string(),
        PendingCall::Wasi(p) => format!("WASI call {p:?}"),
    };
    Report {
        file: path.display().to_string(),
        file_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        format_version: format!("{}.{}", image.format.0, image.format.1),
        guest_id: host.guest_id.clone(),
        generation: host.generation,
        tern_version: image.meta.tern_version.clone(),
        created_unix_ms: image.meta.created_unix_ms,
        source_arch: image.meta.source_arch.clone(),
        transform: format!(
            "{} {}",
            image.meta.transform.name, image.meta.transform.version
        ),
        original_module_blake3: tern_prepare::hex(&image.meta.original_digest),
        prepared_module_blake3: tern_prepare::hex(&image.meta.prepared_digest),
        module_bytes: image.module.len(),
        memory_bytes: image.memory.size_bytes,
        memory_pages: image.memory.size_bytes / tern_image::PAGE_SIZE as u64,
        pages_present: image.memory.pages_present(),
        globals: image
            .globals
            .iter()
            .map(|g| (g.name.clone(), global_text(&g.value)))
            .collect(),
        stack_bytes: image.stack.len(),
        suspended_in: pending,
        host: host.wasi,
    }
}

fn print_text(r: &Report) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("image        {} ({} bytes)", r.file, r.file_bytes);
    println!("format       version {}", r.format_version);
    println!("guest        {} (generation {})", r.guest_id, r.generation);
    println!(
        "written by   tern {} on {} at unix {} ms",
        r.tern_version, r.source_arch, r.created_unix_ms
    );
    println!("transform    {}", r.transform);
    println!(
        "module       {} bytes, prepared blake3 {}",
        r.module_bytes, r.prepared_module_blake3
    );
    println!("original     blake3 {}", r.original_module_blake3);
    println!(
        "memory       {:.1} MiB, {} of {} 4 KiB pages present ({:.1} MiB)",
        mib(r.memory_bytes),
        r.pages_present,
        r.memory_pages,
        mib(r.pages_present * 4096)
    );
    println!("globals      {}", r.globals.len());
    for (name, value) in &r.globals {
        println!("  {name:<10} {value}");
    }
    println!(
        "stack        {} bytes, suspended in {}",
        r.stack_bytes, r.suspended_in
    );
    let h = &r.host;
    println!("args         {:?}", h.args);
    println!("env          {}", h.env.len());
    for (k, v) in &h.env {
        println!("  {k}={v}");
    }
    println!("preopens     {}", h.preopens.len());
    for p in &h.preopens {
        println!(
            "  fd {:<3} {} -> {}",
            p.fd,
            p.guest_path,
            p.host_path.display()
        );
    }
    println!("open fds     {}", h.fds.len());
    for fd in &h.fds {
        let mut flags = Vec::new();
        if fd.read {
            flags.push("read");
        }
        if fd.write {
            flags.push("write");
        }
        if fd.fdflags & 1 != 0 {
            flags.push("append");
        }
        let what = match fd.kind {
            tern_vm::wasi::FdKind::Stdin => "stdin".to_string(),
            tern_vm::wasi::FdKind::Stdout => "stdout".to_string(),
            tern_vm::wasi::FdKind::Stderr => "stderr".to_string(),
            _ => format!("{} ({})", fd.guest_path, fd.host_path.display()),
        };
        println!(
            "  fd {:<3} {:?} {what} offset {} [{}]",
            fd.fd,
            fd.kind,
            fd.offset,
            flags.join(",")
        );
    }
    println!(
        "clock        monotonic {:.6} s, cpu {:.6} s",
        h.clock.monotonic_ns as f64 / 1e9,
        h.clock.cpu_time_ns as f64 / 1e9
    );
    if let Some(code) = h.exit_status {
        println!("exit status  {code}");
    }
}

/// Runs `tern inspect`.
pub fn main(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let image = tern_image::read_file(&a.image_file)?;
    let host = SavedHost::decode(&image.host)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.image_file.display()))?;
    let r = report(&a.image_file, &image, host);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(ExitCode::SUCCESS)
}
