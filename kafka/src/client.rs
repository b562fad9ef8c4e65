//! Settings every Kafka component shares: the brokers, and librdkafka properties passed
//! through unchanged (like Flume's `kafka.producer.*` / `kafka.consumer.*`), applied after
//! weir's own defaults so they can override any of them.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// Builds a librdkafka configuration: `bootstrap.servers`, then `defaults`, then the
/// user's `properties` (which win).
pub fn client_config(
    brokers: &[String],
    defaults: &[(&str, String)],
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers.join(","));
    for (key, value) in defaults {
        config.set(*key, value);
    }
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// Config-check problems common to every component: `(key, message)`.
pub fn check_common(
    brokers: &[String],
    topic_key: &'static str,
    topics: &[String],
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if brokers.is_empty() || brokers.iter().any(|b| b.trim().is_empty()) {
        problems.push((
            "brokers",
            "must list at least one host:port, none empty".into(),
        ));
    }
    if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
        problems.push((topic_key, "must name a topic".into()));
    }
    problems
}
