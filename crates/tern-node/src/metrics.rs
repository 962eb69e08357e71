//! The node's counters and their Prometheus text exposition (`/metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tern_api::GuestRecord;

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

fn family(t: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(t, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Metrics {
    /// The counters and the guests by state, in Prometheus text format.
    pub fn render(&self, guests: &[GuestRecord]) -> String {
        let mut t = String::new();
        let mut counts = BTreeMap::new();
        for g in guests {
            *counts.entry(g.state.as_str()).or_insert(0u64) += 1;
        }
        family(
            &mut t,
            "tern_guests",
            "gauge",
            "Guests known to this node, by state.",
        );
        for (state, n) in counts {
            let _ = writeln!(t, "tern_guests{{state=\"{state}\"}} {n}");
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        family(
            &mut t,
            "tern_guests_started_total",
            "counter",
            "Guests booted, restored or received here.",
        );
        let _ = writeln!(t, "tern_guests_started_total {}", get(&self.guests_started));
        family(
            &mut t,
            "tern_migrations_total",
            "counter",
            "Migrations sent by this node, by result.",
        );
        let _ = writeln!(
            t,
            "tern_migrations_total{{result=\"ok\"}} {}",
            get(&self.migrations_ok)
        );
        let _ = writeln!(
            t,
            "tern_migrations_total{{result=\"failed\"}} {}",
            get(&self.migrations_failed)
        );
        family(
            &mut t,
            "tern_migrations_received_total",
            "counter",
            "Guests received by migration.",
        );
        let _ = writeln!(
            t,
            "tern_migrations_received_total {}",
            get(&self.migrations_in)
        );
        family(
            &mut t,
            "tern_migration_bytes_total",
            "counter",
            "Bytes sent by migrations.",
        );
        let _ = writeln!(
            t,
            "tern_migration_bytes_total {}",
            get(&self.migration_bytes)
        );
        family(
            &mut t,
            "tern_migration_last_downtime_seconds",
            "gauge",
            "Downtime of the last migration sent.",
        );
        let _ = writeln!(
            t,
            "tern_migration_last_downtime_seconds {}",
            get(&self.last_downtime_us) as f64 / 1e6
        );
        t
    }
}
