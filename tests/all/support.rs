//! Shared helpers: building guests, running `tern`, comparing outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds every guest once per test process; returns the directory.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = root().join("target").join("test-guests");
        let status = Command::new(root().join("guests").join("build.sh"))
            .arg(&out)
            .status()
            .expect("running guests/build.sh");
        assert!(status.success(), "guests/build.sh failed");
        out
    })
}

/// Path of a built guest.
pub fn guest(name: &str) -> PathBuf {
    guests().join(format!("{name}.wasm"))
}

/// The compile/prepare cache shared by the tests of this run.
pub fn cache_dir() -> PathBuf {
    root().join("target").join("test-cache")
}

/// A `tern` command with the test cache.
pub fn tern() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    c.env("TERN_CACHE_DIR", cache_dir());
    c.stdin(std::process::Stdio::null());
    c
}

/// Runs a command, returning its output and wall time.
pub fn run(mut c: Command) -> (Output, Duration) {
    let t = Instant::now();
    let out = c.output().expect("spawning tern");
    (out, t.elapsed())
}

/// Lossy text of stderr, for assertion messages.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A guest invocation: the wasm, its args and whether it wants `/data`.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub args: Vec<String>,
    pub data_dir: bool,
}

impl Workload {
    pub fn new(name: &'static str, args: &[&str]) -> Self {
        Workload {
            name,
            args: args.iter().map(|s| s.to_string()).collect(),
            data_dir: false,
        }
    }

    pub fn with_data_dir(mut self) -> Self {
        self.data_dir = true;
        self
    }

    /// `tern run` of this workload, with `/data` at `dir`.
    pub fn command(&self, dir: &Path) -> Command {
        self.run_with(tern(), dir, &[])
    }

    /// `run` of this workload through `c` (`tern`, or `tern` under an
    /// emulator), with `/data` at `dir` and `before` ahead of the module.
    pub fn run_with(&self, mut c: Command, dir: &Path, before: &[&str]) -> Command {
        c.arg("run").args(before);
        if self.data_dir {
            c.arg("--dir").arg(format!("{}:/data", dir.display()));
        }
        c.arg(guest(self.name)).arg("--").args(&self.args);
        c
    }
}

/// The result of an uninterrupted run.
pub struct Reference {
    pub stdout: Vec<u8>,
    pub code: Option<i32>,
    pub time: Duration,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Contents of the regular files in `dir`, sorted by name.
pub fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs the workload once without interruption.
pub fn reference(w: &Workload) -> Reference {
    let dir = tempfile::tempdir().unwrap();
    // The first run prepares and compiles (cached); time a second one.
    let _ = run(w.command(dir.path()));
    let dir = tempfile::tempdir().unwrap();
    let (out, time) = run(w.command(dir.path()));
    assert!(
        out.status.code().is_some(),
        "{} was killed: {}",
        w.name,
        stderr(&out)
    );
    Reference {
        stdout: out.stdout,
        code: out.status.code(),
        time,
        files: files_in(dir.path()),
    }
}

/// Asserts two outputs are byte-identical, showing where they differ.
pub fn assert_same_output(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let lo = at.saturating_sub(200);
        panic!(
            "{what}: output differs at byte {at} (got {} bytes, want {})\n--- got ---\n{}\n--- want ---\n{}",
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[lo..(at + 200).min(got.len())]),
            String::from_utf8_lossy(&want[lo..(at + 200).min(want.len())]),
        );
    }
}

/// Like [`run`], but kills the process (and returns `None`) if it has not
/// finished after `limit`.
pub fn run_timeout(mut c: Command, limit: Duration) -> Option<(Output, Duration)> {
    use std::io::Read;
    use std::process::Stdio;
    let t = Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tern");
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for tern") {
            break Some(s);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let elapsed = t.elapsed();
    status.map(|status| {
        (
            Output {
                status,
                stdout,
                stderr,
            },
            elapsed,
        )
    })
}
