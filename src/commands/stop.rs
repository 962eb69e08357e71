//! `tern stop`: stop a guest on a node.

use std::process::ExitCode;

use clap::Args;

use crate::client::{Client, NodeArg};

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
    let g = Client::new(&a.node.node, &a.node.access)?
        .post(&format!("/v1/guests/{}/stop", a.id), &serde_json::json!({}))?;
    crate::common::say(format_args!(
        "guest {} is {}",
        a.id,
        g["state"].as_str().unwrap_or("stopped")
    ));
    Ok(ExitCode::SUCCESS)
}
