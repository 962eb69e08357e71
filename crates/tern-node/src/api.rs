//! The HTTP/JSON API the CLI talks to, and `/metrics`, over plain HTTP or
//! mutual TLS (hyper and axum on a small tokio runtime; node work runs on
//! blocking threads).
//!
//! | method and path | does | role |
//! |---|---|---|
//! | `GET /v1/node` | node facts ([`tern_api::NodeInfo`]) | read |
//! | `GET /v1/guests` | every guest ([`tern_api::GuestRecord`]) | read |
//! | `POST /v1/guests` | boot a guest ([`tern_api::BootSpec`]) -> [`tern_api::Created`] | admin |
//! | `POST /v1/restore` | `{"path"}`: restore an image file on this node -> `{"id"}` | admin |
//! | `GET /v1/guests/ID` | one guest | read |
//! | `GET /v1/guests/ID/logs?offset=N` | its output from byte N (header `x-tern-state`) | read |
//! | `GET /v1/guests/ID/wait?timeout_ms=T` | waits up to T ms for it to end | read |
//! | `POST /v1/guests/ID/stop` | stops it | admin |
//! | `POST /v1/guests/ID/checkpoint` | `{"path","leave_running"}` | admin |
//! | `POST /v1/guests/ID/migrate` | `{"to","strategy","max_downtime_ms","dirty"}` -> `{"migration"}` | admin |
//! | `GET /v1/migrations` | every migration report kept | read |
//! | `GET /v1/migrations/MID` | one migration's progress and report | read |
//! | `GET /metrics` | OpenMetrics text | read |
//!
//! Requests and replies are `tern_api`'s types. Errors are
//! [`tern_api::ErrorBody`] (`{"error": "..."}`) with the status
//! [`crate::Error::status`] gives.
//!
//! # Who may call
//!
//! A node started with `--tls-dir` speaks only TLS. A caller is then known
//! by its client certificate (role `admin` or `controller`, which may do
//! everything, `read`, or `node` for other nodes, which may read) or,
//! without one, by a bearer token from the node's `--token-file`. A node
//! with a token file but no TLS asks for the token too. A node with
//! neither lets anyone who reaches its port do anything: it listens on
//! loopback unless told otherwise. ([`crate::http`] does the checking.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tern_api::{
    BootSpec, CheckpointReply, CheckpointRequest, Created, ErrorBody, MigrateRequest,
    RestoreRequest,
};

pub use crate::http::Auth;
use crate::runner::RunState;
use crate::{Error, Node};

/// Largest request body accepted (a module, raw or base64).
const MAX_BODY: usize = 512 << 20;

/// Most log bytes one `logs` reply carries (the client asks again).
const LOG_REPLY: u64 = 8 << 20;

/// Every error is answered with its status and a one-line body.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.message().to_string(),
        };
        (status, Json(body)).into_response()
    }
}

type Reply = Result<Response, Error>;

fn ok<T: Serialize>(status: StatusCode, v: T) -> Reply {
    Ok((status, Json(v)).into_response())
}

/// Runs node work (which blocks) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Internal("internal error (see the node's log)".into()))?
}

/// Serves the API on `listener` until the process ends.
pub fn serve(listener: std::net::TcpListener, node: Arc<Node>, auth: Auth) -> std::io::Result<()> {
    crate::http::serve(listener, router(node), auth)
}

fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/node", get(node_info))
        .route("/metrics", get(metrics))
        .route("/v1/guests", get(guests).post(boot))
        .route("/v1/restore", post(restore))
        .route("/v1/modules", get(modules))
        .route("/v1/modules/{hash}", get(module).put(put_module))
        .route("/v1/guests/{id}", get(guest))
        .route("/v1/guests/{id}/logs", get(logs))
        .route("/v1/guests/{id}/wait", get(wait))
        .route("/v1/guests/{id}/stop", post(stop))
        .route("/v1/guests/{id}/checkpoint", post(checkpoint))
        .route("/v1/guests/{id}/migrate", post(migrate))
        .route("/v1/migrations", get(migrations))
        .route("/v1/migrations/{mid}", get(migration))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            Error::NotFound(format!("no such endpoint: {method} {}", uri.path()))
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

async fn node_info(State(node): State<Arc<Node>>) -> Reply {
    ok(StatusCode::OK, node.info())
}

async fn guests(State(node): State<Arc<Node>>) -> Reply {
    let g = blocking(move || Ok(node.guests())).await?;
    ok(StatusCode::OK, g)
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("bad request body: {e}")))
}

async fn boot(State(node): State<Arc<Node>>, bytes: axum::body::Bytes) -> Reply {
    let spec: BootSpec = body(&bytes)?;
    drop(bytes);
    let id = blocking(move || node.boot(spec)).await?;
    ok(StatusCode::CREATED, Created { id })
}

async fn modules(State(node): State<Arc<Node>>) -> Reply {
    let m = blocking(move || Ok(node.modules())).await?;
    ok(StatusCode::OK, m)
}

async fn module(State(node): State<Arc<Node>>, Path(hash): Path<String>) -> Reply {
    ok(StatusCode::OK, node.module(&hash)?)
}

/// `PUT /v1/modules/HASH`: the body is the module's bytes; 201 when it is
/// new here (it compiles in the background), 200 when the node had it.
async fn put_module(
    State(node): State<Arc<Node>>,
    Path(hash): Path<String>,
    bytes: axum::body::Bytes,
) -> Reply {
    let (new, status) = blocking(move || node.put_module(&hash, bytes.to_vec())).await?;
    let code = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(code, status)
}

async fn restore(State(node): State<Arc<Node>>, bytes: axum::body::Bytes) -> Reply {
    let b: RestoreRequest = body(&bytes)?;
    let id = blocking(move || node.restore_image(std::path::Path::new(&b.path))).await?;
    ok(StatusCode::CREATED, Created { id })
}

async fn guest(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Reply {
    ok(StatusCode::OK, node.guest(&id)?)
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    offset: u64,
}

async fn logs(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Reply {
    let g = node.guest(&id)?;
    let mut state = g.state.to_string();
    if let Some(to) = &g.moved_to {
        state = format!("{state} {to}");
    }
    let body = match tokio::fs::File::open(node.log_path(&id)).await {
        Ok(mut f) => {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            if q.offset < len && f.seek(std::io::SeekFrom::Start(q.offset)).await.is_ok() {
                Body::from_stream(tokio_util::io::ReaderStream::new(f.take(LOG_REPLY)))
            } else {
                Body::empty()
            }
        }
        Err(_) => Body::empty(),
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        "x-tern-state",
        HeaderValue::from_str(&state).unwrap_or(HeaderValue::from_static("unknown")),
    );
    Ok(resp)
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default = "default_wait")]
    timeout_ms: u64,
}

fn default_wait() -> u64 {
    30_000
}

async fn wait(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Reply {
    let timeout = Duration::from_millis(q.timeout_ms);
    let t0 = Instant::now();
    if let Some(r) = node.runner(&id) {
        // Poll in steps so a request never outlives its timeout by much.
        while !r.state().is_final() && t0.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if r.state() == RunState::Released {
            // The registry is updated by the same thread; give it a moment.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ok(StatusCode::OK, node.guest(&id)?)
}

async fn stop(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Reply {
    let g = blocking(move || node.stop(&id)).await?;
    ok(StatusCode::OK, g)
}

async fn checkpoint(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Reply {
    let b: CheckpointRequest = body(&bytes)?;
    let path = b.path.clone();
    let s = blocking(move || node.checkpoint(&id, std::path::Path::new(&b.path), b.leave_running))
        .await?;
    let reply = CheckpointReply {
        image: path,
        image_bytes: s.image_bytes,
        memory_bytes: s.memory_bytes,
        pages: s.pages,
    };
    ok(StatusCode::OK, reply)
}

async fn migrate(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Reply {
    let b: MigrateRequest = body(&bytes)?;
    let mut opts = tern_migrate::Options::default();
    if let Some(s) = &b.strategy {
        opts.strategy = s.parse().map_err(Error::BadRequest)?;
    }
    if let Some(ms) = b.max_downtime_ms {
        opts.max_downtime = Duration::from_millis(ms);
    }
    if let Some(d) = &b.dirty {
        opts.dirty = d.parse().map_err(|e| Error::BadRequest(format!("{e:?}")))?;
    }
    if let Some(mid) = &b.migration_id {
        let fine = !mid.is_empty()
            && mid.len() <= 64
            && mid
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !fine {
            return Err(Error::BadRequest(format!(
                "migration id `{}` is not 1 to 64 of [a-z0-9-]",
                mid.chars().take(80).collect::<String>()
            )));
        }
        opts.migration_id = mid.clone();
    }
    let migration = blocking(move || node.start_migration(&id, &b.to, opts)).await?;
    ok(
        StatusCode::ACCEPTED,
        tern_api::migration::MigrateStarted { migration },
    )
}

async fn migrations(State(node): State<Arc<Node>>) -> Reply {
    ok(StatusCode::OK, node.history())
}

async fn migration(State(node): State<Arc<Node>>, Path(mid): Path<String>) -> Reply {
    ok(StatusCode::OK, node.migration(&mid)?)
}

async fn metrics(State(node): State<Arc<Node>>) -> Reply {
    let t = node.metrics.render(&node.guests());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t,
    )
        .into_response())
}
