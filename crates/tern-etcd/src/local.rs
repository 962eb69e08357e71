//! [`LocalEtcd`]: a single-member etcd on loopback, for tests and demos.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Etcd};

/// How long a new etcd gets to answer with a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Tells members started by this process apart.
static STARTED: AtomicU32 = AtomicU32::new(0);

/// A real `etcd` process, a one-member cluster on free loopback ports,
/// killed (SIGKILL) when dropped.
///
/// Its data and its log live in the directory given to
/// [`start`](LocalEtcd::start), which the caller owns (typically a temporary
/// directory).
#[derive(Debug)]
pub struct LocalEtcd {
    child: Child,
    endpoint: String,
    client: Etcd,
    log_path: PathBuf,
    member_dir: PathBuf,
}

impl LocalEtcd {
    /// Starts the `etcd` found on `PATH`, and returns once it answers
    /// `/v3/maintenance/status` with a leader (within 20 s, else an error
    /// naming its log). Without an `etcd` binary, fails with
    /// [`Error::Setup`] saying what to install.
    pub fn start(data_dir: &Path) -> Result<LocalEtcd, Error> {
        LocalEtcd::start_with_binary(Path::new("etcd"), data_dir)
    }

    /// Like [`start`](LocalEtcd::start), with the given `etcd` binary (a
    /// path, or a name looked up on `PATH`).
    pub fn start_with_binary(binary: &Path, data_dir: &Path) -> Result<LocalEtcd, Error> {
        // The ports are free when chosen but not reserved: another process
        // may take one before etcd binds it. Then try other ports.
        let mut attempts = 3;
        loop {
            attempts -= 1;
            match LocalEtcd::start_once(binary, data_dir) {
                Err(Retry::PortTaken(_)) if attempts > 0 => continue,
                Err(Retry::PortTaken(e) | Retry::No(e)) => return Err(e),
                Ok(etcd) => return Ok(etcd),
            }
        }
    }

    fn start_once(binary: &Path, data_dir: &Path) -> Result<LocalEtcd, Retry> {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let name = format!("tern-{}-{n}", std::process::id());
        let (client_port, peer_port) = free_ports().map_err(|e| {
            Retry::No(Error::Setup(format!(
                "cannot find free loopback ports for etcd: {e}"
            )))
        })?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let member_dir = data_dir.join(format!("{name}.etcd"));
        let log_path = data_dir.join(format!("{name}.log"));
        let log = File::create(&log_path).map_err(|e| {
            Retry::No(Error::Setup(format!(
                "cannot create etcd's log {}: {e}",
                log_path.display()
            )))
        })?;
        let log_err = log.try_clone().map_err(|e| {
            Retry::No(Error::Setup(format!(
                "cannot open etcd's log {}: {e}",
                log_path.display()
            )))
        })?;
        let mut command = Command::new(binary);
        command
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&member_dir)
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{name}={peer}"))
            .arg("--initial-cluster-token")
            .arg(&name)
            .arg("--initial-cluster-state")
            .arg("new")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // etcd also reads its flags from ETCD_* variables; ours must win
        // alone.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().map_err(|e| {
            Retry::No(if e.kind() == std::io::ErrorKind::NotFound {
                Error::Setup(format!(
                    "no etcd binary ({}): install Debian's etcd-server (scripts/setup.sh)",
                    binary.display()
                ))
            } else {
                Error::Setup(format!("cannot start {}: {e}", binary.display()))
            })
        })?;
        let client = Etcd::connect(std::slice::from_ref(&endpoint)).map_err(Retry::No)?;
        let mut etcd = LocalEtcd {
            child,
            endpoint,
            client,
            log_path,
            member_dir,
        };
        etcd.wait_ready()?;
        Ok(etcd)
    }

    /// Waits for a status with a leader; the caller drops (kills) `self` on
    /// error.
    fn wait_ready(&mut self) -> Result<(), Retry> {
        let probe = self.client.clone().with_timeout(Duration::from_millis(500));
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                let error = Error::Setup(format!(
                    "etcd exited ({status}) before answering; see {}",
                    self.log_path.display()
                ));
                return Err(if log.contains("address already in use") {
                    Retry::PortTaken(error)
                } else {
                    Retry::No(error)
                });
            }
            if let Ok(status) = probe.status() {
                if status.leader != 0 {
                    return Ok(());
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(Retry::No(Error::Setup(format!(
                    "etcd at {} did not answer within {} s; see {}",
                    self.endpoint,
                    READY_TIMEOUT.as_secs(),
                    self.log_path.display()
                ))));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// A client for this etcd.
    pub fn client(&self) -> Etcd {
        self.client.clone()
    }

    /// The etcd process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where etcd's output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// etcd's own data directory (inside the directory given to
    /// [`start`](LocalEtcd::start)).
    pub fn member_dir(&self) -> &Path {
        &self.member_dir
    }
}

impl Drop for LocalEtcd {
    /// Kills etcd with SIGKILL and waits for it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why one start failed, and whether another try may help.
enum Retry {
    PortTaken(Error),
    No(Error),
}

/// Two loopback ports free right now.
fn free_ports() -> std::io::Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}
