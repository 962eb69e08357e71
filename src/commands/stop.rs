//! `tern stop`: stop a guest on a node.

use std::process::ExitCode;

use clap::Args;

use crate::client::NodeArg;

/// Arguments of `tern stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    node: NodeArg,
    /// The guest id.
    id: String,
}

/// Runs `tern stop`.
pub fn main(a: StopArgs) -> anyhow::Result<ExitCode> {
    let g = a.node.for_guest(&a.id)?.stop(&a.id)?;
    crate::common::say(format_args!("guest {} is {}", a.id, g.state_label()));
    Ok(ExitCode::SUCCESS)
}
