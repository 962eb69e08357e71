//! `tern ps`: the guests a node knows.

use std::process::ExitCode;

use clap::Args;

use crate::client::{Client, NodeArg};

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
    let guests = Client::new(&a.node.node, &a.node.access)?.get("/v1/guests")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&guests)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<20} {:<14} {:<6} WHERE",
        "ID", "NAME", "STATE", "EXIT"
    );
    for g in guests.as_array().into_iter().flatten() {
        let exit = g["exit_code"]
            .as_i64()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let place = g["moved_to"]
            .as_str()
            .map(|t| format!("-> {t}"))
            .or_else(|| g["came_from"].as_str().map(|f| format!("<- {f}")))
            .unwrap_or_default();
        // A guest ended by a limit shows which: `limited:memory`.
        let mut state = g["state"].as_str().unwrap_or("").to_string();
        if let Some(limit) = g["limit"].as_str() {
            state = format!("{state}:{limit}");
        }
        println!(
            "{:<14} {:<20} {:<14} {:<6} {place}",
            g["id"].as_str().unwrap_or(""),
            g["name"].as_str().unwrap_or(""),
            state,
            exit
        );
    }
    Ok(ExitCode::SUCCESS)
}
