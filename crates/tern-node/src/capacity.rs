//! What a node can do, as the controller weighs it: its CPU capacity (the
//! cores it may use, or the CPU quota of the cgroup it runs in) and the
//! speed of one of its cores.

use std::path::Path;
use std::time::{Duration, Instant};

/// The CPU capacity this process has, in cores: its cgroup's CPU quota when
/// one is set (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), else the cores
/// it may run on.
pub fn detect_cpus() -> f64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    match cgroup_quota() {
        Some(q) if q > 0.0 => q.min(cores),
        _ => cores,
    }
}

/// The CPU quota of this process's cgroup, in cores, if one is set.
fn cgroup_quota() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        // `hierarchy-id:controllers:path`; v2 is `0::path`.
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            let dir = Path::new("/sys/fs/cgroup").join(rel);
            if let Some(q) = read_v2(&dir) {
                return Some(q);
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
                if let Some(q) = read_v1(&Path::new(mount).join(rel)) {
                    return Some(q);
                }
            }
        }
    }
    None
}

fn read_v2(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    let mut f = text.split_whitespace();
    let quota = f.next()?;
    let period: f64 = f.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    Some(quota.parse::<f64>().ok()? / period)
}

fn read_v1(dir: &Path) -> Option<f64> {
    let read = |name: &str| -> Option<f64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let quota = read("cpu.cfs_quota_us")?;
    let period = read("cpu.cfs_period_us")?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Work units one reference core does in a second: the calibration loop
/// below run on one core of the x86_64 machines Tern is developed on
/// (measured there, release build; `docs/controller.md`).
const REFERENCE_RATE: f64 = 5.3e8;

/// The speed of one core of this node against the reference core (1.0):
/// the best of a few short runs of a fixed integer loop, so that a busy
/// neighbour only makes it look slower by chance, not always. Under
/// qemu-user (an emulated board) this is many times below 1.
pub fn calibrate() -> f64 {
    let mut best = 0.0f64;
    for _ in 0..3 {
        best = best.max(rate(Duration::from_millis(40)));
    }
    (best / REFERENCE_RATE).max(0.0001)
}

/// Work units a second of a loop that does not vectorize away: a
/// xorshift generator feeding a multiply-add chain.
fn rate(budget: Duration) -> f64 {
    let t0 = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut acc: u64 = 0;
    let mut units = 0u64;
    while t0.elapsed() < budget {
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            acc = acc.wrapping_mul(31).wrapping_add(x);
        }
        units += 10_000;
    }
    std::hint::black_box(acc);
    units as f64 / t0.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_speed_are_positive() {
        let c = detect_cpus();
        assert!(c > 0.0 && c <= 4096.0, "{c}");
        assert!(calibrate() > 0.0);
    }

    #[test]
    fn cgroup_files_are_read_as_cores() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cpu.max"), "25000 100000\n").unwrap();
        assert_eq!(read_v2(d.path()), Some(0.25));
        std::fs::write(d.path().join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(read_v2(d.path()), None);
        std::fs::write(d.path().join("cpu.cfs_quota_us"), "50000\n").unwrap();
        std::fs::write(d.path().join("cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(read_v1(d.path()), Some(0.5));
        std::fs::write(d.path().join("cpu.cfs_quota_us"), "-1\n").unwrap();
        assert_eq!(read_v1(d.path()), None);
    }
}
