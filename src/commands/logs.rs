//! `tern logs`: a guest's whole output since it started (also after it
//! migrated: the log moves with the guest).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::client::NodeArg;

/// Arguments of `tern logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Keep printing new output until the guest ends (following it when it
    /// moves to another node).
    #[arg(short, long)]
    follow: bool,
    /// The guest id.
    id: String,
}

/// Runs `tern logs`.
pub fn main(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut c = a.node.for_guest(&a.id)?;
    let mut offset = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let tern_api::client::LogPart { bytes, state } = c.logs(&a.id, offset)?;
        out.write_all(&bytes)?;
        out.flush()?;
        offset += bytes.len() as u64;
        let live = state == "running" || state == "paused";
        // The guest left: its whole log went with it; read on there.
        if let (true, Some(to)) = (bytes.is_empty(), state.strip_prefix("moved ")) {
            if a.follow {
                crate::common::say(format_args!("guest {} moved to {to}", a.id));
            }
            c = c.at(to);
            continue;
        }
        // Without -f, read until the log has nothing more to give.
        if bytes.is_empty() && (!a.follow || !live) {
            return Ok(ExitCode::SUCCESS);
        }
        if bytes.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
