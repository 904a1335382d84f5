//! `fleet:` and `--role` (DESIGN §6): which part of the fleet this process is, and how the
//! parts talk through Kafka.

use serde::Deserialize;
use std::time::Duration;

/// What this process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Everything in one process: receivers, engine, decisions (one machine, the demo).
    #[default]
    All,
    /// Receivers and the OTLP-on-Kafka source, pre-aggregating into `trike.partials`.
    Gateway,
    /// Reads `trike.partials` in group `trike-processors`: engine, SLOs, decisions.
    Processor,
}

impl Role {
    /// As written on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Gateway => "gateway",
            Role::Processor => "processor",
        }
    }
}

/// When a gateway answers an OTLP request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Once the partials holding its data are acknowledged by the broker (`acks=all`).
    #[default]
    Durable,
    /// At once (the Collector's behaviour: a crash loses what was not yet published).
    Received,
}

/// `fleet:` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFleet {
    /// How often gateways publish partials (default `250ms`; `ms` or `s`).
    pub flush_interval: Option<String>,
    /// `durable` (default) or `received`.
    pub ack: Option<AckMode>,
    /// Topic of the gateways' partials (default `trike.partials`).
    pub partials_topic: Option<String>,
    /// Compacted topic of the processors' state (default `trike.changelog`).
    pub changelog_topic: Option<String>,
    /// Partitions of the partials topic when created (default 12: up to 12 processors).
    pub partitions: Option<i32>,
    /// Replication factor of the fleet's topics when created (default 1, like the control
    /// topic's; 3 in production: the Helm chart sets it).
    pub replication: Option<i32>,
    /// Consumer group of the processors (default `trike-processors`).
    pub group_id: Option<String>,
    /// Compacted topic where members advertise themselves (default `trike.members`).
    pub members_topic: Option<String>,
    /// Compacted topic of the fleet's silences, read by every member (default `trike.silences`).
    pub silences_topic: Option<String>,
    /// Compacted topic of the processors' root-cause explanations, read by every processor
    /// (default `trike.causes`).
    pub causes_topic: Option<String>,
    /// The URL other members reach this one's admin API at (default: `http(s)://` and the
    /// admin address; in Kubernetes `http://${POD_IP}:8480`).
    pub advertise_url: Option<String>,
    /// Under `tls:`, the CA that issued the members' admin certificates, which one member
    /// trusts when it asks another (default `tls.client_ca_file`, else the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// Under `tls:`, the name the members' certificates are checked against when one member
    /// asks another (default: the host in the member's URL, usually a pod IP). Needs a CA
    /// (`ca_file` or `tls.client_ca_file`).
    pub server_name: Option<String>,
}

/// `fleet:` validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// This process's role (`--role`).
    pub role: Role,
    /// How often gateways publish partials.
    pub flush_interval: Duration,
    /// When gateways answer.
    pub ack: AckMode,
    /// The partials topic.
    pub partials_topic: String,
    /// The changelog topic.
    pub changelog_topic: String,
    /// Partitions of the partials topic.
    pub partitions: i32,
    /// Replication factor of the fleet's topics.
    pub replication: i32,
    /// The processors' consumer group.
    pub group_id: String,
    /// The members' directory topic.
    pub members_topic: String,
    /// The fleet's silences.
    pub silences_topic: String,
    /// The processors' root-cause explanations.
    pub causes_topic: String,
    /// This member's admin URL as the others reach it (none: derived from the admin address).
    pub advertise_url: Option<String>,
    /// The CA this member trusts when it asks another (none: `tls.client_ca_file`, else the
    /// system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// The name other members' certificates are checked against (none: their URL's host).
    pub server_name: Option<String>,
}

/// Parses `250ms`, `1s`, `1.5s`.
fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = n.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then(|| Duration::from_secs_f64(v * scale))
}

/// Validates `fleet:` for `role`; `brokers` tells whether Kafka is configured (gateways and
/// processors talk only through it).
pub fn validate(raw: RawFleet, role: Role, brokers: bool, p: &mut Vec<String>) -> FleetConfig {
    let flush_interval = match raw.flush_interval.as_deref() {
        None => Duration::from_millis(250),
        Some(s) => match duration(s) {
            Some(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(60) => d,
            _ => {
                p.push(format!(
                    "fleet.flush_interval: {s:?} is not a duration from 10ms to 60s, like 250ms or 1s"
                ));
                Duration::from_millis(250)
            }
        },
    };
    let partitions = raw.partitions.unwrap_or(12);
    let replication = raw.replication.unwrap_or(1);
    if partitions < 1 || replication < 1 {
        p.push("fleet.partitions, fleet.replication: must be at least 1".into());
    }
    let topic = |v: Option<String>, field: &str, default: &str, p: &mut Vec<String>| {
        let t = v.unwrap_or_else(|| default.into());
        if t.is_empty() {
            p.push(format!("fleet.{field}: must not be empty"));
        }
        t
    };
    let partials_topic = topic(raw.partials_topic, "partials_topic", "trike.partials", p);
    let changelog_topic = topic(raw.changelog_topic, "changelog_topic", "trike.changelog", p);
    let members_topic = topic(raw.members_topic, "members_topic", "trike.members", p);
    let silences_topic = topic(raw.silences_topic, "silences_topic", "trike.silences", p);
    let causes_topic = topic(raw.causes_topic, "causes_topic", "trike.causes", p);
    let advertise_url = raw
        .advertise_url
        .map(|u| u.trim_end_matches('/').to_string());
    if let Some(u) = &advertise_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        p.push(format!(
            "fleet.advertise_url: {u:?} is not an http:// or https:// URL, like http://10.0.0.7:8480"
        ));
    }
    if role != Role::All && !brokers {
        p.push(format!(
            "--role {}: needs kafka.brokers (or --kafka-brokers / TRIKE_KAFKA_BROKERS): gateways and processors talk through Kafka",
            role.name()
        ));
    }
    FleetConfig {
        role,
        flush_interval,
        ack: raw.ack.unwrap_or_default(),
        partials_topic,
        changelog_topic,
        partitions,
        replication,
        group_id: raw
            .group_id
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| "trike-processors".into()),
        members_topic,
        silences_topic,
        causes_topic,
        advertise_url,
        ca_file: raw.ca_file,
        server_name: raw.server_name.filter(|n| !n.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the defaults are DESIGN §6's; durations take ms and s; a gateway or processor
    /// without Kafka, and nonsense values, are refused naming the field.
    #[test]
    fn defaults_durations_and_refusals() {
        let mut p = Vec::new();
        let f = validate(RawFleet::default(), Role::All, false, &mut p);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(f.flush_interval, Duration::from_millis(250));
        assert_eq!(f.ack, AckMode::Durable);
        assert_eq!(
            (
                f.partials_topic.as_str(),
                f.changelog_topic.as_str(),
                f.group_id.as_str()
            ),
            ("trike.partials", "trike.changelog", "trike-processors")
        );
        assert_eq!(duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(duration("1m"), None);
        let raw = RawFleet {
            flush_interval: Some("5ms".into()),
            partitions: Some(0),
            ..RawFleet::default()
        };
        validate(raw, Role::Gateway, false, &mut p);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("fleet.flush_interval: \"5ms\""), "{p:?}");
        assert!(p[1].starts_with("fleet.partitions"), "{p:?}");
        assert!(
            p[2].starts_with("--role gateway: needs kafka.brokers"),
            "{p:?}"
        );
        assert_eq!(
            (f.members_topic.as_str(), f.advertise_url),
            ("trike.members", None)
        );
        let mut p = Vec::new();
        let raw = RawFleet {
            advertise_url: Some("10.0.0.7:8480".into()),
            ..RawFleet::default()
        };
        validate(raw, Role::Processor, true, &mut p);
        assert!(
            p.len() == 1 && p[0].starts_with("fleet.advertise_url"),
            "{p:?}"
        );
        let raw = RawFleet {
            advertise_url: Some("http://10.0.0.7:8480/".into()),
            ..RawFleet::default()
        };
        let f = validate(raw, Role::Processor, true, &mut p);
        assert_eq!(f.advertise_url.as_deref(), Some("http://10.0.0.7:8480"));
    }
}
