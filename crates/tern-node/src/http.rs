//! Serving an HTTP/JSON API over plain HTTP or TLS, with the callers
//! checked: what the node's API and the controller's share (hyper and axum
//! on a small tokio runtime; the handlers run blocking work off it).
//!
//! A server with TLS knows a caller by its client certificate (roles
//! `admin`, `read`, `node`, `controller`) or, without one, by a bearer
//! token from its token file; a server with a token file but no TLS asks
//! for the token. Reading (`GET`, `HEAD`) is open to every known caller;
//! changing state is for `admin` and `controller`, and for `node` on the
//! paths [`Auth::node_writes`] lists (a node joining a controller). A
//! server with neither TLS nor tokens lets anyone who reaches it do
//! anything: such servers listen on loopback unless told otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tern_api::ErrorBody;
use tern_tls::token::Tokens;
use tern_tls::{Identity, Role};

/// How a server checks its callers.
#[derive(Clone, Default)]
pub struct Auth {
    /// TLS for every connection, client certificates optional (tokens
    /// stand in for them).
    pub tls: Option<Arc<tern_tls::rustls::ServerConfig>>,
    /// Bearer tokens accepted.
    pub tokens: Tokens,
    /// Paths a caller with the `node` role may send changes to (`POST`,
    /// `PUT`, ...); none on a node's API.
    pub node_writes: &'static [&'static str],
}

impl Auth {
    fn required(&self) -> bool {
        self.tls.is_some() || !self.tokens.is_empty()
    }

    /// May `who` make a request that changes state on `path`?
    fn may_write(&self, who: &Identity, path: &str) -> bool {
        who.role.may_write() || (who.role == Role::Node && self.node_writes.contains(&path))
    }
}

/// The certificate identity of a connection's peer, if it gave one.
#[derive(Clone)]
struct Peer {
    cert: Option<Identity>,
    addr: SocketAddr,
}

/// Serves `app` on `listener`, callers checked by `auth`, until the
/// process ends.
pub fn serve(listener: std::net::TcpListener, app: Router, auth: Auth) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("api")
        .enable_all()
        .build()?;
    let acceptor = auth.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let app = app.layer(middleware::from_fn_with_state(Arc::new(auth), authorize));
    rt.block_on(accept_loop(listener, app, acceptor))
}

async fn accept_loop(
    listener: std::net::TcpListener,
    app: Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                // Out of descriptors, most likely: let some close.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tcp.set_nodelay(true).ok();
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                serve_conn(tcp, app, Peer { cert: None, addr }).await;
                return;
            };
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let cert = tern_tls::peer_identity(tls.get_ref().1.peer_certificates());
                    serve_conn(tls, app, Peer { cert, addr }).await;
                }
                Ok(Err(e)) => {
                    let why = tern_tls::explain_io(&e).unwrap_or_else(|| e.to_string());
                    tracing::warn!(event = "api_refused", peer = %addr, error = %why);
                }
                Err(_) => tracing::warn!(
                    event = "api_refused",
                    peer = %addr,
                    error = "TLS handshake timed out"
                ),
            }
        });
    }
}

async fn serve_conn<S>(io: S, app: Router, peer: Peer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::Service;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        app.clone().call(req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
}

/// Lets a request through only if its caller may make it.
async fn authorize(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    if !auth.required() {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<Peer>().cloned();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let who = match (peer.as_ref().and_then(|p| p.cert.clone()), bearer) {
        (Some(id), _) => Some(id),
        (None, Some(token)) => auth.tokens.check(token),
        (None, None) => None,
    };
    let addr = peer.map(|p| p.addr.to_string()).unwrap_or_default();
    let Some(who) = who else {
        let why = if bearer.is_some() {
            "unknown token"
        } else {
            "authentication required: a client certificate (--tls-dir) or a token (--token-file)"
        };
        tracing::warn!(event = "api_refused", peer = %addr, error = why, path = req.uri().path());
        return (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody { error: why.into() }),
        )
            .into_response();
    };
    let reads = req.method() == Method::GET || req.method() == Method::HEAD;
    if !reads && !auth.may_write(&who, req.uri().path()) {
        tracing::warn!(
            event = "api_refused",
            peer = %addr,
            who = %who.name,
            role = who.role.as_str(),
            error = "read-only caller",
            path = req.uri().path()
        );
        let role = match who.role {
            Role::Node => "a node",
            _ => "read-only",
        };
        let error = format!(
            "{} is {role}: only an admin may {} {}",
            who.name,
            req.method(),
            req.uri().path()
        );
        return (StatusCode::FORBIDDEN, Json(ErrorBody { error })).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_write_where() {
        let id = |role| Identity {
            name: "x".into(),
            role,
        };
        let node_api = Auth::default();
        let controller_api = Auth {
            node_writes: &["/v1/nodes"],
            ..Auth::default()
        };
        assert!(node_api.may_write(&id(Role::Admin), "/v1/guests"));
        assert!(node_api.may_write(&id(Role::Controller), "/v1/guests/a/migrate"));
        assert!(!node_api.may_write(&id(Role::Read), "/v1/guests"));
        assert!(!node_api.may_write(&id(Role::Node), "/v1/nodes"));
        assert!(controller_api.may_write(&id(Role::Node), "/v1/nodes"));
        assert!(!controller_api.may_write(&id(Role::Node), "/v1/guests"));
    }
}
