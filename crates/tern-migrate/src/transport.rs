//! One framed link to a peer, over plain TCP or over mutual TLS.
//!
//! With TLS, both ends present a node certificate signed by the cluster CA
//! and the handshake in [`crate::proto`] then checks that the name each
//! side claims in `Hello`/`Welcome` is the name its certificate carries.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_tls::rustls::pki_types::ServerName;
use tern_tls::rustls::{self, ClientConfig, ServerConfig};
use tern_tls::Identity;

use crate::proto::{self, Message};
use crate::MigrateError;

/// A node's TLS configurations for migrations.
#[derive(Clone)]
pub struct Tls {
    /// As the connecting side (source, or a destination asking `Resolve`).
    pub client: Arc<ClientConfig>,
    /// As the listening side (client certificates required).
    pub server: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

enum Stream {
    Plain(TcpStream),
    Client(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Server(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

/// The stream shared by the reading and the writing half. A link is used by
/// one thread at a time, so the lock is never contended.
#[derive(Clone)]
struct Half(Arc<Mutex<Stream>>);

impl Read for Half {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Stream::Plain(s) => s.read(buf),
            Stream::Client(s) => s.read(buf),
            Stream::Server(s) => s.read(buf),
        }
    }
}

impl Write for Half {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Stream::Plain(s) => s.write(buf),
            Stream::Client(s) => s.write(buf),
            Stream::Server(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Stream::Plain(s) => s.flush(),
            Stream::Client(s) => s.flush(),
            Stream::Server(s) => s.flush(),
        }
    }
}

/// A connection carrying [`Message`]s, counting the bytes it moved.
pub(crate) struct Link {
    w: BufWriter<Half>,
    r: BufReader<Half>,
    tcp: TcpStream,
    peer: Option<Identity>,
    /// Bytes sent and received so far.
    pub(crate) bytes: u64,
}

/// Turns an I/O error of a TLS stream into what a user reads.
fn tls_io(e: io::Error) -> io::Error {
    match tern_tls::explain_io(&e) {
        Some(why) => io::Error::new(e.kind(), why),
        None => e,
    }
}

impl Link {
    fn new(tcp: TcpStream, stream: Stream, peer: Option<Identity>) -> io::Result<Link> {
        let half = Half(Arc::new(Mutex::new(stream)));
        Ok(Link {
            w: BufWriter::with_capacity(1 << 20, half.clone()),
            r: BufReader::with_capacity(1 << 20, half),
            tcp,
            peer,
            bytes: 0,
        })
    }

    /// Connects to `addr`; with `tls`, completes the handshake (so a peer
    /// outside the cluster fails here, in one line).
    pub(crate) fn connect(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&Tls>,
    ) -> io::Result<Link> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_nodelay(true).ok();
        let Some(tls) = tls else {
            return Link::new(tcp.try_clone()?, Stream::Plain(tcp), None);
        };
        // Names are checked against the certificate by the protocol, not
        // against an address: any server name does.
        let name = ServerName::try_from("tern-node").map_err(io::Error::other)?;
        let conn = rustls::ClientConnection::new(tls.client.clone(), name)
            .map_err(|e| io::Error::other(tern_tls::explain(&e)))?;
        tcp.set_read_timeout(Some(timeout))?;
        let mut s = rustls::StreamOwned::new(conn, tcp.try_clone()?);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(tls_io)?;
        }
        tcp.set_read_timeout(None)?;
        let peer = tern_tls::peer_identity(s.conn.peer_certificates());
        Link::new(tcp, Stream::Client(Box::new(s)), peer)
    }

    /// Takes an accepted connection; with `tls`, completes the handshake.
    pub(crate) fn accept(tcp: TcpStream, tls: Option<&Tls>) -> io::Result<Link> {
        tcp.set_nodelay(true).ok();
        let Some(tls) = tls else {
            return Link::new(tcp.try_clone()?, Stream::Plain(tcp), None);
        };
        let conn = rustls::ServerConnection::new(tls.server.clone())
            .map_err(|e| io::Error::other(tern_tls::explain(&e)))?;
        let mut s = rustls::StreamOwned::new(conn, tcp.try_clone()?);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(tls_io)?;
        }
        let peer = tern_tls::peer_identity(s.conn.peer_certificates());
        Link::new(tcp, Stream::Server(Box::new(s)), peer)
    }

    /// Who the peer's certificate says it is (TLS only).
    pub(crate) fn peer(&self) -> Option<&Identity> {
        self.peer.as_ref()
    }

    /// Checks that the name the peer claimed in the handshake is the one its
    /// certificate carries (TLS only; plain links have nothing to check).
    pub(crate) fn check_claim(&self, claimed: &str) -> Result<(), MigrateError> {
        match self.peer() {
            None => Ok(()),
            Some(id) if id.role == tern_tls::Role::Node && id.name == claimed => Ok(()),
            Some(id) => Err(MigrateError::Protocol(format!(
                "the peer says it is node {claimed:?} but its certificate is {}'s ({})",
                id.name, id.role
            ))),
        }
    }

    /// Gives up on a peer silent for this long (None: wait forever).
    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> Result<(), MigrateError> {
        self.tcp.set_read_timeout(t).map_err(MigrateError::Receive)
    }

    /// Queues `m`.
    pub(crate) fn send(&mut self, m: &Message) -> Result<(), MigrateError> {
        self.bytes += proto::send(&mut self.w, m)?;
        Ok(())
    }

    /// Pushes queued messages out.
    pub(crate) fn flush(&mut self) -> Result<(), MigrateError> {
        self.w.flush().map_err(|e| MigrateError::Send(tls_io(e)))
    }

    /// Queues `m` and pushes it out.
    pub(crate) fn send_now(&mut self, m: &Message) -> Result<(), MigrateError> {
        self.send(m)?;
        self.flush()
    }

    /// The next message.
    pub(crate) fn recv(&mut self) -> Result<Message, MigrateError> {
        let (m, n) = proto::recv(&mut self.r).map_err(|e| match e {
            MigrateError::Receive(io) => MigrateError::Receive(tls_io(io)),
            other => other,
        })?;
        self.bytes += n;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_tls::issue::{init_ca, issue, Validity};
    use tern_tls::{ClientAuth, Material, Role};

    fn tls(dir: &std::path::Path, name: &str) -> Tls {
        let m = Material::load_node(dir, name).unwrap();
        Tls {
            client: m.client_config().unwrap(),
            server: m.server_config(ClientAuth::Required).unwrap(),
        }
    }

    /// Connects `client`'s node to `server`'s over TLS; returns both links.
    fn pair(server: Tls, client: Tls) -> (Link, Link) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || Link::accept(l.accept().unwrap().0, Some(&server)));
        let c = Link::connect(addr, Duration::from_secs(5), Some(&client)).unwrap();
        (t.join().unwrap().unwrap(), c)
    }

    #[test]
    fn a_node_cannot_claim_another_nodes_name() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "t", 1).unwrap();
        for n in ["a", "b"] {
            issue(d.path(), n, Role::Node, &[], Validity::days(1)).unwrap();
        }
        let (mut server, mut client) = pair(tls(d.path(), "a"), tls(d.path(), "b"));
        assert_eq!(client.peer().unwrap().name, "a");
        assert_eq!(server.peer().unwrap().name, "b");
        assert!(server.check_claim("b").is_ok());
        let e = server.check_claim("a").unwrap_err().to_string();
        assert!(e.contains("certificate is b's"), "{e}");
        assert!(client.check_claim("b").is_err());
        // Messages go through, both ways.
        client.send_now(&Message::Sync).unwrap();
        assert!(matches!(server.recv().unwrap(), Message::Sync));
        server.send_now(&Message::Synced).unwrap();
        assert!(matches!(client.recv().unwrap(), Message::Synced));
    }

    #[test]
    fn a_plaintext_peer_is_refused_in_one_line() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path(), "t", 1).unwrap();
        issue(d.path(), "a", Role::Node, &[], Validity::days(1)).unwrap();
        let server = tls(d.path(), "a");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            Link::accept(l.accept().unwrap().0, Some(&server)).map(|_| ())
        });
        let mut plain = Link::connect(addr, Duration::from_secs(5), None).unwrap();
        let _ = plain.send_now(&Message::Sync);
        let e = t.join().unwrap().unwrap_err().to_string();
        assert!(e.contains("does not speak TLS"), "{e}");
    }
}
