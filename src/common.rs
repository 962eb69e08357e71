//! What the subcommands share: error reporting, exit codes, running a guest
//! with an optional checkpoint.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use tern_vm::{Guest, Outcome, Runtime};

/// Exit status for every failure of Tern itself (bad input included).
pub const EXIT_TERN_ERROR: u8 = 2;
/// Exit status when the guest traps (as a process killed by SIGABRT would).
pub const EXIT_GUEST_TRAP: u8 = 134;

/// Prints an error as one line: `tern: outer: inner: root`.
pub fn report(e: &anyhow::Error) {
    let mut line = String::new();
    for (i, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        if i > 0 {
            // Skip causes whose text the outer message already carries.
            if line.contains(&text) {
                continue;
            }
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    eprintln!("tern: {}", line.replace('\n', " "));
}

/// A message from Tern itself (never mixed into the guest's stdout).
pub fn say(msg: impl std::fmt::Display) {
    eprintln!("tern: {msg}");
}

/// Parses `250ms`, `2s`, `1m30s`, ...
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

/// Parses a byte size: `4096`, `512KiB`, `256MiB`, `1GiB` (or `K`, `M`,
/// `G`, `KB`, `MB`, `GB`, all powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size `{s}` (e.g. 512MiB, 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("invalid size `{s}`: unknown unit `{unit}`")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Parses a guest memory limit: a size (see [`parse_size`]) from 64 KiB
/// (one wasm page) to 4 GiB (all a wasm32 guest can address).
pub fn parse_memory_limit(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !(1 << 16..=tern_vm::limits::WASM32_MAX_MEMORY).contains(&n) {
        return Err(format!(
            "memory limit `{s}` is out of range: give 64KiB to 4GiB"
        ));
    }
    Ok(n)
}

/// Resource limits of a guest run in this process (`run`, `restore`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Most linear memory the guest may have, e.g. `64M`, `1G` (64KiB to
    /// 4GiB). Past it the guest's memory.grow fails (its malloc returns
    /// NULL); a module whose initial memory is larger is refused.
    /// [default: 4GiB, or what a restored image carries; on a node the
    /// node's --max-memory]
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_limit)]
    pub max_memory: Option<u64>,
    /// Most descriptors the guest may hold open, stdio and --dir included;
    /// opening more fails with EMFILE. [default: 1024, or what a restored
    /// image carries]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(3..))]
    pub max_fds: Option<u32>,
}

impl LimitArgs {
    /// `base` with the limits given on the command line.
    pub fn apply(&self, base: tern_vm::limits::Limits) -> tern_vm::limits::Limits {
        let mut l = base;
        if self.max_memory.is_some() {
            l.max_memory = self.max_memory;
        }
        if let Some(n) = self.max_fds {
            l.max_fds = n;
        }
        l
    }
}

/// The runtime with Tern's compile cache.
pub fn runtime() -> anyhow::Result<Runtime> {
    Ok(Runtime::new(Some(tern_prepare::default_cache_dir()))?)
}

/// Checkpoint options shared by `run` and `restore`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckpointArgs {
    /// Pause the guest after this long (e.g. `250ms`, `2s`) at its next
    /// migration point and write its image to --image, then exit 0.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "image")]
    pub checkpoint_after: Option<Duration>,
    /// Where to write the image (with --checkpoint-after).
    #[arg(long, value_name = "FILE", requires = "checkpoint_after")]
    pub image: Option<PathBuf>,
    /// Print timings of the checkpoint as one JSON line on stderr.
    #[arg(long, hide = true)]
    pub report: bool,
}

/// Runs a guest to its end, or to the checkpoint, and returns Tern's exit code.
pub fn drive(
    mut guest: Guest,
    ckpt: &CheckpointArgs,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let mut requested_at = None;
    let timer = ckpt.checkpoint_after.map(|after| {
        let pause = guest.pause_handle();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            // Cancelled (guest exited) when the sender is dropped.
            match rx.recv_timeout(after) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let at = Instant::now();
                    pause.request();
                    Some(at)
                }
                _ => None,
            }
        });
        (tx, handle)
    });
    if ckpt.report {
        eprintln!(
            "{{\"event\":\"running\",\"since_start_ms\":{:.3}}}",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let outcome = guest.run();
    if let Some((tx, handle)) = timer {
        drop(tx);
        requested_at = handle.join().ok().flatten();
    }
    let outcome = match outcome {
        Err(tern_vm::VmError::Trap(msg)) => {
            match guest.limit_hit() {
                Some(hit) => say(format_args!(
                    "the guest trapped after reaching its {hit}: {msg}"
                )),
                None => say(format_args!("the guest trapped: {msg}")),
            }
            return Ok(ExitCode::from(EXIT_GUEST_TRAP));
        }
        other => other.context("running the guest")?,
    };
    match outcome {
        Outcome::Exited(code) => {
            if let (Some(hit), true) = (guest.limit_hit(), code != 0) {
                say(format_args!(
                    "the guest ended by its {hit}: exit status {code}"
                ));
            }
            if ckpt.checkpoint_after.is_some() {
                say("the guest exited before the checkpoint; no image was written");
            }
            Ok(exit_code(code))
        }
        Outcome::Paused => {
            let Some(path) = ckpt.image.as_deref() else {
                anyhow::bail!("the guest paused without a checkpoint request");
            };
            let paused_at = Instant::now();
            let stats = guest
                .save_image(path)
                .with_context(|| format!("writing image {}", path.display()))?;
            let done = Instant::now();
            say(format_args!(
                "checkpoint written to {} ({} bytes; {} of {} memory pages present)",
                path.display(),
                stats.image_bytes,
                stats.pages,
                stats.memory_bytes / 4096
            ));
            if ckpt.report {
                let req = requested_at.unwrap_or(paused_at);
                eprintln!(
                    "{{\"event\":\"checkpoint\",\"pause_ms\":{:.3},\"write_ms\":{:.3},\"total_ms\":{:.3},\"image_bytes\":{},\"memory_bytes\":{},\"pages\":{}}}",
                    (paused_at - req).as_secs_f64() * 1e3,
                    (done - paused_at).as_secs_f64() * 1e3,
                    (done - req).as_secs_f64() * 1e3,
                    stats.image_bytes,
                    stats.memory_bytes,
                    stats.pages
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The process exit code for a guest exit status.
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from((code & 0xff) as u8)
}

/// Reads a file, naming it in the error.
pub fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// True when Tern may print progress (stderr is a terminal).
pub fn chatty() -> bool {
    std::io::stderr().is_terminal()
}

/// Sends the daemons' `tracing` events to stderr, one JSON object a line
/// (`{"timestamp":..,"level":..,"event":"guest_start","guest":..}`).
/// `TERN_LOG` filters them with `tracing-subscriber`'s directives
/// (default `info`; `warn` keeps only problems).
pub fn init_daemon_log() -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("TERN_LOG") {
        Ok(s) => EnvFilter::try_new(&s).map_err(|e| anyhow::anyhow!("TERN_LOG={s:?}: {e}"))?,
        Err(_) => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start the log: {e}"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
