//! Flume's most used interceptors, applied to every batch a source puts, before routing:
//! `timestamp` (epoch millis), `host` (this agent's IP or name) and `static` (a fixed header).
//! Defaults follow Flume's (`flume-sources-and-config.md` §A.3).

use serde::Deserialize;

use crate::event::Event;

/// One entry of a source's `interceptors = [ … ]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum InterceptorConfig {
    /// Header = the time the batch was received, in epoch milliseconds.
    Timestamp {
        #[serde(default = "default_timestamp_header")]
        header: String,
        /// Keep a value the event already has.
        #[serde(default)]
        preserve_existing: bool,
    },
    /// Header = this agent's IP address (`use_ip = true`, Flume's default) or host name.
    Host {
        #[serde(default = "default_host_header")]
        header: String,
        #[serde(default = "yes")]
        use_ip: bool,
        #[serde(default)]
        preserve_existing: bool,
    },
    /// A fixed header; by default an existing value is kept (Flume's default too).
    Static {
        key: String,
        value: String,
        #[serde(default = "yes")]
        preserve_existing: bool,
    },
}

fn default_timestamp_header() -> String {
    "timestamp".into()
}
fn default_host_header() -> String {
    "host".into()
}
const fn yes() -> bool {
    true
}

/// A built interceptor: what to set, resolved once (the host is looked up at build time).
#[derive(Clone, Debug)]
pub enum Interceptor {
    Timestamp {
        header: String,
        preserve: bool,
    },
    Fixed {
        header: String,
        value: String,
        preserve: bool,
    },
}

impl Interceptor {
    pub fn build(config: &InterceptorConfig) -> Interceptor {
        match config {
            InterceptorConfig::Timestamp {
                header,
                preserve_existing,
            } => Interceptor::Timestamp {
                header: header.clone(),
                preserve: *preserve_existing,
            },
            InterceptorConfig::Host {
                header,
                use_ip,
                preserve_existing,
            } => Interceptor::Fixed {
                header: header.clone(),
                value: local_host(*use_ip),
                preserve: *preserve_existing,
            },
            InterceptorConfig::Static {
                key,
                value,
                preserve_existing,
            } => Interceptor::Fixed {
                header: key.clone(),
                value: value.clone(),
                preserve: *preserve_existing,
            },
        }
    }
}

/// Applies the interceptors to a batch; `now_ms` is read once per batch.
pub fn intercept(interceptors: &[Interceptor], events: &mut [Event], now_ms: u64) {
    let now = now_ms.to_string();
    for event in events {
        for i in interceptors {
            let (header, value, preserve) = match i {
                Interceptor::Timestamp { header, preserve } => (header, &now, *preserve),
                Interceptor::Fixed {
                    header,
                    value,
                    preserve,
                } => (header, value, *preserve),
            };
            if !(preserve && event.headers.contains_key(header)) {
                event.headers.insert(header, value);
            }
        }
    }
}

/// This machine's name, or its first non-loopback address when `use_ip` (falling back to the
/// name, then to 127.0.0.1, when resolution fails).
fn local_host(use_ip: bool) -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    if !use_ip {
        return name;
    }
    use std::net::ToSocketAddrs;
    let addrs = (name.as_str(), 0)
        .to_socket_addrs()
        .map(|a| a.collect::<Vec<_>>())
        .unwrap_or_default();
    addrs
        .iter()
        .find(|a| !a.ip().is_loopback())
        .or(addrs.first())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> Vec<Interceptor> {
        #[derive(Deserialize)]
        struct T {
            interceptors: Vec<InterceptorConfig>,
        }
        let t: T = toml::from_str(toml_text).unwrap();
        t.interceptors.iter().map(Interceptor::build).collect()
    }

    #[test]
    fn timestamp_host_and_static_headers_follow_flume_defaults() {
        let i = build(
            r#"interceptors = [{ type = "timestamp" }, { type = "host", use_ip = false }, { type = "static", key = "dc", value = "eu1" }]"#,
        );
        let mut events = vec![
            Event::new("a"),
            Event::new("b")
                .with_header("dc", "kept")
                .with_header("timestamp", "1"),
        ];
        intercept(&i, &mut events, 1700000000123);
        assert_eq!(events[0].headers.get("timestamp"), Some("1700000000123"));
        assert_eq!(events[0].headers.get("dc"), Some("eu1"));
        assert!(events[0].headers.get("host").is_some_and(|h| !h.is_empty()));
        // static keeps an existing value by default; timestamp replaces by default.
        assert_eq!(events[1].headers.get("dc"), Some("kept"));
        assert_eq!(events[1].headers.get("timestamp"), Some("1700000000123"));
    }

    #[test]
    fn unknown_interceptor_types_and_keys_are_rejected() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            interceptors: Vec<InterceptorConfig>,
        }
        assert!(toml::from_str::<T>(r#"interceptors = [{ type = "regex_filter" }]"#).is_err());
        assert!(
            toml::from_str::<T>(r#"interceptors = [{ type = "timestamp", headr = "t" }]"#).is_err()
        );
    }
}
