//! Talking to a node's HTTP/JSON API (`--node URL` or `TERN_NODE`), over
//! plain HTTP or mutual TLS (`--tls-dir`), with a token if asked
//! (`--token-file`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tern_api::GuestState;
pub use tern_api::{ControllerClient, NodeClient};

/// How the CLI proves who it is to nodes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Access {
    /// Cluster directory holding `ca.crt` and this client's certificate
    /// (`tern certs client`): talk to nodes over mutual TLS.
    #[arg(long, env = "TERN_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Which client certificate of --tls-dir to use (`client-NAME.crt`;
    /// default: the only one there).
    #[arg(long, env = "TERN_TLS_CLIENT", value_name = "NAME")]
    pub tls_client: Option<String>,
    /// File holding a bearer token the node accepts (for scripts without a
    /// client certificate).
    #[arg(long, env = "TERN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl Access {
    pub fn tls(&self) -> anyhow::Result<Option<Arc<tern_tls::rustls::ClientConfig>>> {
        let Some(dir) = &self.tls_dir else {
            return Ok(None);
        };
        let config = if self.tls_client.is_none()
            && self.token_file.is_some()
            && !tern_tls::has_client_cert(dir)
        {
            tern_tls::anonymous_client_config(dir)?
        } else {
            tern_tls::Material::load_client(dir, self.tls_client.as_deref())?.client_config()?
        };
        Ok(Some(config))
    }

    pub fn token(&self) -> anyhow::Result<Option<String>> {
        match &self.token_file {
            Some(f) => Ok(Some(tern_tls::token::read_client_token(f)?)),
            None => Ok(None),
        }
    }
}

/// Which node a command talks to: a node, or a controller that knows
/// where the guest runs now.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArg {
    /// The node's API address (`HOST:PORT`, or a URL).
    #[arg(
        long = "node",
        env = "TERN_NODE",
        value_name = "URL",
        required_unless_present = "controller"
    )]
    pub node: Option<String>,
    /// A controller's API address (`tern controller`): the command follows
    /// the guest to whichever node runs it now. Wins over --node.
    #[arg(long, env = "TERN_CONTROLLER", value_name = "URL")]
    pub controller: Option<String>,
    #[command(flatten)]
    pub access: Access,
}

impl NodeArg {
    /// The controller, when one is given.
    pub fn controller(&self) -> anyhow::Result<Option<ControllerClient>> {
        self.controller
            .as_deref()
            .map(|c| controller(c, &self.access))
            .transpose()
    }

    /// The node the command is aimed at (`--node`).
    pub fn node(&self) -> anyhow::Result<NodeClient> {
        match &self.node {
            Some(n) => connect(n, &self.access),
            None => anyhow::bail!("give --node HOST:PORT or set TERN_NODE"),
        }
    }

    /// The node running guest `id` now: asked of the controller when one
    /// is given, else `--node`.
    pub fn for_guest(&self, id: &str) -> anyhow::Result<NodeClient> {
        match self.controller()? {
            Some(c) => {
                let at = c.locate(id)?;
                // A guest whose node died is gone with it: say so, rather
                // than that its node cannot be reached.
                if let Some(r) = at.record.as_ref().filter(|r| r.state == GuestState::Lost) {
                    anyhow::bail!(
                        "guest {id} is lost: {}",
                        r.error.as_deref().unwrap_or("its node is gone")
                    );
                }
                connect(&at.api, &self.access)
            }
            None => self.node(),
        }
    }
}

/// A controller's API client with `access`'s credentials.
pub fn controller(addr: &str, access: &Access) -> anyhow::Result<ControllerClient> {
    Ok(ControllerClient::new(addr, access.tls()?, access.token()?))
}

/// A node's API client with `access`'s credentials, for the node at
/// `addr` (`HOST:PORT` or a URL).
pub fn connect(addr: &str, access: &Access) -> anyhow::Result<NodeClient> {
    Ok(NodeClient::new(addr, access.tls()?, access.token()?))
}

/// A path made absolute (the node resolves paths on its own filesystem).
pub fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::path::absolute(p)
        .with_context(|| format!("bad path {}", p.display()))?
        .display()
        .to_string())
}
