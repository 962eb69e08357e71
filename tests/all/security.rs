//! Security end to end: mutual TLS between real nodes and the CLI, each
//! refusal (plaintext, another cluster's CA, an expired certificate, a
//! read-only caller, a bad token), and a migration over TLS whose output
//! must equal an uninterrupted run.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::controller::Ctl;
use crate::migrate::{detach, migrate, ok, reference, wait_and_log, NodeProc};
use crate::support::*;

/// A guest dirtying 32 MiB at 20 MB/s for about 4 s; its output does not
/// depend on timing.
const WORK: &[&str] = &[
    "--mem",
    "32",
    "--window",
    "32",
    "--rate",
    "20",
    "--iterations",
    "600",
];

fn certs(args: &[&str]) -> String {
    let mut c = tern();
    c.arg("certs").args(args);
    ok(c)
}

/// A cluster directory: CA, nodes a and b, clients ops (admin) and viewer
/// (read-only).
fn cluster(dir: &Path) {
    let d = dir.to_str().unwrap();
    certs(&["init", "--dir", d]);
    for n in ["a", "b"] {
        certs(&["node", n, "--dir", d]);
    }
    certs(&["client", "ops", "--dir", d]);
    certs(&["client", "viewer", "--role", "read", "--dir", d]);
}

fn tls_node(name: &str, dir: &Path, extra: &[&str]) -> NodeProc {
    let d = dir.to_str().unwrap();
    let mut args = vec!["--tls-dir", d];
    args.extend_from_slice(extra);
    NodeProc::start_with(name, &args)
        .with_cli_env("TERN_TLS_DIR", d)
        .with_cli_env("TERN_TLS_CLIENT", "ops")
}

/// Runs `c`, which must fail with one line naming the problem.
fn refused(c: std::process::Command, want: &str) -> Output {
    let (out, _) = run(c);
    let err = stderr(&out);
    assert!(!out.status.success(), "should have been refused: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.to_lowercase().contains(&want.to_lowercase()),
        "{want:?} in {err:?}"
    );
    out
}

fn ps_count(n: &NodeProc) -> usize {
    let mut c = n.cli();
    c.args(["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    v.as_array().unwrap().len()
}

fn logged(n: &NodeProc, event: &str) -> bool {
    n.log.lock().unwrap().iter().any(|l| l.contains(event))
}

#[test]
fn migration_over_mutual_tls_keeps_the_whole_output() {
    let want = reference(WORK);
    let d = tempfile::tempdir().unwrap();
    cluster(d.path());
    let a = tls_node("a", d.path(), &[]);
    let b = tls_node("b", d.path(), &[]);
    assert!(a.api.starts_with("127.0.0.1:"));
    let id = detach(&a, WORK);
    std::thread::sleep(Duration::from_millis(500));
    let r = migrate(&a, &id, &b, "precopy");
    assert!(r["bytes_sent"].as_u64().unwrap() > 1 << 20, "{r}");
    let (code, log) = wait_and_log(&b, &id);
    assert_eq!(code, "0");
    assert_same_output("dirtier over TLS", &log, &want);
}

#[test]
fn peers_outside_the_cluster_are_refused_and_nothing_changes() {
    let d = tempfile::tempdir().unwrap();
    cluster(d.path());
    let other = tempfile::tempdir().unwrap();
    cluster(other.path());
    let tokens = d.path().join("tokens");
    let admin_token = certs(&["token", "--role", "admin"]);
    std::fs::write(&tokens, format!("{admin_token}\n")).unwrap();
    let a = tls_node("a", d.path(), &["--token-file", tokens.to_str().unwrap()]);
    let id = detach(&a, &["--mem", "8", "--rate", "1", "--iterations", "100000"]);
    let before = ps_count(&a);

    // Plaintext.
    let mut c = tern();
    c.env("TERN_NODE", &a.api).arg("ps");
    refused(c, "speaks TLS only");
    // A client certificate from another cluster: this CLI does not trust
    // the node either.
    let mut c = tern();
    c.env("TERN_NODE", &a.api)
        .env("TERN_TLS_DIR", other.path())
        .env("TERN_TLS_CLIENT", "ops")
        .arg("ps");
    refused(c, "not signed by this cluster's CA");
    // An expired client certificate.
    let past = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 86_400)
        .to_string();
    certs(&[
        "client",
        "old",
        "--dir",
        d.path().to_str().unwrap(),
        "--expires-at",
        &past,
    ]);
    let mut c = a.cli();
    c.env("TERN_TLS_CLIENT", "old").arg("ps");
    refused(c, "expired");
    // A read-only client reads but may not stop.
    let mut c = a.cli();
    c.env("TERN_TLS_CLIENT", "viewer").args(["ps"]);
    ok(c);
    let mut c = a.cli();
    c.env("TERN_TLS_CLIENT", "viewer").args(["stop", &id]);
    refused(c, "read-only");
    // A script with the CA and a token, but no certificate.
    let ca_only = tempfile::tempdir().unwrap();
    std::fs::copy(d.path().join("ca.crt"), ca_only.path().join("ca.crt")).unwrap();
    let token_file = ca_only.path().join("token");
    std::fs::write(&token_file, &admin_token).unwrap();
    let mut c = tern();
    c.env("TERN_NODE", &a.api)
        .env("TERN_TLS_DIR", ca_only.path())
        .env("TERN_TOKEN_FILE", &token_file)
        .args(["ps", "--json"]);
    ok(c);
    let bad = ca_only.path().join("bad");
    std::fs::write(&bad, "read 00000000000000000000000000000000").unwrap();
    let mut c = tern();
    c.env("TERN_NODE", &a.api)
        .env("TERN_TLS_DIR", ca_only.path())
        .env("TERN_TOKEN_FILE", &bad)
        .args(["ps"]);
    refused(c, "unknown token");

    // A node of another cluster cannot take the guest, nor can a plaintext
    // one; the guest runs on.
    let stranger = tls_node("b", other.path(), &[]);
    let mut c = a.cli();
    c.args(["migrate", &id, "--to", &stranger.api]);
    refused(c, "not signed by this cluster's CA");
    let plain = NodeProc::start_with("plain", &[]);
    let mut c = a.cli();
    c.args(["migrate", &id, "--to", &plain.api]);
    refused(c, "cannot reach node");

    assert_eq!(ps_count(&a), before, "nothing changed");
    let mut c = a.cli();
    c.args(["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    assert_eq!(v[0]["state"], "running", "{v}");
    assert_eq!(ps_count(&stranger), 0);
    assert!(logged(&a, "api_refused"), "one line in the node's log");
}

#[test]
fn a_controller_over_mutual_tls_lets_nodes_join_and_only_admins_act() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path());
    let d = dir.path().to_str().unwrap();
    certs(&["controller", "ctl", "--dir", d]);
    // A client certificate is not a controller's.
    let data = tempfile::tempdir().unwrap();
    let mut c = tern();
    c.args(["controller", "--listen", "127.0.0.1:0", "--tls-dir", d])
        .args(["--name", "ops", "--data-dir"])
        .arg(data.path());
    refused(c, "controller-ops.crt");

    let ctl = Ctl::start(
        data.path(),
        "127.0.0.1:0",
        &["--tls-dir", d, "--name", "ctl"],
    );
    let url = format!("https://{}", ctl.api);
    let a = tls_node("a", dir.path(), &["--join", &url, "--speed", "1"]);
    let as_client = |name: &str| {
        let mut c = ctl.cli();
        c.env("TERN_TLS_DIR", d).env("TERN_TLS_CLIENT", name);
        c
    };
    // The node joined over TLS with its own certificate.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = as_client("viewer");
        c.args(["cluster", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
        if v["nodes"].as_array().is_some_and(|n| n.len() == 1) {
            assert_eq!(v["nodes"][0]["info"]["name"], "a");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node a never joined");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Plaintext, and a read-only client's change, are refused.
    let mut c = ctl.cli();
    c.args(["cluster"]);
    refused(c, "speaks TLS only");
    let mut c = as_client("viewer");
    c.args(["run", "--detach"]).arg(guest("hello"));
    refused(c, "read-only");
    assert_eq!(ps_count(&a), 0, "a refused request started a guest");
    // An admin places a guest; the controller calls the node with its own
    // certificate; the output is whole.
    let job = ["--mem", "8", "--iterations", "20000"];
    let mut c = as_client("ops");
    c.args(["run", "--detach"])
        .arg(guest("dirtier"))
        .arg("--")
        .args(job);
    let id = ok(c);
    let mut c = as_client("ops");
    c.args(["wait", &id]);
    assert_eq!(ok(c), "0");
    let mut c = as_client("viewer");
    c.args(["logs", &id]);
    let (out, _) = run(c);
    assert_eq!(out.stdout, reference(&job), "the guest's output");
}
