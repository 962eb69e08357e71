//! `tern migrate`: move a running guest to another node, live.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use tern_api::{MigrateRequest, MigrationState};

use crate::client::NodeArg;

/// Arguments of `tern migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    node: NodeArg,
    /// The guest id.
    id: String,
    /// The destination node's API address (HOST:PORT); with --controller,
    /// its name or address.
    #[arg(long, value_name = "ADDR")]
    to: String,
    /// `precopy`: copy memory while the guest runs, then stop it briefly;
    /// `cold`: stop it, copy everything, resume it there; `postcopy`: stop
    /// it, move only its execution state, resume it there at once and
    /// fetch each page as it is first touched (the rest follows in the
    /// background; needs userfaultfd at the destination, so not on boards
    /// under qemu-user).
    #[arg(long, default_value = "precopy", value_parser = ["cold", "precopy", "postcopy"])]
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
    if let Some(ctl) = a.node.controller()? {
        // The controller moves it, and records the move.
        let m = ctl.migrate(&a.id, &a.to)?;
        if m.state != tern_api::MoveState::Done {
            bail!(
                "migration of {} failed (the guest runs on at {}): {}",
                a.id,
                m.from,
                m.error.as_deref().unwrap_or("unknown error")
            );
        }
        if a.json {
            println!("{}", serde_json::to_string(&m)?);
        } else {
            crate::common::say(format_args!(
                "migrated {} from {} to {} (move {}), downtime {:.2} ms",
                a.id,
                m.from,
                m.to,
                m.seq,
                m.downtime_ms.unwrap_or(0.0)
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let c = a.node.for_guest(&a.id)?;
    let req = MigrateRequest {
        to: a.to.clone(),
        strategy: Some(a.strategy.clone()),
        max_downtime_ms: Some(a.max_downtime),
        dirty: Some(a.dirty.clone()),
        migration_id: None,
    };
    let mid = c.migrate(&a.id, &req)?;
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
    let status = loop {
        let s = c.migration(&mid)?;
        if let Some(b) = &bar {
            let p = &s.progress;
            b.set_length(p.memory_bytes.max(1));
            b.set_position(p.bytes_sent);
            b.set_message(format!("{} round {}", p.phase, p.round));
        }
        if s.state != MigrationState::Running {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let r = match (status.state, status.report) {
        (MigrationState::Done, Some(r)) => r,
        // Post-copy failed after the switch: the guest is no longer here.
        _ if status.progress.phase == "post-copy" => bail!(
            "post-copy of {} failed after the switch (the destination reports the guest lost): {}",
            a.id,
            status.error.as_deref().unwrap_or("unknown error")
        ),
        _ => bail!(
            "migration of {} failed (the guest runs on at the source): {}",
            a.id,
            status.error.as_deref().unwrap_or("unknown error")
        ),
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        crate::common::say(format_args!(
            "migrated {} to {} ({}) in {:.1} ms, downtime {:.2} ms, {} rounds, {:.1} MiB sent ({} pages), dirty tracking {}",
            a.id,
            r.destination_node,
            r.strategy,
            r.total_ms,
            r.downtime_ms,
            r.rounds,
            r.bytes_sent as f64 / 1048576.0,
            r.pages_sent,
            r.dirty_tracking,
        ));
        if let Some(pc) = &r.postcopy {
            crate::common::say(format_args!(
                "post-copy: {} pages fetched on demand ({} faults, service p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms), {} pushed; all memory local {:.1} ms after the switch",
                pc.pages_requested,
                pc.faults,
                pc.fault_p50_ms,
                pc.fault_p99_ms,
                pc.fault_max_ms,
                pc.pages_pushed,
                pc.all_local_ms,
            ));
        }
        if r.base_pages > 0 {
            crate::common::say(format_args!(
                "the destination still held the guest from when it left: {:.1} MiB not sent ({} pages unchanged)",
                r.bytes_saved as f64 / 1048576.0,
                r.pages_reused,
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
