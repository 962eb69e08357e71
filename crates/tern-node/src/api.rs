//! The HTTP/JSON API the CLI talks to, and `/metrics`.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/node` | node facts ([`crate::NodeInfo`]) |
//! | `GET /v1/guests` | every guest ([`crate::registry::GuestRecord`]) |
//! | `POST /v1/guests` | boot a guest ([`crate::BootSpec`]) -> `{"id"}` |
//! | `POST /v1/restore` | `{"path"}`: restore an image file on this node -> `{"id"}` |
//! | `GET /v1/guests/ID` | one guest |
//! | `GET /v1/guests/ID/logs?offset=N` | its output from byte N (header `x-tern-state`) |
//! | `GET /v1/guests/ID/wait?timeout_ms=T` | waits up to T ms for it to end |
//! | `POST /v1/guests/ID/stop` | stops it |
//! | `POST /v1/guests/ID/checkpoint` | `{"path","leave_running"}` |
//! | `POST /v1/guests/ID/migrate` | `{"to","strategy","max_downtime_ms","dirty"}` -> `{"migration"}` |
//! | `GET /v1/migrations` | every migration report kept |
//! | `GET /v1/migrations/MID` | one migration's progress and report |
//! | `GET /metrics` | Prometheus text format |
//!
//! Errors are `{"error": "..."}` with a 4xx or 5xx status.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::runner::RunState;
use crate::{BootSpec, Node};

/// Largest request body accepted (a module travels base64 in one).
const MAX_BODY: u64 = 512 << 20;

type Reply = Response<std::io::Cursor<Vec<u8>>>;

fn json_reply(status: u16, v: &Value) -> Reply {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::from_data(body)
        .with_status_code(status)
        .with_header(Header::from_bytes("content-type", "application/json").expect("static header"))
}

fn err(status: u16, msg: impl std::fmt::Display) -> Reply {
    json_reply(status, &json!({ "error": msg.to_string() }))
}

fn body<T: for<'a> Deserialize<'a>>(req: &mut Request) -> Result<T, Reply> {
    let mut bytes = Vec::new();
    req.as_reader()
        .take(MAX_BODY)
        .read_to_end(&mut bytes)
        .map_err(|e| err(400, format!("reading the request failed: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| err(400, format!("bad request body: {e}")))
}

fn query(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

/// Serves the API on `server` until the process ends, a thread per request.
pub fn serve(server: Server, node: Arc<Node>) {
    let server = Arc::new(server);
    for mut req in server.incoming_requests() {
        let node = node.clone();
        std::thread::spawn(move || {
            let reply = route(&node, &mut req);
            let _ = req.respond(reply);
        });
    }
}

#[derive(Deserialize)]
struct PathBody {
    path: String,
    #[serde(default)]
    leave_running: bool,
}

#[derive(Deserialize)]
struct MigrateBody {
    to: String,
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    max_downtime_ms: Option<u64>,
    #[serde(default)]
    dirty: Option<String>,
}

fn route(node: &Arc<Node>, req: &mut Request) -> Reply {
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (Method::Get, ["v1", "node"]) => json_reply(200, &json!(node.info())),
        (Method::Get, ["metrics"]) => metrics(node),
        (Method::Get, ["v1", "guests"]) => json_reply(200, &json!(node.guests())),
        (Method::Post, ["v1", "guests"]) => {
            let spec: BootSpec = match body(req) {
                Ok(s) => s,
                Err(r) => return r,
            };
            match node.boot(spec) {
                Ok(id) => json_reply(201, &json!({ "id": id })),
                Err(e) => err(400, e),
            }
        }
        (Method::Post, ["v1", "restore"]) => {
            let b: PathBody = match body(req) {
                Ok(s) => s,
                Err(r) => return r,
            };
            match node.restore_image(std::path::Path::new(&b.path)) {
                Ok(id) => json_reply(201, &json!({ "id": id })),
                Err(e) => err(400, e),
            }
        }
        (Method::Get, ["v1", "guests", id]) => match node.guest(id) {
            Some(g) => json_reply(200, &json!(g)),
            None => err(404, format!("no guest {id} on this node")),
        },
        (Method::Get, ["v1", "guests", id, "logs"]) => logs(node, id, &url),
        (Method::Get, ["v1", "guests", id, "wait"]) => {
            let timeout = query(&url, "timeout_ms")
                .and_then(|t| t.parse().ok())
                .unwrap_or(30_000u64);
            wait(node, id, Duration::from_millis(timeout))
        }
        (Method::Post, ["v1", "guests", id, "stop"]) => match node.stop(id) {
            Ok(()) => json_reply(200, &json!(node.guest(id))),
            Err(e) => err(404, e),
        },
        (Method::Post, ["v1", "guests", id, "checkpoint"]) => {
            let b: PathBody = match body(req) {
                Ok(s) => s,
                Err(r) => return r,
            };
            match node.checkpoint(id, std::path::Path::new(&b.path), b.leave_running) {
                Ok(s) => json_reply(
                    200,
                    &json!({ "image": b.path, "image_bytes": s.image_bytes, "memory_bytes": s.memory_bytes, "pages": s.pages }),
                ),
                Err(e) => err(409, e),
            }
        }
        (Method::Post, ["v1", "guests", id, "migrate"]) => {
            let b: MigrateBody = match body(req) {
                Ok(s) => s,
                Err(r) => return r,
            };
            let mut opts = tern_migrate::Options::default();
            if let Some(s) = &b.strategy {
                match s.parse() {
                    Ok(s) => opts.strategy = s,
                    Err(e) => return err(400, e),
                }
            }
            if let Some(ms) = b.max_downtime_ms {
                opts.max_downtime = Duration::from_millis(ms);
            }
            if let Some(d) = &b.dirty {
                match d.parse() {
                    Ok(d) => opts.dirty = d,
                    Err(e) => return err(400, format!("{e:?}")),
                }
            }
            match node.start_migration(id, &b.to, opts) {
                Ok(mid) => json_reply(202, &json!({ "migration": mid })),
                Err(e) => err(409, e),
            }
        }
        (Method::Get, ["v1", "migrations"]) => json_reply(200, &json!(node.history())),
        (Method::Get, ["v1", "migrations", mid]) => match node.migration(mid) {
            Some(m) => json_reply(200, &json!(m)),
            None => err(404, format!("no migration {mid} on this node")),
        },
        _ => err(404, format!("no such endpoint: {method} {path}")),
    }
}

fn logs(node: &Node, id: &str, url: &str) -> Reply {
    let Some(g) = node.guest(id) else {
        return err(404, format!("no guest {id} on this node"));
    };
    let offset: u64 = query(url, "offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let path = node.config.data_dir.join("guests").join(id).join("log");
    let bytes = match std::fs::File::open(&path) {
        Ok(mut f) => {
            use std::io::{Seek, SeekFrom};
            let mut out = Vec::new();
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.take(8 << 20).read_to_end(&mut out);
            out
        }
        Err(_) => Vec::new(),
    };
    let mut state = g.state.clone();
    if let Some(to) = &g.moved_to {
        state = format!("{state} {to}");
    }
    Response::from_data(bytes)
        .with_header(Header::from_bytes("x-tern-state", state.as_bytes()).expect("ascii header"))
}

fn wait(node: &Node, id: &str, timeout: Duration) -> Reply {
    let t0 = Instant::now();
    if let Some(r) = node.runner(id) {
        // Poll in steps so a request never outlives its timeout by much.
        while !r.state().is_final() && t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        if r.state() == RunState::Released {
            // The registry is updated by the same thread; give it a moment.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    match node.guest(id) {
        Some(g) => json_reply(200, &json!(g)),
        None => err(404, format!("no guest {id} on this node")),
    }
}

fn metrics(node: &Node) -> Reply {
    use std::fmt::Write;
    let m = &node.metrics;
    let mut t = String::new();
    let mut counts = std::collections::BTreeMap::new();
    for g in node.guests() {
        *counts.entry(g.state).or_insert(0u64) += 1;
    }
    let _ = writeln!(
        t,
        "# HELP tern_guests Guests known to this node, by state.\n# TYPE tern_guests gauge"
    );
    for (state, n) in counts {
        let _ = writeln!(t, "tern_guests{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(t, "# HELP tern_guests_started_total Guests booted, restored or received here.\n# TYPE tern_guests_started_total counter\ntern_guests_started_total {}", m.guests_started.load(Ordering::Relaxed));
    let _ = writeln!(t, "# HELP tern_migrations_total Migrations sent by this node, by result.\n# TYPE tern_migrations_total counter");
    let _ = writeln!(
        t,
        "tern_migrations_total{{result=\"ok\"}} {}",
        m.migrations_ok.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        t,
        "tern_migrations_total{{result=\"failed\"}} {}",
        m.migrations_failed.load(Ordering::Relaxed)
    );
    let _ = writeln!(t, "# HELP tern_migrations_received_total Guests received by migration.\n# TYPE tern_migrations_received_total counter\ntern_migrations_received_total {}", m.migrations_in.load(Ordering::Relaxed));
    let _ = writeln!(t, "# HELP tern_migration_bytes_total Bytes sent by migrations.\n# TYPE tern_migration_bytes_total counter\ntern_migration_bytes_total {}", m.migration_bytes.load(Ordering::Relaxed));
    let _ = writeln!(t, "# HELP tern_migration_last_downtime_seconds Downtime of the last migration sent.\n# TYPE tern_migration_last_downtime_seconds gauge\ntern_migration_last_downtime_seconds {}", m.last_downtime_us.load(Ordering::Relaxed) as f64 / 1e6);
    Response::from_data(t.into_bytes()).with_header(
        Header::from_bytes("content-type", "text/plain; version=0.0.4").expect("static header"),
    )
}
