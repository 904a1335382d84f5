//! `trike`: see `trike --help`.

use clap::Parser;
use std::process::ExitCode;
use trike::cli::{Cli, Command};
use trike::config::Config;

/// jemalloc returns freed memory to the OS, so resident memory (what `limits.memory_limit`
/// bounds) falls again after a burst.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    tokio::select! {
        _ = trike::app::shutdown_signal() => {}
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
            let overrides = trike::config::validate::Overrides {
                role: Some(args.role),
                ..args.addrs.overrides()
            };
            let cfg = match load(args.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            for s in &cfg.deferred_sections {
                tracing::warn!(
                    section = s,
                    "config section accepted but not acted on by this version"
                );
            }
            let embedded = cfg.kafka_brokers.as_deref() == Some(trike::embedded_broker::EMBEDDED);
            let mut running = match trike::app::start(cfg).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("trike: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            if let (Some(b), true) = (&running.kafka_brokers, embedded) {
                eprintln!(
                    "trike: embedded Kafka-protocol broker at {b} (in memory); actuators: trike actuate --kafka-brokers {b}"
                );
            }
            until_stopped(&mut running).await;
            match running.stop().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("trike: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Forecast { input, holdout } => {
            if !(holdout > 0.0 && holdout < 1.0) {
                eprintln!("trike forecast: --holdout: {holdout} is not between 0 and 1");
                return ExitCode::from(2);
            }
            let reader = match open_input(&input) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("trike forecast: {}: {e}", input.display());
                    return ExitCode::from(2);
                }
            };
            match trike::forecast::run(reader, holdout) {
                Ok(r) => {
                    let errors = r.errors.map_or("n/a (too few hours)".to_string(), |e| {
                        format!("MAPE {:.1} %\tWAPE {:.1} %", 100.0 * e.mape, 100.0 * e.wape)
                    });
                    println!(
                        "{}\thours {}\theld back {}\ttrend {:+.4}/day\t{errors}",
                        input.display(),
                        r.hours,
                        r.held_back,
                        r.trend_per_day
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("trike forecast: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Detect {
            input,
            threshold,
            rest,
            season,
            silence,
        } => {
            let season_s = if season == "none" {
                0
            } else {
                match season.parse::<trike_engine::Span>() {
                    Ok(s) => s.secs(),
                    Err(e) => {
                        eprintln!("trike detect: --season: {e}, or none");
                        return ExitCode::from(2);
                    }
                }
            };
            let cfg = trike_engine::anomaly::DetectorConfig {
                threshold,
                rest,
                season_s,
                silence: silence == "on",
                ..Default::default()
            };
            if let Err(e) = cfg.check() {
                eprintln!("trike detect: --{e}");
                return ExitCode::from(2);
            }
            let reader = match open_input(&input) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("trike detect: {}: {e}", input.display());
                    return ExitCode::from(2);
                }
            };
            let out = std::io::BufWriter::new(std::io::stdout().lock());
            match trike::detect::run(reader, out, std::io::stderr(), cfg) {
                Ok(sum) => {
                    eprintln!(
                        "trike detect: {} rows, {} anomalies, {} rows skipped",
                        sum.rows, sum.anomalies, sum.bad_rows
                    );
                    if sum.bad_rows > 0 {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("trike detect: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Actuate { config, addrs } => {
            let cfg = match load(config.as_deref(), &addrs.overrides()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let Some(brokers) = cfg.kafka_brokers.clone() else {
                eprintln!(
                    "trike actuate: needs kafka.brokers (or --kafka-brokers / TRIKE_KAFKA_BROKERS)"
                );
                return ExitCode::from(2);
            };
            if brokers == trike::embedded_broker::EMBEDDED {
                eprintln!(
                    "trike actuate: kafka.brokers: embedded starts a broker inside `trike run` or `trike demo`; give the actuator the address they print"
                );
                return ExitCode::from(2);
            }
            let settings = trike_actuate::ActuatorSettings {
                brokers,
                control_topic: cfg.control_topic.clone(),
                keys: cfg.verify_keys(),
                instance: cfg.instance.clone(),
                actuator: cfg.actuator.clone(),
                client: cfg.kafka_client.clone(),
            };
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let live = std::sync::Arc::new(trike_actuate::live::Live::default());
            if let Some(addr) = cfg.actuator.admin {
                match trike::actuator_admin::serve(addr, live.clone()).await {
                    Ok(bound) => {
                        eprintln!("trike actuate: /metrics and /healthz on http://{bound}")
                    }
                    Err(e) => {
                        eprintln!("trike actuate: actuator.admin {addr}: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let mut worker = {
                let stop = stop.clone();
                tokio::task::spawn_blocking(move || trike_actuate::run_with(settings, stop, live))
            };
            // Runs until SIGTERM or Ctrl-C (the event in flight is finished, its outcome
            // written and its offset committed), or until the worker stops by itself (an error).
            let result = tokio::select! {
                _ = trike::app::shutdown_signal() => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    worker.await
                }
                r = &mut worker => r,
            };
            match result {
                Ok(Ok(stats)) => {
                    eprintln!("trike actuate: stopped: {stats:?}");
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => {
                    eprintln!("trike actuate: {e:#}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("trike actuate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Query {
            sql,
            archive,
            admin_addr,
            token,
            ca_file,
            cert_file,
            key_file,
            format,
            limit,
        } => {
            let remote = trike::query::Remote {
                admin_addr,
                token: token.map(trike_sinks::Secret::new),
                ca_file,
                cert_file,
                key_file,
            };
            match trike::query::run(&sql, archive, &remote, format, limit).await {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("trike query: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backtest {
            config,
            archive,
            from,
            to,
            against,
        } => {
            let cfg = match load(Some(&config), &Default::default()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match trike::backtest::backtest(&cfg, &archive, from.as_deref(), to.as_deref()) {
                // The decisions (JSON lines, for scripts) on stdout and the diff on stderr, or
                // with --against the diff alone on stdout.
                Ok(r) if against => match r.diff {
                    Ok(diff) => {
                        print!("{diff}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("trike backtest: {e}");
                        ExitCode::FAILURE
                    }
                },
                Ok(r) => {
                    print!("{}", r.decisions);
                    match r.diff {
                        Ok(diff) => {
                            eprint!("trike backtest: against the archived decisions:\n{diff}")
                        }
                        Err(e) => eprintln!("trike backtest: no diff: {e}"),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("trike backtest: {e:#}");
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

/// A CSV input: the file, or stdin for `-`.
fn open_input(input: &std::path::Path) -> std::io::Result<Box<dyn std::io::BufRead>> {
    if input.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    Ok(Box::new(std::io::BufReader::new(std::fs::File::open(
        input,
    )?)))
}
