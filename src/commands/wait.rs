//! `tern wait`: wait for a guest to end; print and exit with its status.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::client::{Client, NodeArg};

/// Arguments of `tern wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    node: NodeArg,
    /// The guest id.
    id: String,
}

/// Runs `tern wait`.
pub fn main(a: WaitArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::new(&a.node.node, &a.node.access)?;
    loop {
        let g = c.get(&format!("/v1/guests/{}/wait?timeout_ms=20000", a.id))?;
        match g["state"].as_str().unwrap_or("") {
            "running" | "paused" => continue,
            "exited" => {
                let code = g["exit_code"].as_i64().unwrap_or(0);
                println!("{code}");
                return Ok(ExitCode::from((code & 0xff) as u8));
            }
            // Follow the guest to where it went.
            "moved" => match g["moved_to"].as_str() {
                Some(to) => c = c.at(to),
                None => bail!("guest {} moved to an unknown node", a.id),
            },
            other => bail!(
                "guest {} is {other}{}",
                a.id,
                g["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        }
    }
}
