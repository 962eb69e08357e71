//! Tern's node daemon: runs guests, answers an HTTP/JSON API for the CLI,
//! exports Prometheus metrics, and sends and receives live migrations.
//!
//! Threads, not tasks: every guest runs on its own thread ([`runner`]), every
//! migration and every API request on one of its own. The HTTP API
//! ([`api`]) and the migration listener are two TCP ports: `--listen` and
//! `--migrate-listen` (default: the next port). State that must survive the
//! daemon lives in the data directory: `guests.json` (the [`registry`]),
//! `migrations.jsonl` (every migration report) and `guests/<id>/log` (each
//! guest's whole output, which moves with the guest).
//!
//! Each guest runs under resource limits ([`limits`], [`cpu`],
//! `docs/limits.md`): one guest running out of memory, descriptors, log
//! space or CPU share ends or slows that guest, never the node.

pub mod api;
pub mod cpu;
pub mod departed;
pub mod limits;
pub mod registry;
pub mod runner;

use std::collections::BTreeMap;
use std::net::{TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tern_migrate::GuestInfo;
use tern_vm::wasi::{OutputSink, WasiConfig, WasiCtx};
use tern_vm::{Guest, Runtime};

use crate::registry::{GuestRecord, Registry};
use crate::runner::{RunState, Runner};

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// `server` or `board`.
    pub class: String,
    /// HTTP API address.
    pub listen: String,
    /// Migration listener address.
    pub migrate_listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// How long to keep the image of a guest that left (0: not at all).
    pub keep_departed: std::time::Duration,
    /// Most bytes of such images kept in all.
    pub keep_departed_bytes: u64,
    /// Mutual TLS for the API, migrations and calls to other nodes (None:
    /// plain TCP).
    pub tls: Option<NodeTls>,
    /// Limits of the guests (memory default and maximum, log size).
    pub limits: limits::NodeLimits,
}

/// A node's certificate, made into the TLS configurations it needs.
#[derive(Clone)]
pub struct NodeTls {
    /// For migrations, both ways.
    pub migrate: tern_migrate::Tls,
    /// For the API (client certificates optional: tokens stand in).
    pub api: Arc<tern_tls::rustls::ServerConfig>,
    /// For calls to other nodes' APIs.
    pub client: Arc<tern_tls::rustls::ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Loads node `name`'s certificate from cluster directory `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<NodeTls, String> {
        use tern_tls::{ClientAuth, Material};
        let m = Material::load_node(dir, name).map_err(|e| e.to_string())?;
        let client = m.client_config().map_err(|e| e.to_string())?;
        Ok(NodeTls {
            migrate: tern_migrate::Tls {
                client: client.clone(),
                server: m
                    .server_config(ClientAuth::Required)
                    .map_err(|e| e.to_string())?,
            },
            api: m
                .server_config(ClientAuth::Optional)
                .map_err(|e| e.to_string())?,
            client,
        })
    }
}

/// What `GET /v1/node` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// `server` or `board`.
    pub class: String,
    /// ISA.
    pub arch: String,
    /// HTTP API address.
    pub api: String,
    /// Migration listener address.
    pub migrate: String,
    /// Tern version.
    pub version: String,
    /// Migration protocol version.
    pub protocol: u32,
}

/// A migration this node sends, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MigrationStatus {
    /// Migration id.
    pub id: String,
    /// Guest id.
    pub guest: String,
    /// `running`, `done`, `failed`.
    pub state: String,
    /// Progress so far.
    pub progress: tern_migrate::Progress,
    /// The report, once done.
    pub report: Option<tern_migrate::Report>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Migrations sent that completed.
    pub migrations_ok: AtomicU64,
    /// Migrations sent that failed (guest kept here).
    pub migrations_failed: AtomicU64,
    /// Guests received by migration.
    pub migrations_in: AtomicU64,
    /// Bytes sent by migrations.
    pub migration_bytes: AtomicU64,
    /// Last migration's downtime in microseconds.
    pub last_downtime_us: AtomicU64,
    /// Guests booted or restored here.
    pub guests_started: AtomicU64,
}

/// A running node.
pub struct Node {
    /// Configuration.
    pub config: NodeConfig,
    /// Actual migration listener address (after binding port 0).
    pub migrate_addr: String,
    runtime: Runtime,
    registry: Mutex<Registry>,
    runners: Mutex<BTreeMap<String, Arc<Runner>>>,
    migrations: Mutex<BTreeMap<String, MigrationStatus>>,
    /// Images of guests that left, for their return.
    departed: Arc<departed::Departed>,
    /// How guests' CPU weights and quotas are enforced.
    cpu: cpu::CpuControl,
    /// Log budgets of guests arriving by migration, from `open_log` to
    /// `adopt`.
    arriving_logs: Mutex<BTreeMap<String, Arc<limits::LogBudget>>>,
    /// Counters.
    pub metrics: Metrics,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random-looking id of 12 hex digits.
pub fn new_id(salt: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = blake3::hash(format!("{nanos}-{}-{salt}", std::process::id()).as_bytes());
    tern_prepare::hex(&h.as_bytes()[..6])
}

/// A line of structured log on stderr (JSON).
pub fn log_event(event: &str, fields: serde_json::Value) {
    let mut v = serde_json::json!({ "ts_ms": now_ms(), "event": event });
    if let (Some(o), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    eprintln!("{v}");
}

/// How to boot a guest.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BootSpec {
    /// Name shown by `ps`.
    pub name: String,
    /// The wasm module, base64.
    pub module_b64: String,
    /// Guest arguments (after argv[0]).
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Preopened directories: host path, guest name.
    pub dirs: Vec<(String, String)>,
    /// Memory limit in bytes (default: the node's `--max-memory`; more
    /// than that is refused).
    #[serde(default)]
    pub max_memory: Option<u64>,
    /// Most open descriptors (default 1024).
    #[serde(default)]
    pub max_fds: Option<u32>,
    /// CPU weight, 1 to 10000 (default 100, an equal share).
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    /// CPU quota in cores, e.g. 0.25 (default: none; needs cgroups).
    #[serde(default)]
    pub cpu_quota: Option<f64>,
}

impl BootSpec {
    /// The limits the guest asks for.
    pub fn requested(&self) -> limits::Requested {
        limits::Requested {
            max_memory: self.max_memory,
            max_fds: self.max_fds,
            cpu_weight: self.cpu_weight,
            cpu_quota: self.cpu_quota,
        }
    }
}

impl Node {
    /// Opens the data directory and binds the migration listener. The API
    /// is served by [`api::serve`].
    pub fn open(config: NodeConfig) -> Result<Arc<Node>, String> {
        std::fs::create_dir_all(config.data_dir.join("guests"))
            .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
        let registry = Registry::load(&config.data_dir)?;
        let departed = Arc::new(departed::Departed::open(
            &config.data_dir,
            config.keep_departed,
            config.keep_departed_bytes,
        )?);
        let runtime =
            Runtime::new(Some(tern_prepare::default_cache_dir())).map_err(|e| e.to_string())?;
        let cpu = cpu::CpuControl::open(&config.name);
        let listener = TcpListener::bind(&config.migrate_listen).map_err(|e| {
            format!(
                "cannot listen for migrations on {}: {e}",
                config.migrate_listen
            )
        })?;
        let migrate_addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| config.migrate_listen.clone());
        let node = Arc::new(Node {
            config,
            migrate_addr,
            runtime,
            registry: Mutex::new(registry),
            runners: Mutex::new(BTreeMap::new()),
            migrations: Mutex::new(BTreeMap::new()),
            departed,
            cpu,
            arriving_logs: Mutex::new(BTreeMap::new()),
            metrics: Metrics::default(),
        });
        let n = node.clone();
        std::thread::Builder::new()
            .name("migrate-listener".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(stream) = conn else { continue };
                    let n = n.clone();
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    std::thread::spawn(move || match tern_migrate::serve(stream, &Dest(n)) {
                        Ok(served) => log_event(
                            "migration_in",
                            serde_json::json!({ "peer": peer, "result": format!("{served:?}") }),
                        ),
                        Err(e) => log_event(
                            "migration_in_failed",
                            serde_json::json!({ "peer": peer, "error": e.to_string() }),
                        ),
                    });
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(node)
    }

    /// How guests' CPU weights and quotas are enforced, in one line.
    pub fn cpu_control(&self) -> String {
        self.cpu.describe()
    }

    /// Node facts for `GET /v1/node`.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.config.name.clone(),
            class: self.config.class.clone(),
            arch: std::env::consts::ARCH.into(),
            api: self.config.listen.clone(),
            migrate: self.migrate_addr.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: tern_migrate::PROTOCOL_VERSION,
        }
    }

    fn guest_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("guests").join(id)
    }

    /// Creates the log file of a guest (with `initial` bytes) and returns
    /// sinks that write to it within the node's log limit, and their budget.
    fn new_log(
        &self,
        id: &str,
        initial: &[u8],
    ) -> Result<(PathBuf, OutputSink, OutputSink, Arc<limits::LogBudget>), String> {
        let dir = self.guest_dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("log");
        std::fs::write(&path, initial)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let open = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))
        };
        let budget = limits::LogBudget::new(self.config.limits.max_log, initial.len() as u64);
        let out = OutputSink::Writer(Box::new(limits::LimitedLog::new(open()?, budget.clone())));
        let err = OutputSink::Writer(Box::new(limits::LimitedLog::new(open()?, budget.clone())));
        Ok((path, out, err, budget))
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut GuestRecord)) -> Result<(), String> {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = reg.guests.get_mut(id) {
            f(r);
        }
        reg.save()
    }

    /// Registers and starts a guest (fresh, restored or arrived) whose
    /// log is `log` under `budget`. A CPU quota this node cannot enforce
    /// fails the start when `strict` (a boot); otherwise (a guest that
    /// arrived with one) the guest runs without it.
    fn start(
        self: &Arc<Self>,
        info: GuestInfo,
        mut guest: Guest,
        log: PathBuf,
        budget: Arc<limits::LogBudget>,
        came_from: Option<String>,
        strict: bool,
    ) -> Result<String, String> {
        let id = info.id.clone();
        let placement = match self.cpu.prepare(&id, &guest.limits()) {
            Ok(p) => p,
            Err(e) if strict => return Err(e),
            Err(e) => {
                log_event(
                    "cpu_quota_dropped",
                    serde_json::json!({ "guest": id, "error": e }),
                );
                let mut l = guest.limits();
                l.cpu_quota_millicores = None;
                guest.set_limits(l).map_err(|e| e.to_string())?;
                self.cpu.prepare(&id, &l)?
            }
        };
        let cpu_control = match &placement {
            cpu::Placement::Cgroup { group, .. } => format!("cgroup {}", group.display()),
            cpu::Placement::Nice(n) => format!("nice {n}"),
        };
        {
            let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            reg.guests.insert(
                id.clone(),
                GuestRecord {
                    id: id.clone(),
                    name: info.name.clone(),
                    state: "running".into(),
                    exit_code: None,
                    error: None,
                    limit: None,
                    limits: Some(guest.limits()),
                    cpu_control: Some(cpu_control),
                    moved_to: None,
                    moved_by: None,
                    came_from,
                    since_unix_ms: now_ms(),
                },
            );
            reg.save()?;
        }
        let node = Arc::downgrade(self);
        let on_final = Arc::new(move |info: &GuestInfo, end: &RunState| {
            let Some(node) = node.upgrade() else { return };
            let _ = node.update(&info.id, |r| match end {
                RunState::Exited(c) => {
                    r.state = "exited".into();
                    r.exit_code = Some(*c);
                }
                RunState::Failed(e) => {
                    r.state = "failed".into();
                    r.error = Some(e.clone());
                }
                RunState::Limited {
                    limit,
                    message,
                    exit_code,
                } => {
                    r.state = "limited".into();
                    r.limit = Some(limit.clone());
                    r.error = Some(message.clone());
                    r.exit_code = *exit_code;
                }
                RunState::Stopped if r.state != "checkpointed" => r.state = "stopped".into(),
                RunState::Released => r.state = "moved".into(),
                _ => {}
            });
            log_event(
                "guest_end",
                serde_json::json!({ "guest": info.id, "state": format!("{end:?}") }),
            );
        });
        let runner = Runner::start(info, guest, log, budget, placement, on_final)?;
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), runner);
        self.metrics.guests_started.fetch_add(1, Ordering::Relaxed);
        log_event("guest_start", serde_json::json!({ "guest": id }));
        Ok(id)
    }

    /// Boots a new guest from a module.
    pub fn boot(self: &Arc<Self>, spec: BootSpec) -> Result<String, String> {
        use base64::Engine as _;
        let limits = self.config.limits.for_boot(&spec.requested())?;
        let wasm = base64::engine::general_purpose::STANDARD
            .decode(spec.module_b64.as_bytes())
            .map_err(|e| format!("module is not valid base64: {e}"))?;
        let cache = tern_prepare::Cache::new(tern_prepare::default_cache_dir());
        let prepared = cache
            .prepare(&wasm, &Default::default())
            .map_err(|e| format!("cannot prepare {}: {e}", spec.name))?;
        let id = new_id(&spec.name);
        let (log, out, err, budget) = self.new_log(&id, b"")?;
        let mut args = vec![spec.name.clone()];
        args.extend(spec.args);
        let preopens = spec
            .dirs
            .into_iter()
            .map(|(h, g)| (PathBuf::from(h), g))
            .collect();
        let wasi = WasiCtx::new(WasiConfig {
            args,
            env: spec.env,
            preopens,
            stdout: out,
            stderr: err,
        })
        .map_err(|e| e.to_string())?;
        let guest = match Guest::boot_with(&self.runtime, &prepared, wasi, limits) {
            Ok(g) => g,
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.guest_dir(&id));
                return Err(e.to_string());
            }
        };
        let info = GuestInfo {
            id: guest.id().to_string(),
            name: spec.name,
        };
        // The log was made under the provisional id; keep the guest's own.
        let dir = self.guest_dir(&info.id);
        if info.id != id {
            std::fs::rename(self.guest_dir(&id), &dir).map_err(|e| e.to_string())?;
        }
        self.start(info, guest, dir.join("log"), budget, None, true)
            .inspect_err(|_| drop(log))
    }

    /// Restores an image file (on this node's filesystem) as a running guest.
    pub fn restore_image(self: &Arc<Self>, path: &Path) -> Result<String, String> {
        let bytes = tern_image::read_bytes(path, tern_image::DEFAULT_MAX_FILE_LEN)
            .map_err(|e| e.to_string())?;
        let view = tern_image::view(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let id = view.meta.guest_id.clone();
        if let Some(r) = self
            .runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            if !r.state().is_final() {
                return Err(format!("guest {id} is already running on this node"));
            }
        }
        let (log, out, err, budget) = self.new_log(&id, b"")?;
        let mut guest = Guest::restore(&self.runtime, &view, out, err)
            .map_err(|e| format!("cannot restore {}: {e}", path.display()))?;
        self.config
            .limits
            .admit(&mut guest)
            .map_err(|e| format!("cannot restore {}: {e}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.start(GuestInfo { id, name }, guest, log, budget, None, true)
    }

    /// The runner of a guest still on this node.
    pub fn runner(&self, id: &str) -> Option<Arc<Runner>> {
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Every guest record, with live states.
    pub fn guests(&self) -> Vec<GuestRecord> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        reg.guests
            .values()
            .map(|r| {
                let mut r = r.clone();
                if let Some(run) = runners.get(&r.id) {
                    if run.state() == RunState::Paused && r.state == "running" {
                        r.state = "paused".into();
                    }
                }
                r
            })
            .collect()
    }

    /// One guest record.
    pub fn guest(&self, id: &str) -> Option<GuestRecord> {
        self.guests().into_iter().find(|g| g.id == id)
    }

    /// Stops a guest.
    pub fn stop(&self, id: &str) -> Result<(), String> {
        let r = self
            .runner(id)
            .ok_or_else(|| format!("no guest {id} runs on this node"))?;
        let _op = r.op.lock().unwrap_or_else(|e| e.into_inner());
        if r.pause_now() == RunState::Paused {
            r.stop_paused();
        }
        Ok(())
    }

    /// Writes a checkpoint image of a guest to `path` on this node.
    pub fn checkpoint(
        &self,
        id: &str,
        path: &Path,
        leave_running: bool,
    ) -> Result<tern_vm::CaptureStats, String> {
        let r = self
            .runner(id)
            .ok_or_else(|| format!("no guest {id} runs on this node"))?;
        let _op = r.op.lock().unwrap_or_else(|e| e.into_inner());
        match r.pause_now() {
            RunState::Paused => {}
            other => return Err(format!("the guest ended before the checkpoint ({other:?})")),
        }
        let stats = r.save(path.to_path_buf());
        if leave_running || stats.is_err() {
            r.resume_now();
        } else {
            let _ = self.update(id, |g| g.state = "checkpointed".into());
            r.stop_paused();
        }
        stats
    }

    /// Starts migrating a guest to the node whose API is at `to`; returns the
    /// migration id at once. Progress and the report: [`Node::migration`].
    pub fn start_migration(
        self: &Arc<Self>,
        id: &str,
        to: &str,
        opts: tern_migrate::Options,
    ) -> Result<String, String> {
        let r = self
            .runner(id)
            .ok_or_else(|| format!("no guest {id} runs on this node"))?;
        if r.state().is_final() {
            return Err(format!("guest {id} is not running"));
        }
        let tls = self.config.tls.as_ref();
        let dest = fetch_node_info(to, tls.map(|t| t.client.clone()))?;
        let mid = new_id(id);
        self.migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                mid.clone(),
                MigrationStatus {
                    id: mid.clone(),
                    guest: id.to_string(),
                    state: "running".into(),
                    ..Default::default()
                },
            );
        let node = self.clone();
        let mut opts = opts;
        opts.migration_id = mid.clone();
        opts.node = self.config.name.clone();
        opts.listen = self.migrate_addr.clone();
        opts.tls = tls.map(|t| t.migrate.clone());
        opts.expect_node = Some(dest.name.clone());
        let to_api = to.to_string();
        let m = mid.clone();
        std::thread::spawn(move || {
            let run = std::panic::AssertUnwindSafe(|| {
                node.run_migration(&r, &dest.migrate, &to_api, &m, &opts)
            });
            if std::panic::catch_unwind(run).is_err() {
                // A bug, not a network failure: keep the guest here, running.
                r.resume_now();
                if let Some(s) = node
                    .migrations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&m)
                {
                    s.state = "failed".into();
                    s.error = Some("internal error in the migration (see the node's log)".into());
                }
            }
        });
        Ok(mid)
    }

    fn run_migration(
        &self,
        r: &Arc<Runner>,
        to: &str,
        to_api: &str,
        mid: &str,
        opts: &tern_migrate::Options,
    ) {
        let _op = r.op.lock().unwrap_or_else(|e| e.into_inner());
        let hand_over = |m: &str| {
            self.update(&r.info.id, |g| {
                g.state = "moved".into();
                g.moved_to = Some(to_api.to_string());
                g.moved_by = Some(m.to_string());
            })
        };
        let out = runner::Outgoing {
            runner: r,
            hand_over: &hand_over,
        };
        let mut progress = |p: &tern_migrate::Progress| {
            if let Some(s) = self
                .migrations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(mid)
            {
                s.progress = p.clone();
            }
        };
        let result = tern_migrate::migrate(&out, to, opts, &mut progress);
        if let Ok(report) = &result {
            r.release(self.keep_departed(&r.info.id, report.memory_bytes));
        }
        let mut all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = all.get_mut(mid) else { return };
        match result {
            Ok(report) => {
                self.metrics.migrations_ok.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .migration_bytes
                    .fetch_add(report.bytes_sent, Ordering::Relaxed);
                self.metrics
                    .last_downtime_us
                    .store((report.downtime_ms * 1000.0) as u64, Ordering::Relaxed);
                log_event(
                    "migration_out",
                    serde_json::to_value(&report).unwrap_or_default(),
                );
                self.append_history(&report);
                s.state = "done".into();
                s.report = Some(report);
            }
            Err(e) => {
                self.metrics
                    .migrations_failed
                    .fetch_add(1, Ordering::Relaxed);
                log_event(
                    "migration_out_failed",
                    serde_json::json!({ "migration": mid, "guest": r.info.id, "error": e.to_string() }),
                );
                s.state = "failed".into();
                s.error = Some(e.to_string());
            }
        }
    }

    /// What to do with a guest that just left: keep its image for a
    /// return, when the budget admits it.
    fn keep_departed(&self, id: &str, memory_bytes: u64) -> Option<runner::AfterRelease> {
        if !self.departed.admits(memory_bytes) {
            return None;
        }
        let departed = self.departed.clone();
        let id = id.to_string();
        Some(Box::new(move |guest: &mut Guest| {
            match departed.store(&id, guest) {
                Ok(bytes) => log_event(
                    "departed_kept",
                    serde_json::json!({ "guest": id, "image_bytes": bytes }),
                ),
                Err(e) => log_event(
                    "departed_not_kept",
                    serde_json::json!({ "guest": id, "error": e }),
                ),
            }
        }))
    }

    fn append_history(&self, report: &tern_migrate::Report) {
        use std::io::Write;
        let path = self.config.data_dir.join("migrations.jsonl");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{}", serde_json::to_string(report).unwrap_or_default());
        }
    }

    /// A migration's status.
    pub fn migration(&self, mid: &str) -> Option<MigrationStatus> {
        self.migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(mid)
            .cloned()
    }

    /// Every migration report this node kept (`migrations.jsonl`).
    pub fn history(&self) -> Vec<tern_migrate::Report> {
        let path = self.config.data_dir.join("migrations.jsonl");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The node as the receiving side of migrations.
pub struct Dest(pub Arc<Node>);

impl tern_migrate::DestHost for Dest {
    fn runtime(&self) -> &Runtime {
        &self.0.runtime
    }
    fn node_name(&self) -> String {
        self.0.config.name.clone()
    }
    fn tls(&self) -> Option<&tern_migrate::Tls> {
        self.0.config.tls.as_ref().map(|t| &t.migrate)
    }
    fn max_log(&self) -> u64 {
        // Room for the line a node appends when it stops a guest's output.
        self.0.config.limits.max_log.saturating_add(64 << 10)
    }
    fn open_log(&self, guest: &GuestInfo, log: &[u8]) -> Result<(OutputSink, OutputSink), String> {
        if let Some(r) = self.0.runner(&guest.id) {
            if !r.state().is_final() {
                return Err(format!("guest {} already runs on this node", guest.id));
            }
        }
        let (_, out, err, budget) = self.0.new_log(&guest.id, log)?;
        self.0
            .arriving_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(guest.id.clone(), budget);
        Ok((out, err))
    }
    fn adopt(&self, guest: GuestInfo, mut g: Guest, migration_id: &str, from_node: &str) {
        self.0.metrics.migrations_in.fetch_add(1, Ordering::Relaxed);
        // Back here: the image kept from when it left is out of date.
        self.0.departed.remove(&guest.id);
        // The guest is ours now and must run: within this node's memory
        // maximum when its memory allows, else as it came.
        if let Err(e) = self.0.config.limits.admit(&mut g) {
            log_event(
                "memory_limit_kept",
                serde_json::json!({ "guest": guest.id, "reason": e }),
            );
        }
        let log = self.0.guest_dir(&guest.id).join("log");
        let budget = self
            .0
            .arriving_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&guest.id)
            .unwrap_or_else(|| limits::LogBudget::new(self.0.config.limits.max_log, 0));
        if let Err(e) = self.0.start(
            guest.clone(),
            g,
            log,
            budget,
            Some(from_node.to_string()),
            false,
        ) {
            log_event(
                "adopt_failed",
                serde_json::json!({ "guest": guest.id, "migration": migration_id, "error": e }),
            );
        }
    }
    fn discard(&self, guest: &GuestInfo) {
        self.0
            .arriving_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&guest.id);
        if self.0.runner(&guest.id).is_none() {
            let _ = std::fs::remove_dir_all(self.0.guest_dir(&guest.id));
        }
    }
    fn base_image(&self, guest: &GuestInfo) -> Option<PathBuf> {
        self.0.departed.find(&guest.id)
    }
    fn base_unusable(&self, guest: &GuestInfo, path: &std::path::Path, why: &str) {
        log_event(
            "base_unused",
            serde_json::json!({ "guest": guest.id, "image": path, "why": why }),
        );
    }
    fn handed_over(&self, migration_id: &str) -> bool {
        let reg = self.0.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.guests
            .values()
            .any(|g| g.moved_by.as_deref() == Some(migration_id))
    }
}

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

/// An HTTP client: with `tls`, it presents that configuration's
/// certificate and trusts only the cluster's nodes.
pub fn http_agent(tls: Option<Arc<tern_tls::rustls::ClientConfig>>) -> ureq::Agent {
    let b = ureq::AgentBuilder::new().timeout_connect(std::time::Duration::from_secs(10));
    match tls {
        Some(c) => b.tls_config(c).build(),
        None => b.build(),
    }
}

/// Asks a node's API for its facts (over TLS with `tls`).
pub fn fetch_node_info(
    api: &str,
    tls: Option<Arc<tern_tls::rustls::ClientConfig>>,
) -> Result<NodeInfo, String> {
    let secure = tls.is_some();
    let url = format!("{}/v1/node", base_url(api, secure));
    let resp = http_agent(tls)
        .get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .call()
        .map_err(|e| format!("cannot reach node {api}: {}", explain_http(&e)))?;
    let info: NodeInfo = resp
        .into_json()
        .map_err(|e| format!("node {api} answered nonsense: {e}"))?;
    // A node listening on 0.0.0.0 advertises an address others cannot use:
    // put the host the API was reached by in front of the port.
    let mut info = info;
    if let Ok(sa) = info.migrate.to_socket_addrs().map(|mut a| a.next()) {
        if let Some(sa) = sa.filter(|a| a.ip().is_unspecified()) {
            let host = api
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

/// One line saying why an HTTP call failed, naming TLS refusals plainly.
pub fn explain_http(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, _) => format!("HTTP {code}"),
        ureq::Error::Transport(t) => {
            // A TLS alert record (0x15 0x03) where an HTTP header was due.
            // ureq reports it as a malformed header carrying those bytes.
            if t.to_string().contains("[21, 3, ") {
                return "the node speaks TLS only: give --tls-dir (or TERN_TLS_DIR)".into();
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
