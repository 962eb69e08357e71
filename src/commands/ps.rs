//! `tern ps`: the guests a node knows.

use std::process::ExitCode;

use clap::Args;

use crate::client::NodeArg;

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
    let guests = match a.node.controller()? {
        Some(c) => c
            .guests()?
            .into_iter()
            .filter_map(|l| l.record.map(|r| (Some(l.node), r)))
            .collect::<Vec<_>>(),
        None => a
            .node
            .node()?
            .guests()?
            .into_iter()
            .map(|r| (None, r))
            .collect(),
    };
    if a.json {
        let records: Vec<_> = guests.iter().map(|(_, r)| r).collect();
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<20} {:<14} {:<6} WHERE",
        "ID", "NAME", "STATE", "EXIT"
    );
    for (node, g) in &guests {
        let exit = g.exit_code.map(|c| c.to_string()).unwrap_or_default();
        let place = match (&g.moved_to, &g.came_from) {
            (Some(to), _) => format!("-> {to}"),
            (None, Some(from)) => format!("<- {from}"),
            (None, None) => String::new(),
        };
        let place = match node {
            Some(n) if g.state.is_live() => format!("on {n} {place}"),
            _ => place,
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
