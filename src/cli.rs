//! The command line of contract §1: `serve`, `check`, `hash-key`, `hash-password`,
//! `--version`.
//!
//! Parsed once in `main`; Pingora's own `--upgrade` and `--daemon` pass through on `serve`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An OpenAI-compatible LLM gateway on Pingora"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Config file; defaults to ./switchyard.yaml, or the embedded default if absent.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take the listeners over from a running instance (Pingora graceful upgrade).
        #[arg(long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(long)]
        daemon: bool,
    },
    /// Validate a config file; print every error as FILE:LINE:COL: message.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Read an API key on stdin and print its `sha256:` form for the config.
    HashKey,
    /// Read a password on stdin and print its argon2id PHC string for `auth.users`.
    HashPassword,
}

/// The default config path of `serve` when `-c` is not given.
pub const DEFAULT_CONFIG: &str = "switchyard.yaml";
