//! `tern migrate`: move a running guest to another node, live.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde_json::Value;

use crate::client::{Client, NodeArg};

/// Arguments of `tern migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    node: NodeArg,
    /// The guest id.
    id: String,
    /// The destination node's API address (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    to: String,
    /// `precopy`: copy memory while the guest runs, then stop it briefly;
    /// `cold`: stop it, copy everything, resume it there.
    #[arg(long, default_value = "precopy", value_parser = ["cold", "precopy"])]
    strategy: String,
    /// Pre-copy downtime budget in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    max_downtime: u64,
    /// Dirty-page tracking: `auto` (userfaultfd write-protect where the
    /// kernel has it, else page hashing), `uffd` or `hash`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "uffd", "hash"])]
    dirty: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `tern migrate`.
pub fn main(a: MigrateArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&a.node.node, &a.node.access)?;
    let started = c.post(
        &format!("/v1/guests/{}/migrate", a.id),
        &serde_json::json!({ "to": a.to, "strategy": a.strategy,
            "max_downtime_ms": a.max_downtime, "dirty": a.dirty }),
    )?;
    let mid = started["migration"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let status: Value = loop {
        let s = c.get(&format!("/v1/migrations/{mid}"))?;
        if let Some(b) = &bar {
            let p = &s["progress"];
            b.set_length(p["memory_bytes"].as_u64().unwrap_or(0).max(1));
            b.set_position(p["bytes_sent"].as_u64().unwrap_or(0));
            b.set_message(format!(
                "{} round {}",
                p["phase"].as_str().unwrap_or(""),
                p["round"]
            ));
        }
        if s["state"] != "running" {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if status["state"] != "done" {
        bail!(
            "migration of {} failed (the guest runs on at the source): {}",
            a.id,
            status["error"].as_str().unwrap_or("unknown error")
        );
    }
    let r = &status["report"];
    if a.json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        crate::common::say(format_args!(
            "migrated {} to {} ({}) in {:.1} ms, downtime {:.2} ms, {} rounds, {:.1} MiB sent ({} pages), dirty tracking {}",
            a.id,
            r["destination_node"].as_str().unwrap_or(&a.to),
            r["strategy"].as_str().unwrap_or(""),
            r["total_ms"].as_f64().unwrap_or(0.0),
            r["downtime_ms"].as_f64().unwrap_or(0.0),
            r["rounds"],
            r["bytes_sent"].as_f64().unwrap_or(0.0) / 1048576.0,
            r["pages_sent"],
            r["dirty_tracking"].as_str().unwrap_or(""),
        ));
        let saved = r["bytes_saved"].as_u64().unwrap_or(0);
        if r["base_pages"].as_u64().unwrap_or(0) > 0 {
            crate::common::say(format_args!(
                "the destination still held the guest from when it left: {:.1} MiB not sent ({} pages unchanged)",
                saved as f64 / 1048576.0,
                r["pages_reused"],
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
