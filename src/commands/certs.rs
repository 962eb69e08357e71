//! `tern certs`: a cluster CA and the certificates and tokens it vouches for.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tern_tls::issue::{self, Validity};
use tern_tls::Role;

/// Arguments of `tern certs`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Make a new cluster CA in DIR (`ca.crt`, and `ca.key`, which signs
    /// every certificate: keep it off the nodes).
    Init {
        /// The cluster directory (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The cluster's name, in its CA certificate.
        #[arg(long, default_value = "tern-cluster")]
        name: String,
        /// How long the CA is valid.
        #[arg(long, value_name = "N", default_value_t = 3650)]
        days: u32,
    },
    /// Issue node NAME's certificate (`DIR/node-NAME.crt` and `.key`); the
    /// node then runs with `tern node --tls-dir DIR --name NAME`.
    Node {
        /// The node's name: the identity other nodes check.
        name: String,
        #[command(flatten)]
        opts: IssueOpts,
        /// A host name or IP address the node is reached by, for other
        /// tools that check them (repeatable; Tern checks the name).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Issue controller NAME's certificate (`DIR/controller-NAME.crt` and
    /// `.key`); the controller then runs with `tern controller --tls-dir DIR
    /// --name NAME`, serves its API over mutual TLS and calls the nodes
    /// with it (a node lets a controller move its guests).
    Controller {
        /// The controller's name.
        name: String,
        #[command(flatten)]
        opts: IssueOpts,
        /// A host name or IP address the controller is reached by, for
        /// other tools that check them (repeatable).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Issue client NAME's certificate (`DIR/client-NAME.crt` and `.key`),
    /// for the CLI (`--tls-dir DIR`).
    Client {
        /// The client's name, shown in the nodes' logs.
        name: String,
        #[command(flatten)]
        opts: IssueOpts,
        /// `admin` may do everything; `read` may only list and read.
        #[arg(long, default_value = "admin", value_parser = ["admin", "read"])]
        role: String,
    },
    /// Print a fresh `ROLE TOKEN` line for a node's --token-file (the last
    /// word is the token a script gives with its own --token-file).
    Token {
        /// `admin` or `read`.
        #[arg(long, default_value = "read", value_parser = ["admin", "read"])]
        role: String,
    },
}

#[derive(Args, Debug)]
struct IssueOpts {
    /// The cluster directory (with `ca.crt` and `ca.key`).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// How long the certificate is valid.
    #[arg(long, value_name = "N", default_value_t = 365)]
    days: u32,
    /// Expire at this Unix time instead (may be in the past, for drills).
    #[arg(long, value_name = "UNIX_SECONDS", conflicts_with = "days")]
    expires_at: Option<i64>,
}

impl IssueOpts {
    fn validity(&self) -> anyhow::Result<Validity> {
        Ok(match self.expires_at {
            Some(t) => Validity::until_unix(t)?,
            None => Validity::days(self.days),
        })
    }
}

/// Runs `tern certs`.
pub fn main(a: CertsArgs) -> anyhow::Result<ExitCode> {
    let written = match a.what {
        What::Init { dir, name, days } => issue::init_ca(&dir, &name, days)?,
        What::Node { name, opts, hosts } => {
            issue::issue(&opts.dir, &name, Role::Node, &hosts, opts.validity()?)?
        }
        What::Controller { name, opts, hosts } => {
            issue::issue(&opts.dir, &name, Role::Controller, &hosts, opts.validity()?)?
        }
        What::Client { name, opts, role } => {
            let role: Role = role.parse()?;
            issue::issue(&opts.dir, &name, role, &[], opts.validity()?)?
        }
        What::Token { role } => {
            println!("{role} {}", tern_tls::token::generate()?);
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("{}", written.display());
    Ok(ExitCode::SUCCESS)
}
