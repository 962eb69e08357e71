//! `tern node`: the node daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tern_node::{Node, NodeConfig};

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
    /// Node class: `server` (fast, power-hungry) or `board` (slow,
    /// frugal).
    #[arg(long, default_value = "server")]
    class: tern_api::NodeClass,
    /// Keep the image of a guest that migrates away this long, so that if
    /// it comes back only the pages it changed meanwhile are sent (0: never).
    #[arg(long, value_name = "DURATION", default_value = "10m",
          value_parser = crate::common::parse_duration)]
    keep_departed: std::time::Duration,
    /// Most disk space those images take in all; the oldest go first.
    #[arg(long, value_name = "SIZE", default_value = "1GiB",
          value_parser = crate::common::parse_size)]
    keep_departed_size: u64,
    /// Cluster directory holding `ca.crt` and this node's certificate
    /// (`tern certs node NAME`): serve the API and migrations only over
    /// mutual TLS, to peers whose certificate the cluster CA signed.
    /// Needs --name.
    #[arg(long, env = "TERN_TLS_DIR", value_name = "DIR", requires = "name")]
    tls_dir: Option<PathBuf>,
    /// Bearer tokens the API accepts, one `ROLE TOKEN` a line (role
    /// `admin` or `read`); with it, every API call must authenticate.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Allow plaintext, unauthenticated service on an address other than
    /// loopback (anyone who reaches it controls every guest).
    #[arg(long)]
    insecure: bool,
    /// Memory limit of guests that give none, and the most any guest may
    /// ask for (64KiB to 4GiB). [default: 4GiB, all a wasm32 guest can
    /// address]
    #[arg(long, value_name = "SIZE", value_parser = crate::common::parse_memory_limit)]
    max_memory: Option<u64>,
    /// CPU capacity the controller may fill, in cores (e.g. `0.25`)
    /// [default: the CPU quota of the node's cgroup, else its cores].
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Power model: watts drawn idle and with every core busy, e.g.
    /// `2.7,6.4` [default by class: server 50,150; board 2.7,6.4; sources
    /// in docs/controller.md].
    #[arg(long, value_name = "IDLE_W,BUSY_W")]
    power: Option<tern_api::PowerModel>,
    /// Speed of one core against the reference x86_64 core (1.0) [default:
    /// measured by a short calibration at start; give it where that is
    /// noisy, or to model a machine in a benchmark].
    #[arg(long, value_name = "FACTOR", value_parser = parse_speed)]
    speed: Option<f64>,
    /// Join the controller at this URL (`tern controller`), and keep
    /// telling it this node is alive.
    #[arg(long, value_name = "URL", conflicts_with = "etcd")]
    join: Option<String>,
    /// Register in etcd (`http://HOST:PORT`, comma-separated) for the
    /// controllers sharing it, under a lease that lapses when this node
    /// dies.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Most output (stdout and stderr together) a guest's log may hold;
    /// a guest whose output reaches it is ended, state `limited`.
    #[arg(long, value_name = "SIZE", default_value = "64MiB",
          value_parser = crate::common::parse_size)]
    max_log: u64,
}

/// Parses a CPU capacity in cores: `0.25`, `1`, `8` (0.01 to 4096).
fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.01..=4096.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "invalid CPU capacity `{s}`: give a number of cores from 0.01 to 4096, e.g. 0.25"
        )),
    }
}

/// Keeps `key` = `api` in etcd under a lease of 3 s, renewed from a thread
/// of its own; a lapsed lease (etcd was unreachable too long) is replaced
/// and the key written again.
fn register(etcd: tern_etcd::Etcd, key: String, api: String) -> anyhow::Result<()> {
    let (k, v) = (key.clone(), api);
    let put = move |etcd: &tern_etcd::Etcd| -> Result<tern_etcd::LeaseKeeper, tern_etcd::Error> {
        let keeper = tern_etcd::LeaseKeeper::start(etcd.clone(), 3)?;
        etcd.put(&k, v.as_bytes(), Some(keeper.id()))?;
        Ok(keeper)
    };
    let mut keeper = put(&etcd)?;
    tracing::info!(event = "registered", etcd = %etcd.endpoints().join(","), key = %key);
    std::thread::Builder::new()
        .name("etcd".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if keeper.lost() {
                match put(&etcd) {
                    Ok(k) => {
                        keeper = k;
                        tracing::info!(event = "registered", key = %key, again = true);
                    }
                    Err(e) => tracing::warn!(event = "etcd_unreachable", error = %e),
                }
            }
        })?;
    Ok(())
}

/// Parses a core speed factor (0.0001 to 1000).
fn parse_speed(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0001..=1000.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "invalid speed `{s}`: give a factor from 0.0001 to 1000, e.g. 0.3"
        )),
    }
}

/// Runs the daemon until killed.
pub fn main(a: NodeArgs) -> anyhow::Result<ExitCode> {
    crate::common::init_daemon_log()?;
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
    let tls = match &a.tls_dir {
        Some(dir) => {
            let name = a.name.as_deref().context("--tls-dir needs --name")?;
            Some(tern_node::NodeTls::load(dir, name).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let tokens = match &a.token_file {
        Some(f) => tern_tls::token::Tokens::load(f)?,
        None => Default::default(),
    };
    let listener = std::net::TcpListener::bind(&a.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
    let bound = listener.local_addr().context("no local address")?;
    if tls.is_none() && !bound.ip().is_loopback() && !a.insecure {
        anyhow::bail!(
            "refusing to serve plaintext on {bound}: anyone who reaches it could control every \
             guest; give --tls-dir (see docs/security.md), or --insecure on a trusted network"
        );
    }
    let api = bound.to_string();
    let cpus = a.cpus.unwrap_or_else(tern_node::capacity::detect_cpus);
    let power = a.power.unwrap_or_else(|| a.class.default_power());
    let speed = a.speed.unwrap_or_else(tern_node::capacity::calibrate);
    let node = Node::open(NodeConfig {
        name: a.name.clone().unwrap_or_else(|| api.clone()),
        class: a.class,
        listen: api.clone(),
        migrate_listen,
        data_dir: a.data_dir.clone(),
        keep_departed: a.keep_departed,
        keep_departed_bytes: a.keep_departed_size,
        tls: tls.clone(),
        limits: tern_node::limits::NodeLimits {
            max_memory: a.max_memory,
            max_log: a.max_log,
        },
        cpus,
        power,
        speed,
    })
    .map_err(anyhow::Error::msg)?;
    let migrate_ip = node
        .migrate_addr
        .parse::<std::net::SocketAddr>()
        .map(|m| m.ip());
    if tls.is_none() && !a.insecure && migrate_ip.is_ok_and(|ip| !ip.is_loopback()) {
        anyhow::bail!(
            "refusing to accept plaintext migrations on {}: give --tls-dir (see \
             docs/security.md), or --insecure on a trusted network",
            node.migrate_addr
        );
    }
    let security = match (&tls, tokens.is_empty()) {
        (Some(_), true) => "mutual TLS",
        (Some(_), false) => "mutual TLS, tokens",
        (None, false) => "plaintext, tokens",
        (None, true) => "plaintext, no authentication",
    };
    tracing::info!(
        event = "node_started",
        name = %node.config.name,
        class = %node.config.class,
        api = %api,
        migrate = %node.migrate_addr,
        data_dir = %a.data_dir.display(),
        arch = std::env::consts::ARCH,
        security,
        max_memory = a.max_memory,
        max_log = a.max_log,
        cpu_control = %node.cpu_control(),
        cpus,
        idle_w = power.idle_w,
        busy_w = power.busy_w,
        speed = (speed * 1000.0).round() / 1000.0,
        join = a.join.as_deref()
    );
    if let Some(url) = &a.join {
        node.join(url);
    }
    if !a.etcd.is_empty() {
        let etcd = tern_etcd::Etcd::connect(&a.etcd)?;
        etcd.status()
            .map_err(|e| anyhow::anyhow!("etcd at {}: {e}", a.etcd.join(",")))?;
        let key = format!("/tern/nodes/{}", node.config.name);
        register(etcd, key, api.clone())?;
    }
    let auth = tern_node::http::Auth {
        tls: tls.map(|t| t.api),
        tokens,
        node_writes: &[],
    };
    tern_node::api::serve(listener, node, auth)
        .map_err(|e| anyhow::anyhow!("the API failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
