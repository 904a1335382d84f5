//! What a test needs from its environment (a broker, a Python): shared by the process tests
//! (`tests/bin`) and `trike-tests`. Std only.

/// The value of `var`, which the test needs (`what`; `by`: who provides it). Without it: None
/// and a SKIPPED line saying so locally; a panic in CI, where it must be there.
pub fn required_env(var: &str, what: &str, by: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok() => panic!("CI must provide {var} ({by})"),
        _ => {
            eprintln!("SKIPPED: set {var} to {what} ({by})");
            None
        }
    }
}

/// The Kafka-protocol broker of the tests (`TRIKE_TEST_KAFKA_BROKERS`).
pub fn brokers() -> Option<String> {
    required_env(
        "TRIKE_TEST_KAFKA_BROKERS",
        "a Kafka-protocol broker",
        "scripts/test starts tansu",
    )
}
