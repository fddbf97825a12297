//! The `app` binary: parses the command line, starts logging, binds the listener and runs the
//! library until SIGTERM/SIGINT; `app hash-password` hashes a password for a users file.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use app::config::{Cli, Command, Config, HealthcheckArgs, LogFormat, ServeArgs};
use app::listen::Listener;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Exit code for bad configuration and other start-up failures (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Some(Command::HashPassword) => hash_password(),
        Some(Command::Healthcheck(args)) => healthcheck(&args),
        None => serve(&cli.serve),
    }
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(error) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("app hash-password: reading stdin: {error}");
        return ExitCode::from(EX_USAGE);
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("app hash-password: empty password on stdin");
        return ExitCode::from(EX_USAGE);
    }
    match app::users::hash_password(password) {
        Ok(hash) => {
            let _ = writeln!(std::io::stdout(), "{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("app hash-password: {error}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let timeout = std::time::Duration::from_secs(args.timeout_secs.max(1));
    match app::healthcheck::check(&args.addr, timeout) {
        Ok(status) => {
            println!("healthy: {} answered {status}", args.addr);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("unhealthy: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only on a terminal: in a container log they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    init_tracing(args.log_format);
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(error) => return startup_error(&error),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return startup_error(&format!("starting the runtime: {error}")),
    };
    runtime.block_on(async {
        let signals = match Signals::install() {
            Ok(signals) => signals,
            Err(error) => return startup_error(&format!("installing signal handlers: {error}")),
        };
        let listener = match Listener::bind(&config.listen, config.socket_mode).await {
            Ok(listener) => listener,
            Err(error) => return startup_error(&error),
        };
        match app::run(listener, config, signals.recv()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error @ app::AppError::Store(_)) => startup_error(&error),
            Err(error) => {
                tracing::error!(%error, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Reports a start-up failure once, on stderr (where the proxy reports its own), and exits 64.
fn startup_error(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("app: {error}");
    ExitCode::from(EX_USAGE)
}

/// SIGTERM and SIGINT, installed before serving so an early signal is not lost. As PID 1 in a
/// container the process gets no default SIGTERM handling, so this is what makes `docker stop` work.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) {
        let name = tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    }
}
