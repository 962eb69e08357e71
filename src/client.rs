//! Talking to a node's HTTP/JSON API (`--node URL` or `TERN_NODE`).

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// Which node a command talks to.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArg {
    /// The node's API address (`HOST:PORT` or `http://HOST:PORT`).
    #[arg(long = "node", env = "TERN_NODE", value_name = "URL")]
    pub node: String,
}

/// A node's API.
pub struct Client {
    base: String,
}

impl Client {
    /// For `addr`.
    pub fn new(addr: &str) -> Client {
        Client {
            base: tern_node::base_url(addr),
        }
    }

    fn check(&self, r: Result<ureq::Response, ureq::Error>) -> anyhow::Result<ureq::Response> {
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(_, resp)) => {
                let v: Value = resp.into_json().unwrap_or_default();
                bail!("{}", v["error"].as_str().unwrap_or("the node refused"))
            }
            Err(e) => Err(anyhow::anyhow!("cannot reach node {}: {e}", self.base)),
        }
    }

    /// GET returning JSON.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = ureq::get(&format!("{}{path}", self.base))
            .timeout(Duration::from_secs(120))
            .call();
        self.check(r)?
            .into_json()
            .context("the node answered nonsense")
    }

    /// GET returning bytes and the `x-tern-state` header.
    pub fn get_bytes(&self, path: &str) -> anyhow::Result<(Vec<u8>, String)> {
        let r = ureq::get(&format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60))
            .call();
        let resp = self.check(r)?;
        let state = resp.header("x-tern-state").unwrap_or("").to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes)?;
        Ok((bytes, state))
    }

    /// POST JSON returning JSON.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = ureq::post(&format!("{}{path}", self.base))
            .timeout(Duration::from_secs(600))
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
