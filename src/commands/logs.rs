//! `tern logs`: a guest's whole output since it started (also after it
//! migrated: the log moves with the guest).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::client::{connect, NodeArg};

/// Arguments of `tern logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Keep printing new output until the guest ends or leaves the node.
    #[arg(short, long)]
    follow: bool,
    /// The guest id.
    id: String,
}

/// Runs `tern logs`.
pub fn main(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let c = connect(&a.node.node, &a.node.access)?;
    let mut offset = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let tern_api::client::LogPart { bytes, state } = c.logs(&a.id, offset)?;
        out.write_all(&bytes)?;
        out.flush()?;
        offset += bytes.len() as u64;
        let live = state == "running" || state == "paused";
        // Without -f, read until the log has nothing more to give.
        if bytes.is_empty() && (!a.follow || !live) {
            if a.follow && state.starts_with("moved") {
                crate::common::say(format_args!(
                    "guest {} moved to {}",
                    a.id,
                    state.trim_start_matches("moved ")
                ));
            }
            return Ok(ExitCode::SUCCESS);
        }
        if bytes.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
