//! CPU weight and quota of guests, which are threads of the node process.
//!
//! Where the cgroup v1 `cpu` controller is writable, every guest gets its
//! own group, `<node's group>/tern-<node>/<guest>`, with `cpu.shares` from
//! its weight and `cpu.cfs_quota_us` from its quota; the guest's thread
//! moves itself in (its thread id into `tasks`) when it starts and back
//! out when it ends, and the group is then removed (the node's group too,
//! once it holds no guest's). Elsewhere a weight
//! becomes the thread's nice value and a quota cannot be enforced: a guest
//! asking for one is refused.

use std::path::{Path, PathBuf};

use tern_vm::limits::Limits;

/// Where the cgroup v1 `cpu` controller is mounted.
const CPU_MOUNT: &str = "/sys/fs/cgroup/cpu";
/// `cpu.cfs_period_us` of every guest group: 100 ms.
const PERIOD_US: u64 = 100_000;
/// The weight that means an equal share (cgroup v2's default `cpu.weight`).
pub const DEFAULT_WEIGHT: u32 = 100;

/// How this node controls its guests' CPU.
#[derive(Debug)]
pub enum CpuControl {
    /// One cgroup per guest below this directory (the node's own group).
    Cgroup {
        /// `.../tern-<node>`.
        dir: PathBuf,
        /// The `tasks` file of the group the node runs in.
        home_tasks: PathBuf,
    },
    /// Nice values of guest threads; no quotas. Why cgroups are not used.
    Nice(String),
}

impl CpuControl {
    /// Uses cgroups if the node can make its group, else nice values.
    /// Empty guest groups left by an earlier run of this node are removed.
    pub fn open(node_name: &str) -> CpuControl {
        let own = own_cpu_cgroup().unwrap_or_else(|| "/".into());
        let home = Path::new(CPU_MOUNT).join(own.trim_start_matches('/'));
        let dir = home.join(format!("tern-{}", sanitize(node_name)));
        match std::fs::create_dir_all(&dir) {
            Ok(()) if dir.join("cpu.shares").exists() => {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten().filter(|e| e.path().is_dir()) {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                // Made again with the first guest's group, and removed
                // with the last: no node leaves an empty group behind
                // while it has no guests.
                let _ = std::fs::remove_dir(&dir);
                CpuControl::Cgroup {
                    dir,
                    home_tasks: home.join("tasks"),
                }
            }
            Ok(()) => CpuControl::Nice(format!("{} is not a cpu cgroup", dir.display())),
            Err(e) => CpuControl::Nice(format!("cannot create {}: {e}", dir.display())),
        }
    }

    /// One line for the node's log.
    pub fn describe(&self) -> String {
        match self {
            CpuControl::Cgroup { dir, .. } => {
                format!(
                    "cgroup v1 cpu controller, guest groups in {}",
                    dir.display()
                )
            }
            CpuControl::Nice(why) => {
                format!("nice values (no CPU quotas): {why}")
            }
        }
    }

    /// Makes the place for guest `id` under `limits`; the guest's thread
    /// enters it with [`Placement::enter`]. A quota without cgroups is an
    /// error.
    pub fn prepare(&self, id: &str, limits: &Limits) -> Result<Placement, String> {
        let weight = limits.cpu_weight.unwrap_or(DEFAULT_WEIGHT);
        match self {
            CpuControl::Cgroup { dir, home_tasks } => {
                let group = dir.join(sanitize(id));
                let set = |file: &str, value: String| {
                    std::fs::write(group.join(file), &value)
                        .map_err(|e| format!("cannot set {file} of {}: {e}", group.display()))
                };
                // The node's group may vanish with its last guest's group
                // between the two mkdirs: try again once.
                std::fs::create_dir_all(&group)
                    .or_else(|_| std::fs::create_dir_all(&group))
                    .map_err(|e| format!("cannot create {}: {e}", group.display()))?;
                let quota = limits
                    .cpu_quota_millicores
                    .map_or(-1, |m| (u64::from(m) * PERIOD_US / 1000).max(1000) as i64);
                let r = set("cpu.shares", shares(weight).to_string())
                    .and_then(|()| set("cpu.cfs_period_us", PERIOD_US.to_string()))
                    .and_then(|()| set("cpu.cfs_quota_us", quota.to_string()));
                if let Err(e) = r {
                    let _ = std::fs::remove_dir(&group);
                    return Err(e);
                }
                Ok(Placement::Cgroup {
                    group,
                    home_tasks: home_tasks.clone(),
                })
            }
            CpuControl::Nice(why) => {
                if limits.cpu_quota_millicores.is_some() {
                    return Err(format!("this node cannot enforce CPU quotas ({why})"));
                }
                Ok(Placement::Nice(nice(weight)))
            }
        }
    }
}

/// Where one guest's thread runs.
#[derive(Debug)]
pub enum Placement {
    /// In its own cgroup.
    Cgroup {
        /// The guest's group.
        group: PathBuf,
        /// Where the thread goes back to before the group is removed.
        home_tasks: PathBuf,
    },
    /// At this nice value.
    Nice(i32),
}

impl Placement {
    /// Moves the calling thread (the guest's) into place; undone when the
    /// returned guard drops, on the same thread.
    pub fn enter(self) -> Entered {
        let tid = rustix::thread::gettid();
        match &self {
            Placement::Cgroup { group, .. } => {
                if let Err(e) =
                    std::fs::write(group.join("tasks"), tid.as_raw_nonzero().to_string())
                {
                    tracing::warn!(event = "cpu_control_failed", group = ?group, error = %e);
                }
            }
            Placement::Nice(0) => {}
            Placement::Nice(n) => {
                if let Err(e) = rustix::process::setpriority_process(Some(tid), *n) {
                    tracing::warn!(event = "cpu_control_failed", nice = *n, error = %e);
                }
            }
        }
        Entered(self)
    }
}

/// A thread in its [`Placement`]; leaving it removes the guest's cgroup.
#[derive(Debug)]
pub struct Entered(Placement);

impl Drop for Entered {
    fn drop(&mut self) {
        if let Placement::Cgroup { group, home_tasks } = &self.0 {
            let tid = rustix::thread::gettid();
            let _ = std::fs::write(home_tasks, tid.as_raw_nonzero().to_string());
            let _ = std::fs::remove_dir(group);
            // The node's group, once no other guest's group is in it.
            if let Some(node_group) = group.parent() {
                let _ = std::fs::remove_dir(node_group);
            }
        }
    }
}

/// `cpu.shares` for a weight: 100 is the kernel's default 1024.
pub fn shares(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / u64::from(DEFAULT_WEIGHT)).max(2)
}

/// The nice value closest to a weight: each nice step is about 1.25x
/// the CPU of the next (the kernel's weight table).
pub fn nice(weight: u32) -> i32 {
    let ratio = f64::from(weight.max(1)) / f64::from(DEFAULT_WEIGHT);
    (-(ratio.ln() / 1.25f64.ln())).round().clamp(-20.0, 19.0) as i32
}

/// The process's group in the cgroup v1 `cpu` hierarchy.
fn own_cpu_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| path.to_string())
    })
}

/// A name safe as one path component.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_to_shares_and_nice() {
        assert_eq!(shares(100), 1024);
        assert_eq!(shares(50), 512);
        assert_eq!(shares(1), 10);
        assert_eq!(nice(100), 0);
        assert_eq!(nice(200), -3);
        assert_eq!(nice(50), 3);
        assert_eq!(nice(1), 19);
        assert_eq!(nice(10_000), -20);
        assert_eq!(sanitize("127.0.0.1:7070"), "127_0_0_1_7070");
    }
}
