//! How a node is started: everything `tern node`'s flags decide, read once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_api::NodeClass;

use crate::limits;

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Server or board.
    pub class: NodeClass,
    /// HTTP API address.
    pub listen: String,
    /// Migration listener address.
    pub migrate_listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// How long to keep the image of a guest that left (0: not at all).
    pub keep_departed: std::time::Duration,
    /// Most bytes of such images kept in all.
    pub keep_departed_bytes: u64,
    /// Mutual TLS for the API, migrations and calls to other nodes (None:
    /// plain TCP).
    pub tls: Option<NodeTls>,
    /// Limits of the guests (memory default and maximum, log size).
    pub limits: limits::NodeLimits,
    /// CPU capacity in cores, as the controller weighs it.
    pub cpus: f64,
    /// Power model (watts idle and busy).
    pub power: tern_api::PowerModel,
    /// Speed of one core against the reference core.
    pub speed: f64,
}

/// A node's certificate, made into the TLS configurations it needs.
#[derive(Clone)]
pub struct NodeTls {
    /// For migrations, both ways.
    pub migrate: tern_migrate::Tls,
    /// For the API (client certificates optional: tokens stand in).
    pub api: Arc<tern_tls::rustls::ServerConfig>,
    /// For calls to other nodes' APIs.
    pub client: Arc<tern_tls::rustls::ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Loads node `name`'s certificate from cluster directory `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<NodeTls, String> {
        use tern_tls::{ClientAuth, Material};
        let m = Material::load_node(dir, name).map_err(|e| e.to_string())?;
        let client = m.client_config().map_err(|e| e.to_string())?;
        Ok(NodeTls {
            migrate: tern_migrate::Tls {
                client: client.clone(),
                server: m
                    .server_config(ClientAuth::Required)
                    .map_err(|e| e.to_string())?,
            },
            api: m
                .server_config(ClientAuth::Optional)
                .map_err(|e| e.to_string())?,
            client,
        })
    }
}
