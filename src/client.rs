//! Talking to a node's HTTP/JSON API (`--node URL` or `TERN_NODE`), over
//! plain HTTP or mutual TLS (`--tls-dir`), with a token if asked
//! (`--token-file`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

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
    fn tls(&self) -> anyhow::Result<Option<Arc<tern_tls::rustls::ClientConfig>>> {
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

    fn token(&self) -> anyhow::Result<Option<String>> {
        match &self.token_file {
            Some(f) => Ok(Some(tern_tls::token::read_client_token(f)?)),
            None => Ok(None),
        }
    }
}

/// Which node a command talks to.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArg {
    /// The node's API address (`HOST:PORT`, or a URL).
    #[arg(long = "node", env = "TERN_NODE", value_name = "URL")]
    pub node: String,
    #[command(flatten)]
    pub access: Access,
}

/// A node's API.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    tls: bool,
    auth: Option<String>,
}

impl Client {
    /// For the node at `addr`, with `access`'s credentials.
    pub fn new(addr: &str, access: &Access) -> anyhow::Result<Client> {
        let tls = access.tls()?;
        let secure = tls.is_some();
        Ok(Client {
            base: tern_node::base_url(addr, secure),
            agent: tern_node::http_agent(tls),
            tls: secure,
            auth: access.token()?.map(|t| format!("Bearer {t}")),
        })
    }

    /// The same credentials, for another node.
    pub fn at(&self, addr: &str) -> Client {
        Client {
            base: tern_node::base_url(addr, self.tls),
            agent: self.agent.clone(),
            tls: self.tls,
            auth: self.auth.clone(),
        }
    }

    fn request(&self, method: &str, path: &str, timeout: Duration) -> ureq::Request {
        let r = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .timeout(timeout);
        match &self.auth {
            Some(a) => r.set("authorization", a),
            None => r,
        }
    }

    fn check(&self, r: Result<ureq::Response, ureq::Error>) -> anyhow::Result<ureq::Response> {
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(_, resp)) => {
                let v: Value = resp.into_json().unwrap_or_default();
                bail!("{}", v["error"].as_str().unwrap_or("the node refused"))
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot reach node {}: {}",
                self.base,
                tern_node::explain_http(&e)
            )),
        }
    }

    /// GET returning JSON.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.request("GET", path, Duration::from_secs(120)).call();
        self.check(r)?
            .into_json()
            .context("the node answered nonsense")
    }

    /// GET returning bytes and the `x-tern-state` header.
    pub fn get_bytes(&self, path: &str) -> anyhow::Result<(Vec<u8>, String)> {
        let r = self.request("GET", path, Duration::from_secs(60)).call();
        let resp = self.check(r)?;
        let state = resp.header("x-tern-state").unwrap_or("").to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes)?;
        Ok((bytes, state))
    }

    /// POST JSON returning JSON.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .request("POST", path, Duration::from_secs(600))
            .send_json(body.clone());
        self.check(r)?
            .into_json()
            .context("the node answered nonsense")
    }
}

/// A path made absolute (the node resolves paths on its own filesystem).
pub fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::path::absolute(p)
        .with_context(|| format!("bad path {}", p.display()))?
        .display()
        .to_string())
}
