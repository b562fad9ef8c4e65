#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir::config::{self, Config, ConfigErrors};
use weir::logging::{self, LogFormat};
use weir::topology::Topology;
use weir_core::metrics::Registry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// weir: an event-collection agent that speaks Apache Flume's wire protocols.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `weir_sources=debug`); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM or SIGINT.
    Run {
        /// Config file; without it the embedded default (conf/weir.toml) runs.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and print every problem with its key path; exit 1 if any.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send lines as events to an Avro source (like `flume-ng avro-client`).
    Send(weir::send::SendArgs),
    /// Poll a spark sink (Spark's Flume polling protocol) and print the events.
    Poll(weir::poll::PollArgs),
    /// Convert a Flume agent's properties file to weir TOML (stdout, or --output). Exit 0 when
    /// everything was translated, 2 when some properties were not (listed on stderr), 1 on
    /// errors.
    ImportFlume {
        /// The Flume `.properties` file.
        file: PathBuf,
        /// The agent to convert (Flume's `-n`); needed when the file configures several.
        #[arg(long, short)]
        agent: Option<String>,
        /// Write the TOML here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// A live terminal view of a running agent's counters (from its `[http]` server).
    Top(weir::top::TopArgs),
    /// Load generators that measure a running agent.
    #[command(subcommand)]
    Bench(weir::bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match config::load_file(&config) {
            Ok(c) => {
                println!("{}: ok ({})", config.display(), c.summary());
                ExitCode::SUCCESS
            }
            Err(errors) => report(&errors),
        },
        Command::Send(args) => client_command(|| async {
            let sent = weir::send::run(args).await?;
            eprintln!("weir send: {sent} events acknowledged");
            Ok(())
        }),
        Command::Poll(args) => client_command(|| async {
            let got = weir::poll::run(args).await?;
            eprintln!("weir poll: {got} events received");
            Ok(())
        }),
        Command::ImportFlume {
            file,
            agent,
            output,
        } => import_flume(&file, agent.as_deref(), output.as_deref()),
        Command::Top(args) => match weir::top::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(cmd) => match weir::bench::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let loaded = match &config {
                Some(path) => config::load_file(path),
                None => config::parse(weir::DEFAULT_CONFIG, "<embedded default conf/weir.toml>"),
            };
            let loaded = match loaded {
                Ok(c) => c,
                Err(errors) => return report(&errors),
            };
            if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
            match run(loaded, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(message = "agent failed", error = %format!("{e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs a one-shot client command on a small runtime; errors go to stderr with exit 1.
fn client_command<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(f()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn import_flume(file: &Path, agent: Option<&str>, output: Option<&Path>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let conversion = match weir::import_flume::convert(&text, agent) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let origin = format!("<{} converted>", file.display());
    let valid = config::parse(&conversion.toml, &origin);
    let written = match output {
        Some(path) => {
            std::fs::write(path, &conversion.toml).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => {
            print!("{}", conversion.toml);
            Ok(())
        }
    };
    if let Err(e) = written {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    for u in &conversion.untranslated {
        eprintln!("not translated: {}: {}", u.property, u.reason);
    }
    if let Err(errors) = valid {
        for line in errors.to_string().lines() {
            eprintln!("error: the converted config is not valid yet: {line}");
        }
        return ExitCode::FAILURE;
    }
    eprintln!(
        "weir import-flume: agent `{}` converted; {} propert{} not translated",
        conversion.agent,
        conversion.untranslated.len(),
        if conversion.untranslated.len() == 1 {
            "y"
        } else {
            "ies"
        }
    );
    if conversion.untranslated.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn report(errors: &ConfigErrors) -> ExitCode {
    for line in errors.to_string().lines() {
        eprintln!("error: {line}");
    }
    eprintln!("{} problem(s) in {}", errors.errors.len(), errors.origin);
    ExitCode::FAILURE
}

fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    weir::startup::raise_open_files_limit();
    if weir::startup::uses_data_dir(&config) {
        weir::startup::check_data_dir(&config.agent.data_dir)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let topology = Topology::build(config, Registry::default()).await?;
        let (reloads, reloaded) = tokio::sync::mpsc::channel(1);
        tokio::spawn(reload_on_sighup(path, reloads));
        topology.run_with_reloads(stop_signal(), reloaded).await
    })
}

/// On SIGHUP: re-reads and validates the config; a valid one is applied, an invalid one is
/// logged with every problem and the running config stays.
async fn reload_on_sighup(path: Option<PathBuf>, reloads: tokio::sync::mpsc::Sender<Config>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(message = "cannot listen for SIGHUP; reload disabled", error = %e);
            return;
        }
    };
    while hup.recv().await.is_some() {
        let (loaded, origin) = match &path {
            Some(p) => (config::load_file(p), p.display().to_string()),
            None => (
                config::parse(weir::DEFAULT_CONFIG, "<embedded default conf/weir.toml>"),
                "<embedded default conf/weir.toml>".to_string(),
            ),
        };
        match loaded {
            Ok(c) => {
                tracing::info!(message = "signal received", signal = "SIGHUP", config = %origin);
                if reloads.send(c).await.is_err() {
                    return;
                }
            }
            Err(errors) => tracing::error!(
                message = "config reload refused: the new config is invalid; the running one stays",
                config = %origin,
                problems = errors.errors.len(),
                errors = %errors.to_string().replace('\n', "; "),
            ),
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(message = "cannot listen for SIGTERM", error = %e);
            return std::future::pending().await;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    tracing::info!(message = "signal received", signal = name);
}
