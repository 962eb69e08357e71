//! Resource limits (docs/limits.md): a guest that takes too much memory,
//! descriptors, output or CPU is ended or held back with a clear status,
//! and the process or node it runs in goes on.

use std::time::{Duration, Instant};

use crate::migrate::{ok, NodeProc};
use crate::support::*;

fn hog(args: &[&str], mem: &[&str]) -> std::process::Output {
    let mut c = tern();
    c.arg("run")
        .args(mem)
        .arg(guest("hog"))
        .arg("--")
        .args(args);
    run(c).0
}

fn last_line(o: &std::process::Output) -> String {
    stderr(o).lines().last().unwrap_or_default().to_string()
}

#[test]
fn run_ends_a_guest_at_its_memory_limit() {
    let out = hog(&["mem"], &["--max-memory", "64M"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    // The guest's own message, then Tern's one line naming the limit.
    assert!(err.contains("hog: malloc failed after"), "{err}");
    let line = last_line(&out);
    assert!(
        line.starts_with("tern: the guest ended by its memory limit of 64 MiB (it asked for "),
        "{line}"
    );
    assert!(line.ends_with("): exit status 1"), "{line}");
    // It got close to the limit: 64 MiB less data, stack and heap overhead.
    let mib: u64 = err
        .split("after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((56..64).contains(&mib), "{mib} MiB");
}

#[test]
fn run_refuses_bad_limits_in_one_line() {
    for (flag, value, want) in [
        ("--max-memory", "12parsecs", "invalid size `12parsecs`"),
        ("--max-memory", "8G", "out of range: give 64KiB to 4GiB"),
        ("--max-fds", "many", "invalid value 'many'"),
    ] {
        let mut c = tern();
        c.args(["run", flag, value]).arg(guest("hello"));
        let (out, _) = run(c);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = stderr(&out);
        let first = err.lines().next().unwrap_or_default();
        assert!(first.contains(want), "{flag} {value}: {err}");
    }
    // A module whose initial memory is already past the limit.
    let mut c = tern();
    c.args(["run", "--max-memory", "64K"]).arg(guest("hello"));
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("initial memory of")
            && stderr(&out).contains("exceeds the memory limit of 64 KiB"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_refuses_opens_past_the_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("{}:/data", dir.path().display());
    let out = hog(&["fds"], &["--max-fds", "10", "--dir", &data]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // stdio and /data hold 4 of the 10.
    assert!(
        stderr(&out).contains("open failed after 6 files"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        last_line(&out),
        "tern: the guest ended by its limit of 10 open descriptors: exit status 1"
    );
}

fn record(node: &NodeProc, id: &str) -> serde_json::Value {
    let mut c = node.cli();
    c.args(["ps", "--json"]);
    let all: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    all.as_array()
        .into_iter()
        .flatten()
        .find(|g| g["id"] == id)
        .cloned()
        .unwrap_or_default()
}

fn wait_end(node: &NodeProc, id: &str) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let g = record(node, id);
        let s = g["state"].as_str().unwrap_or("");
        if s != "running" && s != "paused" {
            return g;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{id} still {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn boot(node: &NodeProc, flags: &[&str], args: &[&str]) -> std::process::Output {
    let mut c = node.cli();
    c.args(["run", "--detach"])
        .args(flags)
        .arg(guest("hog"))
        .arg("--")
        .args(args);
    run(c).0
}

fn boot_ok(node: &NodeProc, flags: &[&str], args: &[&str]) -> String {
    let out = boot(node, flags, args);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn node_ends_guests_at_their_limits_and_serves_the_others() {
    let node = NodeProc::start_with("limits", &["--max-memory", "64MiB", "--max-log", "64KiB"]);
    let steady = boot_ok(&node, &[], &["cpu", "1.5"]);
    // No limit asked: the node's 64 MiB.
    let mem = boot_ok(&node, &[], &["mem"]);
    let small = boot_ok(&node, &["--max-memory", "16M"], &["mem"]);
    let out = boot_ok(&node, &[], &["out"]);
    // More than the node allows is refused, in one line.
    let refused = boot(&node, &["--max-memory", "1G"], &["mem"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains(
            "the guest asks for a memory limit of 1 GiB, above this node's maximum of 64 MiB"
        ),
        "{}",
        stderr(&refused)
    );

    for (id, limit) in [(&mem, "64 MiB"), (&small, "16 MiB")] {
        let g = wait_end(&node, id);
        assert_eq!(g["state"], "limited", "{g}");
        assert_eq!(g["limit"], "memory", "{g}");
        assert_eq!(g["exit_code"], 1, "{g}");
        let msg = g["error"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!("ended by its memory limit of {limit}")),
            "{msg}"
        );
    }
    let g = wait_end(&node, &out);
    assert_eq!(
        (&g["state"], &g["limit"]),
        (&"limited".into(), &"log".into()),
        "{g}"
    );
    let mut c = node.cli();
    c.args(["logs", &out]);
    let log = ok(c);
    assert!(log.len() <= (64 << 10) + 100, "{} bytes", log.len());
    assert!(log.len() >= 60 << 10, "{} bytes", log.len());
    assert!(
        log.ends_with("[tern: output stopped: its output reached the log limit of 64 KiB]"),
        "{}",
        &log[log.len() - 200..]
    );
    // The node ran its other guest on, and takes new ones.
    let g = wait_end(&node, &steady);
    assert_eq!(
        (&g["state"], &g["exit_code"]),
        (&"exited".into(), &0.into()),
        "{g}"
    );
    let again = boot_ok(&node, &[], &["cpu", "0.1"]);
    assert_eq!(wait_end(&node, &again)["state"], "exited");
    let mut c = node.cli();
    c.arg("ps");
    let table = ok(c);
    assert!(
        table.contains("limited:memory") && table.contains("limited:log"),
        "{table}"
    );
}

/// CPU time (user + system) of the node's guest thread, in seconds.
fn guest_cpu_seconds(pid: u32) -> Option<f64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("guest-") {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Fields after the command name, which is in parentheses.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            let ticks: f64 = f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?;
            return Some(ticks / 100.0);
        }
    }
    None
}

#[test]
fn node_holds_a_guest_to_its_cpu_quota() {
    let probe = std::path::Path::new("/sys/fs/cgroup/cpu/tern-test-probe");
    if std::fs::create_dir_all(probe).is_err() || !probe.join("cpu.shares").exists() {
        let _ = std::fs::remove_dir(probe);
        eprintln!("skipped: the cgroup v1 cpu controller is not writable here");
        return;
    }
    let _ = std::fs::remove_dir(probe);
    let node = NodeProc::start_with("cpuq", &[]);
    let id = boot_ok(&node, &["--cpu-quota", "0.25"], &["cpu", "4"]);
    let g = record(&node, &id);
    let place = g["cpu_control"].as_str().unwrap_or_default().to_string();
    assert!(place.starts_with("cgroup "), "{g}");
    let group = std::path::PathBuf::from(place.trim_start_matches("cgroup "));
    assert_eq!(
        std::fs::read_to_string(group.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "25000"
    );
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let c0 = guest_cpu_seconds(node.pid()).expect("the guest's thread");
    std::thread::sleep(Duration::from_secs(2));
    let c1 = guest_cpu_seconds(node.pid()).expect("the guest's thread");
    let share = (c1 - c0) / t0.elapsed().as_secs_f64();
    assert!(share < 0.6, "a 0.25-core guest used {share:.2} of a core");
    assert!(share > 0.05, "a 0.25-core guest used {share:.2} of a core");
    // Stopped, it leaves no group behind.
    let mut c = node.cli();
    c.args(["stop", &id]);
    ok(c);
    wait_end(&node, &id);
    let t = Instant::now();
    while group.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!group.exists(), "{} was left behind", group.display());
}

#[test]
fn limits_move_with_the_guest() {
    let a = NodeProc::start_with("lim-a", &[]);
    let b = NodeProc::start_with("lim-b", &["--max-memory", "1GiB"]);
    let capped = boot_ok(
        &a,
        &[
            "--max-memory",
            "32M",
            "--max-fds",
            "50",
            "--cpu-weight",
            "200",
        ],
        &["cpu", "1.5"],
    );
    let free = boot_ok(&a, &[], &["cpu", "1.5"]);
    assert_eq!(
        record(&a, &free)["limits"]["max_memory"],
        serde_json::Value::Null
    );
    for id in [&capped, &free] {
        let r = crate::migrate::migrate(&a, id, &b, "cold");
        assert!(r["downtime_ms"].is_number(), "{r}");
    }
    let l = &record(&b, &capped)["limits"];
    assert_eq!(
        (&l["max_memory"], &l["max_fds"], &l["cpu_weight"]),
        (&(32u64 << 20).into(), &50.into(), &200.into()),
        "{l}"
    );
    // A guest without a memory limit gets the node's maximum on arrival.
    assert_eq!(record(&b, &free)["limits"]["max_memory"], 1u64 << 30);
    for id in [&capped, &free] {
        assert_eq!(wait_end(&b, id)["exit_code"], 0);
    }
}
