//! Against a real etcd: each test starts its own with `LocalEtcd`.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use tern_etcd::{Cmp, CmpOp, Election, Error, Etcd, LeaseKeeper, LocalEtcd, Op, OpResponse};

/// A running etcd and the directory holding it; etcd dies first.
struct Fixture {
    etcd: LocalEtcd,
    _dir: tempfile::TempDir,
}

fn local() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    Fixture { etcd, _dir: dir }
}

/// Polls `done` every 50 ms until it holds or `limit` passes; returns the
/// time it took.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn put_get_prefix_delete_round_trip() {
    let f = local();
    let etcd = f.etcd.client();
    let status = etcd.status().unwrap();
    assert!(status.version.starts_with("3."), "{status:?}");
    assert_ne!(status.leader, 0);
    assert_eq!(status.leader, status.member_id);

    let binary: Vec<u8> = (0..=255).collect();
    let r1 = etcd.put("a/1", &binary, None).unwrap();
    let r2 = etcd.put("a/2", b"two", None).unwrap();
    let r3 = etcd.put("b/1", b"", None).unwrap();
    assert!(r1 < r2 && r2 < r3, "{r1} {r2} {r3}");

    let kv = etcd.get("a/1").unwrap().unwrap();
    assert_eq!(kv.key, "a/1");
    assert_eq!(kv.value, binary);
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r1, 1)
    );
    assert_eq!(kv.lease, 0);
    // The gateway leaves an empty value out.
    assert_eq!(etcd.get("b/1").unwrap().unwrap().value, b"");
    assert_eq!(etcd.get("a/3").unwrap(), None);

    let r4 = etcd.put("a/1", b"\0\xff", None).unwrap();
    let kv = etcd.get("a/1").unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r4, 2)
    );
    assert_eq!(kv.value, b"\0\xff");

    let keys = |prefix: &str| -> Vec<String> {
        let kvs = etcd.get_prefix(prefix).unwrap();
        kvs.into_iter().map(|kv| kv.key).collect()
    };
    assert_eq!(keys("a/"), ["a/1", "a/2"]);
    assert_eq!(keys(""), ["a/1", "a/2", "b/1"]);
    assert!(keys("c").is_empty());

    assert_eq!(etcd.delete("a/1").unwrap(), 1);
    assert_eq!(etcd.delete("a/1").unwrap(), 0);
    assert_eq!(etcd.delete_prefix("").unwrap(), 2);
    assert!(keys("").is_empty());
}

#[test]
fn txn_compare_and_swap_both_branches() {
    let f = local();
    let etcd = f.etcd.client();

    // Create if absent: the first wins, the second reads the winner.
    let create = |value: &[u8]| {
        etcd.txn(
            vec![Cmp::create_revision("owner", CmpOp::Equal, 0)],
            vec![Op::put("owner", value, None)],
            vec![Op::get("owner")],
        )
        .unwrap()
    };
    let won = create(b"a");
    assert!(won.succeeded);
    assert!(
        matches!(won.responses[..], [OpResponse::Put { revision }] if revision == won.revision)
    );
    let lost = create(b"b");
    assert!(!lost.succeeded);
    let kv = lost.kvs().next().unwrap();
    assert_eq!(kv.value, b"a");
    assert_eq!(kv.create_revision, won.revision);
    assert_eq!(lost.revision, won.revision, "a failed txn writes nothing");

    // Swap on the value: only with the value we read.
    let swap = |from: &[u8], to: &[u8]| {
        etcd.txn(
            vec![Cmp::value("owner", CmpOp::Equal, from)],
            vec![Op::put("owner", to, None), Op::get("owner")],
            vec![],
        )
        .unwrap()
    };
    assert!(!swap(b"b", b"c").succeeded);
    let swapped = swap(b"a", b"c");
    assert!(swapped.succeeded);
    assert_eq!(swapped.kvs().next().unwrap().value, b"c");
    assert_eq!(swapped.kvs().next().unwrap().version, 2);

    // Revisions and versions, every operator, several conditions at once.
    let kv = etcd.get("owner").unwrap().unwrap();
    let holds = |cmp: Vec<Cmp>| etcd.txn(cmp, vec![], vec![]).unwrap().succeeded;
    assert!(holds(vec![
        Cmp::mod_revision("owner", CmpOp::Equal, kv.mod_revision),
        Cmp::create_revision("owner", CmpOp::Less, kv.mod_revision),
        Cmp::version("owner", CmpOp::Greater, 1),
        Cmp::value("owner", CmpOp::NotEqual, b"a"),
        Cmp::value("owner", CmpOp::Greater, b"b"),
        Cmp::value("owner", CmpOp::Less, b"d"),
    ]));
    assert!(!holds(vec![
        Cmp::version("owner", CmpOp::Greater, 1),
        Cmp::mod_revision("owner", CmpOp::NotEqual, kv.mod_revision),
    ]));
    // A missing key has version 0 and no value to compare.
    assert!(holds(vec![Cmp::version("nobody", CmpOp::Equal, 0)]));
    assert!(!holds(vec![Cmp::value("nobody", CmpOp::Equal, b"")]));

    // Deletes and prefix reads inside a transaction.
    etcd.put("dir/x", b"1", None).unwrap();
    etcd.put("dir/y", b"2", None).unwrap();
    let reply = etcd
        .txn(
            vec![],
            vec![
                Op::get_prefix("dir/"),
                Op::delete_prefix("dir/"),
                Op::delete("owner"),
            ],
            vec![],
        )
        .unwrap();
    assert!(reply.succeeded, "no conditions hold trivially");
    assert_eq!(reply.kvs().count(), 2);
    assert_eq!(
        reply.responses[1..],
        [
            OpResponse::Delete { deleted: 2 },
            OpResponse::Delete { deleted: 1 }
        ]
    );
    assert!(etcd.get_prefix("").unwrap().is_empty());
}

#[test]
fn lease_expiry_removes_a_key() {
    let f = local();
    let etcd = f.etcd.client();
    // etcd raises a TTL below its minimum (1.5 election timeouts, rounded
    // up: 2 s by default).
    let short = etcd.grant(1).unwrap();
    assert_eq!(short.ttl, 2);
    etcd.revoke(short.id).unwrap();

    let lease = etcd.grant(2).unwrap();
    assert_eq!(lease.ttl, 2);
    etcd.put("ephemeral", b"x", Some(lease.id)).unwrap();
    assert_eq!(etcd.get("ephemeral").unwrap().unwrap().lease, lease.id);
    assert_eq!(etcd.keep_alive_once(lease.id).unwrap(), 2);
    let renewed = Instant::now();

    let gone = wait_until(Duration::from_secs(5), || {
        etcd.get("ephemeral").unwrap().is_none()
    })
    .expect("the key outlived its lease");
    eprintln!("key gone {:?} after the last renewal", renewed.elapsed());
    assert!(gone >= Duration::from_millis(1500), "{gone:?}");

    assert!(matches!(etcd.keep_alive_once(lease.id), Err(Error::LeaseLost(id)) if id == lease.id));
    let put = etcd.put("late", b"x", Some(lease.id));
    assert!(matches!(put, Err(Error::LeaseLost(_))), "{put:?}");
    let txn = etcd.txn(vec![], vec![Op::put("late", b"x", Some(lease.id))], vec![]);
    assert!(matches!(txn, Err(Error::LeaseLost(_))), "{txn:?}");
    etcd.revoke(lease.id)
        .expect("a lease already gone counts as revoked");

    // Revoking deletes at once.
    let lease = etcd.grant(30).unwrap();
    etcd.put("ephemeral", b"y", Some(lease.id)).unwrap();
    etcd.revoke(lease.id).unwrap();
    assert_eq!(etcd.get("ephemeral").unwrap(), None);
}

#[test]
fn lease_keeper_keeps_a_key_alive_and_abandon_lets_it_lapse() {
    let f = local();
    let etcd = f.etcd.client();
    let keeper = LeaseKeeper::start(etcd.clone(), 2).unwrap();
    assert_eq!(keeper.ttl(), 2);
    etcd.put("alive", b"1", Some(keeper.id())).unwrap();
    let dropped = LeaseKeeper::start(etcd.clone(), 2).unwrap();
    etcd.put("revoked", b"1", Some(dropped.id())).unwrap();

    std::thread::sleep(Duration::from_millis(3500));
    assert!(etcd.get("alive").unwrap().is_some(), "kept past its TTL");
    assert!(!keeper.lost());

    // Dropping revokes: the key goes at once.
    drop(dropped);
    assert_eq!(etcd.get("revoked").unwrap(), None);

    let abandoned = Instant::now();
    keeper.abandon();
    assert!(
        etcd.get("alive").unwrap().is_some(),
        "abandon does not revoke"
    );
    wait_until(Duration::from_secs(4), || {
        etcd.get("alive").unwrap().is_none()
    })
    .expect("an abandoned lease lapses");
    eprintln!("abandoned lease lapsed after {:?}", abandoned.elapsed());
}

#[test]
fn lease_keeper_notices_a_lost_lease() {
    let f = local();
    let etcd = f.etcd.client();
    let keeper = LeaseKeeper::start(etcd.clone(), 2).unwrap();
    assert!(!keeper.lost());
    etcd.revoke(keeper.id()).unwrap();
    wait_until(Duration::from_secs(2), || keeper.lost()).expect("a revoked lease is noticed");

    // And an etcd that is gone, within a TTL or so.
    let keeper = LeaseKeeper::start(etcd.clone(), 2).unwrap();
    let killed = Instant::now();
    drop(f);
    wait_until(Duration::from_secs(4), || keeper.lost()).expect("an unreachable etcd is noticed");
    let noticed = killed.elapsed();
    eprintln!("keeper gave up {noticed:?} after etcd died");
    assert!(noticed >= Duration::from_millis(1200), "{noticed:?}");
}

#[test]
fn election_only_one_leads() {
    let f = local();
    let etcd = f.etcd.client();
    let mut a = Election::new(etcd.clone(), "ctl/", "node-a", 2).unwrap();
    let mut b = Election::new(etcd.clone(), "ctl", "node-b", 2).unwrap();
    assert_eq!(a.key(), "ctl/leader");
    assert_eq!(a.leader().unwrap(), None);
    assert!(!a.is_leader());
    assert_eq!(a.fencing_token(), None);

    assert!(a.try_lead().unwrap());
    assert!(!b.try_lead().unwrap());
    assert!(a.is_leader() && !b.is_leader());
    assert_eq!(a.leader().unwrap().as_deref(), Some("node-a"));
    assert_eq!(b.leader().unwrap().as_deref(), Some("node-a"));
    let token = a.fencing_token().unwrap();
    assert_eq!(
        etcd.get("ctl/leader").unwrap().unwrap().create_revision,
        token
    );
    assert_eq!(b.fencing_token(), None);

    // Asking again keeps the same tenure.
    assert!(a.try_lead().unwrap());
    assert_eq!(a.fencing_token(), Some(token));

    assert!(a
        .txn_as_leader(vec![Op::put("ctl/state", b"a", None)])
        .unwrap());
    assert!(!b
        .txn_as_leader(vec![Op::put("ctl/state", b"b", None)])
        .unwrap());
    assert_eq!(etcd.get("ctl/state").unwrap().unwrap().value, b"a");

    // Resigning hands over at once, with a greater token.
    a.resign().unwrap();
    assert!(!a.is_leader());
    assert_eq!(a.leader().unwrap(), None);
    assert!(b.try_lead().unwrap());
    assert!(!a.try_lead().unwrap());
    assert!(b.fencing_token().unwrap() > token);

    // Dropping the leader revokes its lease: the key goes at once.
    drop(b);
    assert_eq!(a.leader().unwrap(), None);
    assert!(a.try_lead().unwrap());
}

#[test]
fn fencing_a_deposed_leader() {
    let f = local();
    let etcd = f.etcd.client();
    let mut a = Election::new(etcd.clone(), "ctl", "node-a", 2).unwrap();
    let mut b = Election::new(etcd.clone(), "ctl", "node-b", 2).unwrap();
    assert!(a.try_lead().unwrap());
    let a_token = a.fencing_token().unwrap();
    assert!(a
        .txn_as_leader(vec![Op::put("ctl/placement", b"by a", None)])
        .unwrap());

    // a freezes; b polls as a controller would.
    a.abandon();
    let abandoned = Instant::now();
    let took = wait_until(Duration::from_secs(5), || b.try_lead().unwrap())
        .expect("b takes over once a's lease lapses");
    eprintln!("failover: b leads {took:?} after a stopped renewing (ttl 2 s)");
    assert!(took <= Duration::from_secs(3), "{took:?}");
    assert_eq!(b.leader().unwrap().as_deref(), Some("node-b"));
    let b_token = b.fencing_token().unwrap();
    assert!(b_token > a_token);

    // a still believes it leads, but cannot write.
    assert!(a.is_leader());
    assert!(!a
        .txn_as_leader(vec![Op::put("ctl/placement", b"by a, late", None)])
        .unwrap());
    assert!(!a.is_leader());
    assert_eq!(a.fencing_token(), None);
    assert!(b
        .txn_as_leader(vec![Op::put("ctl/placement", b"by b", None)])
        .unwrap());
    assert_eq!(etcd.get("ctl/placement").unwrap().unwrap().value, b"by b");
    eprintln!("abandon to fenced write: {:?}", abandoned.elapsed());

    // a can run again, with a fresh lease, and loses.
    assert!(!a.try_lead().unwrap());
}

#[test]
fn unreachable_endpoint_is_one_line() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let etcd = Etcd::connect(std::slice::from_ref(&closed)).unwrap();
    let started = Instant::now();
    let err = etcd.get("k").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let Error::Unreachable { endpoints, why } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(endpoints, std::slice::from_ref(&closed));
    assert!(why.contains("refused"), "{why}");
    let line = err.to_string();
    eprintln!("{line}");
    assert!(
        line.starts_with(&format!("etcd unreachable at {closed}")),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");

    // Several dead endpoints: each is named with what happened there.
    let twice = Etcd::connect(&[closed.clone(), closed.clone()]).unwrap();
    let line = twice.status().unwrap_err().to_string();
    assert_eq!(line.matches(&closed).count(), 4, "{line}");
    assert!(line.contains("; ") && !line.contains('\n'), "{line}");

    // With a live endpoint after the dead one, calls go through.
    let f = local();
    let both = Etcd::connect(&[closed, f.etcd.endpoint()]).unwrap();
    both.put("k", b"v", None).unwrap();
    assert_eq!(both.get("k").unwrap().unwrap().value, b"v");

    // A server error is one line too: etcd refuses an empty key.
    let err = f.etcd.client().get("").unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn local_etcd_lifecycle_and_missing_binary() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let etcd = LocalEtcd::start(dir.path()).unwrap();
    eprintln!("etcd answered with a leader after {:?}", started.elapsed());
    let pid = etcd.pid();
    assert!(etcd.log_path().starts_with(dir.path()));
    assert!(etcd.member_dir().starts_with(dir.path()));
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(etcd);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed and reaped"
    );

    // Looked up on PATH like `etcd`, and not there.
    let err =
        LocalEtcd::start_with_binary(Path::new("etcd-not-installed-here"), dir.path()).unwrap_err();
    let line = err.to_string();
    assert!(matches!(err, Error::Setup(_)), "{err:?}");
    assert!(
        line.contains("etcd-server") && line.contains("scripts/setup.sh"),
        "{line}"
    );
    assert!(!line.contains('\n'));
}
