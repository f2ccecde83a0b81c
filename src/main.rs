//! The `switchyard` binary: parse the command line, set up logging, dispatch.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use switchyard::cli::{Cli, Command, DEFAULT_CONFIG};
use switchyard::config;
use switchyard::server::{self, ServeOptions};
use tracing_appender::non_blocking::WorkerGuard;

/// mimalloc instead of glibc malloc: the request path allocates many small, short-lived
/// buffers across worker threads, where glibc's arenas showed up as ~9 % of the gateway's
/// CPU in the overhead benchmark (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Log lines that may wait for the writer thread before a logging thread blocks.
const LOG_QUEUE_LINES: usize = 16 * 1024;
/// The writer thread's buffer; it is flushed whenever the queue runs empty.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            upgrade,
            daemon,
        } => serve(
            config.as_deref(),
            ServeOptions {
                upgrade,
                daemon,
                ..ServeOptions::default()
            },
        ),
        Command::Check { config } => check(&config),
        Command::HashKey => hash_key(),
        Command::HashPassword => hash_password(),
    }
}

/// JSON logs on stderr. For `serve` they go through a writer thread: a request never waits
/// on the log file (a synchronous write per access-log line cost the workers a syscall and
/// the stderr lock on every request), and lines are written in batches. The queue is
/// lossless: when it is full the logging thread waits instead of dropping a ledger line.
/// A daemonised server forks after this point and the writer thread would not survive the
/// fork, so `--daemon` logs synchronously.
fn init_tracing(background: bool) -> Option<WorkerGuard> {
    let _ = tracing_log::LogTracer::init();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter);
    if !background {
        let _ = builder.with_writer(std::io::stderr).try_init();
        return None;
    }
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("switchyard-log")
        .finish(std::io::BufWriter::with_capacity(
            LOG_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let _ = builder.with_writer(writer).try_init();
    Some(guard)
}

fn serve(path: Option<&Path>, mut opts: ServeOptions) -> ExitCode {
    // Dropped when `serve` returns, which flushes every queued log line before exit.
    let _log_guard = init_tracing(!opts.daemon);
    let path = path.map(Path::to_path_buf).or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| DEFAULT_CONFIG.into())
    });
    let loaded = match &path {
        Some(p) => std::fs::read(p)
            .map_err(|err| config::read_error(p, &err))
            .and_then(|bytes| config::load_bytes(p, &bytes).map(|c| (c, bytes))),
        None => Ok((config::embedded_default(), Vec::new())),
    };
    let (cfg, bytes) = match loaded {
        Ok(v) => v,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    match &path {
        Some(p) => tracing::info!(config = %p.display(), "config loaded"),
        None => tracing::warn!(
            "no config file found ({DEFAULT_CONFIG}); serving the embedded default config"
        ),
    }
    opts.config_path = path;
    opts.config_bytes = bytes;
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

/// The secret on stdin, without its line ending.
fn read_secret(what: &str) -> Option<String> {
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        eprintln!("could not read the {what} from stdin");
        return None;
    }
    let secret = input.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        eprintln!("no {what} on stdin");
        return None;
    }
    Some(secret.to_owned())
}

/// The hashed form is the command's output: the one place the binary writes to stdout.
#[allow(clippy::print_stdout)]
fn print_line(line: &str) {
    println!("{line}");
}

fn hash_key() -> ExitCode {
    let Some(key) = read_secret("key") else {
        return ExitCode::FAILURE;
    };
    print_line(&format!("sha256:{}", config::sha256_hex(&key)));
    ExitCode::SUCCESS
}

fn hash_password() -> ExitCode {
    let Some(password) = read_secret("password") else {
        return ExitCode::FAILURE;
    };
    match switchyard::auth::jwt::hash_password(&password) {
        Some(phc) => {
            print_line(&phc);
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("could not hash the password");
            ExitCode::FAILURE
        }
    }
}
