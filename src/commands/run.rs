//! `tern run`: run a WebAssembly program as a guest.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tern_vm::wasi::{OutputSink, WasiConfig, WasiCtx};
use tern_vm::Guest;

use crate::common::{self, CheckpointArgs, LimitArgs};

/// Arguments of `tern run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The wasm32-wasi (preview1) command module to run.
    #[arg(value_name = "WASM")]
    wasm: PathBuf,
    /// Give the guest a host directory, seen at GUEST (default: the same path).
    #[arg(long = "dir", value_name = "HOST[:GUEST]")]
    dirs: Vec<String>,
    /// Set an environment variable for the guest.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    #[command(flatten)]
    limits: LimitArgs,
    /// With --detach: the guest's CPU weight against the node's other
    /// guests, 1 to 10000 (100: an equal share). Enforced with a cgroup,
    /// or with the thread's nice value where cgroups are not writable.
    #[arg(long, value_name = "N", requires = "detach",
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    cpu_weight: Option<u32>,
    /// With --detach: hold the guest to this many cores, e.g. `0.25`
    /// (needs cgroups on the node; refused otherwise).
    #[arg(long, value_name = "FRACTION", requires = "detach",
          value_parser = parse_cpu_quota)]
    cpu_quota: Option<f64>,
    /// Run the module as given, without preparing it (it then cannot be
    /// checkpointed). For comparisons and benchmarks.
    #[arg(long, hide = true, conflicts_with = "checkpoint_after")]
    original: bool,
    /// Start the guest on a node (`--node` or `TERN_NODE`) and print its id.
    #[arg(long, conflicts_with_all = ["checkpoint_after", "original"])]
    detach: bool,
    /// The node for --detach (`HOST:PORT`).
    #[arg(long = "node", env = "TERN_NODE", value_name = "URL")]
    node: Option<String>,
    /// With --detach: let this controller (`tern controller`) place the
    /// guest on the node its policy picks. Wins over --node.
    #[arg(long, env = "TERN_CONTROLLER", value_name = "URL")]
    controller: Option<String>,
    #[command(flatten)]
    access: crate::client::Access,
    /// Arguments passed to the guest (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not of the form K=V")),
    }
}

/// Parses a CPU quota in cores: `0.25`, `1`, `1.5` (0.01 to 1024).
fn parse_cpu_quota(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.01..=1024.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "invalid CPU quota `{s}`: give a number of cores from 0.01 to 1024, e.g. 0.25"
        )),
    }
}

/// Splits `HOST[:GUEST]`.
fn parse_dir(s: &str) -> anyhow::Result<(PathBuf, String)> {
    let (host, guest) = match s.split_once(':') {
        Some((h, g)) if !h.is_empty() && !g.is_empty() => (h, g),
        Some(_) => anyhow::bail!("--dir `{s}` is not of the form HOST[:GUEST]"),
        None => (s, s),
    };
    let host = PathBuf::from(host);
    if !host.is_dir() {
        anyhow::bail!("--dir {}: not a directory", host.display());
    }
    Ok((host, guest.to_string()))
}

/// Runs `tern run`.
pub fn main(a: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let wasm = common::read_input(&a.wasm)?;
    if a.detach {
        return detach(&a, &wasm);
    }
    let mut preopens = Vec::new();
    for d in &a.dirs {
        preopens.push(parse_dir(d)?);
    }
    let cache = tern_prepare::Cache::new(tern_prepare::default_cache_dir());
    let name = a
        .wasm
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| a.wasm.display().to_string());
    let prepared = if a.original {
        tern_prepare::check::check_command(&wasm)
            .with_context(|| format!("cannot run {}", a.wasm.display()))?;
        None
    } else {
        if common::chatty() && !cache.is_cached(&wasm) {
            common::say(format_args!("preparing {name} (cached for later runs)"));
        }
        let prepared = cache
            .prepare(&wasm, &tern_prepare::Options::default())
            .with_context(|| format!("cannot run {}", a.wasm.display()))?;
        Some(prepared)
    };
    let mut args = vec![name];
    args.extend(a.args.iter().cloned());
    let wasi = WasiCtx::new(WasiConfig {
        args,
        env: a.env.clone(),
        preopens,
        stdout: OutputSink::Inherit,
        stderr: OutputSink::Inherit,
    })
    .context("setting up the guest's WASI host")?;
    let rt = common::runtime()?;
    let limits = a.limits.apply(Default::default());
    let guest = match &prepared {
        Some(prepared) => Guest::boot_with(&rt, prepared, wasi, limits)?,
        None => {
            let mut g = Guest::boot_original(&rt, &wasm, wasi)?;
            g.set_limits(limits)?;
            g
        }
    };
    common::drive(guest, &a.checkpoint, started)
}

/// `--detach`: boots the guest on a node and prints its id.
fn detach(a: &RunArgs, wasm: &[u8]) -> anyhow::Result<ExitCode> {
    let mut dirs = Vec::new();
    for d in &a.dirs {
        let (host, guest) = parse_dir(d)?;
        dirs.push((crate::client::absolute(&host)?, guest));
    }
    let name = a
        .wasm
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The module travels once per node (or controller), by hash; a node
    // compiles it as it arrives.
    let hash = tern_api::module_hash(wasm);
    let spec = tern_api::BootSpec {
        name,
        module: Some(hash),
        module_b64: String::new(),
        args: a.args.clone(),
        env: a.env.clone(),
        dirs,
        max_memory: a.limits.max_memory,
        max_fds: a.limits.max_fds,
        cpu_weight: a.cpu_weight,
        cpu_quota: a.cpu_quota,
    };
    let id = match (&a.controller, &a.node) {
        (Some(ctl), _) => {
            let c = crate::client::controller(ctl, &a.access)?;
            c.upload_once(wasm)?;
            c.boot(&spec)?.id
        }
        (None, Some(node)) => {
            let c = crate::client::connect(node, &a.access)?;
            c.upload_once(wasm)?;
            c.boot(&spec)?
        }
        (None, None) => anyhow::bail!(
            "--detach needs a node or a controller: give --node HOST:PORT (or TERN_NODE), or --controller URL (or TERN_CONTROLLER)"
        ),
    };
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}
