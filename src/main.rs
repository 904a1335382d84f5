//! `trike`: see `trike --help`.

use clap::Parser;
use std::process::ExitCode;
use trike::cli::{Cli, Command};
use trike::config::Config;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load(
    path: Option<&std::path::Path>,
    o: &trike::config::validate::Overrides,
) -> Result<Config, ExitCode> {
    Config::load(path, o).map_err(|problems| {
        eprintln!(
            "trike: the configuration has {} problem(s):",
            problems.len()
        );
        for p in problems {
            eprintln!("  - {p}");
        }
        ExitCode::from(2)
    })
}

async fn until_stopped(running: &mut trike::app::Running) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
        name = running.any_task_ended() => tracing::error!(task = %name, "a component stopped: shutting down"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(Some(&config), &Default::default()) {
            Ok(c) => {
                println!("{}: valid", config.display());
                println!("{c:#?}");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run(args) => {
            let cfg = match load(args.config.as_deref(), &args.addrs.overrides()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            for s in &cfg.deferred_sections {
                tracing::warn!(
                    section = s,
                    "config section accepted but not acted on by this version"
                );
            }
            let mut running = match trike::app::start(cfg).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("trike: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            until_stopped(&mut running).await;
            match running.stop().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("trike: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => match trike::demo::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trike demo: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
