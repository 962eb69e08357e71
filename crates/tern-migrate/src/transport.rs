//! One framed link to a peer: `Link`, the only way either side of a
//! migration talks to the other.
//!
//! A link carries [`Message`]s in the frames of [`crate::proto`] over one of
//! three byte streams:
//!
//! * plain TCP (`Link::connect` / `Link::accept` without TLS);
//! * mutual TLS over TCP (the same with a [`Tls`]): both ends present a
//!   node certificate signed by the cluster CA, and the handshake in
//!   `crate::session` then checks that the name each side claims in
//!   `Hello`/`Welcome` is the name its certificate carries;
//! * an in-process pipe (`Link::pipe`, a connected pair of Unix stream
//!   sockets; test builds only), so the source and the destination can be
//!   tested against each other without a network.
//!
//! Whatever the stream, a link buffers what it sends until `Link::flush`
//! (or `Link::send_now`), counts the bytes it moved both ways
//! (`Link::bytes`) and turns every failure into a [`MigrateError`].

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
#[cfg(test)]
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
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
    /// One end of an in-process pipe (tests only).
    #[cfg(test)]
    Pipe(UnixStream),
}

/// The socket under a stream, for what TLS does not wrap (read timeouts).
enum Socket {
    Tcp(TcpStream),
    #[cfg(test)]
    Unix(UnixStream),
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
            #[cfg(test)]
            Stream::Pipe(s) => s.read(buf),
        }
    }
}

impl Write for Half {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Stream::Plain(s) => s.write(buf),
            Stream::Client(s) => s.write(buf),
            Stream::Server(s) => s.write(buf),
            #[cfg(test)]
            Stream::Pipe(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Stream::Plain(s) => s.flush(),
            Stream::Client(s) => s.flush(),
            Stream::Server(s) => s.flush(),
            #[cfg(test)]
            Stream::Pipe(s) => s.flush(),
        }
    }
}

/// A connection carrying [`Message`]s, counting the bytes it moved.
pub(crate) struct Link {
    w: BufWriter<Half>,
    r: BufReader<Half>,
    sock: Socket,
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
    fn new(sock: Socket, stream: Stream, peer: Option<Identity>) -> io::Result<Link> {
        let half = Half(Arc::new(Mutex::new(stream)));
        Ok(Link {
            w: BufWriter::with_capacity(1 << 20, half.clone()),
            r: BufReader::with_capacity(1 << 20, half),
            sock,
            peer,
            bytes: 0,
        })
    }

    #[cfg(test)]
    /// Two links connected to each other in this process (no TLS, no
    /// network): what one sends, the other receives.
    pub(crate) fn pipe() -> io::Result<(Link, Link)> {
        let (a, b) = UnixStream::pair()?;
        let end = |s: UnixStream| Link::new(Socket::Unix(s.try_clone()?), Stream::Pipe(s), None);
        Ok((end(a)?, end(b)?))
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
            return Link::new(Socket::Tcp(tcp.try_clone()?), Stream::Plain(tcp), None);
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
        Link::new(Socket::Tcp(tcp), Stream::Client(Box::new(s)), peer)
    }

    /// Takes an accepted connection; with `tls`, completes the handshake.
    pub(crate) fn accept(tcp: TcpStream, tls: Option<&Tls>) -> io::Result<Link> {
        tcp.set_nodelay(true).ok();
        let Some(tls) = tls else {
            return Link::new(Socket::Tcp(tcp.try_clone()?), Stream::Plain(tcp), None);
        };
        let conn = rustls::ServerConnection::new(tls.server.clone())
            .map_err(|e| io::Error::other(tern_tls::explain(&e)))?;
        let mut s = rustls::StreamOwned::new(conn, tcp.try_clone()?);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(tls_io)?;
        }
        let peer = tern_tls::peer_identity(s.conn.peer_certificates());
        Link::new(Socket::Tcp(tcp), Stream::Server(Box::new(s)), peer)
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
        match &self.sock {
            Socket::Tcp(s) => s.set_read_timeout(t),
            #[cfg(test)]
            Socket::Unix(s) => s.set_read_timeout(t),
        }
        .map_err(MigrateError::Receive)
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

    /// The next message, which must be the one `pick` takes (`Ok`); any
    /// other (`Err`, handed back) is an error naming `want`, and a peer's
    /// `Abort` is [`MigrateError::Aborted`] with its reason.
    pub(crate) fn expect<T>(
        &mut self,
        want: &str,
        pick: impl FnOnce(Message) -> Result<T, Message>,
    ) -> Result<T, MigrateError> {
        pick(self.recv()?).map_err(|other| proto::unexpected(&other, want))
    }

    /// True when a message (or part of one) has arrived and not been read:
    /// in this link's buffer, decrypted by TLS, or waiting on the socket.
    /// Post-copy uses it to interleave reading requests with sending pages.
    pub(crate) fn readable(&mut self) -> Result<bool, MigrateError> {
        Ok(self.ready(None, Duration::ZERO)?.0)
    }

    /// Waits at most `timeout` until a message arrives or `other` (a
    /// descriptor of the caller's, e.g. a userfaultfd) is readable; returns
    /// which of the two are ready.
    pub(crate) fn ready(
        &mut self,
        other: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<(bool, bool), MigrateError> {
        // Bytes already read off the socket are a message ready; the other
        // fd is still polled (without waiting), so that under a steady
        // stream it is never starved: post-copy's page faults must be seen
        // while pushed pages keep arriving.
        let buffered = !self.r.buffer().is_empty() || self.tls_pending();
        let timeout = if buffered { Duration::ZERO } else { timeout };
        let sock = match &self.sock {
            Socket::Tcp(s) => s.as_fd(),
            #[cfg(test)]
            Socket::Unix(s) => s.as_fd(),
        };
        let mut fds = vec![PollFd::new(&sock, PollFlags::IN)];
        if let Some(fd) = &other {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(MigrateError::Receive(e.into())),
        }
        // A hang-up or error counts as readable: the read then reports it.
        let ready = |f: &PollFd<'_>| !f.revents().is_empty();
        Ok((buffered || ready(&fds[0]), fds.get(1).is_some_and(ready)))
    }

    /// True when TLS holds decrypted bytes not read yet (records read off
    /// the socket along with earlier ones).
    fn tls_pending(&self) -> bool {
        let mut stream = self.r.get_ref().0.lock().unwrap_or_else(|e| e.into_inner());
        let state = match &mut *stream {
            Stream::Client(s) => s.conn.process_new_packets(),
            Stream::Server(s) => s.conn.process_new_packets(),
            _ => return false,
        };
        // A TLS error is for the next read to report.
        state.map_or(true, |st| st.plaintext_bytes_to_read() > 0)
    }

    /// Tells the peer the migration is off, why, and pushes it out; best
    /// effort (the peer may be gone already, which is often why).
    pub(crate) fn abort(&mut self, why: &MigrateError) {
        let _ = self.send_now(&Message::Abort(why.to_string()));
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
    fn a_pipe_carries_frames_both_ways_and_counts_them() {
        let (mut a, mut b) = Link::pipe().unwrap();
        assert!(a.peer().is_none());
        assert!(a.check_claim("anyone").is_ok());
        a.send(&Message::Sync).unwrap();
        a.send(&Message::ModuleChunk(vec![7; 100_000])).unwrap();
        a.flush().unwrap();
        assert!(matches!(b.recv().unwrap(), Message::Sync));
        let chunk = b.expect("ModuleChunk", |m| match m {
            Message::ModuleChunk(c) => Ok(c),
            other => Err(other),
        });
        assert_eq!(chunk.unwrap().len(), 100_000);
        assert_eq!(a.bytes, b.bytes);
        b.abort(&MigrateError::Local("no room".into()));
        let e = a.expect("Synced", |m| match m {
            Message::Synced => Ok(()),
            other => Err(other),
        });
        assert!(matches!(e, Err(MigrateError::Aborted(why)) if why == "no room"));
        // A read timeout is a receive error, not a hang.
        a.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        assert!(matches!(a.recv(), Err(MigrateError::Receive(_))));
        // A closed peer is a receive error too.
        drop(b);
        assert!(matches!(a.recv(), Err(MigrateError::Receive(_))));
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
