//! A node's API as typed calls, over plain HTTP or mutual TLS, with a
//! bearer token when one is given. The CLI, the nodes (calling each other)
//! and the controller all talk through this one client.

use std::fmt;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cluster::{ClusterView, JoinRequest, Joined, Located, MoveRecord, MoveRequest};
use crate::migration::{MigrateRequest, MigrateStarted, MigrationStatus, Report};
use crate::types::{
    module_hash, BootSpec, CheckpointReply, CheckpointRequest, Created, ErrorBody, GuestRecord,
    ModuleStatus, NodeInfo, RestoreRequest,
};

/// Why a call failed, in one line.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The node answered with an error status.
    Refused {
        /// HTTP status.
        status: u16,
        /// The node's one-line reason.
        message: String,
    },
    /// The node could not be reached (or TLS failed).
    Unreachable {
        /// The node's base URL.
        node: String,
        /// Why.
        why: String,
    },
    /// The node answered something that is not the API.
    Nonsense {
        /// The node's base URL.
        node: String,
        /// What was wrong.
        why: String,
    },
}

impl Error {
    /// True when the node said the thing asked about does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Refused { status: 404, .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused { message, .. } => f.write_str(message),
            Error::Unreachable { node, why } => write!(f, "cannot reach node {node}: {why}"),
            Error::Nonsense { node, why } => write!(f, "node {node} answered nonsense: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// Normalizes `host:port` or `http(s)://host:port` to a URL, `https` when
/// `tls` (a URL that names its scheme keeps it).
pub fn base_url(addr: &str, tls: bool) -> String {
    let a = addr.trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else if tls {
        format!("https://{a}")
    } else {
        format!("http://{a}")
    }
}

/// An HTTP agent: with `tls`, it presents that configuration's
/// certificate and trusts only the cluster's CA.
pub fn http_agent(tls: Option<Arc<tern_tls::rustls::ClientConfig>>) -> ureq::Agent {
    let b = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10));
    match tls {
        Some(c) => b.tls_config(c).build(),
        None => b.build(),
    }
}

/// One line saying why an HTTP call failed, naming TLS refusals plainly.
pub fn explain_http(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, _) => format!("HTTP {code}"),
        ureq::Error::Transport(t) => {
            // A TLS alert record (0x15 0x03) where an HTTP header was due.
            // ureq reports it as a malformed header carrying those bytes.
            if t.to_string().contains("[21, 3, ") {
                return "the server speaks TLS only: give --tls-dir (or TERN_TLS_DIR)".into();
            }
            let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
            while let Some(s) = src {
                if let Some(r) = s.downcast_ref::<tern_tls::rustls::Error>() {
                    return tern_tls::explain(r);
                }
                if let Some(why) = s
                    .downcast_ref::<std::io::Error>()
                    .and_then(tern_tls::explain_io)
                {
                    return why;
                }
                src = s.source();
            }
            t.to_string()
        }
    }
}

/// A node's API.
#[derive(Clone)]
pub struct NodeClient {
    base: String,
    agent: ureq::Agent,
    tls: bool,
    auth: Option<String>,
}

/// A guest's output from some offset, and where the guest stands.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPart {
    /// The bytes (empty: nothing more for now).
    pub bytes: Vec<u8>,
    /// The guest's state, from the `x-tern-state` header (`running`,
    /// `moved ADDR`, ...).
    pub state: String,
}

impl NodeClient {
    /// For the node at `addr` (`HOST:PORT` or a URL), over TLS with `tls`,
    /// sending `token` as a bearer token when given.
    pub fn new(
        addr: &str,
        tls: Option<Arc<tern_tls::rustls::ClientConfig>>,
        token: Option<String>,
    ) -> NodeClient {
        let secure = tls.is_some();
        NodeClient {
            base: base_url(addr, secure),
            agent: http_agent(tls),
            tls: secure,
            auth: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// The same credentials, for another node.
    pub fn at(&self, addr: &str) -> NodeClient {
        NodeClient {
            base: base_url(addr, self.tls),
            agent: self.agent.clone(),
            tls: self.tls,
            auth: self.auth.clone(),
        }
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
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

    fn check(&self, r: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, Error> {
        match r {
            Ok(resp) => Ok(resp),
            Err(ureq::Error::Status(status, resp)) => {
                let message = resp
                    .into_json::<ErrorBody>()
                    .map(|b| b.error)
                    .unwrap_or_else(|_| format!("the node refused (HTTP {status})"));
                Err(Error::Refused { status, message })
            }
            Err(e) => Err(Error::Unreachable {
                node: self.base.clone(),
                why: explain_http(&e),
            }),
        }
    }

    fn json<T: DeserializeOwned>(&self, resp: ureq::Response) -> Result<T, Error> {
        resp.into_json().map_err(|e| Error::Nonsense {
            node: self.base.clone(),
            why: e.to_string(),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str, timeout: Duration) -> Result<T, Error> {
        let resp = self.check(self.request("GET", path, timeout).call())?;
        self.json(resp)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        self.post_timeout(path, body, Duration::from_secs(600))
    }

    fn post_timeout<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, Error> {
        let r = self.request("POST", path, timeout).send_json(body);
        let resp = self.check(r)?;
        self.json(resp)
    }

    /// The node's facts (`GET /v1/node`). A node listening on 0.0.0.0
    /// advertises a migration address others cannot use: the host this
    /// client reached it by replaces the unspecified one.
    pub fn info(&self) -> Result<NodeInfo, Error> {
        let mut info: NodeInfo = self.get("/v1/node", Duration::from_secs(10))?;
        if let Ok(Some(sa)) = info.migrate.to_socket_addrs().map(|mut a| a.next()) {
            if sa.ip().is_unspecified() {
                let host = self
                    .base
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_default();
                info.migrate = format!("{host}:{}", sa.port());
            }
        }
        Ok(info)
    }

    /// Every guest the node knows.
    pub fn guests(&self) -> Result<Vec<GuestRecord>, Error> {
        self.get("/v1/guests", Duration::from_secs(60))
    }

    /// One guest.
    pub fn guest(&self, id: &str) -> Result<GuestRecord, Error> {
        self.get(&format!("/v1/guests/{id}"), Duration::from_secs(60))
    }

    /// A module stored on the node, if it holds it.
    pub fn module(&self, hash: &str) -> Result<Option<ModuleStatus>, Error> {
        match self.get(&format!("/v1/modules/{hash}"), Duration::from_secs(30)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a module on the node under its BLAKE3 hash (the node prepares
    /// and compiles it as it arrives).
    pub fn put_module(&self, bytes: &[u8]) -> Result<ModuleStatus, Error> {
        let path = format!("/v1/modules/{}", module_hash(bytes));
        let r = self
            .request("PUT", &path, Duration::from_secs(600))
            .set("content-type", "application/wasm")
            .send_bytes(bytes);
        let resp = self.check(r)?;
        self.json(resp)
    }

    /// Makes sure the node holds a module, sending it only if it does not;
    /// returns its hash, for [`BootSpec::module`].
    pub fn upload_once(&self, bytes: &[u8]) -> Result<String, Error> {
        let hash = module_hash(bytes);
        if self.module(&hash)?.is_none() {
            self.put_module(bytes)?;
        }
        Ok(hash)
    }

    /// Boots a guest; returns its id.
    pub fn boot(&self, spec: &BootSpec) -> Result<String, Error> {
        self.post::<_, Created>("/v1/guests", spec).map(|c| c.id)
    }

    /// Restores an image file on the node's filesystem; returns the id.
    pub fn restore(&self, path: &str) -> Result<String, Error> {
        let req = RestoreRequest { path: path.into() };
        self.post::<_, Created>("/v1/restore", &req).map(|c| c.id)
    }

    /// A guest's output from byte `offset` on (at most a few MiB a call).
    pub fn logs(&self, id: &str, offset: u64) -> Result<LogPart, Error> {
        let path = format!("/v1/guests/{id}/logs?offset={offset}");
        let resp = self.check(self.request("GET", &path, Duration::from_secs(60)).call())?;
        let state = resp.header("x-tern-state").unwrap_or("").to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).map_err(|e| {
            Error::Unreachable {
                node: self.base.clone(),
                why: e.to_string(),
            }
        })?;
        Ok(LogPart { bytes, state })
    }

    /// Waits up to `timeout` for a guest to end; returns it as it stands.
    pub fn wait(&self, id: &str, timeout: Duration) -> Result<GuestRecord, Error> {
        let ms = timeout.as_millis();
        self.get(
            &format!("/v1/guests/{id}/wait?timeout_ms={ms}"),
            timeout + Duration::from_secs(30),
        )
    }

    /// Stops a guest; returns it as it stands after.
    pub fn stop(&self, id: &str) -> Result<GuestRecord, Error> {
        self.post(&format!("/v1/guests/{id}/stop"), &serde_json::json!({}))
    }

    /// Writes a checkpoint image of a guest on the node.
    pub fn checkpoint(&self, id: &str, req: &CheckpointRequest) -> Result<CheckpointReply, Error> {
        self.post(&format!("/v1/guests/{id}/checkpoint"), req)
    }

    /// Starts moving a guest; returns the migration id.
    pub fn migrate(&self, id: &str, req: &MigrateRequest) -> Result<String, Error> {
        self.post::<_, MigrateStarted>(&format!("/v1/guests/{id}/migrate"), req)
            .map(|m| m.migration)
    }

    /// A migration's progress and, once done, its report.
    pub fn migration(&self, mid: &str) -> Result<MigrationStatus, Error> {
        self.get(&format!("/v1/migrations/{mid}"), Duration::from_secs(30))
    }

    /// Every migration report the node kept.
    pub fn migrations(&self) -> Result<Vec<Report>, Error> {
        self.get("/v1/migrations", Duration::from_secs(30))
    }

    /// The node's Prometheus metrics, as text.
    pub fn metrics(&self) -> Result<String, Error> {
        let resp = self.check(
            self.request("GET", "/metrics", Duration::from_secs(10))
                .call(),
        )?;
        resp.into_string().map_err(|e| Error::Nonsense {
            node: self.base.clone(),
            why: e.to_string(),
        })
    }
}

/// A controller's API (`tern controller`), with the same credentials
/// handling as [`NodeClient`].
#[derive(Clone)]
pub struct ControllerClient {
    http: NodeClient,
}

impl ControllerClient {
    /// For the controller at `addr` (`HOST:PORT` or a URL).
    pub fn new(
        addr: &str,
        tls: Option<Arc<tern_tls::rustls::ClientConfig>>,
        token: Option<String>,
    ) -> ControllerClient {
        ControllerClient {
            http: NodeClient::new(addr, tls, token),
        }
    }

    /// The controller's base URL.
    pub fn base(&self) -> &str {
        self.http.base()
    }

    /// Joins the node whose API is at `api` (repeated: it is alive).
    pub fn join(&self, api: &str) -> Result<Joined, Error> {
        self.http.post_timeout(
            "/v1/nodes",
            &JoinRequest { api: api.into() },
            Duration::from_secs(10),
        )
    }

    /// The cluster as the controller sees it.
    pub fn cluster(&self) -> Result<ClusterView, Error> {
        self.http.get("/v1/cluster", Duration::from_secs(30))
    }

    /// Where every guest the controller knows is.
    pub fn guests(&self) -> Result<Vec<Located>, Error> {
        self.http.get("/v1/guests", Duration::from_secs(30))
    }

    /// Where one guest is now.
    pub fn locate(&self, id: &str) -> Result<Located, Error> {
        self.http
            .get(&format!("/v1/guests/{id}"), Duration::from_secs(30))
    }

    /// Stores a module with the controller, sending it only if it lacks it;
    /// returns its hash.
    pub fn upload_once(&self, bytes: &[u8]) -> Result<String, Error> {
        self.http.upload_once(bytes)
    }

    /// Places a guest on the node the policy picks; returns where.
    pub fn boot(&self, spec: &BootSpec) -> Result<Located, Error> {
        self.http.post("/v1/guests", spec)
    }

    /// Moves a guest to node `to`; returns the move once it ended.
    pub fn migrate(&self, id: &str, to: &str) -> Result<MoveRecord, Error> {
        self.http.post(
            &format!("/v1/guests/{id}/migrate"),
            &MoveRequest { to: to.into() },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_given_scheme() {
        assert_eq!(base_url("h:1", false), "http://h:1");
        assert_eq!(base_url("h:1", true), "https://h:1");
        assert_eq!(base_url("http://h:1/", true), "http://h:1");
    }

    #[test]
    fn an_unreachable_node_is_named() {
        let c = NodeClient::new("127.0.0.1:1", None, None);
        let e = c.guests().unwrap_err();
        assert!(matches!(e, Error::Unreachable { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("cannot reach node http://127.0.0.1:1"));
    }
}
