//! The `proxy` binary: parses the command line, runs a helper subcommand or starts logging, binds
//! the listeners and serves with the library's [`proxy::build`]. The process's allocator is chosen
//! here too: mimalloc, which serves a request's many small blocks and few 3 to 8 KB ones (hyper's
//! buffers, the request's future) from its fast path, where the C library's takes its slow one.

use std::ffi::OsString;
use std::process::ExitCode;

use proxy::cli::{self, Cli, Command, Provenance};
use proxy::config::LogFormat;
use proxy::error::{ConfigError, StartError, EXIT_CONFIG};
use proxy::{cmd, cors, signal};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let (cli, provenance) = match cli::parse_traced(&argv, &signal::process_env()) {
        Ok(parsed) => parsed,
        Err(ConfigError::Cli(e)) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match &cli.command {
        Some(command) => run_command(command, &cli),
        None => match serve(&cli, &provenance, argv) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("proxy: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

/// Runs a helper subcommand to its end.
fn run_command(command: &Command, cli: &Cli) -> ExitCode {
    match command {
        Command::Cert(args) => {
            let data_dir = cmd::localca::process_data_dir(cli.proxy.data_dir.as_deref());
            let result = data_dir.and_then(|data_dir| {
                if args.trust || args.untrust {
                    let targets = cmd::trust::TrustTargets::from_env(
                        &signal::process_env(),
                        std::env::consts::OS,
                    );
                    cmd::trust::run(&data_dir, args.trust, &targets)
                } else {
                    cmd::devcert::run(args, &data_dir).map(|()| true)
                }
            });
            match result {
                Ok(true) => ExitCode::SUCCESS,
                // A place could not be changed; each step printed why.
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("proxy cert: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Healthcheck(args) => {
            // The check follows the proxy's own listen address, wherever it was set (flag,
            // environment or `.env`), unless --addr names another.
            let mut args = args.clone();
            args.listen.get_or_insert_with(|| cli.proxy.listen.clone());
            if args.admin_listen.is_none() {
                args.admin_listen = cli.proxy.admin_listen.clone();
            }
            cmd::healthcheck::run_and_report(&args)
        }
        Command::AdminGet(args) => {
            let mut args = args.clone();
            if args.admin_listen.is_none() {
                args.admin_listen = cli.proxy.admin_listen.clone();
            }
            cmd::healthcheck::admin_get_and_print(&args)
        }
        Command::Cors {
            command: cors::CorsCommand::Explain(args),
        } => {
            // The effective policy: the same flags, environment and `.env` as the proxy's.
            match cors::Policy::from_args(&cli.cors) {
                Ok((policy, warnings)) => {
                    for warning in warnings {
                        eprintln!("warning: {warning}");
                    }
                    print!("{}", cors::explain::run(args, &policy));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proxy: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

/// Assembles the proxy, binds its listeners and serves until SIGTERM/SIGINT.
fn serve(cli: &Cli, provenance: &Provenance, argv: Vec<OsString>) -> Result<(), StartError> {
    let assembled = proxy::build(cli)?;
    // Held until `serve` returns: dropping it flushes every queued log line (the shutdown
    // summary included) before the process exits.
    let _log_guard = init_tracing(assembled.proxy.fixed().log_format);
    provenance.log();
    proxy::fdlimit::raise_and_check(&assembled.proxy.fixed().limits);
    let runtime = runtime().map_err(StartError::Runtime)?;
    runtime.block_on(async move {
        // Signal handlers first: from here on no signal gets its default action (SIGHUP's would
        // kill the process; as PID 1, SIGTERM's would be ignored).
        let shutdown = signal::shutdown().map_err(StartError::Runtime)?;
        let hangups = signal::hangups().map_err(StartError::Runtime)?;
        let fixed = assembled.proxy.fixed();
        let listener = bind("PROXY_LISTEN", fixed.listen).await?;
        let redirect = match fixed.redirect_http {
            Some(addr) => Some(bind("PROXY_REDIRECT_HTTP", addr).await?),
            None => None,
        };
        let assembled = match fixed.admin_listen {
            Some(addr) => assembled.with_admin(bind("PROXY_ADMIN_LISTEN", addr).await?),
            None => assembled,
        };
        signal::reload_on_sighup(hangups, assembled.proxy.clone(), argv);
        assembled
            .serve(listener, redirect, shutdown)
            .await
            .map_err(StartError::Runtime)
    })
}

/// One worker per CPU this process may use (`available_parallelism` respects taskset/cgroups).
/// With one CPU, the current-thread scheduler does the same work without the multi-thread one's
/// cross-thread wake-ups, atomics and idle worker parking.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

async fn bind(
    setting: &'static str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            setting,
            addr,
            source,
        })
}

/// Lines the log queue holds before a logging request thread waits for the writer thread.
/// Bounded so memory stays bounded (the queue's slots are allocated up front, ~40 bytes each);
/// at 8,192 a burst of several thousand requests fits while the writer catches up.
const LOG_QUEUE_LINES: usize = 8192;

/// Installs the log subscriber. Lines are formatted on the request path but written by a
/// background thread in batches (one `write` per batch instead of one per line), so stdout never
/// blocks a request. The queue is not lossy: when it is full, the logging task waits rather than
/// drop access-log lines. The returned guard flushes the queue when dropped.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: container logs and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // The writer thread flushes after each batch it drains, so lines still appear promptly.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("proxy-log")
        .finish(std::io::BufWriter::new(std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
