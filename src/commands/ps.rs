//! `tern ps`: the guests a node knows.

use std::process::ExitCode;

use clap::Args;

use crate::client::{connect, NodeArg};

/// Arguments of `tern ps`.
#[derive(Args, Debug)]
pub struct PsArgs {
    #[command(flatten)]
    node: NodeArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `tern ps`.
pub fn main(a: PsArgs) -> anyhow::Result<ExitCode> {
    let guests = connect(&a.node.node, &a.node.access)?.guests()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&guests)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<20} {:<14} {:<6} WHERE",
        "ID", "NAME", "STATE", "EXIT"
    );
    for g in &guests {
        let exit = g.exit_code.map(|c| c.to_string()).unwrap_or_default();
        let place = match (&g.moved_to, &g.came_from) {
            (Some(to), _) => format!("-> {to}"),
            (None, Some(from)) => format!("<- {from}"),
            (None, None) => String::new(),
        };
        println!(
            "{:<14} {:<20} {:<14} {:<6} {place}",
            g.id,
            g.name,
            g.state_label(),
            exit
        );
    }
    Ok(ExitCode::SUCCESS)
}
