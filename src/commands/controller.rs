//! `tern controller`: the daemon that places guests and moves them by
//! itself (offloading an overloaded server to boards, bringing guests back
//! when it has room), by load or by energy.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tern_controller::policy::{Policy, Tuning};
use tern_controller::state::{EtcdStore, FileStore, Store, ETCD_PREFIX};
use tern_controller::{Controller, ControllerConfig};

/// Arguments of `tern controller`.
#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Address of the controller's HTTP/JSON API (and `/metrics`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    listen: String,
    /// Directory for the controller's state (without --etcd) and modules.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// etcd endpoints (`http://HOST:PORT`, comma-separated): membership,
    /// placement and moves live there, and one of the controllers sharing
    /// them leads.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',')]
    etcd: Vec<String>,
    /// `throughput`: offload an overloaded server to boards and bring
    /// guests back when it has room; `energy`: most work per joule within
    /// --floor.
    #[arg(long, default_value = "throughput")]
    policy: Policy,
    /// The controller's name (default: its API address).
    #[arg(long)]
    name: Option<String>,
    /// How often it polls nodes and decides.
    #[arg(long, value_name = "DURATION", default_value = "500ms",
          value_parser = crate::common::parse_duration)]
    tick: Duration,
    /// Least time a guest stays on a node before it moves again.
    #[arg(long, value_name = "DURATION", default_value = "5s",
          value_parser = crate::common::parse_duration)]
    min_residence: Duration,
    /// Least time a guest has run before it is moved at all.
    #[arg(long, value_name = "DURATION", default_value = "2s",
          value_parser = crate::common::parse_duration)]
    min_age: Duration,
    /// A node silent for this long is down (its guests are reported lost).
    #[arg(long, value_name = "DURATION", default_value = "5s",
          value_parser = crate::common::parse_duration)]
    node_timeout: Duration,
    /// Energy policy: the least fraction of the best available speed a
    /// guest may be given.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
    floor: f64,
    /// Cluster directory holding `ca.crt` and this controller's
    /// certificate (`tern certs controller NAME`): serve the API only over
    /// mutual TLS, and call the nodes with that certificate. Needs --name.
    #[arg(long, value_name = "DIR", requires = "name")]
    tls_dir: Option<PathBuf>,
    /// Bearer tokens the API accepts, one `ROLE TOKEN` a line (role
    /// `admin` or `read`, as `tern certs token` prints them); with it,
    /// every API call must authenticate.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A file holding the bearer token to give nodes that ask for one
    /// (nodes with a --token-file and no TLS).
    #[arg(long, value_name = "FILE")]
    node_token_file: Option<PathBuf>,
    /// Allow plaintext, unauthenticated service on an address other than
    /// loopback (anyone who reaches it could move every guest).
    #[arg(long)]
    insecure: bool,
}

/// Runs the daemon until killed.
pub fn main(a: ControllerArgs) -> anyhow::Result<ExitCode> {
    crate::common::init_daemon_log()?;
    if !(0.0..=1.0).contains(&a.floor) {
        anyhow::bail!("--floor {} is not a fraction from 0 to 1", a.floor);
    }
    let listener = std::net::TcpListener::bind(&a.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
    let bound = listener.local_addr().context("no local address")?;
    let tls = match &a.tls_dir {
        Some(dir) => {
            let name = a.name.as_deref().context("--tls-dir needs --name")?;
            Some(tern_tls::Material::load_controller(dir, name).map_err(|e| {
                anyhow::anyhow!(
                    "{e} (make one with `tern certs controller {name} --dir {}`)",
                    dir.display()
                )
            })?)
        }
        None => None,
    };
    let tokens = match &a.token_file {
        Some(f) => tern_tls::token::Tokens::load(f)?,
        None => Default::default(),
    };
    let tokens_given = !tokens.is_empty();
    if tls.is_none() && tokens.is_empty() && !bound.ip().is_loopback() && !a.insecure {
        anyhow::bail!(
            "refusing to serve the controller API on {bound} without authentication: anyone \
             who reaches it could move every guest; give --tls-dir (see docs/security.md), \
             or --insecure on a trusted network"
        );
    }
    let (server_tls, node_tls) = match &tls {
        Some(m) => (
            Some(m.server_config(tern_tls::ClientAuth::Optional)?),
            Some(m.client_config()?),
        ),
        None => (None, None),
    };
    let node_token = match &a.node_token_file {
        Some(f) => Some(tern_tls::token::read_client_token(f)?),
        None => None,
    };
    let name = a.name.clone().unwrap_or_else(|| bound.to_string());
    let tuning = Tuning {
        policy: a.policy,
        min_residence_s: a.min_residence.as_secs_f64(),
        min_age_s: a.min_age.as_secs_f64(),
        floor: a.floor,
        ..Tuning::default()
    };
    let config = ControllerConfig {
        name: name.clone(),
        data_dir: a.data_dir.clone(),
        tuning,
        tick: a.tick,
        node_timeout: a.node_timeout,
        node_tls,
        node_token,
    };
    let (store, nodes, election): (Box<dyn Store>, _, _) = if a.etcd.is_empty() {
        let s = FileStore::open(&a.data_dir).map_err(anyhow::Error::msg)?;
        (Box::new(s), None, None)
    } else {
        let etcd = tern_etcd::Etcd::connect(&a.etcd)?;
        etcd.status()
            .map_err(|e| anyhow::anyhow!("etcd at {}: {e}", a.etcd.join(",")))?;
        let election =
            tern_etcd::Election::new(etcd.clone(), &format!("{ETCD_PREFIX}/controller"), &name, 2)?;
        let store = Arc::new(EtcdStore::new(etcd.clone(), election));
        let list = etcd.clone();
        let nodes: tern_controller::controller::Membership = Box::new(move || {
            let kvs = list
                .get_prefix(&format!("{ETCD_PREFIX}/nodes/"))
                .map_err(|e| e.to_string())?;
            Ok(kvs
                .into_iter()
                .filter_map(|kv| {
                    let name = kv.key.rsplit('/').next()?.to_string();
                    Some((name, String::from_utf8(kv.value).ok()?))
                })
                .collect())
        });
        (
            Box::new(SharedStore(store.clone())),
            Some(nodes),
            Some(store),
        )
    };
    let controller = Controller::new(config, store, nodes).map_err(anyhow::Error::msg)?;
    tracing::info!(
        event = "controller_started",
        name = %name,
        api = %bound,
        policy = a.policy.as_str(),
        store = %controller.store_description(),
        security = match (tls.is_some(), tokens_given) {
            (true, false) => "mutual TLS",
            (true, true) => "mutual TLS, tokens",
            (false, true) => "plaintext, tokens",
            (false, false) => "plaintext, no authentication",
        },
        tick_ms = a.tick.as_millis() as u64
    );
    if let Some(store) = election {
        let c = controller.clone();
        std::thread::Builder::new()
            .name("campaign".into())
            .spawn(move || campaign(c, store))
            .context("cannot start the election thread")?;
    }
    let c = controller.clone();
    std::thread::Builder::new()
        .name("decide".into())
        .spawn(move || tern_controller::controller::run_loop(c))
        .context("cannot start the controller loop")?;
    let auth = tern_node::http::Auth {
        tls: server_tls,
        tokens,
        node_writes: &[],
    };
    tern_controller::api::serve(listener, controller, auth)
        .map_err(|e| anyhow::anyhow!("the API failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs for leader every half second, for as long as the process lives.
fn campaign(c: Arc<Controller>, store: Arc<EtcdStore>) {
    loop {
        let (leads, leader) = {
            let mut e = store.election();
            let leads = e.try_lead().unwrap_or(false);
            (leads, e.leader().ok().flatten())
        };
        if let Err(e) = c.set_leader(leads, leader) {
            tracing::warn!(event = "leader_state_unreadable", error = %e);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The etcd store, shared between the controller and the election thread.
struct SharedStore(Arc<EtcdStore>);

impl Store for SharedStore {
    fn load(&self) -> Result<tern_controller::state::State, String> {
        self.0.load()
    }
    fn save(&self, s: &tern_controller::state::State) -> Result<(), String> {
        self.0.save(s)
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}
