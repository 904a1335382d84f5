//! Command line: `trike run`, `check-config`, `detect`, `forecast`, `actuate`, `demo`, `query` and
//! `backtest`. Flags override the config file and `TRIKE_*` environment variables override it
//! too (a flag wins over its variable).

use crate::config::validate::Overrides;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Trike: OTLP in, windowed SLIs out.
#[derive(Debug, Parser)]
#[command(name = "trike", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the processor (OTLP receivers, engine, admin API).
    Run(RunArgs),
    /// Validate a config file and print the settings it yields.
    CheckConfig {
        /// The YAML config file.
        #[arg(long, env = "TRIKE_CONFIG")]
        config: PathBuf,
    },
    /// Run the anomaly detector offline on `timestamp,value` CSV; writes
    /// `timestamp,value,anomaly_score,label` to stdout.
    Detect {
        /// The CSV file (`-` for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Score at which a point is labelled anomalous, in (0, 1]: the tail probability
        /// 10^(-5 × threshold) among the stream's own history (0.45 ≈ 0.0056).
        #[arg(long, default_value_t = 0.45)]
        threshold: f64,
        /// Samples after an alert during which the score is held under the threshold (one
        /// alert per episode; 0 reports every sample's score).
        #[arg(long, default_value_t = 100)]
        rest: u32,
        /// Length of the seasonal cycle (e.g. 1d, 1w); `none` disables seasonality.
        #[arg(long, default_value = "1d")]
        season: String,
        /// Judge how long a stream that spikes has gone without a spike (`off` where spikes
        /// are bad news and their stopping good news: errors, slow requests).
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        silence: String,
    },
    /// Score the capacity forecast offline on `timestamp,value` CSV: fits it on all but the
    /// last `--holdout` share of the hours and prints its error on them.
    Forecast {
        /// The CSV file (`-` for stdin).
        #[arg(long)]
        input: PathBuf,
        /// Share of the hours held back (default 0.2).
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
    },
    /// Run an actuator worker: consume control events and carry them out.
    Actuate {
        /// The YAML config file (its `kafka`, `signing` and `actuator` sections).
        #[arg(long, env = "TRIKE_CONFIG")]
        config: Option<PathBuf>,
        /// Address overrides (Kafka brokers, control topic).
        #[command(flatten)]
        addrs: AddrArgs,
    },
    /// Run the processor with synthetic services sending it real OTLP (a baseline and a
    /// canary that degrades), printing their SLIs as they move.
    Demo(DemoArgs),
    /// Run SQL over a running processor's live tables and archive (through its admin API), or
    /// over an archive directory (`--archive`).
    Query {
        /// The SQL, e.g. "SELECT service, error_ratio FROM slis WHERE time_window = '5m'".
        sql: String,
        /// Query this archive directory here instead of asking a running processor.
        #[arg(long)]
        archive: Option<PathBuf>,
        /// The running processor's admin address: host:port, or https://host:port over TLS.
        #[arg(long, env = "TRIKE_ADMIN_ADDR", default_value = "127.0.0.1:8480")]
        admin_addr: String,
        /// A read token for an admin API with `auth.admin_read_tokens`.
        #[arg(long, env = "TRIKE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The CA of the admin API's certificate (TLS; without it, https:// trusts the
        /// system's roots).
        #[arg(long, env = "TRIKE_ADMIN_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// A client certificate (PEM) for an admin API that verifies them, with --key-file.
        #[arg(long, env = "TRIKE_ADMIN_CERT_FILE", requires = "key_file")]
        cert_file: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long, env = "TRIKE_ADMIN_KEY_FILE", requires = "cert_file")]
        key_file: Option<PathBuf>,
        /// Output: a text table or JSON rows.
        #[arg(long, value_enum, default_value_t)]
        format: QueryFormat,
        /// Rows at most.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Replay an archive through a config's SLOs and policy; print the decisions it would
    /// have made (JSON lines) and, on stderr, a diff against the archived decisions (with
    /// `--against`, the diff alone, on stdout).
    Backtest {
        /// The config whose SLOs, canaries, stale rule and policy are replayed.
        #[arg(long, env = "TRIKE_CONFIG")]
        config: PathBuf,
        /// The archive directory (`archive.dir`).
        #[arg(long)]
        archive: PathBuf,
        /// Start (RFC 3339 or Unix seconds; default: the archive's first second).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (default: after the archive's last second).
        #[arg(long)]
        to: Option<String>,
        /// Print only the diff against the decisions archived in the same range, on stdout.
        #[arg(long)]
        against: bool,
    },
}

/// `trike query --format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryFormat {
    /// An aligned text table.
    #[default]
    Table,
    /// One JSON object per row, in an array.
    Json,
}

/// Address flags shared by `run` and `demo`.
#[derive(Debug, Args, Clone, Default)]
pub struct AddrArgs {
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "TRIKE_OTLP_GRPC_ADDR")]
    pub otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318].
    #[arg(long, env = "TRIKE_OTLP_HTTP_ADDR")]
    pub otlp_http_addr: Option<String>,
    /// Admin API listen address [default: 127.0.0.1:8480].
    #[arg(long, env = "TRIKE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TRIKE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Control topic [default: trike.control].
    #[arg(long, env = "TRIKE_CONTROL_TOPIC")]
    pub control_topic: Option<String>,
}

impl AddrArgs {
    /// As config overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            otlp_grpc_addr: self.otlp_grpc_addr.clone(),
            otlp_http_addr: self.otlp_http_addr.clone(),
            admin_addr: self.admin_addr.clone(),
            kafka_brokers: self.kafka_brokers.clone(),
            control_topic: self.control_topic.clone(),
            role: None,
        }
    }
}

/// `trike run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The YAML config file (defaults apply without one).
    #[arg(long, env = "TRIKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// What this process runs (DESIGN §6): `all` (one process does everything), `gateway`
    /// (receivers → partials on Kafka) or `processor` (partials → SLIs, SLOs, decisions).
    #[arg(long, value_enum, env = "TRIKE_ROLE", default_value_t)]
    pub role: crate::config::fleet::Role,
    /// Address overrides.
    #[command(flatten)]
    pub addrs: AddrArgs,
}

/// `trike demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address overrides.
    #[command(flatten)]
    pub addrs: AddrArgs,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Seconds before the scenario's trouble starts.
    #[arg(long, default_value_t = 30)]
    pub degrade_after_s: u64,
    /// The story to tell.
    #[arg(long, value_enum, default_value_t)]
    pub scenario: crate::demo::Scenario,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Guarantees: `trike detect` judges silences unless told `--silence off`, and refuses
    /// anything but on or off.
    #[test]
    fn detect_takes_silence_on_or_off() {
        let silence = |args: &[&str]| {
            let all = [&["trike", "detect", "--input", "x.csv"][..], args].concat();
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Detect { silence, .. }) => Ok(silence),
                Ok(_) => panic!("not detect"),
                Err(e) => Err(e.kind()),
            }
        };
        assert_eq!(silence(&[]), Ok("on".to_string()));
        assert_eq!(silence(&["--silence", "off"]), Ok("off".to_string()));
        assert_eq!(
            silence(&["--silence", "maybe"]),
            Err(clap::error::ErrorKind::InvalidValue)
        );
    }
}
