//! The `switchyard` binary: parse the command line, set up logging, dispatch.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use switchyard::cli::{Cli, Command, DEFAULT_CONFIG};
use switchyard::config;
use switchyard::server::{self, ServeOptions};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            upgrade,
            daemon,
        } => serve(config.as_deref(), ServeOptions { upgrade, daemon }),
        Command::Check { config } => check(&config),
        Command::HashKey => hash_key(),
    }
}

fn init_tracing() {
    let _ = tracing_log::LogTracer::init();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn serve(path: Option<&Path>, opts: ServeOptions) -> ExitCode {
    init_tracing();
    let loaded = match path {
        Some(p) => config::load(p).map(|c| (c, p.display().to_string())),
        None if Path::new(DEFAULT_CONFIG).exists() => {
            config::load(Path::new(DEFAULT_CONFIG)).map(|c| (c, DEFAULT_CONFIG.to_string()))
        }
        None => Ok((config::embedded_default(), "<embedded>".to_string())),
    };
    let (cfg, source) = match loaded {
        Ok(v) => v,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    if source == "<embedded>" {
        tracing::warn!(
            "no config file found ({DEFAULT_CONFIG}); serving the embedded default config"
        );
    } else {
        tracing::info!(config = %source, "config loaded");
    }
    match server::run(cfg, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "could not start");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(_) => ExitCode::SUCCESS,
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn hash_key() -> ExitCode {
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        eprintln!("could not read the key from stdin");
        return ExitCode::FAILURE;
    }
    let key = input.trim_end_matches(['\r', '\n']);
    if key.is_empty() {
        eprintln!("no key on stdin");
        return ExitCode::FAILURE;
    }
    // The one place the binary writes to stdout: the hashed form is the command's output.
    #[allow(clippy::print_stdout)]
    {
        println!("sha256:{}", config::sha256_hex(key));
    }
    ExitCode::SUCCESS
}
