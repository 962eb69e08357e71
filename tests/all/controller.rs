//! The controller with real node processes: it offloads an overloaded
//! server to boards and brings guests back, by itself; guests' whole
//! outputs equal uninterrupted runs; a controller killed with SIGKILL and
//! restarted repeats no move; a node killed loses its guests (reported,
//! not rescheduled); with etcd, a second controller takes over from a
//! leader killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::migrate::{ok, NodeProc};
use crate::support::*;

/// A controller daemon, killed with SIGKILL when dropped.
pub struct Ctl {
    child: Child,
    pub api: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Ctl {
    pub fn start(dir: &std::path::Path, listen: &str, extra: &[&str]) -> Ctl {
        let mut c = tern();
        c.args(["controller", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args([
                "--tick",
                "200ms",
                "--min-residence",
                "1s",
                "--min-age",
                "500ms",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("starting tern controller");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().expect("controller said nothing").unwrap();
        let v: serde_json::Value = serde_json::from_str(&first).expect(&first);
        let api = v["api"].as_str().expect("api address").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Ctl { child, api, log }
    }

    pub fn cli(&self) -> Command {
        let mut c = tern();
        c.env("TERN_CONTROLLER", &self.api).env_remove("TERN_NODE");
        c
    }

    fn cluster(&self) -> serde_json::Value {
        let mut c = self.cli();
        c.args(["cluster", "--json"]);
        serde_json::from_str(&ok(c)).unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn saw(&self, event: &str) -> bool {
        let tag = format!("\"event\":\"{event}\"");
        self.log.lock().unwrap().iter().any(|l| l.contains(&tag))
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The controller's own account, for whoever reads the failure.
            eprintln!("controller {} log:", self.api);
            for l in self.log.lock().unwrap().iter() {
                eprintln!("  {l}");
            }
        }
    }
}

/// A server (one core) and two boards (half a core each), all of speed 1
/// so that decisions do not depend on a noisy calibration.
fn testbed(join: &[&str]) -> Vec<NodeProc> {
    let mut nodes = Vec::new();
    for (name, class, cpus) in [
        ("server", "server", "1"),
        ("board1", "board", "0.5"),
        ("board2", "board", "0.5"),
    ] {
        let mut extra = vec!["--class", class, "--cpus", cpus, "--speed", "1"];
        extra.extend_from_slice(join);
        nodes.push(NodeProc::start_with(name, &extra));
    }
    nodes
}

/// About 5 s of CPU at full speed, deterministic output.
const JOB: &[&str] = &["--mem", "8", "--iterations", "1500000"];
/// Half of that: long enough for both long jobs to leave the server
/// first (the test nodes share this machine's cores, so job times are
/// only roughly those of their declared capacities).
const SHORT: &[&str] = &["--mem", "8", "--iterations", "750000"];

/// Twice `JOB`, for a test whose return move must outlast a failover.
const LONGER: &[&str] = &["--mem", "8", "--iterations", "3000000"];

fn reference_of(job: &[&str]) -> Vec<u8> {
    let mut c = tern();
    c.arg("run").arg(guest("dirtier")).arg("--").args(job);
    let (out, _) = run(c);
    assert!(out.status.success());
    out.stdout
}

fn reference() -> Vec<u8> {
    reference_of(JOB)
}

fn start(ctl: &Ctl, job: &[&str]) -> String {
    let mut c = ctl.cli();
    c.args(["run", "--detach"])
        .arg(guest("dirtier"))
        .arg("--")
        .args(job);
    ok(c)
}

fn start_job(ctl: &Ctl) -> String {
    start(ctl, JOB)
}

/// A long job, then a short one: both start on the server (a new guest
/// gets as much there, sharing its core, as on a half-core board), which
/// is then overloaded and offloads the older, long one to a board; once the
/// short one ends the server has a core free and the long one comes back.
/// Returns (id, expected output) of each.
fn burst(ctl: &Ctl) -> Vec<(String, Vec<u8>)> {
    let (long, short) = (reference(), reference_of(SHORT));
    vec![(start_job(ctl), long), (start(ctl, SHORT), short)]
}

fn wait_logs(ctl: &Ctl, id: &str) -> (String, Vec<u8>) {
    let mut c = ctl.cli();
    c.args(["wait", id]);
    let code = ok(c);
    let mut c = ctl.cli();
    c.args(["logs", id]);
    let (out, _) = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    (code, out.stdout)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn moves(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["moves"].as_array().cloned().unwrap_or_default()
}

fn joined(ctl: &Ctl, n: usize) {
    wait_for("the nodes to join", Duration::from_secs(20), || {
        ctl.cluster()["nodes"].as_array().map(Vec::len) == Some(n)
    });
}

#[test]
fn an_overloaded_server_offloads_to_boards_and_takes_guests_back() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(dir.path(), "127.0.0.1:0", &[]);
    let join = ctl.api.clone();
    let _nodes = testbed(&["--join", &join]);
    joined(&ctl, 3);
    let jobs = burst(&ctl);
    for (id, want) in &jobs {
        let (code, log) = wait_logs(&ctl, id);
        assert_eq!(code, "0");
        assert_same_output("a job of an offloading cluster", &log, want);
    }
    let ids: Vec<&String> = jobs.iter().map(|(id, _)| id).collect();
    // The controller learns a move ended at its next look.
    wait_for("the moves to end", Duration::from_secs(10), || {
        moves(&ctl.cluster())
            .iter()
            .all(|m| m["state"] == "done" || m["state"] == "failed")
    });
    let v = ctl.cluster();
    let m = moves(&v);
    let reasons: Vec<&str> = m.iter().filter_map(|m| m["reason"].as_str()).collect();
    assert!(reasons.contains(&"overload"), "{v:#}");
    assert!(reasons.contains(&"return"), "guests came back: {v:#}");
    for m in &m {
        assert_eq!(m["state"], "done", "{m}");
        assert!(!m["detail"].as_str().unwrap_or("").is_empty(), "{m}");
    }
    // No guest moved back and forth between the same nodes in a row.
    for id in &ids {
        let hops: Vec<(&str, &str)> = m
            .iter()
            .filter(|m| m["guest"] == id.as_str())
            .map(|m| (m["from"].as_str().unwrap(), m["to"].as_str().unwrap()))
            .collect();
        assert!(hops.len() <= 2, "{id} moved {hops:?}");
    }
    // Energy was accounted for each guest.
    let energy = v["energy_per_guest_j"].as_array().unwrap();
    assert_eq!(energy.len(), jobs.len(), "{v:#}");
    assert!(energy.iter().all(|e| e[1].as_f64().unwrap() > 0.0), "{v:#}");
    // The cluster is balanced once the jobs ended: nothing more moves.
    let before = m.len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(moves(&ctl.cluster()).len(), before);
    // Metrics through the controller.
    let mut c = ctl.cli();
    c.args(["cluster"]);
    let table = ok(c);
    assert!(
        table.contains("server") && table.contains("overload"),
        "{table}"
    );
}

#[test]
fn a_controller_killed_mid_move_repeats_no_move_when_restarted() {
    let want = reference();
    let dir = tempfile::tempdir().unwrap();
    let mut ctl = Ctl::start(dir.path(), "127.0.0.1:0", &[]);
    let addr = ctl.api.clone();
    let _nodes = testbed(&["--join", &addr]);
    joined(&ctl, 3);
    let ids: Vec<String> = (0..2).map(|_| start_job(&ctl)).collect();
    // Kill it (SIGKILL) as soon as it started its first move.
    wait_for("a move", Duration::from_secs(30), || {
        ctl.saw("move_started")
    });
    ctl.kill();
    let ctl = Ctl::start(dir.path(), &addr, &[]);
    for id in &ids {
        let (code, log) = wait_logs(&ctl, id);
        assert_eq!(code, "0");
        assert_same_output("a job whose controller was killed", &log, &want);
    }
    let m = moves(&ctl.cluster());
    assert!(!m.is_empty());
    let first = &m[0];
    assert_eq!(first["seq"], 1, "{m:?}");
    assert!(
        first["state"] == "done" || first["state"] == "failed",
        "the move begun before the kill was followed to its end: {first}"
    );
    // One migration id per move, never asked twice.
    let mut mids: Vec<&str> = m.iter().filter_map(|m| m["migration"].as_str()).collect();
    let n = mids.len();
    mids.sort();
    mids.dedup();
    assert_eq!(mids.len(), n, "{m:?}");
}

#[test]
fn a_node_killed_has_its_guests_reported_lost_not_rescheduled() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(dir.path(), "127.0.0.1:0", &["--node-timeout", "2s"]);
    let join = ctl.api.clone();
    node_killed(&ctl, testbed(&["--join", &join]));
}

/// An etcd server of its own for one test, in `dir`.
fn local_etcd(dir: &std::path::Path) -> tern_etcd::LocalEtcd {
    tern_etcd::LocalEtcd::start(dir)
        .unwrap_or_else(|e| panic!("etcd is needed (scripts/setup.sh installs it): {e}"))
}

/// The same with membership in etcd: the killed node's lease lapses and
/// its registration goes; its guest is lost, not started elsewhere.
#[test]
fn with_etcd_a_node_killed_has_its_guests_reported_lost_not_rescheduled() {
    let edir = tempfile::tempdir().unwrap();
    let etcd = local_etcd(edir.path());
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(
        dir.path(),
        "127.0.0.1:0",
        &["--etcd", &ep, "--name", "c1", "--node-timeout", "2s"],
    );
    node_killed(&ctl, testbed(&["--etcd", &ep]));
}

/// Starts a job (it goes to the server), kills the server with SIGKILL,
/// and checks that the job is reported lost, nothing runs it again
/// elsewhere, and no move was made.
fn node_killed(ctl: &Ctl, mut nodes: Vec<NodeProc>) {
    joined(ctl, 3);
    let id = start_job(ctl);
    wait_for("the guest to show", Duration::from_secs(10), || {
        ctl.cluster()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["guests"].as_array().is_some_and(|g| !g.is_empty()))
    });
    // The first guest goes to the server.
    assert_eq!(node_of(&ctl.cluster(), &id).as_deref(), Some("server"));
    let server = nodes.remove(0);
    drop(server);
    let mut reason = String::new();
    wait_for(
        "the guest to be reported lost",
        Duration::from_secs(20),
        || {
            let mut c = ctl.cli();
            c.args(["ps", "--json"]);
            let ps: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
            let g = ps
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["id"] == id.as_str() && g["state"] == "lost");
            if let Some(g) = g {
                reason = g.to_string();
            }
            g.is_some()
        },
    );
    assert!(
        reason.contains("server"),
        "the reason names the node: {reason}"
    );
    let v = ctl.cluster();
    // The server is down, or (etcd) no longer a member at all.
    let up: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["health"] == "up")
        .filter_map(|n| n["info"]["name"].as_str())
        .collect();
    assert_eq!(up, ["board1", "board2"], "{v:#}");
    // Nothing started it again elsewhere.
    for n in v["nodes"].as_array().unwrap() {
        if n["health"] == "up" {
            assert!(n["guests"].as_array().unwrap().is_empty(), "{v:#}");
        }
    }
    assert!(moves(&v).is_empty(), "{v:#}");
    // Asking for it says it is lost, in one line, and where.
    let mut c = ctl.cli();
    c.args(["wait", &id]);
    let (out, _) = run(c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("is lost") && err.contains("server"), "{err}");
}

#[test]
fn bad_input_to_the_controller_gets_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(dir.path(), "127.0.0.1:0", &[]);
    let join = ctl.api.clone();
    let _nodes = testbed(&["--join", &join]);
    joined(&ctl, 3);
    let id = start_job(&ctl);
    let one_line = |c: Command, needle: &str| {
        let (out, _) = run(c);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    };
    let mut c = ctl.cli();
    c.args(["migrate", &id, "--to", "nosuchnode"]);
    one_line(c, "no node nosuchnode");
    let mut c = ctl.cli();
    c.args(["wait", "nosuchguest"]);
    one_line(c, "no guest nosuchguest");
    let mut c = tern();
    c.args(["controller", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--etcd", "http://127.0.0.1:1"]);
    one_line(c, "etcd");
    // A flag clap refuses: its usage error, exit 2.
    let mut c = tern();
    c.args(["controller", "--data-dir", "x", "--policy", "fastest"]);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out)
        .lines()
        .next()
        .unwrap_or("")
        .contains("unknown policy"));
    let mut c = tern();
    c.args(["cluster", "--controller", "127.0.0.1:1"]);
    one_line(c, "cannot reach");
    // A malformed join is refused with a one-line reason.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&ctl.api).unwrap();
    let body = b"{\"api\": 7}";
    write!(
        s,
        "POST /v1/nodes HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.0 400"), "{reply}");
    assert!(reply.contains("bad request body"), "{reply}");
    let mut c = ctl.cli();
    c.args(["stop", &id]);
    ok(c);
}

#[test]
fn with_etcd_a_second_controller_takes_over_from_a_leader_killed() {
    let edir = tempfile::tempdir().unwrap();
    let etcd = local_etcd(edir.path());
    let ep = etcd.endpoint();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = Ctl::start(d1.path(), "127.0.0.1:0", &["--etcd", &ep, "--name", "c1"]);
    wait_for("c1 to lead", Duration::from_secs(10), || {
        first.cluster()["leader"] == "c1"
    });
    let second = Ctl::start(d2.path(), "127.0.0.1:0", &["--etcd", &ep, "--name", "c2"]);
    let _nodes = testbed(&["--etcd", &ep]);
    joined(&first, 3);
    // The long job runs twice as long as elsewhere: the takeover itself
    // (c1's lease lapsing) takes about 3 s, and the return must still be
    // due after it, however fast the board runs on this machine's cores.
    let (long, short) = (reference_of(LONGER), reference_of(SHORT));
    let jobs = vec![(start(&first, LONGER), long), (start(&first, SHORT), short)];
    // A follower refuses to act, naming the leader.
    let mut c = second.cli();
    c.args(["run", "--detach"])
        .arg(guest("dirtier"))
        .arg("--")
        .args(JOB);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("c1"), "{}", stderr(&out));
    wait_for("a move", Duration::from_secs(30), || {
        first.saw("move_started")
    });
    first.kill();
    let t0 = Instant::now();
    wait_for("c2 to lead", Duration::from_secs(10), || {
        second.cluster()["leader"] == "c2"
    });
    let failover = t0.elapsed();
    assert!(failover < Duration::from_secs(5), "{failover:?}");
    for (id, want) in &jobs {
        let (code, log) = wait_logs(&second, id);
        assert_eq!(code, "0");
        assert_same_output("a job whose controller failed over", &log, want);
    }
    let v = second.cluster();
    let m = moves(&v);
    assert!(
        m.iter().any(|m| m["reason"] == "return"),
        "c2 finished the job: {v:#}"
    );
    let mut mids: Vec<&str> = m.iter().filter_map(|m| m["migration"].as_str()).collect();
    let n = mids.len();
    mids.sort();
    mids.dedup();
    assert_eq!(mids.len(), n, "no move twice: {m:?}");
    // Every guest ran to its end exactly once: one exited record each.
    let mut c = second.cli();
    c.args(["ps", "--json"]);
    let ps: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    for (id, _) in &jobs {
        let n = ps
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["id"] == id.as_str())
            .count();
        assert_eq!(n, 1, "{ps:#}");
    }
}

/// A plain HTTP GET's whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: tern\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The node of the cluster view where guest `id` runs or ended.
fn node_of(v: &serde_json::Value, id: &str) -> Option<String> {
    for n in v["nodes"].as_array()? {
        for g in n["guests"].as_array().into_iter().flatten() {
            if g["id"].as_str() == Some(id) && g["state"].as_str() != Some("moved") {
                return n["info"]["name"].as_str().map(str::to_string);
            }
        }
    }
    None
}

#[test]
fn the_energy_policy_places_on_a_board_within_the_floor_and_accounts_energy() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(
        dir.path(),
        "127.0.0.1:0",
        &["--policy", "energy", "--floor", "0.4"],
    );
    let join = ctl.api.clone();
    let mut nodes = Vec::new();
    for (name, class, cpus, power) in [
        ("server", "server", "1", "50,150"),
        ("board1", "board", "0.5", "2.7,6.4"),
    ] {
        nodes.push(NodeProc::start_with(
            name,
            &[
                "--class", class, "--cpus", cpus, "--speed", "1", "--power", power, "--join", &join,
            ],
        ));
    }
    joined(&ctl, 2);
    // The first job does far more work per joule on the board, at half
    // the server's rate: within the floor of 0.4. The second would get a
    // quarter there (sharing half a core), out of the floor: the server.
    // The first is twice as long, so that it outlasts the second however
    // the machine's cores are shared: were the board free while the
    // second still ran, the policy would rightly move it there.
    let (want_long, want_short) = (reference(), reference_of(SHORT));
    let on_board = start_job(&ctl);
    wait_for("the first job to run", Duration::from_secs(20), || {
        node_of(&ctl.cluster(), &on_board).is_some()
    });
    let on_server = start(&ctl, SHORT);
    wait_for("the second job to run", Duration::from_secs(20), || {
        node_of(&ctl.cluster(), &on_server).is_some()
    });
    let v = ctl.cluster();
    assert_eq!(node_of(&v, &on_board).as_deref(), Some("board1"), "{v:#}");
    assert_eq!(node_of(&v, &on_server).as_deref(), Some("server"), "{v:#}");
    for (id, want) in [(&on_board, &want_long), (&on_server, &want_short)] {
        let (code, log) = wait_logs(&ctl, id);
        assert_eq!(code, "0");
        assert_same_output("a job placed by the energy policy", &log, want);
    }
    // Balanced by its own measure from the start: nothing moved.
    let v = ctl.cluster();
    assert!(moves(&v).is_empty(), "{v:#}");
    // Energy per job, by each node's power model: for each unit of work
    // (the board's job did two), the board's job drew a fraction of the
    // server's (6.4 W at most against 150 W).
    let energy: std::collections::HashMap<String, f64> = v["energy_per_guest_j"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_f64().unwrap()))
        .collect();
    let (a, b) = (energy[&on_board], energy[&on_server]);
    assert!(a > 0.0 && b > 0.0, "{v:#}");
    assert!(a / 2.0 * 4.0 < b, "board job {a} J, server job {b} J");
    let metrics = http_get(&ctl.api, "/metrics");
    assert!(
        metrics.contains(&format!("tern_guest_energy_joules{{guest=\"{on_board}\"}}")),
        "{metrics}"
    );
    drop(nodes);
}
