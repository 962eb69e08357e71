//! The controller's HTTP/JSON API: what `tern run|ps|logs|wait|stop|migrate
//! --controller` and `tern cluster` call, and where nodes join.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/nodes` `{api}` | a node joins, or says it is alive |
//! | `GET /v1/cluster` | nodes, load, power, guests, recent moves |
//! | `PUT /v1/modules/HASH`, `GET /v1/modules/HASH` | modules by hash |
//! | `POST /v1/guests` (`BootSpec`) | place and start a guest |
//! | `GET /v1/guests` | every guest, and where |
//! | `GET /v1/guests/ID` | where one guest is now |
//! | `POST /v1/guests/ID/migrate` `{to}` | move a guest (waits for the end) |
//! | `GET /metrics` | OpenMetrics text |
//!
//! Callers are checked as on a node ([`tern_node::http`]): with TLS, by
//! their certificate or a token; nodes (role `node`) may join, and
//! otherwise only read; changes are for `admin` and `controller`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tern_api::{BootSpec, JoinRequest, Joined, MoveRequest};

use crate::{Controller, Error};

struct App {
    controller: Arc<Controller>,
    policy: String,
}

type Reply = Result<Response, Error>;

fn ok<T: Serialize>(status: StatusCode, v: T) -> Reply {
    Ok((status, Json(v)).into_response())
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("bad request body: {e}")))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Internal("internal error (see the controller's log)".into()))?
}

/// Serves the API on `listener`, callers checked by `auth`, until the
/// process ends.
pub fn serve(
    listener: std::net::TcpListener,
    controller: Arc<Controller>,
    auth: tern_node::http::Auth,
) -> std::io::Result<()> {
    let policy = controller.config.tuning.policy.as_str().to_string();
    let app = Arc::new(App { controller, policy });
    let router = Router::new()
        .route("/v1/nodes", post(join))
        .route("/v1/cluster", get(cluster))
        .route("/v1/modules/{hash}", get(module).put(put_module))
        .route("/v1/guests", get(guests).post(boot))
        .route("/v1/guests/{id}", get(locate))
        .route("/v1/guests/{id}/migrate", post(migrate))
        .route("/metrics", get(metrics))
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            Error::NotFound(format!("no such endpoint: {method} {}", uri.path()))
        })
        .layer(DefaultBodyLimit::max(512 << 20))
        .with_state(app);
    let auth = tern_node::http::Auth {
        node_writes: &["/v1/nodes"],
        ..auth
    };
    tern_node::http::serve(listener, router, auth)
}

async fn join(State(app): State<Arc<App>>, bytes: axum::body::Bytes) -> Reply {
    let j: JoinRequest = body(&bytes)?;
    let c = app.controller.clone();
    let name = blocking(move || c.join(&j.api)).await?;
    ok(
        StatusCode::OK,
        Joined {
            name,
            controller: app.controller.config.name.clone(),
        },
    )
}

async fn cluster(State(app): State<Arc<App>>) -> Reply {
    let c = app.controller.clone();
    let policy = app.policy.clone();
    let v = blocking(move || Ok(c.cluster(&policy))).await?;
    ok(StatusCode::OK, v)
}

async fn module(State(app): State<Arc<App>>, Path(hash): Path<String>) -> Reply {
    let c = app.controller.clone();
    let m = blocking(move || c.module_status(&hash)).await?;
    ok(StatusCode::OK, m)
}

async fn put_module(
    State(app): State<Arc<App>>,
    Path(hash): Path<String>,
    bytes: axum::body::Bytes,
) -> Reply {
    let c = app.controller.clone();
    let (new, status) = blocking(move || {
        let new = c.put_module(&hash, &bytes)?;
        Ok((new, c.module_status(&hash)?))
    })
    .await?;
    let code = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(code, status)
}

async fn guests(State(app): State<Arc<App>>) -> Reply {
    let c = app.controller.clone();
    let v = blocking(move || Ok(c.guests())).await?;
    ok(StatusCode::OK, v)
}

async fn boot(State(app): State<Arc<App>>, bytes: axum::body::Bytes) -> Reply {
    let spec: BootSpec = body(&bytes)?;
    let c = app.controller.clone();
    let placed = blocking(move || c.boot(spec)).await?;
    ok(StatusCode::CREATED, placed)
}

async fn locate(State(app): State<Arc<App>>, Path(id): Path<String>) -> Reply {
    let c = app.controller.clone();
    let v = blocking(move || c.locate(&id)).await?;
    ok(StatusCode::OK, v)
}

async fn migrate(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Reply {
    let m: MoveRequest = body(&bytes)?;
    let c = app.controller.clone();
    let v = blocking(move || c.request_move(&id, &m.to)).await?;
    ok(StatusCode::OK, v)
}

async fn metrics(State(app): State<Arc<App>>) -> Reply {
    let c = app.controller.clone();
    let policy = app.policy.clone();
    let text = blocking(move || Ok(c.render_metrics(&policy))).await?;
    Ok((
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
