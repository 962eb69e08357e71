//! Migrations as a node sees them: sending a guest away (in the
//! background, with progress and a report kept in `migrations.jsonl`), and
//! receiving one ([`Dest`], the node as a [`tern_migrate::DestHost`]).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use tern_api::{GuestState, MigrationState, MigrationStatus, NodeClient};
use tern_migrate::GuestInfo;
use tern_vm::wasi::OutputSink;
use tern_vm::{Guest, Runtime};

use crate::error::Error;
use crate::ids::new_id;
use crate::limits;
use crate::node::Node;
use crate::runner::{self, Runner};

/// Accepts migrations on `listener`, each on a thread of its own.
pub(crate) fn listen(node: Arc<Node>, listener: TcpListener) -> Result<(), String> {
    std::thread::Builder::new()
        .name("migrate-listener".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                let n = node.clone();
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                std::thread::spawn(move || match tern_migrate::serve(stream, &Dest(n)) {
                    Ok(served) => {
                        tracing::info!(event = "migration_in", peer = %peer, result = ?served)
                    }
                    Err(e) => {
                        tracing::warn!(event = "migration_in_failed", peer = %peer, error = %e)
                    }
                });
            }
        })
        .map(drop)
        .map_err(|e| e.to_string())
}

impl Node {
    /// A client for another node's API, with this node's credentials.
    pub fn client_for(&self, api: &str) -> NodeClient {
        NodeClient::new(
            api,
            self.config.tls.as_ref().map(|t| t.client.clone()),
            None,
        )
    }

    /// Starts migrating a guest to the node whose API is at `to`; returns the
    /// migration id at once. Progress and the report: [`Node::migration`].
    pub fn start_migration(
        self: &Arc<Self>,
        id: &str,
        to: &str,
        opts: tern_migrate::Options,
    ) -> Result<String, Error> {
        let r = self
            .runner(id)
            .ok_or_else(|| Error::NotFound(format!("no guest {id} runs on this node")))?;
        if r.state().is_final() {
            return Err(Error::Conflict(format!("guest {id} is not running")));
        }
        let dest = self
            .client_for(to)
            .info()
            .map_err(|e| Error::Upstream(e.to_string()))?;
        let mid = if opts.migration_id.is_empty() {
            new_id(id)
        } else {
            opts.migration_id.clone()
        };
        let mut migrations = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
        if migrations.contains_key(&mid) {
            return Err(Error::Conflict(format!("migration {mid} exists already")));
        }
        migrations.insert(
            mid.clone(),
            MigrationStatus {
                id: mid.clone(),
                guest: id.to_string(),
                state: MigrationState::Running,
                ..Default::default()
            },
        );
        drop(migrations);
        let node = self.clone();
        let mut opts = opts;
        opts.migration_id = mid.clone();
        opts.node = self.config.name.clone();
        opts.listen = self.migrate_addr.clone();
        opts.tls = self.config.tls.as_ref().map(|t| t.migrate.clone());
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
                    s.state = MigrationState::Failed;
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
                g.state = GuestState::Moved;
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
                self.metrics.migration_sent(&report);
                tracing::info!(
                    event = "migration_out",
                    migration = %report.migration_id,
                    guest = %report.guest,
                    to = %report.destination_node,
                    strategy = %report.strategy,
                    total_ms = report.total_ms,
                    downtime_ms = report.downtime_ms,
                    bytes_sent = report.bytes_sent,
                    rounds = report.rounds,
                    module_bytes = report.module_bytes,
                );
                self.append_history(&report);
                s.state = MigrationState::Done;
                s.report = Some(report);
            }
            Err(e) => {
                self.metrics.migration_failed();
                tracing::warn!(
                    event = "migration_out_failed",
                    migration = %mid,
                    guest = %r.info.id,
                    error = %e
                );
                s.state = MigrationState::Failed;
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
                Ok(bytes) => {
                    tracing::info!(event = "departed_kept", guest = %id, image_bytes = bytes)
                }
                Err(e) => tracing::warn!(event = "departed_not_kept", guest = %id, error = %e),
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
    pub fn migration(&self, mid: &str) -> Result<MigrationStatus, Error> {
        self.migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(mid)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no migration {mid} on this node")))
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
        self.0.metrics.migration_received();
        // Back here: the image kept from when it left is out of date.
        self.0.departed.remove(&guest.id);
        // The guest is ours now and must run: within this node's memory
        // maximum when its memory allows, else as it came.
        if let Err(e) = self.0.config.limits.admit(&mut g) {
            tracing::warn!(event = "memory_limit_kept", guest = %guest.id, reason = %e);
        }
        let log = self.0.log_path(&guest.id);
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
            tracing::warn!(
                event = "adopt_failed",
                guest = %guest.id,
                migration = %migration_id,
                error = %e
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
    fn module(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        self.0.modules.prepared(digest)
    }
    fn keep_module(&self, digest: &[u8; 32], module: &[u8]) {
        self.0.modules.keep_prepared(digest, module);
    }
    fn base_image(&self, guest: &GuestInfo) -> Option<PathBuf> {
        self.0.departed.find(&guest.id)
    }
    fn base_unusable(&self, guest: &GuestInfo, path: &std::path::Path, why: &str) {
        tracing::info!(event = "base_unused", guest = %guest.id, image = ?path, why = %why);
    }
    fn lost(&self, guest: &GuestInfo, why: &str) {
        tracing::warn!(event = "postcopy_lost", guest = %guest.id, error = %why);
        let _ = self.0.update(&guest.id, |g| {
            g.state = GuestState::Lost;
            g.error = Some(format!("its memory stopped arriving (post-copy): {why}"));
        });
    }
    fn handed_over(&self, migration_id: &str) -> bool {
        let reg = self.0.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.guests
            .values()
            .any(|g| g.moved_by.as_deref() == Some(migration_id))
    }
}
