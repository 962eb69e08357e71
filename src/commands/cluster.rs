//! `tern cluster`: the cluster as a controller sees it: each node's class,
//! ISA, CPU capacity, load, power draw and guests, and the recent moves
//! with their reasons.

use std::process::ExitCode;

use clap::Args;
use tern_api::NodeHealth;

use crate::client::Access;

/// Arguments of `tern cluster`.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The controller's API address (`HOST:PORT`, or a URL).
    #[arg(long, env = "TERN_CONTROLLER", value_name = "URL")]
    controller: String,
    #[command(flatten)]
    access: Access,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Runs `tern cluster`.
pub fn main(a: ClusterArgs) -> anyhow::Result<ExitCode> {
    let v = crate::client::controller(&a.controller, &a.access)?.cluster()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "controller {} (leader: {}), policy {}, state in {}",
        v.controller,
        v.leader.as_deref().unwrap_or("none"),
        v.policy,
        v.store
    );
    println!(
        "{:<16} {:<7} {:<8} {:>5} {:>6} {:>5} {:>8} {:>9} {:>10}  GUESTS",
        "NODE", "CLASS", "ISA", "CPUS", "SPEED", "LOAD", "CPU USED", "POWER W", "ENERGY J"
    );
    for n in &v.nodes {
        let guests: Vec<&str> = n
            .guests
            .iter()
            .filter(|g| g.state.is_live())
            .map(|g| g.id.as_str())
            .collect();
        let name = match n.health {
            NodeHealth::Up => n.info.name.clone(),
            NodeHealth::Down => format!("{} (down)", n.info.name),
        };
        println!(
            "{:<16} {:<7} {:<8} {:>5.2} {:>6.2} {:>5} {:>8.2} {:>9.1} {:>10.0}  {}",
            name,
            n.info.class.as_str(),
            n.info.arch,
            n.info.cpus,
            n.info.speed,
            n.runnable,
            n.cpu_used,
            n.power_w,
            n.energy_j,
            guests.join(" ")
        );
    }
    if !v.moves.is_empty() {
        println!();
        println!(
            "{:>4} {:<14} {:<16} {:<16} {:<9} {:<8} {:>9}  WHY",
            "MOVE", "GUEST", "FROM", "TO", "REASON", "STATE", "DOWN MS"
        );
        for m in &v.moves {
            println!(
                "{:>4} {:<14} {:<16} {:<16} {:<9} {:<8} {:>9}  {}",
                m.seq,
                m.guest,
                m.from,
                m.to,
                m.reason,
                format!("{:?}", m.state).to_lowercase(),
                m.downtime_ms.map(|d| format!("{d:.1}")).unwrap_or_default(),
                m.error.as_deref().unwrap_or(&m.detail)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
