//! `tern restore`: resume a guest from its image.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tern_vm::wasi::OutputSink;
use tern_vm::Guest;

use crate::common::{self, CheckpointArgs, LimitArgs};

/// Arguments of `tern restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The image to resume.
    #[arg(value_name = "FILE")]
    image_file: PathBuf,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
    // Limits replacing the ones the image carries (not with --node).
    #[command(flatten)]
    limits: LimitArgs,
    /// Restore onto this node instead of in this process, and print the
    /// guest's id (the node reads FILE from its own filesystem).
    #[arg(
        long = "node",
        env = "TERN_NODE",
        value_name = "URL",
        conflicts_with = "checkpoint_after"
    )]
    node: Option<String>,
    #[command(flatten)]
    access: crate::client::Access,
}

/// Runs `tern restore`.
pub fn main(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if let Some(node) = &a.node {
        if a.limits.max_memory.is_some() || a.limits.max_fds.is_some() {
            anyhow::bail!(
                "--max-memory and --max-fds apply to restores in this process; on a node the guest keeps the image's limits within the node's maximum"
            );
        }
        let path = crate::client::absolute(&a.image_file)?;
        let id = crate::client::connect(node, &a.access)?.restore(&path)?;
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let bytes = tern_image::read_bytes(&a.image_file, tern_image::DEFAULT_MAX_FILE_LEN)?;
    let view = tern_image::view(&bytes).map_err(|source| tern_image::ReadError::Decode {
        path: a.image_file.clone(),
        source,
    })?;
    let rt = common::runtime()?;
    let mut guest = Guest::restore(&rt, &view, OutputSink::Inherit, OutputSink::Inherit)
        .with_context(|| format!("cannot restore {}", a.image_file.display()))?;
    let limits = a.limits.apply(guest.limits());
    guest
        .set_limits(limits)
        .with_context(|| format!("cannot restore {}", a.image_file.display()))?;
    drop(view);
    drop(bytes);
    common::drive(guest, &a.checkpoint, started)
}
