//! `tern checkpoint`: write an image of a guest running on a node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::client::{absolute, NodeArg};

/// Arguments of `tern checkpoint`.
#[derive(Args, Debug)]
pub struct CheckpointArgs {
    #[command(flatten)]
    node: NodeArg,
    /// The guest id.
    id: String,
    /// Where the node writes the image (a path on the node's filesystem).
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// Keep the guest running after the checkpoint (default: it stops).
    #[arg(long)]
    leave_running: bool,
}

/// Runs `tern checkpoint`.
pub fn main(a: CheckpointArgs) -> anyhow::Result<ExitCode> {
    let req = tern_api::CheckpointRequest {
        path: absolute(&a.image)?,
        leave_running: a.leave_running,
    };
    let r = a.node.for_guest(&a.id)?.checkpoint(&a.id, &req)?;
    crate::common::say(format_args!(
        "checkpoint written to {} ({} bytes; {} pages present){}",
        a.image.display(),
        r.image_bytes,
        r.pages,
        if a.leave_running {
            "; the guest runs on"
        } else {
            "; the guest is stopped"
        }
    ));
    Ok(ExitCode::SUCCESS)
}
