//! [`Etcd`], the client, and the values it takes and returns.

use std::io::Read;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::wire::{self, b64};
use crate::Error;

/// How long one request may take by default, connecting included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for one etcd cluster, given as one or more client URLs.
///
/// Each call tries the endpoints in order and uses the first that answers.
/// Calls block. Clones share a connection pool and are cheap; a clone may
/// be moved to another thread.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A key and its value, as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value; empty if it was stored empty.
    pub value: Vec<u8>,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// How many times the key was written since it was created (1 after
    /// the first put).
    pub version: i64,
    /// The lease the key is attached to, or 0.
    pub lease: i64,
}

/// A lease granted by etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease's id, to attach keys to it and keep it alive.
    pub id: i64,
    /// Its time to live in seconds, as granted; etcd raises a request below
    /// its minimum (2 s with default timing) to that minimum.
    pub ttl: i64,
}

/// What an etcd member says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The member's etcd version, e.g. `3.4.23`.
    pub version: String,
    /// The id of the member that answered.
    pub member_id: u64,
    /// The id of the cluster's leader as this member knows it (0: none).
    pub leader: u64,
    /// The store's current revision.
    pub revision: i64,
    /// The Raft term.
    pub raft_term: u64,
    /// The Raft index.
    pub raft_index: u64,
    /// The size of the backend database in bytes.
    pub db_size: i64,
    /// Alarms and other errors the member reports.
    pub errors: Vec<String>,
}

/// How a [`Cmp`] compares the key's field with the given value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// The field equals the value.
    Equal,
    /// The field differs from the value.
    NotEqual,
    /// The field is less than the value.
    Less,
    /// The field is greater than the value.
    Greater,
}

impl CmpOp {
    fn wire(self) -> &'static str {
        match self {
            CmpOp::Equal => "EQUAL",
            CmpOp::NotEqual => "NOT_EQUAL",
            CmpOp::Less => "LESS",
            CmpOp::Greater => "GREATER",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Create(i64),
    Mod(i64),
    Version(i64),
    Value(Vec<u8>),
}

/// One condition of a transaction, on one key.
///
/// A key that does not exist has create revision, mod revision and version
/// 0, so `Cmp::create_revision(key, CmpOp::Equal, 0)` means "the key does
/// not exist". A value comparison on a missing key is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmp {
    key: String,
    op: CmpOp,
    target: Target,
}

impl Cmp {
    /// Compares the key's create revision (0 if it does not exist).
    pub fn create_revision(key: &str, op: CmpOp, revision: i64) -> Cmp {
        Cmp {
            key: key.to_string(),
            op,
            target: Target::Create(revision),
        }
    }

    /// Compares the revision of the key's last change (0 if it does not
    /// exist).
    pub fn mod_revision(key: &str, op: CmpOp, revision: i64) -> Cmp {
        Cmp {
            key: key.to_string(),
            op,
            target: Target::Mod(revision),
        }
    }

    /// Compares the key's version, its number of writes since creation (0
    /// if it does not exist).
    pub fn version(key: &str, op: CmpOp, version: i64) -> Cmp {
        Cmp {
            key: key.to_string(),
            op,
            target: Target::Version(version),
        }
    }

    /// Compares the key's value bytewise.
    pub fn value(key: &str, op: CmpOp, value: &[u8]) -> Cmp {
        Cmp {
            key: key.to_string(),
            op,
            target: Target::Value(value.to_vec()),
        }
    }

    fn wire(&self) -> Value {
        let mut cmp = json!({ "key": b64(self.key.as_bytes()), "result": self.op.wire() });
        let (target, field, value) = match &self.target {
            Target::Create(r) => ("CREATE", "create_revision", json!(r.to_string())),
            Target::Mod(r) => ("MOD", "mod_revision", json!(r.to_string())),
            Target::Version(v) => ("VERSION", "version", json!(v.to_string())),
            Target::Value(v) => ("VALUE", "value", json!(b64(v))),
        };
        cmp["target"] = json!(target);
        cmp[field] = value;
        cmp
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key, attached to a lease if one is given.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: Vec<u8>,
        /// The lease to attach it to.
        lease: Option<i64>,
    },
    /// Read a key, or every key under a prefix.
    Get {
        /// The key or prefix.
        key: String,
        /// Whether `key` is a prefix.
        prefix: bool,
    },
    /// Delete a key, or every key under a prefix.
    Delete {
        /// The key or prefix.
        key: String,
        /// Whether `key` is a prefix.
        prefix: bool,
    },
}

impl Op {
    /// Sets `key` to `value`, attached to `lease` if given.
    pub fn put(key: &str, value: &[u8], lease: Option<i64>) -> Op {
        Op::Put {
            key: key.to_string(),
            value: value.to_vec(),
            lease,
        }
    }

    /// Reads `key`.
    pub fn get(key: &str) -> Op {
        Op::Get {
            key: key.to_string(),
            prefix: false,
        }
    }

    /// Reads every key starting with `prefix`.
    pub fn get_prefix(prefix: &str) -> Op {
        Op::Get {
            key: prefix.to_string(),
            prefix: true,
        }
    }

    /// Deletes `key`.
    pub fn delete(key: &str) -> Op {
        Op::Delete {
            key: key.to_string(),
            prefix: false,
        }
    }

    /// Deletes every key starting with `prefix`.
    pub fn delete_prefix(prefix: &str) -> Op {
        Op::Delete {
            key: prefix.to_string(),
            prefix: true,
        }
    }

    fn wire(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => json!({ "request_put": put_body(key, value, *lease) }),
            Op::Get { key, prefix } => json!({ "request_range": range_body(key, *prefix) }),
            Op::Delete { key, prefix } => {
                json!({ "request_delete_range": range_body(key, *prefix) })
            }
        }
    }

    fn lease(&self) -> Option<i64> {
        match self {
            Op::Put { lease, .. } => *lease,
            _ => None,
        }
    }
}

/// What one [`Op`] of a transaction returned, in the order of the branch
/// that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    /// A put: the revision it made.
    Put {
        /// The store's revision after the put.
        revision: i64,
    },
    /// A get: the keys found, in key order.
    Get {
        /// The keys found.
        kvs: Vec<Kv>,
    },
    /// A delete: how many keys it removed.
    Delete {
        /// The number of keys deleted.
        deleted: u64,
    },
}

/// The outcome of [`Etcd::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnReply {
    /// Whether every comparison held, so the success branch ran (otherwise
    /// the failure branch did).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// One response per operation of the branch that ran.
    pub responses: Vec<OpResponse>,
}

impl TxnReply {
    /// The keys read by the branch's gets, in order: handy when the branch
    /// has one get.
    pub fn kvs(&self) -> impl Iterator<Item = &Kv> {
        self.responses.iter().flat_map(|r| match r {
            OpResponse::Get { kvs } => kvs.as_slice(),
            _ => &[],
        })
    }
}

/// The end of the key range holding every key that starts with `prefix`:
/// the prefix with its last byte below 0xff incremented. An empty prefix, or
/// one of 0xff bytes only, gives `[0]`, which etcd reads as "to the end".
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn range_body(key: &str, prefix: bool) -> Value {
    if !prefix {
        return json!({ "key": b64(key.as_bytes()) });
    }
    // etcd refuses an empty key: from "\0" to the end is every key.
    let start: &[u8] = if key.is_empty() { &[0] } else { key.as_bytes() };
    json!({ "key": b64(start), "range_end": b64(&prefix_end(key.as_bytes())) })
}

fn put_body(key: &str, value: &[u8], lease: Option<i64>) -> Value {
    let mut body = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
    if let Some(lease) = lease {
        body["lease"] = json!(lease.to_string());
    }
    body
}

fn kv(raw: wire::KeyValue) -> Result<Kv, Error> {
    let key = String::from_utf8(raw.key.0)
        .map_err(|e| Error::Decode(format!("a key is not UTF-8: {e}")))?;
    Ok(Kv {
        key,
        value: raw.value.0,
        create_revision: raw.create_revision.0,
        mod_revision: raw.mod_revision.0,
        version: raw.version.0,
        lease: raw.lease.0,
    })
}

fn kvs(raw: Vec<wire::KeyValue>) -> Result<Vec<Kv>, Error> {
    raw.into_iter().map(kv).collect()
}

fn count(n: i64) -> Result<u64, Error> {
    u64::try_from(n).map_err(|_| Error::Decode(format!("negative count {n}")))
}

/// Whether etcd's error says the lease a write named does not exist.
fn lease_not_found(e: &Error) -> bool {
    matches!(e, Error::Server { message, .. } if message.contains("requested lease not found"))
}

impl Etcd {
    /// A client for the cluster at `endpoints`, client URLs such as
    /// `http://127.0.0.1:2379`, tried in this order on every call.
    ///
    /// Nothing is contacted yet; fails with [`Error::Setup`] if the list is
    /// empty or an endpoint is not an `http://` or `https://` URL.
    pub fn connect(endpoints: &[String]) -> Result<Etcd, Error> {
        if endpoints.is_empty() {
            return Err(Error::Setup("no etcd endpoint given".to_string()));
        }
        let mut clean = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let e = e.trim().trim_end_matches('/');
            let host = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.contains('/')) {
                return Err(Error::Setup(format!(
                    "etcd endpoint {e:?} is not a URL like http://host:port"
                )));
            }
            clean.push(e.to_string());
        }
        Ok(Etcd::with(clean, DEFAULT_TIMEOUT))
    }

    fn with(endpoints: Vec<String>, timeout: Duration) -> Etcd {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(2)))
            .timeout(timeout)
            .build();
        Etcd {
            endpoints,
            agent,
            timeout,
        }
    }

    /// The same client with requests limited to `timeout` each (5 s by
    /// default; connecting to one endpoint gets at most 2 s of it).
    pub fn with_timeout(self, timeout: Duration) -> Etcd {
        Etcd::with(self.endpoints, timeout)
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The time limit of one request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets `key` to `value`, attached to `lease` if given, and returns the
    /// store's revision after the put. A lease that is gone gives
    /// [`Error::LeaseLost`].
    pub fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, Error> {
        let reply: wire::PutResponse = self
            .call("/v3/kv/put", &put_body(key, value, lease), false)
            .map_err(|e| match lease {
                Some(id) if lease_not_found(&e) => Error::LeaseLost(id),
                _ => e,
            })?;
        Ok(reply.header.revision.0)
    }

    /// The key `key`, or `None` if it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, Error> {
        let reply: wire::RangeResponse =
            self.call("/v3/kv/range", &range_body(key, false), true)?;
        Ok(kvs(reply.kvs)?.into_iter().next())
    }

    /// Every key starting with `prefix`, in key order (all keys if `prefix`
    /// is empty).
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, Error> {
        let reply: wire::RangeResponse =
            self.call("/v3/kv/range", &range_body(prefix, true), true)?;
        kvs(reply.kvs)
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub fn delete(&self, key: &str) -> Result<u64, Error> {
        let reply: wire::DeleteRangeResponse =
            self.call("/v3/kv/deleterange", &range_body(key, false), false)?;
        count(reply.deleted.0)
    }

    /// Deletes every key starting with `prefix`; returns how many.
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        let reply: wire::DeleteRangeResponse =
            self.call("/v3/kv/deleterange", &range_body(prefix, true), false)?;
        count(reply.deleted.0)
    }

    /// Runs `success` if every comparison in `compare` holds, else
    /// `failure`, atomically. A put under a lease that is gone gives
    /// [`Error::LeaseLost`].
    pub fn txn(
        &self,
        compare: Vec<Cmp>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<TxnReply, Error> {
        let body = json!({
            "compare": compare.iter().map(Cmp::wire).collect::<Vec<_>>(),
            "success": success.iter().map(Op::wire).collect::<Vec<_>>(),
            "failure": failure.iter().map(Op::wire).collect::<Vec<_>>(),
        });
        let lease = success.iter().chain(&failure).find_map(Op::lease);
        let reply: wire::TxnResponse =
            self.call("/v3/kv/txn", &body, false)
                .map_err(|e| match lease {
                    Some(id) if lease_not_found(&e) => Error::LeaseLost(id),
                    _ => e,
                })?;
        let mut responses = Vec::with_capacity(reply.responses.len());
        for r in reply.responses {
            // A response is a oneof; the gateway leaves out an empty one
            // (a put's reply has only a header, which it keeps), so an
            // empty object means nothing we can name.
            let response = if let Some(put) = r.response_put {
                OpResponse::Put {
                    revision: put.header.revision.0,
                }
            } else if let Some(range) = r.response_range {
                OpResponse::Get {
                    kvs: kvs(range.kvs)?,
                }
            } else if let Some(del) = r.response_delete_range {
                OpResponse::Delete {
                    deleted: count(del.deleted.0)?,
                }
            } else {
                return Err(Error::Decode(
                    "a transaction response of unknown kind".to_string(),
                ));
            };
            responses.push(response);
        }
        Ok(TxnReply {
            succeeded: reply.succeeded,
            revision: reply.header.revision.0,
            responses,
        })
    }

    /// Grants a lease of `ttl_secs` seconds. Keys attached to it are
    /// deleted when it expires or is revoked.
    pub fn grant(&self, ttl_secs: i64) -> Result<Lease, Error> {
        let reply: wire::LeaseGrantResponse = self.call(
            "/v3/lease/grant",
            &json!({ "TTL": ttl_secs.to_string() }),
            false,
        )?;
        if !reply.error.is_empty() {
            return Err(Error::Server {
                status: 200,
                message: wire::one_line(&reply.error, 200),
            });
        }
        if reply.id.0 == 0 || reply.ttl.0 <= 0 {
            return Err(Error::Decode(
                "a lease grant without an id or TTL".to_string(),
            ));
        }
        Ok(Lease {
            id: reply.id.0,
            ttl: reply.ttl.0,
        })
    }

    /// Renews lease `id` once; returns the seconds it now has left. A lease
    /// that has expired or was revoked gives [`Error::LeaseLost`].
    pub fn keep_alive_once(&self, id: i64) -> Result<i64, Error> {
        let reply: wire::LeaseKeepAliveStream = self.call(
            "/v3/lease/keepalive",
            &json!({ "ID": id.to_string() }),
            true,
        )?;
        if let Some(error) = reply.error {
            let message = wire::error_message(&error.to_string());
            if message.contains("requested lease not found") {
                return Err(Error::LeaseLost(id));
            }
            return Err(Error::Server {
                status: 200,
                message,
            });
        }
        let Some(result) = reply.result else {
            return Err(Error::Decode(
                "a lease keep-alive reply without a result".to_string(),
            ));
        };
        // etcd answers a lease it does not know with TTL 0, which the
        // gateway leaves out.
        if result.ttl.0 <= 0 {
            return Err(Error::LeaseLost(id));
        }
        Ok(result.ttl.0)
    }

    /// Revokes lease `id`, deleting the keys attached to it. A lease that
    /// is already gone counts as revoked.
    pub fn revoke(&self, id: i64) -> Result<(), Error> {
        match self.call::<Value>("/v3/lease/revoke", &json!({ "ID": id.to_string() }), true) {
            Ok(_) => Ok(()),
            Err(e) if lease_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The status of the first member that answers.
    pub fn status(&self) -> Result<Status, Error> {
        let reply: wire::StatusResponse = self.call("/v3/maintenance/status", &json!({}), true)?;
        Ok(Status {
            version: reply.version,
            member_id: reply.header.member_id.0,
            leader: reply.leader.0,
            revision: reply.header.revision.0,
            raft_term: reply.raft_term.0,
            raft_index: reply.raft_index.0,
            db_size: reply.db_size.0,
            errors: reply.errors,
        })
    }

    /// POSTs `body` to `path` at each endpoint in turn until one answers.
    ///
    /// A request that may have reached etcd is not sent again elsewhere
    /// unless `idempotent`: a transaction applied once and retried would
    /// report the outcome of the retry.
    fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        idempotent: bool,
    ) -> Result<T, Error> {
        let mut why = Vec::new();
        let mut tried = Vec::new();
        for endpoint in &self.endpoints {
            tried.push(endpoint.clone());
            let url = format!("{endpoint}{path}");
            match self.agent.post(&url).send_json(body) {
                Ok(response) => {
                    let (body, read_error) = read_body(response);
                    return serde_json::from_slice(&body).map_err(|e| {
                        let after = read_error
                            .map(|r| format!(" (after {r})"))
                            .unwrap_or_default();
                        Error::Decode(format!("{path} from {endpoint}: {e}{after}"))
                    });
                }
                Err(ureq::Error::Status(status, response)) => {
                    let status_text = response.status_text().to_string();
                    let (body, _) = read_body(response);
                    let mut message = wire::error_message(&String::from_utf8_lossy(&body));
                    if message.is_empty() {
                        message = status_text;
                    }
                    return Err(Error::Server { status, message });
                }
                Err(ureq::Error::Transport(t)) => {
                    let never_sent = matches!(
                        t.kind(),
                        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns
                    );
                    why.push((endpoint, describe(&t)));
                    if !never_sent && !idempotent {
                        break;
                    }
                }
            }
        }
        // With one endpoint, the message names it once.
        let why = match why.as_slice() {
            [(_, only)] => only.clone(),
            _ => why
                .iter()
                .map(|(endpoint, what)| format!("{endpoint}: {what}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        Err(Error::Unreachable {
            endpoints: tried,
            why,
        })
    }
}

/// The largest reply read (a range over many keys can be large).
const MAX_BODY: u64 = 256 << 20;

/// A reply's body, and the error that ended reading it early, if any.
///
/// What was read before an error is kept: the gateway ends some replies
/// with an HTTP trailer (`Grpc-Trailer-Content-Type`) that ureq's chunked
/// decoder rejects after the whole body has arrived.
fn read_body(response: ureq::Response) -> (Vec<u8>, Option<std::io::Error>) {
    let mut body = Vec::new();
    let mut reader = response.into_reader().take(MAX_BODY);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return (body, None),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (body, Some(e)),
        }
    }
}

/// A transport error on one line, without the URL ureq puts first: its
/// kind and its cause, e.g. `Connection Failed: Connection refused (os
/// error 111)`.
fn describe(t: &ureq::Transport) -> String {
    let cause = std::error::Error::source(t)
        .map(|s| s.to_string())
        .or_else(|| t.message().map(str::to_string));
    let text = match cause {
        Some(cause) => format!("{}: {cause}", t.kind()),
        None => t.kind().to_string(),
    };
    wire::one_line(&text, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn endpoints_must_be_urls() {
        assert!(Etcd::connect(&[]).is_err());
        assert!(Etcd::connect(&["127.0.0.1:2379".to_string()]).is_err());
        assert!(Etcd::connect(&["http://".to_string()]).is_err());
        let etcd = Etcd::connect(&["http://127.0.0.1:2379/".to_string()]).unwrap();
        assert_eq!(etcd.endpoints(), ["http://127.0.0.1:2379"]);
    }

    #[test]
    fn comparisons_on_the_wire() {
        let c = Cmp::create_revision("k", CmpOp::Equal, 0).wire();
        assert_eq!(
            c,
            json!({"key": "aw==", "result": "EQUAL", "target": "CREATE", "create_revision": "0"})
        );
        let c = Cmp::value("k", CmpOp::Greater, b"\x01").wire();
        assert_eq!(c["value"], "AQ==");
        assert_eq!(c["target"], "VALUE");
    }
}
