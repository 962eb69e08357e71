//! The node's metrics, exposed on `/metrics` in the OpenMetrics text format
//! through `prometheus-client`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use tern_api::GuestRecord;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the node keeps, registered once.
pub struct Metrics {
    registry: Registry,
    guests: Family<Labels, Gauge>,
    guests_started: Counter,
    migrations: Family<Labels, Counter>,
    migrations_in: Counter,
    migration_bytes: Counter,
    downtime: Histogram,
    /// Serializes [`Metrics::render`], which rebuilds the guest gauges.
    rendering: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let guests = Family::<Labels, Gauge>::default();
        registry.register(
            "tern_guests",
            "Guests known to this node, by state",
            guests.clone(),
        );
        let guests_started = Counter::default();
        registry.register(
            "tern_guests_started",
            "Guests booted, restored or received here",
            guests_started.clone(),
        );
        let migrations = Family::<Labels, Counter>::default();
        registry.register(
            "tern_migrations",
            "Migrations sent by this node, by result",
            migrations.clone(),
        );
        let migrations_in = Counter::default();
        registry.register(
            "tern_migrations_received",
            "Guests received by migration",
            migrations_in.clone(),
        );
        let migration_bytes = Counter::default();
        registry.register(
            "tern_migration_bytes",
            "Bytes sent by migrations",
            migration_bytes.clone(),
        );
        // 0.5 ms to about 16 s, doubling.
        let downtime = Histogram::new((0..16).map(|i| 0.0005 * f64::from(1u32 << i)));
        registry.register(
            "tern_migration_downtime_seconds",
            "Downtime of the migrations sent",
            downtime.clone(),
        );
        Metrics {
            registry,
            guests,
            guests_started,
            migrations,
            migrations_in,
            migration_bytes,
            downtime,
            rendering: std::sync::Mutex::new(()),
        }
    }
}

impl Metrics {
    /// A guest was booted, restored or received here.
    pub fn guest_started(&self) {
        self.guests_started.inc();
    }

    /// A migration sent from here committed.
    pub fn migration_sent(&self, report: &tern_api::Report) {
        self.migrations.get_or_create(&vec![("result", "ok")]).inc();
        self.migration_bytes.inc_by(report.bytes_sent);
        self.downtime.observe(report.downtime_ms / 1000.0);
    }

    /// A migration sent from here failed (the guest stayed).
    pub fn migration_failed(&self) {
        self.migrations
            .get_or_create(&vec![("result", "failed")])
            .inc();
    }

    /// A guest arrived by migration.
    pub fn migration_received(&self) {
        self.migrations_in.inc();
    }

    /// The metrics, with the guests counted by state as they are now.
    pub fn render(&self, guests: &[GuestRecord]) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.guests.clear();
        for g in guests {
            self.guests
                .get_or_create(&vec![("state", g.state.as_str())])
                .inc();
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_in_the_exposition() {
        let m = Metrics::default();
        m.guest_started();
        m.migration_failed();
        m.migration_received();
        let t = m.render(&[]);
        assert!(t.contains("tern_guests_started_total 1"), "{t}");
        assert!(
            t.contains("tern_migrations_total{result=\"failed\"} 1"),
            "{t}"
        );
        assert!(t.contains("tern_migrations_received_total 1"), "{t}");
        assert!(t.contains("# EOF"), "{t}");
    }
}
