//! `tern wait`: wait for a guest to end; print and exit with its status.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use tern_api::GuestState;

use crate::client::NodeArg;

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
    let mut c = a.node.for_guest(&a.id)?;
    loop {
        let g = c.wait(&a.id, Duration::from_secs(20))?;
        match g.state {
            GuestState::Running | GuestState::Paused => continue,
            GuestState::Exited => {
                let code = g.exit_code.unwrap_or(0);
                println!("{code}");
                return Ok(ExitCode::from((code & 0xff) as u8));
            }
            // Follow the guest to where it went.
            GuestState::Moved => match &g.moved_to {
                Some(to) => c = c.at(to),
                None => bail!("guest {} moved to an unknown node", a.id),
            },
            _ => bail!(
                "guest {} is {}{}",
                a.id,
                g.state_label(),
                g.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        }
    }
}
