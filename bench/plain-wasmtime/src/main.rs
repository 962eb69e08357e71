//! plain-wasmtime: runs a wasm32-wasi (preview1) command module as it is on
//! wasmtime with wasmtime's own WASI, the baseline bench/realworld.sh
//! measures Tern against.
//!
//! ```text
//! plain-wasmtime [--dir HOST[:GUEST]]... [--env K=V]... [--cache DIR] MODULE.wasm [-- ARGS...]
//! ```
//!
//! Standard input, output and error are the process's own; the exit code is
//! the guest's. Compiled code is kept in the cache directory (`--cache`, else
//! `PLAIN_WASMTIME_CACHE`, else none), keyed by the BLAKE3 digest of the
//! module and the engine's compatibility hash, so only the first run of a
//! module compiles it. The guest's argv[0] is the module's file name, as
//! under `tern run`. With `PLAIN_EPOCH` set, epoch interruption is on (with
//! a deadline never reached), as in Tern's engine: the difference measures
//! what the epoch check at every loop header and function entry costs.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wasmtime::error::Context;
use wasmtime::{bail, Config, Engine, Linker, Module, Result, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

const USAGE: &str = "usage: plain-wasmtime [--dir HOST[:GUEST]]... [--env K=V]... [--cache DIR] MODULE.wasm [-- ARGS...]";

struct Args {
    dirs: Vec<(PathBuf, String)>,
    env: Vec<(String, String)>,
    cache: Option<PathBuf>,
    module: PathBuf,
    args: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut dirs = Vec::new();
    let mut env = Vec::new();
    let mut cache = std::env::var_os("PLAIN_WASMTIME_CACHE").map(PathBuf::from);
    let mut module = None;
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--dir" => {
                let v = value()?;
                let (host, guest) = v.split_once(':').unwrap_or((&v, &v));
                dirs.push((PathBuf::from(host), guest.to_string()));
            }
            "--env" => {
                let v = value()?;
                let Some((k, val)) = v.split_once('=') else {
                    bail!("--env {v}: not of the form K=V");
                };
                env.push((k.to_string(), val.to_string()));
            }
            "--cache" => cache = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--" => break,
            _ if a.starts_with('-') || module.is_some() => bail!("unexpected `{a}`\n{USAGE}"),
            _ => module = Some(PathBuf::from(a)),
        }
    }
    let module = module.context(USAGE)?;
    Ok(Args {
        dirs,
        env,
        cache,
        module,
        args: it.collect(),
    })
}

/// Compiles `bytes`, or loads the code compiled by an earlier run from `cache`.
fn load(engine: &Engine, bytes: &[u8], cache: Option<&Path>) -> Result<Module> {
    let Some(dir) = cache else {
        return Module::new(engine, bytes);
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let path = dir.join(format!(
        "{}-{:016x}.cwasm",
        blake3::hash(bytes).to_hex(),
        h.finish()
    ));
    if path.exists() {
        // SAFETY: the file was written by `Module::serialize` of this program
        // for an engine with the same compatibility hash, and nothing else
        // writes into the cache directory.
        if let Ok(module) = unsafe { Module::deserialize_file(engine, &path) } {
            return Ok(module);
        }
    }
    let module = Module::new(engine, bytes)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Write then rename, so a concurrent run never reads half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, module.serialize()?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(module)
}

fn run(a: Args) -> Result<i32> {
    let bytes =
        std::fs::read(&a.module).with_context(|| format!("reading {}", a.module.display()))?;
    let mut cfg = Config::new();
    let epoch = std::env::var_os("PLAIN_EPOCH").is_some();
    cfg.epoch_interruption(epoch);
    let engine = Engine::new(&cfg)?;
    let module = load(&engine, &bytes, a.cache.as_deref())?;

    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio();
    let name = a.module.file_name().map_or_else(
        || a.module.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    wasi.arg(name).args(&a.args);
    for (k, v) in &a.env {
        wasi.env(k, v);
    }
    for (host, guest) in &a.dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadWrite)
            .with_context(|| format!("--dir {}", host.display()))?;
    }
    let mut store: Store<WasiP1Ctx> = Store::new(&engine, wasi.build_p1());
    if epoch {
        store.set_epoch_deadline(u64::MAX / 2);
    }
    let mut linker = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |cx| cx)?;
    let instance = linker.instantiate(&mut store, &module)?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(e),
        },
    }
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("plain-wasmtime: {e:?}");
            ExitCode::from(125)
        }
    }
}
