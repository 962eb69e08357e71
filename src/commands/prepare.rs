//! `tern prepare`: write the migratable form of a module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::common;

/// Arguments of `tern prepare`.
#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// The wasm32-wasi (preview1) command module.
    #[arg(value_name = "WASM")]
    wasm: PathBuf,
    /// Where to write the prepared module.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
    /// Which transform makes the stack unwindable: `tern` (Tern's own,
    /// the default) or `asyncify` (binaryen's wasm-opt, kept as a
    /// differential-testing oracle; needs binaryen installed).
    #[arg(long, value_name = "NAME", env = "TERN_TRANSFORM", default_value = "tern",
          value_parser = tern_prepare::Transform::parse)]
    transform: tern_prepare::Transform,
}

/// Runs `tern prepare`.
pub fn main(a: PrepareArgs) -> anyhow::Result<ExitCode> {
    let wasm = common::read_input(&a.wasm)?;
    let t = std::time::Instant::now();
    let opts = tern_prepare::Options {
        transform: a.transform,
        ..tern_prepare::Options::default()
    };
    let prepared = tern_prepare::prepare(&wasm, &opts)
        .with_context(|| format!("cannot prepare {}", a.wasm.display()))?;
    let dir = a.output.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(std::path::Path::new(".")))
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, &prepared.module)?;
            Ok(f)
        })
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    tmp.persist(&a.output)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    common::say(format_args!(
        "prepared {} -> {} ({} -> {} bytes, {:.2}x, {} {}, {:.0} ms)",
        a.wasm.display(),
        a.output.display(),
        wasm.len(),
        prepared.module.len(),
        prepared.module.len() as f64 / wasm.len().max(1) as f64,
        prepared.transform.name,
        prepared.transform.version,
        t.elapsed().as_secs_f64() * 1e3
    ));
    Ok(ExitCode::SUCCESS)
}
