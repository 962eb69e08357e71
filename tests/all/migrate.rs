//! Live migration between real `tern node` processes on loopback: the
//! guest's whole output after moving must equal an uninterrupted run, and
//! faults (a destination killed with SIGKILL mid-transfer, a source that
//! dies right after the handoff) must never lose or duplicate the guest.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A node daemon on an ephemeral port, killed with SIGKILL when dropped.
struct NodeProc {
    child: Child,
    api: String,
    _dir: tempfile::TempDir,
}

impl NodeProc {
    fn start(name: &str, env: &[(&str, &str)]) -> NodeProc {
        let dir = tempfile::tempdir().unwrap();
        let mut c = tern();
        c.args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("starting tern node");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().expect("node said nothing").unwrap();
        let v: serde_json::Value = serde_json::from_str(&first).expect(&first);
        let api = v["api"].as_str().expect("api address").to_string();
        // Keep draining the node's log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        NodeProc {
            child,
            api,
            _dir: dir,
        }
    }

    fn cli(&self) -> std::process::Command {
        let mut c = tern();
        c.env("TERN_NODE", &self.api);
        c
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ok(c: std::process::Command) -> String {
    let (out, _) = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn detach(node: &NodeProc, args: &[&str]) -> String {
    let mut c = node.cli();
    c.arg("run")
        .arg("--detach")
        .arg(guest("dirtier"))
        .arg("--")
        .args(args);
    ok(c)
}

fn migrate(from: &NodeProc, id: &str, to: &NodeProc, strategy: &str) -> serde_json::Value {
    let mut c = from.cli();
    c.args([
        "migrate",
        id,
        "--to",
        &to.api,
        "--strategy",
        strategy,
        "--json",
    ]);
    serde_json::from_str(&ok(c)).unwrap()
}

fn wait_and_log(node: &NodeProc, id: &str) -> (String, Vec<u8>) {
    let mut c = node.cli();
    c.args(["wait", id]);
    let code = ok(c);
    let mut c = node.cli();
    c.args(["logs", id]);
    let (out, _) = run(c);
    (code, out.stdout)
}

fn reference(args: &[&str]) -> Vec<u8> {
    let mut c = tern();
    c.arg("run").arg(guest("dirtier")).arg("--").args(args);
    let (out, _) = run(c);
    assert!(out.status.success());
    out.stdout
}

/// About 6 s of a guest dirtying 128 KiB per iteration at 20 MB/s; with
/// `--iterations` the output does not depend on timing.
const DIRTIER: &[&str] = &[
    "--mem",
    "32",
    "--window",
    "32",
    "--rate",
    "20",
    "--iterations",
    "900",
];

#[test]
fn migrate_there_and_back_precopy_then_cold() {
    let want = reference(DIRTIER);
    let a = NodeProc::start("a", &[]);
    let b = NodeProc::start("b", &[]);
    let id = detach(&a, DIRTIER);
    std::thread::sleep(Duration::from_millis(600));
    let r = migrate(&a, &id, &b, "precopy");
    assert_eq!(r["strategy"], "precopy");
    assert!(r["rounds"].as_u64().unwrap() >= 2, "{r}");
    assert!(r["downtime_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["bytes_sent"].as_u64().unwrap() > 1 << 20, "{r}");
    std::thread::sleep(Duration::from_millis(600));
    let r = migrate(&b, &id, &a, "cold");
    assert_eq!(r["rounds"], 1, "{r}");
    let (code, log) = wait_and_log(&a, &id);
    assert_eq!(code, "0");
    assert_same_output("dirtier A->B->A", &log, &want);
    // B lets go and says where the guest went.
    let mut c = b.cli();
    c.args(["ps", "--json"]);
    let ps: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    assert_eq!(ps[0]["state"], "moved", "{ps}");
}

#[test]
fn hash_tracking_and_a_three_node_chain() {
    let want = reference(DIRTIER);
    let nodes: Vec<NodeProc> = ["a", "b", "c"]
        .iter()
        .map(|n| NodeProc::start(n, &[]))
        .collect();
    let id = detach(&nodes[0], DIRTIER);
    for (from, to) in [(0, 1), (1, 2)] {
        std::thread::sleep(Duration::from_millis(400));
        let mut c = nodes[from].cli();
        c.args([
            "migrate",
            &id,
            "--to",
            &nodes[to].api,
            "--dirty",
            "hash",
            "--json",
        ]);
        let r: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
        assert_eq!(r["dirty_tracking"], "xxh3-hash", "{r}");
    }
    let (code, log) = wait_and_log(&nodes[2], &id);
    assert_eq!(code, "0");
    assert_same_output("dirtier A->B->C", &log, &want);
}

#[test]
fn destination_killed_mid_transfer_guest_continues_on_source() {
    let args = [
        "--mem",
        "512",
        "--window",
        "64",
        "--rate",
        "20",
        "--iterations",
        "500",
    ];
    let want = reference(&args);
    let a = NodeProc::start("a", &[]);
    let mut b = NodeProc::start("b", &[]);
    let id = detach(&a, &args);
    std::thread::sleep(Duration::from_millis(1500));
    let mut c = a.cli();
    c.args(["migrate", &id, "--to", &b.api, "--strategy", "precopy"]);
    let mig = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the destination while the first round (512 MiB) is on the wire.
    std::thread::sleep(Duration::from_millis(150));
    b.kill();
    let out = mig.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "migration to a killed node succeeded"
    );
    let (code, log) = wait_and_log(&a, &id);
    assert_eq!(code, "0");
    assert_same_output("dirtier after a failed migration", &log, &want);
}

#[test]
fn source_dies_after_handoff_guest_continues_on_destination() {
    let want = reference(DIRTIER);
    let mut a = NodeProc::start("a", &[("TERN_TEST_EXIT_BEFORE_COMMIT", "1")]);
    let b = NodeProc::start("b", &[]);
    let id = detach(&a, DIRTIER);
    std::thread::sleep(Duration::from_millis(500));
    let mut c = a.cli();
    c.args(["migrate", &id, "--to", &b.api]);
    let (out, _) = run(c);
    // The source process died mid-request: the CLI reports the failure.
    assert!(!out.status.success());
    a.kill();
    // The destination asks the dead source, is refused, and runs the guest.
    let t0 = Instant::now();
    loop {
        let mut c = b.cli();
        c.args(["ps", "--json"]);
        let ps: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
        if ps.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the destination never took the guest"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, log) = wait_and_log(&b, &id);
    assert_eq!(code, "0");
    assert_same_output("dirtier after the source died", &log, &want);
}
