//! Cross-ISA: Tern built for aarch64 (`scripts/build-aarch64.sh`) and run
//! under qemu-aarch64, which stands in for an ARM board. Every guest moves
//! mid-run from an x86_64 node to the board node (pre-copy) and back (only
//! the difference), and images cross between the two ISAs; each time the
//! whole output must equal an uninterrupted run on one host.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::migrate::{node_info, ok, wait_and_log, NodeProc};
use crate::support::*;

/// The aarch64 `tern`: `TERN_AARCH64_BIN`, or where the build script puts it.
fn board_binary() -> PathBuf {
    let bin = std::env::var_os("TERN_AARCH64_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/aarch64/aarch64-unknown-linux-gnu/release/tern"));
    assert!(
        bin.is_file(),
        "no aarch64 build of tern at {}: run scripts/build-aarch64.sh first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// `tern` for aarch64 under qemu-aarch64, with the test cache. `-L /`:
/// loader and libc both from Debian's multiarch libc6:arm64.
fn board_tern() -> Command {
    let mut c = Command::new("qemu-aarch64");
    c.args(["-L", "/"]).arg(board_binary());
    c.env("TERN_CACHE_DIR", cache_dir());
    c.stdin(std::process::Stdio::null());
    c
}

fn board_node(name: &str) -> NodeProc {
    NodeProc::launch(
        board_tern(),
        name,
        &[],
        None,
        "127.0.0.1:0",
        &["--class", "board"],
    )
}

/// Every guest, sized to run about 5-7 s on x86_64 here (much longer on
/// the emulated board), so it is still running at both migrations.
fn long_workloads() -> Vec<Workload> {
    vec![
        Workload::new("ep", &["26"]),
        Workload::new("recurse", &["10000", "120"]),
        Workload::new("clock", &["120", "50"]),
        Workload::new(
            "dirtier",
            &[
                "--mem",
                "32",
                "--window",
                "32",
                "--rate",
                "5",
                "--iterations",
                "250",
            ],
        ),
        Workload::new("filerw", &["--records", "1000000"]).with_data_dir(),
    ]
}

/// x86_64 -> aarch64 (pre-copy, mid-run) -> x86_64 (pre-copy, only the
/// difference); the output must be the uninterrupted run's.
fn there_and_back(w: &Workload) {
    let want = reference(w);
    let server = NodeProc::start_with("server", &[]);
    let board = board_node("board");
    assert_eq!(node_info(&server)["arch"], std::env::consts::ARCH);
    let b = node_info(&board);
    assert_eq!(b["arch"], "aarch64", "{b}");
    assert_eq!(b["protocol"], node_info(&server)["protocol"], "{b}");

    let dir = tempfile::tempdir().unwrap();
    let id = ok(w.run_with(server.cli(), dir.path(), &["--detach"]));
    std::thread::sleep(Duration::from_millis(700));
    let there = crate::migrate::migrate(&server, &id, &board, "precopy");
    assert_eq!(there["destination_node"], "board", "{there}");
    std::thread::sleep(Duration::from_millis(1500));
    if w.name == "dirtier" {
        // Asking for userfaultfd where it does not exist is refused in one
        // line, at once, and the guest runs on.
        let mut c = board.cli();
        c.args(["migrate", &id, "--to", &server.api, "--dirty", "uffd"]);
        let (out, _) = run(c);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("userfaultfd is not available"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let back = crate::migrate::migrate(&board, &id, &server, "precopy");
    // The board has no userfaultfd under emulation: hashes instead.
    assert_eq!(back["dirty_tracking"], "xxh3-hash", "{back}");
    assert!(
        back["dirty_tracking_fallback"].is_string(),
        "the fallback must say why: {back}"
    );
    // The server kept the guest's image when it left.
    assert!(back["base_pages"].as_u64().unwrap() > 0, "{back}");
    if w.name == "dirtier" {
        // About 2 s away at 5 MB/s cannot have rewritten most of 32 MiB.
        assert!(back["bytes_saved"].as_u64().unwrap() > 8 << 20, "{back}");
    }
    let (code, log) = wait_and_log(&server, &id);
    assert_eq!(Some(code.parse::<i32>().unwrap()), want.code);
    assert_same_output(
        &format!("{} x86_64 -> aarch64 -> x86_64", w.name),
        &log,
        &want.stdout,
    );
    if w.data_dir {
        assert_eq!(files_in(dir.path()), want.files, "{}: files", w.name);
    }
}

#[test]
fn ep_moves_to_the_board_and_back() {
    there_and_back(&long_workloads()[0]);
}

#[test]
fn recurse_moves_to_the_board_and_back() {
    there_and_back(&long_workloads()[1]);
}

#[test]
fn clock_moves_to_the_board_and_back() {
    there_and_back(&long_workloads()[2]);
}

#[test]
fn dirtier_moves_to_the_board_and_back() {
    there_and_back(&long_workloads()[3]);
}

#[test]
fn filerw_moves_to_the_board_and_back() {
    there_and_back(&long_workloads()[4]);
}

/// Guests that run about 0.4-1 s on x86_64 here, for images.
fn short_workloads() -> Vec<Workload> {
    vec![
        Workload::new("ep", &["22"]),
        Workload::new("recurse", &["10000", "10"]),
        Workload::new("clock", &["20", "50"]),
        Workload::new(
            "dirtier",
            &["--mem", "8", "--rate", "40", "--iterations", "400"],
        ),
        Workload::new("filerw", &["--records", "60000"]).with_data_dir(),
    ]
}

/// Checkpoints `w` after `after` on one ISA (`first`), restores the image
/// on the other (`second`); run + restore must equal the reference.
fn image_crosses(w: &Workload, want: &Reference, first: Command, second: Command, after: &str) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("g.tern");
    let data = tempfile::tempdir().unwrap();
    let image_arg = image.to_str().unwrap();
    let (part1, _) = run(w.run_with(
        first,
        data.path(),
        &["--checkpoint-after", after, "--image", image_arg],
    ));
    assert!(part1.status.success(), "{}: {}", w.name, stderr(&part1));
    assert!(
        image.is_file(),
        "{} ended before its checkpoint at {after}: {}",
        w.name,
        stderr(&part1)
    );
    let mut c = second;
    c.arg("restore").arg(&image);
    let (part2, _) = run(c);
    assert_eq!(
        part2.status.code(),
        want.code,
        "{}: {}",
        w.name,
        stderr(&part2)
    );
    let mut got = part1.stdout;
    got.extend_from_slice(&part2.stdout);
    assert_same_output(&format!("{} image, restored", w.name), &got, &want.stdout);
    if w.data_dir {
        assert_eq!(files_in(data.path()), want.files, "{}: files", w.name);
    }
}

#[test]
fn images_cross_between_isas_both_ways() {
    for w in short_workloads() {
        let want = reference(&w);
        // Warm the board's compile cache so the checkpoint lands mid-run.
        let warm = tempfile::tempdir().unwrap();
        let (out, _) = run(w.run_with(board_tern(), warm.path(), &[]));
        assert_eq!(out.stdout, want.stdout, "{} on aarch64", w.name);
        image_crosses(&w, &want, board_tern(), tern(), "250ms");
        image_crosses(&w, &want, tern(), board_tern(), "150ms");
    }
}

#[test]
fn hello_runs_the_same_on_both_isas() {
    // hello ends at once: nothing to migrate, but output and exit status
    // must agree, and a checkpoint request after its end writes no image.
    let w = Workload::new("hello", &["3", "a b"]);
    let want = reference(&w);
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = run(w.run_with(board_tern(), dir.path(), &[]));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, want.stdout);
    let image = dir.path().join("h.tern");
    let (out, _) = run(w.run_with(
        board_tern(),
        dir.path(),
        &[
            "--checkpoint-after",
            "10s",
            "--image",
            image.to_str().unwrap(),
        ],
    ));
    assert_eq!(out.status.code(), Some(3));
    assert!(!image.exists());
}
