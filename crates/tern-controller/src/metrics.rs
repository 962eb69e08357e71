//! The controller's metrics, on `/metrics` in the OpenMetrics text format
//! through `prometheus-client`: registered once; counters and the
//! decision-to-start histogram are updated where things happen, and the
//! per-node and per-guest gauges are refreshed from the cluster view at
//! each scrape (they describe the cluster as it stands, and a node or
//! guest that is gone must drop out).

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tern_api::{ClusterView, NodeHealth};

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The per-node gauges, in the order [`Metrics::render`] fills them.
const PER_NODE: [(&str, &str); 5] = [
    (
        "tern_node_power_watts",
        "Power a node draws now, by its power model",
    ),
    (
        "tern_node_energy_joules",
        "Energy a node drew since the controller first saw it",
    ),
    ("tern_node_runnable_guests", "Guests running on a node"),
    (
        "tern_node_cpu_used_cores",
        "Cores a node's guests used over the last poll",
    ),
    ("tern_node_up", "1 when a node answers"),
];

/// Every metric the controller keeps, registered once.
pub struct Metrics {
    registry: Registry,
    moves_started: Family<Labels, Counter>,
    moves_failed: Counter,
    guests_placed: Counter,
    decision_to_start: Histogram,
    leader: Gauge,
    per_node: Vec<Family<Labels, FloatGauge>>,
    guest_energy: Family<Labels, FloatGauge>,
    /// Serializes [`Metrics::render`], which refills the gauges.
    rendering: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let moves_started = Family::<Labels, Counter>::default();
        registry.register(
            "tern_controller_moves_started",
            "Moves started, by reason",
            moves_started.clone(),
        );
        let moves_failed = Counter::default();
        registry.register(
            "tern_controller_moves_failed",
            "Moves that failed",
            moves_failed.clone(),
        );
        let guests_placed = Counter::default();
        registry.register(
            "tern_controller_guests_placed",
            "Guests placed",
            guests_placed.clone(),
        );
        // 1 ms to about 16 s, doubling.
        let decision_to_start = Histogram::new((0..15).map(|i| 0.001 * f64::from(1u32 << i)));
        registry.register(
            "tern_controller_decision_to_start_seconds",
            "Time from a decision to move to the move starting",
            decision_to_start.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "tern_controller_leader",
            "1 when this controller leads",
            leader.clone(),
        );
        let per_node: Vec<Family<Labels, FloatGauge>> = PER_NODE
            .iter()
            .map(|(name, help)| {
                let f = Family::default();
                registry.register(*name, *help, f.clone());
                f
            })
            .collect();
        let guest_energy = Family::default();
        registry.register(
            "tern_guest_energy_joules",
            "Energy drawn for a guest so far, by the power model",
            guest_energy.clone(),
        );
        Metrics {
            registry,
            moves_started,
            moves_failed,
            guests_placed,
            decision_to_start,
            leader,
            per_node,
            guest_energy,
            rendering: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// A move started for `reason`, `decision_to_start_ms` after it was
    /// decided.
    pub fn move_started(&self, reason: &str, decision_to_start_ms: u64) {
        self.moves_started
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
        self.decision_to_start
            .observe(decision_to_start_ms as f64 / 1000.0);
    }

    /// A move failed.
    pub fn move_failed(&self) {
        self.moves_failed.inc();
    }

    /// A guest was placed.
    pub fn guest_placed(&self) {
        self.guests_placed.inc();
    }

    /// The OpenMetrics text, with the gauges set from `view`.
    pub fn render(&self, view: &ClusterView, leader: bool) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.leader.set(i64::from(leader));
        for f in &self.per_node {
            f.clear();
        }
        for n in &view.nodes {
            let l: Labels = vec![
                ("node", n.info.name.clone()),
                ("class", n.info.class.to_string()),
            ];
            let up = if n.health == NodeHealth::Up { 1.0 } else { 0.0 };
            let values = [n.power_w, n.energy_j, n.runnable as f64, n.cpu_used, up];
            for (f, v) in self.per_node.iter().zip(values) {
                f.get_or_create(&l).set(v);
            }
        }
        self.guest_energy.clear();
        for (id, j) in &view.energy_per_guest_j {
            self.guest_energy
                .get_or_create(&vec![("guest", id.clone())])
                .set(*j);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_the_histogram_render_once_registered() {
        let m = Metrics::default();
        m.move_started("overload", 12);
        m.move_started("overload", 40);
        m.move_started("return", 3);
        m.move_failed();
        m.guest_placed();
        let view = ClusterView {
            controller: "c".into(),
            leader: None,
            policy: "throughput".into(),
            store: "dir".into(),
            nodes: Vec::new(),
            moves: Vec::new(),
            energy_per_guest_j: vec![("g1".into(), 2.5)],
        };
        let text = m.render(&view, true);
        assert!(
            text.contains("tern_controller_moves_started_total{reason=\"overload\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tern_controller_moves_started_total{reason=\"return\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tern_controller_moves_failed_total 1"),
            "{text}"
        );
        assert!(
            text.contains("tern_controller_guests_placed_total 1"),
            "{text}"
        );
        assert!(
            text.contains("tern_controller_decision_to_start_seconds_count 3"),
            "{text}"
        );
        assert!(text.contains("tern_controller_leader 1"), "{text}");
        assert!(
            text.contains("tern_guest_energy_joules{guest=\"g1\"} 2.5"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
