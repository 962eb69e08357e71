//! Where guests should run: pure functions of what the controller last saw
//! of the cluster, so that every decision can be tested without a node.
//!
//! The model: a node of `cpus` cores of speed `speed` (1.0: the reference
//! core) running `runnable` guests does `speed * min(cpus, runnable)` units
//! of work a second, shared equally among its guests; its power draw is
//! linear in the cores busy (`PowerModel`).
//!
//! * `throughput`: a server with more runnable guests than cores offloads
//!   one to a board with room when that raises the cluster's work rate;
//!   once a server has a whole core free, guests on boards come back to it
//!   (the fastest such server first). A server offloads only while
//!   `runnable > cpus` and takes a guest back only while `runnable + 1 <=
//!   cpus`, so a move never makes the opposite move due (hysteresis); and a
//!   guest stays at least `min_residence` on a node, and is not moved at
//!   all before it has run `min_age` (most short jobs end first).
//! * `energy`: every guest goes where it does most work per joule of the
//!   power it adds, among the nodes where it runs at least `floor` times as
//!   fast as on the best node for it now.
//!
//! Which guest moves: its expected remaining run time is taken as the time
//! it has run so far (the longer a job has run, the longer it is likely to
//! run on: the assumption Snowbird and most process-migration policies
//! make), and the move must pay for itself: remaining time at least
//! `payback` times the predicted migration time (memory size over the link
//! rate measured on earlier moves, plus compiling the module where the
//! destination lacks it). Among guests that qualify, the one with the most
//! expected remaining time per second of migration moves.

use std::fmt::Write as _;

use tern_api::{NodeClass, PowerModel};

/// Which goal the controller pursues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Most work per second from the cluster.
    Throughput,
    /// Most work per joule, within a throughput floor.
    Energy,
}

impl Policy {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Throughput => "throughput",
            Policy::Energy => "energy",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "throughput" => Ok(Policy::Throughput),
            "energy" => Ok(Policy::Energy),
            _ => Err(format!("unknown policy `{s}` (throughput, energy)")),
        }
    }
}

/// The policy's knobs.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Throughput or energy.
    pub policy: Policy,
    /// Least time a guest stays on a node before it moves again, seconds.
    pub min_residence_s: f64,
    /// Least time a guest has run before it is moved at all, seconds.
    pub min_age_s: f64,
    /// Expected remaining time over predicted migration time, at least.
    pub payback: f64,
    /// Migration link rate, bytes a second (measured on earlier moves).
    pub link_bytes_per_s: f64,
    /// Seconds to compile a module on a node that lacks it, per MiB of
    /// module, at speed 1.0.
    pub compile_s_per_mib: f64,
    /// Energy policy: least fraction of the best rate a guest may get.
    pub floor: f64,
    /// Least gain in cluster work rate (reference cores) worth a move.
    pub min_gain: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            policy: Policy::Throughput,
            min_residence_s: 5.0,
            min_age_s: 2.0,
            payback: 2.0,
            link_bytes_per_s: 100e6,
            compile_s_per_mib: 0.05,
            floor: 0.5,
            min_gain: 0.05,
        }
    }
}

/// A guest as the policy sees it.
#[derive(Debug, Clone)]
pub struct GuestSnap {
    /// Id.
    pub id: String,
    /// Seconds since the cluster first saw it.
    pub age_s: f64,
    /// Seconds on its current node.
    pub residence_s: f64,
    /// Memory size.
    pub memory_bytes: u64,
    /// Module size (for the compile cost on a node that lacks it).
    pub module_bytes: u64,
    /// A move of it is under way.
    pub moving: bool,
}

/// A node as the policy sees it.
#[derive(Debug, Clone)]
pub struct NodeSnap {
    /// Name.
    pub name: String,
    /// Server or board.
    pub class: NodeClass,
    /// Speed of a core.
    pub speed: f64,
    /// Cores.
    pub cpus: f64,
    /// Power model.
    pub power: PowerModel,
    /// Answering polls.
    pub up: bool,
    /// A move from or to it is under way: no new one involves it.
    pub busy: bool,
    /// Its running guests.
    pub guests: Vec<GuestSnap>,
}

impl NodeSnap {
    fn runnable(&self) -> f64 {
        self.guests.len() as f64
    }

    /// Work rate with `n` guests.
    fn work(&self, n: f64) -> f64 {
        self.speed * self.cpus.min(n)
    }

    /// The rate one guest gets with `n` guests here.
    fn share(&self, n: f64) -> f64 {
        if n <= 0.0 {
            return 0.0;
        }
        self.work(n) / n
    }

    /// Work per joule of the power one more busy guest adds here.
    fn efficiency(&self) -> f64 {
        let per_core = (self.power.busy_w - self.power.idle_w) / self.cpus.max(0.01);
        let watts_for_one = per_core * self.cpus.min(1.0);
        self.share(1.0) / watts_for_one.max(1e-6)
    }
}

/// A move the policy wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Guest id.
    pub guest: String,
    /// Source node.
    pub from: String,
    /// Destination node.
    pub to: String,
    /// `overload`, `return` or `energy`.
    pub reason: &'static str,
    /// The numbers, in one line.
    pub detail: String,
}

/// Predicted seconds to move `g` to `to`.
fn cost_s(g: &GuestSnap, to: &NodeSnap, t: &Tuning) -> f64 {
    let copy = g.memory_bytes as f64 / t.link_bytes_per_s.max(1.0);
    let compile =
        g.module_bytes as f64 / (1 << 20) as f64 * t.compile_s_per_mib / to.speed.max(0.01);
    copy + compile
}

/// The guests of `n` the policy may move now, best first: settled, old
/// enough, worth their migration to `to`.
fn movable<'a>(n: &'a NodeSnap, to: &NodeSnap, t: &Tuning) -> Vec<(&'a GuestSnap, f64)> {
    let mut v: Vec<(&GuestSnap, f64)> = n
        .guests
        .iter()
        .filter(|g| !g.moving && g.residence_s >= t.min_residence_s && g.age_s >= t.min_age_s)
        .filter_map(|g| {
            let cost = cost_s(g, to, t);
            (g.age_s >= t.payback * cost).then_some((g, g.age_s / cost.max(0.001)))
        })
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.id.cmp(&b.0.id)));
    v
}

fn usable(n: &NodeSnap) -> bool {
    n.up && !n.busy
}

/// The cluster's work rate change if one guest moves from `from` to `to`.
fn gain(from: &NodeSnap, to: &NodeSnap) -> f64 {
    let (a, b) = (from.runnable(), to.runnable());
    from.work(a - 1.0) + to.work(b + 1.0) - from.work(a) - to.work(b)
}

/// The one move to start now, if any.
pub fn decide(nodes: &[NodeSnap], t: &Tuning) -> Option<Decision> {
    match t.policy {
        Policy::Throughput => offload(nodes, t).or_else(|| bring_back(nodes, t)),
        Policy::Energy => energy(nodes, t),
    }
}

/// An overloaded server gives a guest to the board that adds most work.
fn offload(nodes: &[NodeSnap], t: &Tuning) -> Option<Decision> {
    let mut best: Option<(f64, Decision)> = None;
    for s in nodes
        .iter()
        .filter(|n| n.class == NodeClass::Server && usable(n))
    {
        if s.runnable() <= s.cpus + 1e-9 {
            continue;
        }
        for b in nodes
            .iter()
            .filter(|n| n.class == NodeClass::Board && usable(n))
        {
            if b.runnable() >= b.cpus - 1e-9 {
                continue;
            }
            let g = gain(s, b);
            if g < t.min_gain {
                continue;
            }
            let Some((guest, _)) = movable(s, b, t).into_iter().next() else {
                continue;
            };
            if best.as_ref().is_none_or(|(bg, _)| g > *bg + 1e-9) {
                let mut detail = String::new();
                let _ = write!(
                    detail,
                    "{} runs {} guests on {:.2} cores; {} has {:.2} cores free; cluster work +{:.2} cores; guest ran {:.1} s, {:.1} MiB",
                    s.name,
                    s.runnable(),
                    s.cpus,
                    b.name,
                    b.cpus - b.runnable(),
                    g,
                    guest.age_s,
                    guest.memory_bytes as f64 / 1048576.0
                );
                best = Some((
                    g,
                    Decision {
                        guest: guest.id.clone(),
                        from: s.name.clone(),
                        to: b.name.clone(),
                        reason: "overload",
                        detail,
                    },
                ));
            }
        }
    }
    best.map(|(_, d)| d)
}

/// A server with a whole core free takes a guest back from a board, the
/// fastest server first.
fn bring_back(nodes: &[NodeSnap], t: &Tuning) -> Option<Decision> {
    let mut servers: Vec<&NodeSnap> = nodes
        .iter()
        .filter(|n| n.class == NodeClass::Server && usable(n))
        .filter(|n| n.runnable() + 1.0 <= n.cpus + 1e-9)
        .collect();
    servers.sort_by(|a, b| {
        b.speed
            .total_cmp(&a.speed)
            .then_with(|| a.name.cmp(&b.name))
    });
    for s in servers {
        let mut best: Option<(f64, &NodeSnap, &GuestSnap)> = None;
        for b in nodes
            .iter()
            .filter(|n| n.class == NodeClass::Board && usable(n))
        {
            let g = gain(b, s);
            if g < t.min_gain {
                continue;
            }
            if let Some((guest, _)) = movable(b, s, t).into_iter().next() {
                let better = best.as_ref().is_none_or(|(bg, _, bguest)| {
                    g > *bg + 1e-9 || ((g - *bg).abs() <= 1e-9 && guest.age_s > bguest.age_s)
                });
                if better {
                    best = Some((g, b, guest));
                }
            }
        }
        if let Some((g, b, guest)) = best {
            return Some(Decision {
                guest: guest.id.clone(),
                from: b.name.clone(),
                to: s.name.clone(),
                reason: "return",
                detail: format!(
                    "{} has {:.2} cores free; cluster work +{:.2} cores; guest ran {:.1} s",
                    s.name,
                    s.cpus - s.runnable(),
                    g,
                    guest.age_s
                ),
            });
        }
    }
    None
}

/// Moves a guest to where it does most work per joule, within the floor.
fn energy(nodes: &[NodeSnap], t: &Tuning) -> Option<Decision> {
    for from in nodes.iter().filter(|n| usable(n)) {
        let here = from.share(from.runnable());
        for g in &from.guests {
            // The rate this guest would get on each other node, and the best.
            let mut best_rate = here;
            for n in nodes.iter().filter(|n| usable(n) && n.name != from.name) {
                best_rate = best_rate.max(n.share(n.runnable() + 1.0));
            }
            let fits = |rate: f64| rate >= t.floor * best_rate - 1e-9;
            let here_eff = if fits(here) { from.efficiency() } else { 0.0 };
            let target = nodes
                .iter()
                .filter(|n| usable(n) && n.name != from.name)
                .filter(|n| n.runnable() < n.cpus - 1e-9 || n.class == NodeClass::Server)
                .filter(|n| fits(n.share(n.runnable() + 1.0)))
                .max_by(|a, b| {
                    a.efficiency()
                        .total_cmp(&b.efficiency())
                        .then_with(|| b.name.cmp(&a.name))
                });
            let Some(to) = target else { continue };
            // Clearly better only: 20% more work per joule, or out of the floor.
            if to.efficiency() < here_eff * 1.2 {
                continue;
            }
            if !movable(from, to, t).iter().any(|(m, _)| m.id == g.id) {
                continue;
            }
            return Some(Decision {
                guest: g.id.clone(),
                from: from.name.clone(),
                to: to.name.clone(),
                reason: "energy",
                detail: format!(
                    "{:.3} work/J on {} against {:.3} on {}; rate {:.2} there, best {:.2}",
                    to.efficiency(),
                    to.name,
                    from.efficiency(),
                    from.name,
                    to.share(to.runnable() + 1.0),
                    best_rate
                ),
            });
        }
    }
    None
}

/// The node a new guest starts on: the most work for it (throughput), or
/// the most work per joule within the floor (energy). None: no node is up.
pub fn place(nodes: &[NodeSnap], t: &Tuning) -> Option<String> {
    let up: Vec<&NodeSnap> = nodes.iter().filter(|n| n.up).collect();
    let rate = |n: &NodeSnap| n.share(n.runnable() + 1.0);
    let best_rate = up.iter().map(|n| rate(n)).fold(0.0, f64::max);
    let pick = match t.policy {
        // Ties go to servers (a board is for overflow), then by name.
        Policy::Throughput => up.into_iter().max_by(|a, b| {
            rate(a)
                .total_cmp(&rate(b))
                .then_with(|| (a.class == NodeClass::Server).cmp(&(b.class == NodeClass::Server)))
                .then_with(|| b.name.cmp(&a.name))
        }),
        Policy::Energy => up
            .into_iter()
            .filter(|n| rate(n) >= t.floor * best_rate - 1e-9)
            .max_by(|a, b| {
                a.efficiency()
                    .total_cmp(&b.efficiency())
                    .then_with(|| b.name.cmp(&a.name))
            }),
    };
    pick.map(|n| n.name.clone())
}

/// The cluster's work rate, in reference cores.
pub fn work_rate(nodes: &[NodeSnap]) -> f64 {
    nodes
        .iter()
        .filter(|n| n.up)
        .map(|n| n.work(n.runnable()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(id: &str, age: f64) -> GuestSnap {
        GuestSnap {
            id: id.into(),
            age_s: age,
            residence_s: age,
            memory_bytes: 8 << 20,
            module_bytes: 0,
            moving: false,
        }
    }

    fn node(name: &str, class: NodeClass, cpus: f64, guests: Vec<GuestSnap>) -> NodeSnap {
        NodeSnap {
            name: name.into(),
            class,
            speed: 1.0,
            cpus,
            power: class.default_power(),
            up: true,
            busy: false,
            guests,
        }
    }

    fn testbed(server: Vec<GuestSnap>) -> Vec<NodeSnap> {
        let mut v = vec![node("s", NodeClass::Server, 1.0, server)];
        for i in 0..4 {
            v.push(node(&format!("b{i}"), NodeClass::Board, 0.25, vec![]));
        }
        v
    }

    #[test]
    fn an_overloaded_server_offloads_its_oldest_guest() {
        let nodes = testbed(vec![guest("young", 10.0), guest("old", 60.0)]);
        let d = decide(&nodes, &Tuning::default()).unwrap();
        assert_eq!((d.guest.as_str(), d.reason), ("old", "overload"));
        assert_eq!(d.from, "s");
        assert!(d.to.starts_with('b'));
    }

    #[test]
    fn a_balanced_cluster_makes_no_move() {
        let nodes = testbed(vec![guest("a", 60.0)]);
        assert_eq!(decide(&nodes, &Tuning::default()), None);
        let mut nodes = testbed(vec![guest("a", 60.0)]);
        nodes[1].guests.push(guest("b", 60.0));
        nodes[2].guests.push(guest("c", 60.0));
        assert_eq!(
            decide(&nodes, &Tuning::default()),
            None,
            "server full, boards busy"
        );
    }

    #[test]
    fn short_and_unsettled_guests_stay() {
        let t = Tuning::default();
        let nodes = testbed(vec![guest("a", 1.0), guest("b", 1.5)]);
        assert_eq!(decide(&nodes, &t), None, "younger than min_age");
        let mut g = guest("c", 60.0);
        g.residence_s = 1.0;
        let nodes = testbed(vec![g, guest("d", 1.0)]);
        assert_eq!(decide(&nodes, &t), None, "just arrived");
        // A big guest that has run briefly is not worth its migration.
        let mut big = guest("big", 3.0);
        big.memory_bytes = 1 << 30;
        let nodes = testbed(vec![big, guest("e", 1.0)]);
        assert_eq!(decide(&nodes, &t), None);
    }

    #[test]
    fn guests_come_back_when_the_server_has_a_core_free() {
        let mut nodes = testbed(vec![]);
        nodes[1].guests.push(guest("x", 30.0));
        nodes[2].guests.push(guest("y", 50.0));
        let d = decide(&nodes, &Tuning::default()).unwrap();
        assert_eq!(
            (d.guest.as_str(), d.reason, d.to.as_str()),
            ("y", "return", "s")
        );
        // Once back, the server is full: nothing more comes, nothing leaves.
        nodes[2].guests.clear();
        nodes[0].guests.push(guest("y", 50.0));
        assert_eq!(decide(&nodes, &Tuning::default()), None);
    }

    #[test]
    fn the_fastest_server_takes_guests_back_first() {
        let mut nodes = testbed(vec![]);
        let mut fast = node("fast", NodeClass::Server, 1.0, vec![]);
        fast.speed = 2.0;
        nodes.push(fast);
        nodes[1].guests.push(guest("x", 30.0));
        let d = decide(&nodes, &Tuning::default()).unwrap();
        assert_eq!(d.to, "fast");
    }

    #[test]
    fn nodes_down_or_busy_are_left_alone() {
        let mut nodes = testbed(vec![guest("a", 60.0), guest("b", 60.0)]);
        for b in &mut nodes[1..] {
            b.up = false;
        }
        assert_eq!(decide(&nodes, &Tuning::default()), None);
        let mut nodes = testbed(vec![guest("a", 60.0), guest("b", 60.0)]);
        nodes[0].busy = true;
        assert_eq!(decide(&nodes, &Tuning::default()), None);
    }

    #[test]
    fn placement_fills_the_server_then_boards() {
        let t = Tuning::default();
        let nodes = testbed(vec![]);
        assert_eq!(place(&nodes, &t).as_deref(), Some("s"));
        let nodes = testbed(vec![guest("a", 1.0)]);
        // The server would share its core (0.5 each); a board gives 0.25:
        // the server still gives more to the new guest.
        assert_eq!(place(&nodes, &t).as_deref(), Some("s"));
        let nodes = testbed(vec![
            guest("a", 1.0),
            guest("b", 1.0),
            guest("c", 1.0),
            guest("d", 1.0),
        ]);
        assert!(place(&nodes, &t).unwrap().starts_with('b'));
    }

    #[test]
    fn the_energy_policy_prefers_boards_within_the_floor() {
        let t = Tuning {
            policy: Policy::Energy,
            ..Tuning::default()
        };
        // Two guests on a one-core server get 0.5 each; a board gives 0.25,
        // half of that: within the floor, and far more work per joule.
        let nodes = testbed(vec![guest("a", 60.0), guest("b", 60.0)]);
        let d = decide(&nodes, &t).unwrap();
        assert_eq!(d.reason, "energy");
        assert!(d.to.starts_with('b'));
        // Alone on the server a guest gets 1.0; a board's 0.25 is below
        // the floor: it stays.
        let nodes = testbed(vec![guest("a", 60.0)]);
        assert_eq!(decide(&nodes, &t), None);
        let strict = Tuning {
            floor: 0.9,
            ..t.clone()
        };
        let nodes = testbed(vec![guest("a", 60.0), guest("b", 60.0)]);
        assert_eq!(decide(&nodes, &strict), None);
    }

    #[test]
    fn work_rate_counts_cores_in_use() {
        let nodes = testbed(vec![guest("a", 1.0), guest("b", 1.0)]);
        assert!((work_rate(&nodes) - 1.0).abs() < 1e-9);
        let mut nodes = testbed(vec![guest("a", 1.0)]);
        nodes[1].guests.push(guest("b", 1.0));
        assert!((work_rate(&nodes) - 1.25).abs() < 1e-9);
    }
}
