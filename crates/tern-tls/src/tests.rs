use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use rustls::pki_types::ServerName;

use super::*;
use crate::issue::{init_ca, issue, Validity};

fn cluster(dir: &Path) {
    init_ca(dir, "test", 30).unwrap();
    issue(dir, "a", Role::Node, &[], Validity::days(1)).unwrap();
    issue(dir, "b", Role::Node, &[], Validity::days(1)).unwrap();
    issue(dir, "ops", Role::Admin, &[], Validity::days(1)).unwrap();
}

/// Runs one handshake of `client` against `server` (required client
/// certificates); returns the identity each side saw, or the error.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<(Option<Identity>, Option<Identity>), String> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let conn = rustls::ServerConnection::new(server).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        let mut b = [0u8; 1];
        match tls.read_exact(&mut b) {
            Ok(()) => {
                let _ = tls.write_all(b"y");
                let _ = tls.flush();
                Ok(peer_identity(tls.conn.peer_certificates()))
            }
            Err(e) => Err(e.to_string()),
        }
    });
    let s = TcpStream::connect(addr).unwrap();
    let conn =
        rustls::ClientConnection::new(client, ServerName::try_from("tern").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, s);
    let r = tls.write_all(b"x").and_then(|_| tls.flush()).and_then(|_| {
        let mut b = [0u8; 1];
        tls.read_exact(&mut b)
    });
    let server_saw = t.join().unwrap();
    r.map_err(|e| e.to_string())?;
    Ok((server_saw?, peer_identity(tls.conn.peer_certificates())))
}

#[test]
fn nodes_of_one_cluster_see_each_others_names() {
    let d = tempfile::tempdir().unwrap();
    cluster(d.path());
    let a = Material::load_node(d.path(), "a").unwrap();
    let b = Material::load_node(d.path(), "b").unwrap();
    let (server_saw, client_saw) = handshake(
        a.server_config(ClientAuth::Required).unwrap(),
        b.client_config().unwrap(),
    )
    .unwrap();
    assert_eq!(
        server_saw,
        Some(Identity {
            name: "b".into(),
            role: Role::Node
        })
    );
    assert_eq!(
        client_saw,
        Some(Identity {
            name: "a".into(),
            role: Role::Node
        })
    );
    let ops = Material::load_client(d.path(), None).unwrap();
    assert_eq!(ops.identity().role, Role::Admin);
    let (server_saw, _) = handshake(
        a.server_config(ClientAuth::Optional).unwrap(),
        ops.client_config().unwrap(),
    )
    .unwrap();
    assert_eq!(server_saw.unwrap().name, "ops");
}

#[test]
fn another_clusters_certificates_are_refused_both_ways() {
    let d = tempfile::tempdir().unwrap();
    let e = tempfile::tempdir().unwrap();
    cluster(d.path());
    cluster(e.path());
    let a = Material::load_node(d.path(), "a").unwrap();
    let stranger = Material::load_node(e.path(), "b").unwrap();
    let err = handshake(
        a.server_config(ClientAuth::Required).unwrap(),
        stranger.client_config().unwrap(),
    )
    .unwrap_err();
    assert!(
        err.contains("invalid peer certificate") || err.contains("alert"),
        "{err}"
    );
    let err = handshake(
        stranger.server_config(ClientAuth::Required).unwrap(),
        a.client_config().unwrap(),
    )
    .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
}

#[test]
fn expired_certificates_are_refused() {
    let d = tempfile::tempdir().unwrap();
    cluster(d.path());
    let past = time::OffsetDateTime::now_utc().unix_timestamp() - 86_400;
    issue(
        d.path(),
        "old",
        Role::Node,
        &[],
        Validity::until_unix(past).unwrap(),
    )
    .unwrap();
    let a = Material::load_node(d.path(), "a").unwrap();
    let old = Material::load_node(d.path(), "old").unwrap();
    let err = handshake(
        a.server_config(ClientAuth::Required).unwrap(),
        old.client_config().unwrap(),
    )
    .unwrap_err();
    assert!(err.contains("Expired") || err.contains("xpired"), "{err}");
    let err = handshake(
        old.server_config(ClientAuth::Required).unwrap(),
        a.client_config().unwrap(),
    )
    .unwrap_err();
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn a_client_certificate_cannot_serve_as_a_node() {
    let d = tempfile::tempdir().unwrap();
    cluster(d.path());
    let a = Material::load_node(d.path(), "a").unwrap();
    let ops = Material::load_client(d.path(), Some("ops")).unwrap();
    let err = handshake(
        ops.server_config(ClientAuth::Required).unwrap(),
        a.client_config().unwrap(),
    )
    .unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");
    let err = Material::load_node(d.path(), "ops")
        .unwrap_err()
        .to_string();
    assert!(err.contains("node-ops.crt"), "{err}");
}

#[test]
fn a_controller_serves_clients_and_nodes_and_calls_nodes() {
    let d = tempfile::tempdir().unwrap();
    cluster(d.path());
    issue(d.path(), "ctl", Role::Controller, &[], Validity::days(1)).unwrap();
    let ctl = Material::load_controller(d.path(), "ctl").unwrap();
    let a = Material::load_node(d.path(), "a").unwrap();
    let ops = Material::load_client(d.path(), Some("ops")).unwrap();
    // A client and a node reach the controller, and know it as one.
    for caller in [&ops, &a] {
        let (server_saw, client_saw) = handshake(
            ctl.server_config(ClientAuth::Optional).unwrap(),
            caller.client_config().unwrap(),
        )
        .unwrap();
        assert_eq!(server_saw.as_ref(), Some(caller.identity()));
        assert_eq!(client_saw.unwrap().role, Role::Controller);
    }
    // The controller calls a node with its certificate, and may write.
    let (node_saw, _) = handshake(
        a.server_config(ClientAuth::Required).unwrap(),
        ctl.client_config().unwrap(),
    )
    .unwrap();
    let who = node_saw.unwrap();
    assert_eq!((who.name.as_str(), who.role), ("ctl", Role::Controller));
    assert!(who.role.may_write());
    // It is not a node, nor a client.
    assert!(Material::load_node(d.path(), "ctl").is_err());
    assert!(Material::load_client(d.path(), Some("ctl")).is_err());
    assert!(token::Tokens::parse("controller 0123456789abcdef0123").is_err());
}

#[test]
fn certificates_are_never_overwritten() {
    let d = tempfile::tempdir().unwrap();
    cluster(d.path());
    let before = std::fs::read(d.path().join("node-a.crt")).unwrap();
    let err = issue(d.path(), "a", Role::Node, &[], Validity::days(1)).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(init_ca(d.path(), "test", 1).is_err());
    assert_eq!(std::fs::read(d.path().join("node-a.crt")).unwrap(), before);
    assert!(issue(d.path(), "../x", Role::Node, &[], Validity::days(1)).is_err());
}

#[test]
fn tokens() {
    let t =
        token::Tokens::parse("# ops\nadmin 0123456789abcdef0123\n\nread fedcba9876543210fedc\n")
            .unwrap();
    assert_eq!(t.check("0123456789abcdef0123").unwrap().role, Role::Admin);
    assert_eq!(t.check("fedcba9876543210fedc").unwrap().role, Role::Read);
    assert!(t.check("0123456789abcdef012").is_none());
    assert!(t.check("").is_none());
    assert!(token::Tokens::parse("admin short").is_err());
    assert!(token::Tokens::parse("node 0123456789abcdef0123").is_err());
    assert!(token::Tokens::parse("root 0123456789abcdef0123").is_err());
    assert_eq!(token::generate().unwrap().len(), 64);
}
