//! `kafka.client` (DESIGN §8): librdkafka properties applied to every Kafka client Trike creates
//! (the OTLP source, its dead-letter producer, the control-event producer and its topic admin,
//! the actuator's consumer, claim log and outcome producer): TLS, SASL, compression, tuning.
//!
//! Properties Trike's guarantees rest on (offsets, idempotence, acknowledgements, the group)
//! are Trike's own: setting one is a config error, and they are never overridden. Values of
//! secret properties (passwords, secrets, tokens, PEM keys) print as `***`.

use rdkafka::ClientConfig;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// Properties Trike sets itself, for the delivery and offset guarantees (or from other keys:
/// `kafka.brokers`, `kafka.ingest.group_id`).
pub const MANAGED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "transactional.id",
    "isolation.level",
    "partitioner",
    "enable.partition.eof",
];

/// True when the value of `key` is a secret.
pub fn is_secret(key: &str) -> bool {
    const SECRET: &[&str] = &[
        "password",
        "secret",
        "token",
        "pem",
        "oauthbearer.config",
        "jaas",
        "credential",
    ];
    let k = key.to_ascii_lowercase();
    SECRET.iter().any(|s| k.contains(s))
}

/// librdkafka properties for every client.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProps {
    props: BTreeMap<String, String>,
}

impl std::fmt::Debug for ClientProps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.props {
            if is_secret(k) {
                m.entry(k, &"***");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl ClientProps {
    /// Properties from pairs.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self {
            props: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// True when none is set.
    pub fn is_empty(&self) -> bool {
        self.props.is_empty()
    }

    /// The property names, for messages (never the values).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.props.keys().map(String::as_str)
    }

    /// The value of `key` (for checks; never print a secret one).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(String::as_str)
    }

    /// Without the connection-security properties (`security.protocol`, `ssl.*`, `sasl.*`):
    /// for the embedded broker, which speaks plain text only.
    pub fn without_security(&self) -> Self {
        Self {
            props: self
                .props
                .iter()
                .filter(|(k, _)| {
                    k.as_str() != "security.protocol"
                        && !k.starts_with("ssl.")
                        && !k.starts_with("sasl.")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Problems, each naming its key: properties Trike manages.
    pub fn problems(&self) -> Vec<String> {
        self.props
            .keys()
            .filter(|k| MANAGED.contains(&k.as_str()))
            .map(|k| {
                format!(
                    "kafka.client.{k}: Trike sets this property itself (its delivery and offset guarantees depend on it){}",
                    match k.as_str() {
                        "bootstrap.servers" | "metadata.broker.list" => "; use kafka.brokers",
                        "group.id" => "; use kafka.ingest.group_id",
                        "group.instance.id" => "; use kafka.ingest.group_instance_id",
                        _ => "",
                    }
                )
            })
            .collect()
    }

    /// Sets every property on `config` except those Trike manages, over what `config` holds
    /// (so `compression.type` or `linger.ms` can be tuned), and returns it.
    pub fn apply<'a>(&self, config: &'a mut ClientConfig) -> &'a mut ClientConfig {
        for (k, v) in &self.props {
            if !MANAGED.contains(&k.as_str()) {
                config.set(k, v);
            }
        }
        config
    }
}

impl<'de> Deserialize<'de> for ClientProps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A YAML scalar: librdkafka takes every value as a string.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        let m = BTreeMap::<String, Scalar>::deserialize(d)?;
        Ok(Self {
            props: m
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Scalar::S(s) => s,
                        Scalar::I(i) => i.to_string(),
                        Scalar::F(f) => f.to_string(),
                        Scalar::B(b) => b.to_string(),
                    };
                    (k, v)
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: scalars of any YAML type become strings; secret values never print;
    /// managed properties are named as problems and never applied, the rest override.
    #[test]
    fn props_apply_redact_and_refuse_managed_keys() {
        let p: ClientProps = serde_json::from_str(
            r#"{"security.protocol":"SASL_SSL","sasl.mechanism":"SCRAM-SHA-512",
                "sasl.username":"trike","sasl.password":"hunter2-very-secret",
                "linger.ms":5,"enable.ssl.certificate.verification":true,
                "enable.auto.commit":"true"}"#,
        )
        .unwrap();
        let printed = format!("{p:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("\"sasl.password\": \"***\""), "{printed}");
        assert!(printed.contains("SCRAM-SHA-512"), "{printed}");
        let problems = p.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("kafka.client.enable.auto.commit: Trike sets"));
        let mut c = ClientConfig::new();
        c.set("enable.auto.commit", "false").set("linger.ms", "20");
        p.apply(&mut c);
        assert_eq!(
            c.get("enable.auto.commit"),
            Some("false"),
            "managed: never overridden"
        );
        assert_eq!(
            c.get("linger.ms"),
            Some("5"),
            "tuning: the user's value wins"
        );
        assert_eq!(c.get("enable.ssl.certificate.verification"), Some("true"));
        assert_eq!(c.get("sasl.password"), Some("hunter2-very-secret"));
        assert!(is_secret("ssl.key.pem") && is_secret("sasl.oauthbearer.client.secret"));
        assert!(!is_secret("sasl.username") && !is_secret("ssl.ca.location"));
    }

    /// Guarantees: the librdkafka Trike links supports TLS, every SASL mechanism DESIGN §8
    /// names, and every compression codec (a zstd topic is readable, a SASL_SSL cluster
    /// reachable).
    #[test]
    fn the_build_supports_tls_sasl_and_every_codec() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        let have: Vec<&str> = features.split(',').collect();
        for want in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
            "gzip",
            "snappy",
            "lz4",
            "zstd",
        ] {
            assert!(have.contains(&want), "{want} missing from {features}");
        }
    }
}
