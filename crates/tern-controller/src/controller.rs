//! The controller's loop: every tick it polls each node, accounts energy,
//! follows guests and the moves under way, and, when it leads, starts the
//! one move the policy wants.
//!
//! A move is recorded (`starting`, with the migration id the controller
//! chose) before the source node is asked, and again once the node
//! accepted it (`running`). A controller killed between the two finds out
//! on restart from the source node (`GET /v1/migrations/MID`, or the
//! guest's record naming the migration that moved it) and never asks for
//! the same move twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_api::{
    BootSpec, GuestRecord, GuestState, Located, MigrateRequest, MigrationState, MoveRecord,
    MoveState, NodeClient, NodeHealth, NodeInfo, NodeView,
};

use crate::metrics::Metrics;
use crate::policy::{self, GuestSnap, NodeSnap, Tuning};
use crate::state::{Placed, State, Store};
use crate::Error;

/// How a controller is started.
#[derive(Clone)]
pub struct ControllerConfig {
    /// Its name.
    pub name: String,
    /// Data directory (state without etcd, modules).
    pub data_dir: std::path::PathBuf,
    /// The policy's knobs.
    pub tuning: Tuning,
    /// Poll and decision interval.
    pub tick: Duration,
    /// A node that has not answered for this long is down.
    pub node_timeout: Duration,
    /// TLS for calls to nodes (None: plain HTTP).
    pub node_tls: Option<Arc<tern_tls::rustls::ClientConfig>>,
    /// Bearer token for calls to nodes.
    pub node_token: Option<String>,
}

/// Where membership comes from in etcd mode: node name -> API address.
pub type Membership = Box<dyn Fn() -> Result<BTreeMap<String, String>, String> + Send + Sync>;

/// One node's poll: its facts and guests, or why it did not answer.
type Polled = (String, Result<(NodeInfo, Vec<GuestRecord>), String>);

/// What the controller knows of a node between polls.
#[derive(Default)]
struct Live {
    info: Option<NodeInfo>,
    last_ok: Option<Instant>,
    guests: Vec<GuestRecord>,
    cpu_prev: BTreeMap<String, u64>,
    polled: Option<Instant>,
    cpu_used: f64,
    power_w: f64,
    energy_j: f64,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The controller.
pub struct Controller {
    /// Configuration.
    pub config: ControllerConfig,
    store: Box<dyn Store>,
    state: Mutex<State>,
    live: Mutex<BTreeMap<String, Live>>,
    leader: AtomicBool,
    /// Who leads, as last seen (etcd mode).
    leader_name: Mutex<Option<String>>,
    /// Serializes decisions, moves and boots (one at a time).
    acting: Mutex<()>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// When this controller started.
    started: Instant,
    /// No decision before this instant (a move just ended).
    settled_after: Mutex<Option<Instant>>,
    /// Nodes registered in etcd (etcd mode): name -> API address.
    etcd_nodes: Option<Membership>,
}

impl Controller {
    /// A controller over `store`. With `etcd_nodes`, membership comes from
    /// there (nodes register themselves); else from joins.
    pub fn new(
        config: ControllerConfig,
        store: Box<dyn Store>,
        etcd_nodes: Option<Membership>,
    ) -> Result<Arc<Controller>, String> {
        let state = store.load()?;
        std::fs::create_dir_all(config.data_dir.join("modules"))
            .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
        let embedded = etcd_nodes.is_none();
        Ok(Arc::new(Controller {
            config,
            store,
            state: Mutex::new(state),
            live: Mutex::new(BTreeMap::new()),
            leader: AtomicBool::new(embedded),
            leader_name: Mutex::new(None),
            acting: Mutex::new(()),
            metrics: Metrics::default(),
            started: Instant::now(),
            settled_after: Mutex::new(None),
            etcd_nodes,
        }))
    }

    /// Where the state lives, in one line.
    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    /// Whether this controller leads (always, without etcd).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Sets leadership (etcd mode): on winning, the state is read afresh
    /// from the store, since another controller may have changed it.
    pub fn set_leader(&self, leads: bool, leader: Option<String>) -> Result<(), String> {
        *self.leader_name.lock().unwrap_or_else(|e| e.into_inner()) = leader;
        let was = self.leader.swap(leads, Ordering::SeqCst);
        if leads && !was {
            let _act = self.acting.lock().unwrap_or_else(|e| e.into_inner());
            let s = self.store.load()?;
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
            tracing::info!(event = "leading", controller = %self.config.name);
        } else if !leads && was {
            tracing::info!(event = "following", controller = %self.config.name);
        }
        Ok(())
    }

    /// The leader's name, as last seen.
    pub fn leader(&self) -> Option<String> {
        if self.etcd_nodes.is_none() {
            return Some(self.config.name.clone());
        }
        self.leader_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn client(&self, api: &str) -> NodeClient {
        NodeClient::new(
            api,
            self.config.node_tls.clone(),
            self.config.node_token.clone(),
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, s: &State) -> Result<(), Error> {
        self.store.save(s).map_err(Error::Internal)
    }

    /// A node joins (or says it is alive): the controller asks its API who
    /// it is, and records it.
    pub fn join(&self, api: &str) -> Result<String, Error> {
        if self.etcd_nodes.is_some() {
            return Err(Error::BadRequest(
                "this controller takes its nodes from etcd: start nodes with --etcd".into(),
            ));
        }
        let info = self.client(api).info().map_err(|e| {
            Error::BadRequest(format!("cannot reach the joining node at {api}: {e}"))
        })?;
        let name = info.name.clone();
        let known = self.state().nodes.get(&name).cloned();
        if known.as_deref() != Some(api) {
            let _act = self.acting.lock().unwrap_or_else(|e| e.into_inner());
            let mut s = self.state().clone();
            s.nodes.insert(name.clone(), api.to_string());
            self.save(&s)?;
            *self.state() = s;
            tracing::info!(
                event = "node_joined",
                node = %name,
                api = %api,
                class = %info.class,
                arch = %info.arch,
                cpus = info.cpus
            );
        }
        Ok(name)
    }

    /// One round: poll, account, follow, decide.
    pub fn tick(&self) {
        let nodes = self.members();
        self.poll(&nodes);
        // Nodes no longer members (their etcd key lapsed) are forgotten.
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| nodes.contains_key(name));
        let _act = self.acting.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_leader() {
            return;
        }
        let mut s = self.state().clone();
        let before = s.clone();
        self.follow_guests(&mut s);
        let open_before = open_moves(&s);
        self.follow_moves(&mut s);
        if open_moves(&s) < open_before {
            // A move just ended: this tick's poll may predate it. Decide
            // only on a view taken after it, or a guest could be counted
            // nowhere and a server look emptier than it is.
            *self.settled_after.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Instant::now() + self.config.tick);
        }
        if s != before {
            if let Err(e) = self.save(&s) {
                tracing::error!(event = "state_save_failed", error = %e);
                return;
            }
            *self.state() = s.clone();
        }
        let settling = self
            .settled_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| Instant::now() < t);
        if open_moves(&s) > 0 || settling {
            return;
        }
        let snaps = self.snapshots(&s);
        if let Some(d) = policy::decide(&snaps, &self.config.tuning) {
            let decided = now_ms();
            let _ = self.start_move(
                &mut s, &d.guest, &d.from, &d.to, d.reason, &d.detail, decided,
            );
        }
    }

    /// Node name -> API address.
    fn members(&self) -> BTreeMap<String, String> {
        match &self.etcd_nodes {
            Some(f) => match f() {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(event = "etcd_unreachable", error = %e);
                    // Keep the last known membership, marked by polls.
                    self.state().nodes.clone()
                }
            },
            None => self.state().nodes.clone(),
        }
    }

    /// Polls every node (in parallel) and updates what is known of it.
    fn poll(&self, nodes: &BTreeMap<String, String>) {
        let results: Vec<Polled> = std::thread::scope(|sc| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|(name, api)| {
                    let c = self.client(api);
                    let name = name.clone();
                    sc.spawn(move || {
                        let r = c
                            .info()
                            .and_then(|i| c.guests().map(|g| (i, g)))
                            .map_err(|e| e.to_string());
                        (name, r)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for (name, r) in results {
            let l = live.entry(name.clone()).or_default();
            let dt = l
                .polled
                .map(|p| now.duration_since(p).as_secs_f64())
                .unwrap_or(0.0);
            l.polled = Some(now);
            match r {
                Ok((info, guests)) => {
                    // CPU each guest used since the last poll.
                    let mut used = BTreeMap::new();
                    for g in guests.iter().filter(|g| g.state.is_live()) {
                        if let Some(ms) = g.cpu_ms {
                            if let Some(prev) = l.cpu_prev.get(&g.id) {
                                used.insert(g.id.clone(), ms.saturating_sub(*prev) as f64 / 1000.0);
                            }
                        }
                    }
                    l.cpu_prev = guests
                        .iter()
                        .filter_map(|g| g.cpu_ms.map(|m| (g.id.clone(), m)))
                        .collect();
                    let cpu_s = used.values().fold(0.0, |a, b| a + b);
                    l.cpu_used = if dt > 0.0 { cpu_s / dt } else { 0.0 };
                    l.power_w = info.power.watts(l.cpu_used, info.cpus);
                    if dt > 0.0 {
                        l.energy_j += l.power_w * dt;
                        self.account_energy(&info, &guests, &used, dt);
                    }
                    l.info = Some(info);
                    l.guests = guests;
                    l.last_ok = Some(now);
                }
                Err(e) => {
                    if l.last_ok
                        .is_none_or(|t| now.duration_since(t) > self.config.node_timeout)
                        && l.info.is_some()
                    {
                        tracing::warn!(event = "node_unreachable", node = %name, error = %e);
                    }
                }
            }
        }
    }

    /// Shares a node's draw over the last interval among its running
    /// guests: the idle draw equally, the rest by the CPU each used.
    fn account_energy(
        &self,
        info: &NodeInfo,
        guests: &[GuestRecord],
        used: &BTreeMap<String, f64>,
        dt: f64,
    ) {
        let running: Vec<&GuestRecord> = guests.iter().filter(|g| g.state.is_live()).collect();
        if running.is_empty() {
            return;
        }
        let per_core = (info.power.busy_w - info.power.idle_w) / info.cpus.max(0.01);
        let mut s = self.state();
        for g in running {
            if let Some(p) = s.guests.get_mut(&g.id) {
                let cpu = used.get(&g.id).copied().unwrap_or(0.0);
                p.energy_j += info.power.idle_w * dt / guests.len().max(1) as f64 + per_core * cpu;
            }
        }
    }

    /// Up when the node answered within the node timeout; a node not
    /// heard from since this controller started is given that long too.
    fn health(&self, l: &Live) -> NodeHealth {
        let since = l.last_ok.unwrap_or(self.started);
        if since.elapsed() <= self.config.node_timeout {
            NodeHealth::Up
        } else {
            NodeHealth::Down
        }
    }

    /// Records where each guest is, and which ended or were lost.
    fn follow_guests(&self, s: &mut State) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        for (node, l) in live.iter() {
            if self.health(l) != NodeHealth::Up {
                continue;
            }
            for g in &l.guests {
                if g.state.is_live() {
                    let p = s.guests.entry(g.id.clone()).or_insert_with(|| Placed {
                        node: node.clone(),
                        first_seen_ms: now,
                        module: None,
                        energy_j: 0.0,
                        ended: None,
                    });
                    if p.node != *node || p.ended.is_some() {
                        p.node = node.clone();
                        p.ended = None;
                    }
                }
            }
        }
        for (id, p) in s.guests.iter_mut().filter(|(_, p)| p.ended.is_none()) {
            let Some(l) = live.get(&p.node) else {
                // Not a member any more: its etcd registration lapsed.
                p.ended = Some(format!("lost: node {} left the cluster", p.node));
                tracing::warn!(event = "guest_lost", guest = %id, node = %p.node);
                continue;
            };
            if self.health(l) == NodeHealth::Down {
                p.ended = Some(format!("lost: node {} is down", p.node));
                tracing::warn!(event = "guest_lost", guest = %id, node = %p.node);
                continue;
            }
            if let Some(r) = l.guests.iter().find(|g| &g.id == id) {
                if !r.state.is_live() && r.state != GuestState::Moved {
                    p.ended = Some(r.state_label());
                }
            }
        }
    }

    /// Follows moves under way at their source nodes.
    fn follow_moves(&self, s: &mut State) {
        let open: Vec<MoveRecord> = s
            .moves
            .iter()
            .filter(|m| matches!(m.state, MoveState::Starting | MoveState::Running))
            .cloned()
            .collect();
        for m in open {
            let Some(api) = s
                .nodes
                .get(&m.from)
                .cloned()
                .or_else(|| self.api_of(&m.from))
            else {
                continue;
            };
            let c = self.client(&api);
            let outcome = match c.migration(&m.migration) {
                Ok(st) => match st.state {
                    MigrationState::Running => None,
                    MigrationState::Done => {
                        Some((MoveState::Done, st.report.map(|r| r.downtime_ms), None))
                    }
                    MigrationState::Failed => Some((MoveState::Failed, None, st.error)),
                },
                Err(e) if e.is_not_found() => {
                    // The node does not know it: it never started (the
                    // controller stopped before asking), or the node
                    // restarted since; the guest's record tells which.
                    match c.guest(&m.guest) {
                        Ok(g) if g.moved_by.as_deref() == Some(&m.migration) => {
                            Some((MoveState::Done, None, None))
                        }
                        Ok(_) | Err(_) => Some((
                            MoveState::Failed,
                            None,
                            Some("never started: the source node does not know it".into()),
                        )),
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        event = "move_unfollowed",
                        seq = m.seq,
                        migration = %m.migration,
                        node = %m.from,
                        error = %e
                    );
                    None
                }
            };
            if let Some((state, downtime, error)) = outcome {
                if let Some(r) = s.move_mut(m.seq) {
                    r.state = state;
                    r.ended_ms = Some(now_ms());
                    r.downtime_ms = downtime;
                    r.error = error.clone();
                }
                if state == MoveState::Done {
                    if let Some(p) = s.guests.get_mut(&m.guest) {
                        p.node = m.to.clone();
                    }
                } else {
                    self.metrics.move_failed();
                }
                tracing::info!(
                    event = "move_ended",
                    seq = m.seq,
                    guest = %m.guest,
                    from = %m.from,
                    to = %m.to,
                    state = state.as_str(),
                    downtime_ms = downtime,
                    error = error.as_deref()
                );
            }
        }
    }

    fn api_of(&self, node: &str) -> Option<String> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(node)
            .and_then(|l| l.info.as_ref())
            .map(|i| i.api.clone())
    }

    /// The cluster as the policy sees it.
    fn snapshots(&self, s: &State) -> Vec<NodeSnap> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        let open: Vec<&MoveRecord> = s
            .moves
            .iter()
            .filter(|m| matches!(m.state, MoveState::Starting | MoveState::Running))
            .collect();
        live.iter()
            .filter_map(|(name, l)| {
                let info = l.info.as_ref()?;
                let guests = l
                    .guests
                    .iter()
                    .filter(|g| g.state == GuestState::Running)
                    .map(|g| {
                        let first = s
                            .guests
                            .get(&g.id)
                            .map_or(g.since_unix_ms, |p| p.first_seen_ms);
                        GuestSnap {
                            id: g.id.clone(),
                            age_s: now.saturating_sub(first) as f64 / 1000.0,
                            residence_s: now.saturating_sub(g.since_unix_ms) as f64 / 1000.0,
                            memory_bytes: g.memory_bytes.unwrap_or(0),
                            // Modules are staged on every node when a guest
                            // starts: no compile waits on a move.
                            module_bytes: 0,
                            moving: open.iter().any(|m| m.guest == g.id),
                        }
                    })
                    .collect();
                Some(NodeSnap {
                    name: name.clone(),
                    class: info.class,
                    speed: info.speed.max(0.0001),
                    cpus: info.cpus.max(0.01),
                    power: info.power,
                    up: self.health(l) == NodeHealth::Up,
                    busy: open.iter().any(|m| &m.from == name || &m.to == name),
                    guests,
                })
            })
            .collect()
    }

    /// Records a move, then asks the source node for it.
    #[allow(clippy::too_many_arguments)]
    fn start_move(
        &self,
        s: &mut State,
        guest: &str,
        from: &str,
        to: &str,
        reason: &str,
        detail: &str,
        decided_ms: u64,
    ) -> Result<MoveRecord, Error> {
        let from_api = s
            .nodes
            .get(from)
            .cloned()
            .or_else(|| self.api_of(from))
            .ok_or_else(|| Error::NotFound(format!("no node {from}")))?;
        let to_api = s
            .nodes
            .get(to)
            .cloned()
            .or_else(|| self.api_of(to))
            .ok_or_else(|| Error::NotFound(format!("no node {to}")))?;
        let seq = s.next_seq.max(1);
        s.next_seq = seq + 1;
        let migration = format!("c{seq}-{}", tern_node::new_id(guest));
        let mut m = MoveRecord {
            seq,
            migration: migration.clone(),
            guest: guest.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            reason: reason.to_string(),
            detail: detail.to_string(),
            state: MoveState::Starting,
            decided_ms,
            started_ms: None,
            ended_ms: None,
            downtime_ms: None,
            error: None,
        };
        s.push_move(m.clone());
        self.save(s)?;
        *self.state() = s.clone();
        // A guest coming back to a faster node loses little by pausing at
        // the slow one: a cold move there copies memory once and ends
        // soonest. Elsewhere pre-copy keeps the guest running meanwhile.
        let strategy = if reason == "return" {
            "cold"
        } else {
            "precopy"
        };
        let req = MigrateRequest {
            to: to_api,
            strategy: Some(strategy.into()),
            max_downtime_ms: None,
            dirty: None,
            migration_id: Some(migration),
        };
        let asked = self.client(&from_api).migrate(guest, &req);
        let r = s.move_mut(seq).expect("the move was just pushed");
        match asked {
            Ok(_) => {
                r.state = MoveState::Running;
                r.started_ms = Some(now_ms());
                self.metrics
                    .move_started(reason, now_ms().saturating_sub(decided_ms));
            }
            Err(e) => {
                r.state = MoveState::Failed;
                r.ended_ms = Some(now_ms());
                r.error = Some(e.to_string());
                self.metrics.move_failed();
            }
        }
        m = r.clone();
        self.save(s)?;
        *self.state() = s.clone();
        tracing::info!(
            event = "move_started",
            seq,
            guest = %guest,
            from = %from,
            to = %to,
            reason,
            detail = %detail,
            state = m.state.as_str(),
            decision_to_start_ms = m.started_ms.map(|t| t.saturating_sub(decided_ms)),
            error = m.error.as_deref()
        );
        Ok(m)
    }

    /// A move asked for by a user (`tern migrate --controller`); returns it
    /// once it ended.
    pub fn request_move(&self, guest: &str, to: &str) -> Result<MoveRecord, Error> {
        self.require_leader()?;
        let seq = {
            let _act = self.acting.lock().unwrap_or_else(|e| e.into_inner());
            let mut s = self.state().clone();
            let p = s
                .guests
                .get(guest)
                .filter(|p| p.ended.is_none())
                .ok_or_else(|| {
                    Error::NotFound(format!("no running guest {guest} in the cluster"))
                })?;
            let from = p.node.clone();
            let to_name = self.node_named(&s, to)?;
            if to_name == from {
                return Err(Error::Conflict(format!(
                    "guest {guest} already runs on {from}"
                )));
            }
            if s.moves.iter().any(|m| {
                m.guest == guest && matches!(m.state, MoveState::Starting | MoveState::Running)
            }) {
                return Err(Error::Conflict(format!("guest {guest} is moving already")));
            }
            let m = self.start_move(
                &mut s,
                guest,
                &from,
                &to_name,
                "requested",
                "asked by a user",
                now_ms(),
            )?;
            if m.state == MoveState::Failed {
                return Err(Error::Upstream(m.error.unwrap_or_default()));
            }
            m.seq
        };
        // Wait for the loop to see it end.
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            std::thread::sleep(self.config.tick.min(Duration::from_millis(200)));
            self.tick_moves_only();
            if let Some(m) = self.state().moves.iter().find(|m| m.seq == seq) {
                if matches!(m.state, MoveState::Done | MoveState::Failed) {
                    return Ok(m.clone());
                }
            }
        }
        Err(Error::Internal(
            "the move did not end within 10 minutes".into(),
        ))
    }

    fn tick_moves_only(&self) {
        let _act = self.acting.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = self.state().clone();
        let before = s.clone();
        self.follow_moves(&mut s);
        if s != before && self.save(&s).is_ok() {
            *self.state() = s;
        }
    }

    /// The name of the node called `to`, or whose API address is `to`.
    fn node_named(&self, s: &State, to: &str) -> Result<String, Error> {
        if s.nodes.contains_key(to) || self.api_of(to).is_some() {
            return Ok(to.to_string());
        }
        if let Some((name, _)) = s.nodes.iter().find(|(_, api)| api.as_str() == to) {
            return Ok(name.clone());
        }
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter()
            .find(|(_, l)| l.info.as_ref().is_some_and(|i| i.api == to))
            .map(|(n, _)| n.clone())
            .ok_or_else(|| Error::NotFound(format!("no node {to} in the cluster")))
    }

    fn require_leader(&self) -> Result<(), Error> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(Error::Conflict(format!(
                "this controller does not lead; ask {}",
                self.leader()
                    .unwrap_or_else(|| "the leader (none elected yet)".into())
            )))
        }
    }

    /// Places a new guest on the node the policy picks and starts it there.
    pub fn boot(&self, spec: BootSpec) -> Result<Located, Error> {
        self.require_leader()?;
        let hash = spec.module.clone().ok_or_else(|| {
            Error::BadRequest(
                "give the module by hash (store it first: PUT /v1/modules/HASH)".into(),
            )
        })?;
        let module = self.module_bytes(&hash)?;
        let _act = self.acting.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.state().clone();
        let node = policy::place(&self.snapshots(&s), &self.config.tuning)
            .ok_or_else(|| Error::Conflict("no node is up to run the guest".into()))?;
        let api = s
            .nodes
            .get(&node)
            .cloned()
            .or_else(|| self.api_of(&node))
            .ok_or_else(|| Error::Internal(format!("node {node} has no address")))?;
        let c = self.client(&api);
        c.upload_once(&module)
            .map_err(|e| Error::Upstream(format!("node {node}: {e}")))?;
        let id = c.boot(&spec).map_err(|e| match e {
            tern_api::client::Error::Refused { status, message } if status < 500 => {
                Error::BadRequest(message)
            }
            e => Error::Upstream(format!("node {node}: {e}")),
        })?;
        let mut s = self.state().clone();
        s.guests.insert(
            id.clone(),
            Placed {
                node: node.clone(),
                first_seen_ms: now_ms(),
                module: Some(hash),
                energy_j: 0.0,
                ended: None,
            },
        );
        self.save(&s)?;
        *self.state() = s;
        self.metrics.guest_placed();
        // The next placement must see this guest there, not wait a tick.
        self.poll(&BTreeMap::from([(node.clone(), api.clone())]));
        tracing::info!(event = "guest_placed", guest = %id, node = %node);
        // Stage the module on every other node, so that no move of this
        // guest waits on sending or compiling it.
        let others: Vec<String> = self
            .members()
            .into_iter()
            .filter(|(n, _)| *n != node)
            .map(|(_, a)| a)
            .collect();
        let clients: Vec<NodeClient> = others.iter().map(|a| self.client(a)).collect();
        std::thread::spawn(move || {
            for c in clients {
                let _ = c.upload_once(&module);
            }
        });
        Ok(Located {
            id,
            node,
            api,
            record: None,
        })
    }

    fn module_path(&self, hash: &str) -> std::path::PathBuf {
        self.config
            .data_dir
            .join("modules")
            .join(format!("{hash}.wasm"))
    }

    /// A module stored with the controller.
    pub fn module_bytes(&self, hash: &str) -> Result<Vec<u8>, Error> {
        tern_api::check_module_hash(hash).map_err(Error::BadRequest)?;
        std::fs::read(self.module_path(hash)).map_err(|_| {
            Error::NotFound(format!(
                "no module {hash} on this controller: store it first (PUT /v1/modules/{hash})"
            ))
        })
    }

    /// Stores a module (its bytes must hash to `hash`); true when new.
    pub fn put_module(&self, hash: &str, bytes: &[u8]) -> Result<bool, Error> {
        tern_api::check_module_hash(hash).map_err(Error::BadRequest)?;
        let actual = tern_api::module_hash(bytes);
        if actual != hash {
            return Err(Error::BadRequest(format!(
                "the module sent has BLAKE3 hash {actual}, not the {hash} it was sent as"
            )));
        }
        let path = self.module_path(hash);
        if path.is_file() {
            return Ok(false);
        }
        tern_node::modules::write_atomic(&path, bytes)
            .map_err(|e| Error::Internal(format!("cannot store module {hash}: {e}")))?;
        Ok(true)
    }

    /// A module's status, if stored here.
    pub fn module_status(&self, hash: &str) -> Result<tern_api::ModuleStatus, Error> {
        let bytes = self.module_bytes(hash)?;
        Ok(tern_api::ModuleStatus {
            hash: hash.to_string(),
            bytes: bytes.len() as u64,
            state: tern_api::ModuleState::Ready,
            error: None,
        })
    }

    /// Where a guest is now (following it if it moved since the last poll).
    pub fn locate(&self, id: &str) -> Result<Located, Error> {
        self.poll(&self.members());
        let node = {
            let s = self.state();
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            // Where a node reports it live wins over the record.
            live.iter()
                .find(|(_, l)| l.guests.iter().any(|g| g.id == id && g.state.is_live()))
                .map(|(n, _)| n.clone())
                .or_else(|| s.guests.get(id).map(|p| p.node.clone()))
        }
        .ok_or_else(|| Error::NotFound(format!("no guest {id} in the cluster")))?;
        let api = self
            .api_of(&node)
            .or_else(|| self.state().nodes.get(&node).cloned())
            .ok_or_else(|| Error::NotFound(format!("node {node} of guest {id} is unknown")))?;
        let mut record = self.client(&api).guest(id).ok();
        // A node that answers speaks for its guest, even one the record
        // still calls lost because the node was silent for a while.
        if record.is_none() {
            if let Some(p) = self.state().guests.get(id).filter(|p| p.node == node) {
                mark_lost(id, p, &mut record);
            }
        }
        Ok(Located {
            id: id.to_string(),
            node,
            api,
            record,
        })
    }

    /// Every guest the controller knows, where it is (asking the nodes
    /// afresh).
    pub fn guests(&self) -> Vec<Located> {
        self.poll(&self.members());
        let s = self.state().clone();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (id, p) in &s.guests {
            let l = live.get(&p.node);
            let record = l
                .and_then(|l| l.guests.iter().find(|g| &g.id == id))
                .cloned();
            let api = l
                .and_then(|l| l.info.as_ref().map(|i| i.api.clone()))
                .or_else(|| s.nodes.get(&p.node).cloned())
                .unwrap_or_default();
            let mut record = record;
            mark_lost(id, p, &mut record);
            out.push(Located {
                id: id.clone(),
                node: p.node.clone(),
                api,
                record,
            });
        }
        out
    }

    /// The cluster view for `tern cluster`.
    pub fn cluster(&self, policy: &str) -> tern_api::ClusterView {
        let s = self.state().clone();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let nodes = live
            .values()
            .filter_map(|l| {
                let info = l.info.clone()?;
                Some(NodeView {
                    runnable: l
                        .guests
                        .iter()
                        .filter(|g| g.state == GuestState::Running)
                        .count() as u32,
                    health: self.health(l),
                    cpu_used: l.cpu_used,
                    power_w: l.power_w,
                    energy_j: l.energy_j,
                    guests: l.guests.clone(),
                    info,
                })
            })
            .collect();
        let from = s.moves.len().saturating_sub(50);
        tern_api::ClusterView {
            controller: self.config.name.clone(),
            leader: self.leader(),
            policy: policy.to_string(),
            store: self.store.describe(),
            nodes,
            moves: s.moves[from..].to_vec(),
            energy_per_guest_j: s
                .guests
                .iter()
                .map(|(id, p)| (id.clone(), p.energy_j))
                .collect(),
        }
    }

    /// Prometheus text for `/metrics` (the OpenMetrics text format).
    pub fn render_metrics(&self, policy: &str) -> String {
        self.metrics.render(&self.cluster(policy), self.is_leader())
    }
}

/// A guest whose node died is lost: what the controller knows of it is
/// all there is, so its record (or one made up from the placement) says
/// so, with the reason.
fn mark_lost(id: &str, p: &Placed, record: &mut Option<GuestRecord>) {
    let Some(ended) = p.ended.as_ref().filter(|e| e.starts_with("lost")) else {
        return;
    };
    let r = record.get_or_insert_with(|| GuestRecord {
        id: id.to_string(),
        name: String::new(),
        state: GuestState::Lost,
        exit_code: None,
        error: None,
        limit: None,
        limits: None,
        cpu_control: None,
        moved_to: None,
        moved_by: None,
        came_from: None,
        since_unix_ms: p.first_seen_ms,
        memory_bytes: None,
        cpu_ms: None,
    });
    r.state = GuestState::Lost;
    r.error = Some(ended.clone());
}

/// Moves under way.
fn open_moves(s: &State) -> usize {
    s.moves
        .iter()
        .filter(|m| matches!(m.state, MoveState::Starting | MoveState::Running))
        .count()
}

/// Runs `tick` every `config.tick` until the process ends.
pub fn run_loop(c: Arc<Controller>) {
    loop {
        let t0 = Instant::now();
        c.tick();
        let spent = t0.elapsed();
        std::thread::sleep(c.config.tick.saturating_sub(spent));
    }
}
