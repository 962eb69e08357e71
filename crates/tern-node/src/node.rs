//! A node's life and its guests': opening the data directory, booting,
//! restoring, stopping and checkpointing guests, and the registry that
//! outlives the daemon. Migrations are in [`crate::migration`].

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tern_api::{BootSpec, GuestLimits, GuestState, MigrationStatus, ModuleStatus, NodeInfo};
use tern_migrate::GuestInfo;
use tern_vm::wasi::{OutputSink, WasiConfig, WasiCtx};
use tern_vm::{Guest, Runtime};

use crate::config::NodeConfig;
use crate::error::Error;
use crate::ids::{new_id, now_ms};
use crate::metrics::Metrics;
use crate::registry::{GuestRecord, Registry};
use crate::runner::{RunState, Runner};
use crate::{cpu, departed, limits};

/// A running node.
pub struct Node {
    /// Configuration.
    pub config: NodeConfig,
    /// Actual migration listener address (after binding port 0).
    pub migrate_addr: String,
    pub(crate) runtime: Runtime,
    pub(crate) registry: Mutex<Registry>,
    runners: Mutex<BTreeMap<String, Arc<Runner>>>,
    pub(crate) migrations: Mutex<BTreeMap<String, MigrationStatus>>,
    /// Images of guests that left, for their return.
    pub(crate) departed: Arc<departed::Departed>,
    /// How guests' CPU weights and quotas are enforced.
    cpu: cpu::CpuControl,
    /// Log budgets of guests arriving by migration, from `open_log` to
    /// `adopt`.
    pub(crate) arriving_logs: Mutex<BTreeMap<String, Arc<limits::LogBudget>>>,
    /// Modules stored here by hash.
    pub(crate) modules: crate::modules::Modules,
    /// Counters.
    pub metrics: Metrics,
}

/// The limits as the API shows them.
pub(crate) fn api_limits(l: tern_vm::limits::Limits) -> GuestLimits {
    GuestLimits {
        max_memory: l.max_memory,
        max_fds: l.max_fds,
        cpu_weight: l.cpu_weight,
        cpu_quota_millicores: l.cpu_quota_millicores,
    }
}

/// The limits a boot asks for.
fn requested(spec: &BootSpec) -> limits::Requested {
    limits::Requested {
        max_memory: spec.max_memory,
        max_fds: spec.max_fds,
        cpu_weight: spec.cpu_weight,
        cpu_quota: spec.cpu_quota,
    }
}

impl Node {
    /// Opens the data directory and binds the migration listener. The API
    /// is served by [`crate::api::serve`].
    pub fn open(config: NodeConfig) -> Result<Arc<Node>, String> {
        std::fs::create_dir_all(config.data_dir.join("guests"))
            .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
        let registry = Registry::load(&config.data_dir)?;
        let config_dir = config.data_dir.clone();
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
            modules: crate::modules::Modules::open(&config_dir)?,
            metrics: Metrics::default(),
        });
        crate::migration::listen(node.clone(), listener)?;
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
            class: self.config.class,
            arch: std::env::consts::ARCH.into(),
            api: self.config.listen.clone(),
            migrate: self.migrate_addr.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: tern_migrate::PROTOCOL_VERSION,
            cpus: self.config.cpus,
            power: self.config.power,
            speed: self.config.speed,
        }
    }

    pub(crate) fn guest_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("guests").join(id)
    }

    /// Where a guest's whole output is kept.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.guest_dir(id).join("log")
    }

    /// Creates the log file of a guest (with `initial` bytes) and returns
    /// sinks that write to it within the node's log limit, and their budget.
    pub(crate) fn new_log(
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

    pub(crate) fn update(&self, id: &str, f: impl FnOnce(&mut GuestRecord)) -> Result<(), String> {
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
    pub(crate) fn start(
        self: &Arc<Self>,
        info: GuestInfo,
        mut guest: Guest,
        log: PathBuf,
        budget: Arc<limits::LogBudget>,
        came_from: Option<String>,
        strict: bool,
    ) -> Result<String, Error> {
        let id = info.id.clone();
        let placement = match self.cpu.prepare(&id, &guest.limits()) {
            Ok(p) => p,
            Err(e) if strict => return Err(Error::BadRequest(e)),
            Err(e) => {
                tracing::warn!(event = "cpu_quota_dropped", guest = %id, error = %e);
                let mut l = guest.limits();
                l.cpu_quota_millicores = None;
                guest
                    .set_limits(l)
                    .map_err(|e| Error::Internal(e.to_string()))?;
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
                    state: GuestState::Running,
                    exit_code: None,
                    error: None,
                    limit: None,
                    limits: Some(api_limits(guest.limits())),
                    cpu_control: Some(cpu_control),
                    moved_to: None,
                    moved_by: None,
                    came_from,
                    since_unix_ms: now_ms(),
                    memory_bytes: None,
                    cpu_ms: None,
                },
            );
            reg.save()?;
        }
        let node = Arc::downgrade(self);
        let on_final = Arc::new(move |info: &GuestInfo, end: &RunState| {
            let Some(node) = node.upgrade() else { return };
            let _ = node.update(&info.id, |r| match end {
                RunState::Exited(c) => {
                    r.state = GuestState::Exited;
                    r.exit_code = Some(*c);
                }
                RunState::Failed(e) => {
                    r.state = GuestState::Failed;
                    r.error = Some(e.clone());
                }
                RunState::Limited {
                    limit,
                    message,
                    exit_code,
                } => {
                    r.state = GuestState::Limited;
                    r.limit = Some(limit.clone());
                    r.error = Some(message.clone());
                    r.exit_code = *exit_code;
                }
                RunState::Stopped if r.state != GuestState::Checkpointed => {
                    r.state = GuestState::Stopped
                }
                RunState::Released => r.state = GuestState::Moved,
                _ => {}
            });
            tracing::info!(event = "guest_end", guest = %info.id, state = ?end);
        });
        let runner = Runner::start(info, guest, log, budget, placement, on_final)?;
        self.runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), runner);
        self.metrics.guest_started();
        tracing::info!(event = "guest_start", guest = %id);
        Ok(id)
    }

    /// Boots a new guest from a module.
    pub fn boot(self: &Arc<Self>, spec: BootSpec) -> Result<String, Error> {
        use base64::Engine as _;
        let limits = self
            .config
            .limits
            .for_boot(&requested(&spec))
            .map_err(Error::BadRequest)?;
        let wasm = match (&spec.module, spec.module_b64.is_empty()) {
            (Some(hash), true) => self.modules.get(hash)?,
            (None, false) => base64::engine::general_purpose::STANDARD
                .decode(spec.module_b64.as_bytes())
                .map_err(|e| Error::BadRequest(format!("module is not valid base64: {e}")))?,
            (Some(_), false) => {
                return Err(Error::BadRequest(
                    "give the module by hash (`module`) or inline (`module_b64`), not both".into(),
                ))
            }
            (None, true) => {
                return Err(Error::BadRequest(
                    "no module: give its hash (`module`) or its bytes (`module_b64`)".into(),
                ))
            }
        };
        let prepared = self.prepare(&wasm, &spec.name)?;
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
        .map_err(|e| Error::BadRequest(e.to_string()))?;
        let guest = match Guest::boot_with(&self.runtime, &prepared, wasi, limits) {
            Ok(g) => g,
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.guest_dir(&id));
                return Err(Error::BadRequest(e.to_string()));
            }
        };
        let info = GuestInfo {
            id: guest.id().to_string(),
            name: spec.name,
        };
        // The log was made under the provisional id; keep the guest's own.
        let dir = self.guest_dir(&info.id);
        if info.id != id {
            std::fs::rename(self.guest_dir(&id), &dir)
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
        self.start(info, guest, dir.join("log"), budget, None, true)
            .inspect_err(|_| drop(log))
    }

    /// The prepared form of `wasm` (from the prepare cache when there), kept
    /// by digest for migrations that bring the same module later.
    fn prepare(&self, wasm: &[u8], name: &str) -> Result<tern_prepare::Prepared, Error> {
        let cache = tern_prepare::Cache::new(tern_prepare::default_cache_dir());
        let prepared = cache
            .prepare(wasm, &Default::default())
            .map_err(|e| Error::BadRequest(format!("cannot prepare {name}: {e}")))?;
        self.modules
            .keep_prepared(&prepared.prepared_digest, &prepared.module);
        Ok(prepared)
    }

    /// Stores a module under its hash and, when it is new here, prepares
    /// and compiles it in the background (`GET /v1/modules/HASH` says when
    /// it is ready; a boot naming it waits for that).
    pub fn put_module(
        self: &Arc<Self>,
        hash: &str,
        bytes: Vec<u8>,
    ) -> Result<(bool, ModuleStatus), Error> {
        let new = self.modules.store(hash, &bytes)?;
        if new {
            tracing::info!(event = "module_stored", module = hash, bytes = bytes.len());
            let node = self.clone();
            let owned = hash.to_string();
            let spawned = std::thread::Builder::new()
                .name("compile".into())
                .spawn(move || {
                    let t0 = std::time::Instant::now();
                    let result = node
                        .prepare(&bytes, &owned)
                        .and_then(|p| {
                            node.runtime
                                .compile(&p.module, &p.prepared_digest)
                                .map(drop)
                                .map_err(|e| Error::BadRequest(e.to_string()))
                        })
                        .map_err(|e| e.to_string());
                    let ms = t0.elapsed().as_millis() as u64;
                    match &result {
                        Ok(()) => tracing::info!(event = "module_compiled", module = %owned, ms),
                        Err(e) => {
                            tracing::warn!(event = "module_compiled", module = %owned, ms, error = %e)
                        }
                    }
                    node.modules.compiled(&owned, result);
                });
            if let Err(e) = spawned {
                self.modules
                    .compiled(hash, Err(format!("cannot start compiling: {e}")));
            }
        }
        let status = self
            .modules
            .status(hash)?
            .ok_or_else(|| Error::Internal(format!("module {hash} vanished")))?;
        Ok((new, status))
    }

    /// Joins the controller at `url` and keeps telling it this node is
    /// alive (every 2 s, from a thread of its own); a controller that is
    /// down or restarting is tried again, and each change between reached
    /// and not reached is logged once.
    pub fn join(self: &Arc<Self>, url: &str) {
        let client = tern_api::ControllerClient::new(
            url,
            self.config.tls.as_ref().map(|t| t.client.clone()),
            None,
        );
        let api = self.config.listen.clone();
        let node = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("join".into())
            .spawn(move || {
                let mut reached: Option<bool> = None;
                while node.upgrade().is_some() {
                    let r = client.join(&api);
                    if reached != Some(r.is_ok()) {
                        match &r {
                            Ok(j) => tracing::info!(
                                event = "joined",
                                controller = client.base(),
                                r#as = %j.name
                            ),
                            Err(e) => tracing::warn!(
                                event = "join_failed",
                                controller = client.base(),
                                error = %e
                            ),
                        }
                        reached = Some(r.is_ok());
                    }
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
            });
    }

    /// Where module `hash` stands here.
    pub fn module(&self, hash: &str) -> Result<ModuleStatus, Error> {
        self.modules
            .status(hash)?
            .ok_or_else(|| Error::NotFound(format!("no module {hash} on this node")))
    }

    /// Every module stored here.
    pub fn modules(&self) -> Vec<ModuleStatus> {
        self.modules.list()
    }

    /// Restores an image file (on this node's filesystem) as a running guest.
    pub fn restore_image(self: &Arc<Self>, path: &Path) -> Result<String, Error> {
        let bytes = tern_image::read_bytes(path, tern_image::DEFAULT_MAX_FILE_LEN)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let view = tern_image::view(&bytes)
            .map_err(|e| Error::BadRequest(format!("{}: {e}", path.display())))?;
        let id = view.meta.guest_id.clone();
        if let Some(r) = self.runner(&id) {
            if !r.state().is_final() {
                return Err(Error::Conflict(format!(
                    "guest {id} is already running on this node"
                )));
            }
        }
        let (log, out, err, budget) = self.new_log(&id, b"")?;
        let cannot =
            |e: String| Error::BadRequest(format!("cannot restore {}: {e}", path.display()));
        let mut guest =
            Guest::restore(&self.runtime, &view, out, err).map_err(|e| cannot(e.to_string()))?;
        self.config
            .limits
            .admit(&mut guest)
            .map_err(|e| cannot(e.to_string()))?;
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
                    if run.state() == RunState::Paused && r.state == GuestState::Running {
                        r.state = GuestState::Paused;
                    }
                    if r.state.is_live() {
                        r.memory_bytes = run.memory_bytes();
                        r.cpu_ms = run.cpu_ms();
                    }
                }
                r
            })
            .collect()
    }

    /// One guest record.
    pub fn guest(&self, id: &str) -> Result<GuestRecord, Error> {
        self.guests()
            .into_iter()
            .find(|g| g.id == id)
            .ok_or_else(|| Error::no_guest(id))
    }

    /// The runner of a guest that runs here, or why not.
    fn live_runner(&self, id: &str) -> Result<Arc<Runner>, Error> {
        self.runner(id)
            .ok_or_else(|| Error::NotFound(format!("no guest {id} runs on this node")))
    }

    /// Stops a guest.
    pub fn stop(&self, id: &str) -> Result<GuestRecord, Error> {
        let r = self.live_runner(id)?;
        {
            let _op = r.op.lock().unwrap_or_else(|e| e.into_inner());
            if r.pause_now() == RunState::Paused {
                r.stop_paused();
            }
        }
        self.guest(id)
    }

    /// Writes a checkpoint image of a guest to `path` on this node.
    pub fn checkpoint(
        &self,
        id: &str,
        path: &Path,
        leave_running: bool,
    ) -> Result<tern_vm::CaptureStats, Error> {
        let r = self.live_runner(id)?;
        let _op = r.op.lock().unwrap_or_else(|e| e.into_inner());
        match r.pause_now() {
            RunState::Paused => {}
            other => {
                return Err(Error::Conflict(format!(
                    "the guest ended before the checkpoint ({other:?})"
                )))
            }
        }
        let stats = r.save(path.to_path_buf());
        if leave_running || stats.is_err() {
            r.resume_now();
        } else {
            let _ = self.update(id, |g| g.state = GuestState::Checkpointed);
            r.stop_paused();
        }
        stats.map_err(Error::Conflict)
    }
}
