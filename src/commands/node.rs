//! `tern node`: the node daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tern_node::{log_event, Node, NodeConfig};

/// Arguments of `tern node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Address of the HTTP/JSON API (and `/metrics`), e.g. 127.0.0.1:7070.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Address of the migration listener (default: the API's host, next port).
    #[arg(long, value_name = "ADDR")]
    migrate_listen: Option<String>,
    /// Directory for the node's state and guest logs (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Node name (default: the API address).
    #[arg(long)]
    name: Option<String>,
    /// Node class.
    #[arg(long, default_value = "server", value_parser = ["server", "board"])]
    class: String,
    /// Keep the image of a guest that migrates away this long, so that if
    /// it comes back only the pages it changed meanwhile are sent (0: never).
    #[arg(long, value_name = "DURATION", default_value = "10m",
          value_parser = crate::common::parse_duration)]
    keep_departed: std::time::Duration,
    /// Most disk space those images take in all; the oldest go first.
    #[arg(long, value_name = "SIZE", default_value = "1GiB",
          value_parser = crate::common::parse_size)]
    keep_departed_size: u64,
    /// Memory limit of guests that give none, and the most any guest may
    /// ask for (64KiB to 4GiB). [default: 4GiB, all a wasm32 guest can
    /// address]
    #[arg(long, value_name = "SIZE", value_parser = crate::common::parse_memory_limit)]
    max_memory: Option<u64>,
    /// Most output (stdout and stderr together) a guest's log may hold;
    /// a guest whose output reaches it is ended, state `limited`.
    #[arg(long, value_name = "SIZE", default_value = "64MiB",
          value_parser = crate::common::parse_size)]
    max_log: u64,
}

/// Runs the daemon until killed.
pub fn main(a: NodeArgs) -> anyhow::Result<ExitCode> {
    let migrate_listen = match &a.migrate_listen {
        Some(m) => m.clone(),
        None => {
            let (host, port) = a
                .listen
                .rsplit_once(':')
                .context("--listen must be HOST:PORT")?;
            let port: u16 = port.parse().context("--listen must be HOST:PORT")?;
            format!(
                "{host}:{}",
                if port == 0 { 0 } else { port.wrapping_add(1) }
            )
        }
    };
    let server = tiny_http::Server::http(&a.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
    let api = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| a.listen.clone());
    let node = Node::open(NodeConfig {
        name: a.name.clone().unwrap_or_else(|| api.clone()),
        class: a.class.clone(),
        listen: api.clone(),
        migrate_listen,
        data_dir: a.data_dir.clone(),
        keep_departed: a.keep_departed,
        keep_departed_bytes: a.keep_departed_size,
        limits: tern_node::limits::NodeLimits {
            max_memory: a.max_memory,
            max_log: a.max_log,
        },
    })
    .map_err(anyhow::Error::msg)?;
    log_event(
        "node_started",
        serde_json::json!({ "name": node.config.name, "class": node.config.class, "api": api,
            "migrate": node.migrate_addr, "data_dir": a.data_dir, "arch": std::env::consts::ARCH,
            "max_memory": a.max_memory, "max_log": a.max_log, "cpu_control": node.cpu_control() }),
    );
    tern_node::api::serve(server, node);
    Ok(ExitCode::SUCCESS)
}
