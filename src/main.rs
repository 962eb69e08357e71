//! `tern`: run WebAssembly programs as portable unikernels, checkpoint them to
//! images and restore them anywhere.

mod client;
mod commands;
mod common;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tern runs unmodified wasm32-wasi (preview1) programs as migratable
/// unikernels: any running guest can be stopped into an image file and
/// resumed later, in another process or on another machine, with output
/// exactly as if it had never been interrupted.
#[derive(Parser)]
#[command(name = "tern", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a WebAssembly program (prepared transparently, cached), optionally
    /// checkpointing it after a while.
    Run(commands::run::RunArgs),
    /// Resume a guest from an image file.
    Restore(commands::restore::RestoreArgs),
    /// Show what an image file holds.
    Inspect(commands::inspect::InspectArgs),
    /// Write the migratable (prepared) form of a module ahead of time.
    Prepare(commands::prepare::PrepareArgs),
    /// Run the node daemon: guests, HTTP/JSON API, metrics, migrations.
    Node(commands::node::NodeArgs),
    /// List the guests of a node.
    Ps(commands::ps::PsArgs),
    /// Print a guest's output since it started (-f to follow).
    Logs(commands::logs::LogsArgs),
    /// Wait for a guest to end; print its exit status and exit with it.
    Wait(commands::wait::WaitArgs),
    /// Stop a guest on a node.
    Stop(commands::stop::StopArgs),
    /// Write an image of a guest running on a node.
    Checkpoint(commands::checkpoint::CheckpointArgs),
    /// Move a running guest to another node, live.
    Migrate(commands::migrate::MigrateArgs),
    /// Make a cluster CA, node and client certificates, and API tokens.
    Certs(commands::certs::CertsArgs),
    /// Run the controller: places guests and moves them by itself, by
    /// load (offload to boards and back) or by energy.
    Controller(commands::controller::ControllerArgs),
    /// Show the cluster as a controller sees it, and its recent moves.
    Cluster(commands::cluster::ClusterArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Run(args) => commands::run::main(args),
        Command::Restore(args) => commands::restore::main(args),
        Command::Inspect(args) => commands::inspect::main(args),
        Command::Prepare(args) => commands::prepare::main(args),
        Command::Node(args) => commands::node::main(args),
        Command::Ps(args) => commands::ps::main(args),
        Command::Logs(args) => commands::logs::main(args),
        Command::Wait(args) => commands::wait::main(args),
        Command::Stop(args) => commands::stop::main(args),
        Command::Checkpoint(args) => commands::checkpoint::main(args),
        Command::Migrate(args) => commands::migrate::main(args),
        Command::Certs(args) => commands::certs::main(args),
        Command::Controller(args) => commands::controller::main(args),
        Command::Cluster(args) => commands::cluster::main(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            common::report(&e);
            ExitCode::from(common::EXIT_TERN_ERROR)
        }
    }
}
