//! The WASI sandbox under attack: a real guest opens a path inside its
//! preopen over and over while this test swaps a directory on that path
//! with a symbolic link to a directory outside (`renameat2` with
//! `RENAME_EXCHANGE`, as fast as it can). Every open must read the file
//! inside or fail; reading the file outside is a sandbox escape.
//!
//! Path resolution that checks components first and opens a host path
//! afterwards loses this race often (about one open in four did on the
//! resolver this test was written against); resolution beneath a
//! directory descriptor (`openat2(RESOLVE_BENEATH)`) never does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{renameat_with, RenameFlags, CWD};

use crate::support::*;

/// Opens the guest makes; a few seconds at most even on a debug build.
const OPENS: u64 = 200_000;

/// Parses `openloop`'s one line: `openloop: opens=N inside=I ...`.
fn counts(stdout: &[u8]) -> Vec<(String, u64)> {
    let line = String::from_utf8_lossy(stdout);
    let line = line
        .trim()
        .strip_prefix("openloop: ")
        .unwrap_or_else(|| panic!("unexpected output: {line:?}"));
    line.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn path_swap_race_never_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(data.join("d/x")).unwrap();
    std::fs::create_dir_all(outside.join("x")).unwrap();
    std::fs::write(data.join("d/x/f"), b"inside\n").unwrap();
    std::fs::write(outside.join("x/f"), b"outside\n").unwrap();
    // Relative to data/, so it points at tmp/outside under either name.
    std::os::unix::fs::symlink("../outside", data.join("swap")).unwrap();

    // Compile and prepare the guest before the race starts.
    let w = Workload::new("openloop", &["/data/d/x/f", "1"]).with_data_dir();
    let (out, _) = run(w.command(&data));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let data = data.clone();
        std::thread::spawn(move || {
            let (d, swap) = (data.join("d"), data.join("swap"));
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &d, CWD, &swap, RenameFlags::EXCHANGE).expect("renameat2");
                swaps += 1;
            }
            swaps
        })
    };
    let opens = OPENS.to_string();
    let w = Workload::new("openloop", &["/data/d/x/f", &opens]).with_data_dir();
    let res = run_timeout(w.command(&data), Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let (out, time) = res.expect("openloop timed out");
    let got = counts(&out.stdout);
    eprintln!("{got:?} swaps={swaps} in {time:?}");
    let get = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap();
    assert_eq!(get("opens"), OPENS);
    assert_eq!(
        get("outside"),
        0,
        "the guest read a file outside its preopen"
    );
    assert_eq!(get("other"), 0);
    // The race really ran: some opens went through `d` the directory, some
    // met `d` the symbolic link (and were refused).
    assert!(get("inside") > 0 && get("failed") > 0, "{got:?}");
    assert!(swaps > 1000, "only {swaps} swaps");
    assert_eq!(get("inside") + get("failed"), OPENS);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
