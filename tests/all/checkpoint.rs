//! Checkpoint at many moments, restore in a fresh process, and compare the
//! concatenated output with an uninterrupted run.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// One trial: run with a checkpoint after `delay`, then restore the image
/// in a new process (and again, for `chain` more links). Returns the
/// concatenated stdout, the final exit code and how many checkpoints were
/// actually taken.
fn trial(w: &Workload, dir: &Path, delays: &[Duration]) -> (Vec<u8>, Option<i32>, usize) {
    let mut stdout = Vec::new();
    let mut taken = 0;
    let mut image = dir.join("img-0.tern");
    let mut c = tern();
    c.arg("run").arg(guest(w.name));
    if w.data_dir {
        c.arg("--dir").arg(format!("{}:/data", dir.display()));
    }
    c.arg("--checkpoint-after")
        .arg(format!("{}us", delays[0].as_micros()))
        .arg("--image")
        .arg(&image)
        .arg("--")
        .args(&w.args);
    let (mut out, _) = run(c);
    loop {
        stdout.extend_from_slice(&out.stdout);
        let err = stderr(&out);
        if !err.contains("checkpoint written to") {
            assert!(
                !image.exists(),
                "an image was written although no checkpoint was reported"
            );
            return (stdout, out.status.code(), taken);
        }
        assert_eq!(out.status.code(), Some(0), "checkpoint exit code: {err}");
        taken += 1;
        let mut c = tern();
        c.arg("restore").arg(&image);
        let next = dir.join(format!("img-{taken}.tern"));
        if let Some(d) = delays.get(taken) {
            c.arg("--checkpoint-after")
                .arg(format!("{}us", d.as_micros()))
                .arg("--image")
                .arg(&next);
        }
        let (o, _) = run(c);
        out = o;
        std::fs::remove_file(&image).ok();
        image = next;
    }
}

/// Checkpoints `w` at `n` moments spread over its run; every restored run
/// must produce the uninterrupted output. At least `min_taken` checkpoints
/// must really happen.
///
/// The moments are fractions of the reference run's wall-clock time, which
/// includes process start and, on a busy machine, may be longer than the
/// guest's run in a trial. When a checkpoint finds the guest already ended,
/// the guest's run is shorter than `delay`: the remaining moments are spread
/// below it and the same fraction is tried again (at most `n` such retries,
/// so code that never checkpoints still fails).
fn checkpoint_everywhere(w: Workload, n: u32, min_taken: usize) {
    let reference = reference(&w);
    let mut span = reference.time;
    let mut taken = 0;
    let (mut k, mut retries) = (1, 0);
    while k <= n {
        let delay = span * k / (n + 1);
        let dir = tempfile::tempdir().unwrap();
        let (out, code, t) = trial(&w, dir.path(), &[delay]);
        assert_same_output(
            &format!("{} checkpointed after {delay:?}", w.name),
            &out,
            &reference.stdout,
        );
        assert_eq!(code, reference.code, "{} exit code after {delay:?}", w.name);
        let files: Vec<_> = files_in(dir.path())
            .into_iter()
            .filter(|(n, _)| !n.ends_with(".tern"))
            .collect();
        assert_eq!(files, reference.files, "{} files after {delay:?}", w.name);
        if t == 0 && retries < n {
            retries += 1;
            span = delay;
            continue;
        }
        taken += t;
        k += 1;
    }
    assert!(
        taken >= min_taken,
        "{}: only {taken} of {n} checkpoints happened before the guest finished",
        w.name
    );
}

/// A chain of checkpoint / restore / checkpoint ... links.
fn chain(w: Workload, links: u32) {
    let reference = reference(&w);
    let step = reference.time / (links + 2);
    let delays: Vec<Duration> = (0..links).map(|_| step).collect();
    let dir = tempfile::tempdir().unwrap();
    let (out, code, taken) = trial(&w, dir.path(), &delays);
    assert_same_output(&format!("{} chain", w.name), &out, &reference.stdout);
    assert_eq!(code, reference.code);
    assert!(
        taken >= 2,
        "{}: chain took only {taken} checkpoints",
        w.name
    );
}

#[test]
fn hello_runs_and_passes_args_env_exit_code() {
    let mut c = tern();
    c.arg("run")
        .arg("--env")
        .arg("TERN_GREETING=hi there")
        .arg(guest("hello"))
        .args(["--", "7", "a b"]);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("hi there"), "{text}");
    assert!(text.contains("a b"), "{text}");
}

#[test]
fn hello_checkpoint_after_exit_writes_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.tern");
    let mut c = tern();
    c.arg("run")
        .arg(guest("hello"))
        .args(["--checkpoint-after", "10s", "--image"])
        .arg(&image);
    let (out, _) = run(c);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("no image was written"),
        "{}",
        stderr(&out)
    );
    assert!(!image.exists());
}

#[test]
fn ep_checkpoint_everywhere() {
    checkpoint_everywhere(Workload::new("ep", &["22"]), 20, 15);
}

#[test]
fn dirtier_checkpoint_everywhere() {
    // About 0.5 s prepared (0.15 s at 20000 iterations left too little
    // room between a checkpoint's delay and the end on a busy machine).
    checkpoint_everywhere(
        Workload::new("dirtier", &["--mem", "16", "--iterations", "80000"]),
        20,
        15,
    );
}

#[test]
fn dirtier_paced_checkpoint_everywhere() {
    // Paced: the guest spends much of its time blocked in poll_oneoff.
    checkpoint_everywhere(
        Workload::new(
            "dirtier",
            &["--mem", "8", "--rate", "40", "--iterations", "400"],
        ),
        20,
        15,
    );
}

#[test]
fn filerw_checkpoint_everywhere() {
    checkpoint_everywhere(
        Workload::new("filerw", &["--records", "60000"]).with_data_dir(),
        20,
        15,
    );
}

#[test]
fn clock_checkpoint_everywhere() {
    checkpoint_everywhere(Workload::new("clock", &["100", "5"]), 20, 15);
}

#[test]
fn recurse_checkpoint_everywhere() {
    checkpoint_everywhere(Workload::new("recurse", &[]), 20, 15);
}

/// The shape of an interpreter: 256 call sites that can unwind in one hot
/// dispatch loop, some indirect (issue 10).
#[test]
fn dispatch_checkpoint_everywhere() {
    checkpoint_everywhere(Workload::new("dispatch", &["6"]), 20, 15);
}

#[test]
fn chains_of_checkpoints() {
    chain(Workload::new("ep", &["22"]), 5);
    chain(
        Workload::new("dirtier", &["--mem", "16", "--iterations", "20000"]),
        5,
    );
    chain(
        Workload::new("filerw", &["--records", "60000"]).with_data_dir(),
        4,
    );
    chain(Workload::new("dispatch", &["6"]), 5);
}

/// The prepared module behaves exactly like the original one.
#[test]
fn prepared_and_original_outputs_are_identical() {
    let workloads = [
        Workload::new("hello", &["5", "x"]),
        Workload::new("ep", &["20"]),
        Workload::new("dirtier", &["--mem", "8", "--iterations", "4000"]),
        Workload::new("filerw", &["--records", "5000"]).with_data_dir(),
        Workload::new("clock", &["20", "2"]),
        Workload::new("recurse", &[]),
        Workload::new("dispatch", &["2"]),
    ];
    for w in workloads {
        let prepared_dir = tempfile::tempdir().unwrap();
        let (prepared, _) = run(w.command(prepared_dir.path()));
        let original_dir = tempfile::tempdir().unwrap();
        let mut c = tern();
        c.arg("run").arg("--original").arg(guest(w.name));
        if w.data_dir {
            c.arg("--dir")
                .arg(format!("{}:/data", original_dir.path().display()));
        }
        c.arg("--").args(&w.args);
        let (original, _) = run(c);
        assert_same_output(
            &format!("{} prepared vs original", w.name),
            &prepared.stdout,
            &original.stdout,
        );
        assert_eq!(prepared.status.code(), original.status.code(), "{}", w.name);
        assert_eq!(
            files_in(prepared_dir.path()),
            files_in(original_dir.path()),
            "{} files",
            w.name
        );
        assert!(!prepared.stdout.is_empty(), "{} printed nothing", w.name);
    }
}
