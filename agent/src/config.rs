//! Loading and validating the agent's TOML config.
//!
//! Parsing happens in two steps so that every problem is reported, each with its key path:
//! the file is first read as a plain TOML table (syntax errors, with line and column), then
//! each component table is deserialized on its own into the struct its `type` names, and
//! finally the wiring is checked (channels exist, one consumer per channel, no port clashes).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_core::{ConfigDuration, InterceptorConfig, SelectorConfig};

use crate::components::{deserialize, ChannelConfig, FieldError, Listen, SinkConfig, SourceConfig};
use crate::http::HttpConfig;
use weir_streaming::JobConfig;

/// `[agent]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's name, shown in logs.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where durable state lives (file channels, positions, job checkpoints).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long a stop may take: sources finish in-flight batches, then sinks drain.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfigDuration,
}

fn default_name() -> String {
    "weir".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/weir")
}
const fn default_shutdown_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: default_name(),
            data_dir: default_data_dir(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceDef {
    pub channels: Vec<String>,
    pub selector: SelectorConfig,
    pub interceptors: Vec<InterceptorConfig>,
    pub config: SourceConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkDef {
    pub channel: String,
    pub config: SinkConfig,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub agent: AgentConfig,
    pub http: Option<HttpConfig>,
    /// `[jobs.NAME]`: micro-batch jobs, each the only consumer of its input channels.
    pub jobs: BTreeMap<String, JobConfig>,
    pub sources: BTreeMap<String, SourceDef>,
    pub channels: BTreeMap<String, ChannelConfig>,
    pub sinks: BTreeMap<String, SinkDef>,
}

/// One problem, located by its key path (`sources.app_logs.bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file, or `<embedded default>`.
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {e}", self.origin)?;
        }
        Ok(())
    }
}

const SECTIONS: &[&str] = &["agent", "http", "sources", "channels", "sinks", "jobs"];

pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        origin: origin.clone(),
        errors: vec![ConfigError {
            path: "(file)".into(),
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    parse(&text, &origin)
}

pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        origin: origin.to_string(),
        errors,
    };
    let mut root: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return Err(fail(vec![syntax_error(text, &e)])),
    };
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            errors.push(ConfigError {
                path: key_segment(key).into_owned(),
                message: format!("unknown section, expected one of: {}", SECTIONS.join(", ")),
            });
        }
    }

    let agent = match root.remove("agent") {
        None => AgentConfig::default(),
        Some(v) => deserialize(v).unwrap_or_else(|e| {
            errors.push(located("agent", e));
            AgentConfig::default()
        }),
    };

    let http = root
        .remove("http")
        .and_then(|v| match deserialize::<HttpConfig>(v) {
            Ok(h) => {
                for (key, message) in h.check() {
                    errors.push(ConfigError {
                        path: format!("http.{key}"),
                        message,
                    });
                }
                Some(h)
            }
            Err(e) => {
                errors.push(located("http", e));
                None
            }
        });

    let mut sources = BTreeMap::new();
    for (name, table) in section(&mut root, "sources", &mut errors) {
        let at = component_path("sources", &name);
        let Some(mut table) = component_table(&at, table, &mut errors) else {
            continue;
        };
        let kind = take_type(&at, &mut table, &mut errors);
        let channels = take_string_list(&at, "channels", &mut table, &mut errors);
        let selector = match table.remove("selector") {
            None => SelectorConfig::default(),
            Some(v) => match deserialize::<SelectorConfig>(v) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(located(&format!("{at}.selector"), e));
                    SelectorConfig::default()
                }
            },
        };
        let interceptors = match table.remove("interceptors") {
            None => Vec::new(),
            Some(v) => deserialize::<Vec<InterceptorConfig>>(v).unwrap_or_else(|e| {
                errors.push(located(&format!("{at}.interceptors"), e));
                Vec::new()
            }),
        };
        let Some(kind) = kind else { continue };
        match SourceConfig::parse(&kind, toml::Value::Table(table)) {
            Ok(config) => {
                sources.insert(
                    name,
                    SourceDef {
                        channels: channels.unwrap_or_default(),
                        selector,
                        interceptors,
                        config,
                    },
                );
            }
            Err(e) => errors.push(located(&at, e)),
        }
    }

    let mut channels = BTreeMap::new();
    let mut declared = Declared::default();
    for (name, table) in section(&mut root, "channels", &mut errors) {
        declared.channels.push(name.clone());
        let at = component_path("channels", &name);
        let Some(mut table) = component_table(&at, table, &mut errors) else {
            continue;
        };
        let kind = match table.contains_key("type") {
            true => take_type(&at, &mut table, &mut errors),
            false => Some(ChannelConfig::DEFAULT_TYPE.to_string()),
        };
        let Some(kind) = kind else {
            continue;
        };
        match ChannelConfig::parse(&kind, toml::Value::Table(table)) {
            Ok(c) => {
                channels.insert(name, c);
            }
            Err(e) => errors.push(located(&at, e)),
        }
    }

    let mut sinks = BTreeMap::new();
    for (name, table) in section(&mut root, "sinks", &mut errors) {
        let at = component_path("sinks", &name);
        let Some(mut table) = component_table(&at, table, &mut errors) else {
            continue;
        };
        let kind = take_type(&at, &mut table, &mut errors);
        let channel = match table.remove("channel") {
            Some(toml::Value::String(s)) => {
                declared.consumers.push((at.clone(), s.clone()));
                Some(s)
            }
            Some(_) => {
                errors.push(err(
                    format!("{at}.channel"),
                    "must be a string: the one channel this sink drains",
                ));
                None
            }
            None => {
                errors.push(err(
                    format!("{at}.channel"),
                    "missing: name the one channel this sink drains",
                ));
                None
            }
        };
        let Some(kind) = kind else { continue };
        match SinkConfig::parse(&kind, toml::Value::Table(table)) {
            Ok(config) => {
                if let Some(channel) = channel {
                    sinks.insert(name, SinkDef { channel, config });
                }
            }
            Err(e) => errors.push(located(&at, e)),
        }
    }

    let mut jobs = BTreeMap::new();
    for (name, table) in section(&mut root, "jobs", &mut errors) {
        let at = component_path("jobs", &name);
        match deserialize::<JobConfig>(table) {
            Ok(job) => {
                for (path, message) in job.check() {
                    errors.push(err(format!("{at}.{path}"), message));
                }
                for channel in job.input_names() {
                    declared.consumers.push((at.clone(), channel));
                }
                for (key, table) in job.kafka_inputs() {
                    if let Err(e) = crate::components::kafka_input(table) {
                        errors.push(located(&format!("{at}.{key}"), e));
                    }
                }
                if let Err((path, message)) = crate::jobs::kafka_output(&job) {
                    errors.push(err(format!("{at}.{path}"), message));
                }
                jobs.insert(name, job);
            }
            Err(e) => errors.push(located(&at, e)),
        }
    }

    let config = Config {
        agent,
        http,
        jobs,
        sources,
        channels,
        sinks,
    };
    errors.extend(check_wiring(&config, &declared));
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(fail(errors))
    }
}

/// `SECTION.NAME` for a component, its name quoted when it is not a bare TOML key.
fn component_path(section: &str, name: &str) -> String {
    format!("{section}.{}", key_segment(name))
}

/// One key of a path as TOML would spell it: bare when it can be, else quoted, so an empty
/// key (`''`) or one with a dot (`'a.b'`) still shows where the problem is.
pub fn key_segment(key: &str) -> Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        Cow::Borrowed(key)
    } else if !key.contains('\'') && !key.chars().any(char::is_control) {
        Cow::Owned(format!("'{key}'"))
    } else {
        let mut quoted = String::with_capacity(key.len() + 2);
        quoted.push('"');
        for c in key.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
                c => quoted.push(c),
            }
        }
        quoted.push('"');
        Cow::Owned(quoted)
    }
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

fn located(prefix: &str, e: FieldError) -> ConfigError {
    let path = if e.path.is_empty() {
        prefix.to_string()
    } else if e.path.starts_with('[') {
        format!("{prefix}{}", e.path)
    } else {
        format!("{prefix}.{}", e.path)
    };
    ConfigError {
        path,
        message: e.message,
    }
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let path = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        }
        None => "(syntax)".into(),
    };
    err(path, format!("TOML syntax error: {}", e.message()))
}

fn section(
    root: &mut toml::Table,
    name: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, toml::Value)> {
    match root.remove(name) {
        None => Vec::new(),
        Some(toml::Value::Table(t)) => t.into_iter().collect(),
        Some(_) => {
            errors.push(err(
                name,
                "must be a table of named components, e.g. [sources.NAME]",
            ));
            Vec::new()
        }
    }
}

fn component_table(
    at: &str,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<toml::Table> {
    match value {
        toml::Value::Table(t) => Some(t),
        _ => {
            errors.push(err(at, "must be a table with a `type` key"));
            None
        }
    }
}

fn take_type(at: &str, table: &mut toml::Table, errors: &mut Vec<ConfigError>) -> Option<String> {
    match table.remove("type") {
        Some(toml::Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(err(format!("{at}.type"), "must be a string"));
            None
        }
        None => {
            errors.push(err(
                format!("{at}.type"),
                "missing: every component needs a `type`",
            ));
            None
        }
    }
}

fn take_string_list(
    at: &str,
    key: &str,
    table: &mut toml::Table,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<String>> {
    let path = format!("{at}.{key}");
    match table.remove(key) {
        None => {
            errors.push(err(
                path,
                "missing: list the channels this source puts into, e.g. [\"c1\"]",
            ));
            None
        }
        Some(toml::Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    toml::Value::String(s) => out.push(s),
                    _ => errors.push(err(
                        format!("{path}[{i}]"),
                        "must be a channel name (a string)",
                    )),
                }
            }
            if out.is_empty() {
                errors.push(err(path, "must name at least one channel"));
            }
            Some(out)
        }
        Some(_) => {
            errors.push(err(path, "must be a list of channel names, e.g. [\"c1\"]"));
            None
        }
    }
}

/// Names declared in the file, including components that failed to parse, so one mistake
/// does not cascade into "no such channel" errors elsewhere.
#[derive(Default)]
struct Declared {
    channels: Vec<String>,
    /// (consumer path, channel name)
    consumers: Vec<(String, String)>,
}

/// Cross-component checks: references resolve, each channel has exactly one consumer, no two
/// listeners share a port.
fn check_wiring(config: &Config, declared: &Declared) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let exists = |name: &str| declared.channels.iter().any(|c| c == name);
    let known = || declared.channels.join(", ");
    let missing = |name: &str| {
        if declared.channels.is_empty() {
            format!("no channel named `{name}`: no channels are defined")
        } else {
            format!("no channel named `{name}` (channels: {})", known())
        }
    };

    for (name, source) in &config.sources {
        let mut seen = Vec::new();
        for (i, ch) in source.channels.iter().enumerate() {
            if !exists(ch) {
                errors.push(err(
                    format!("{}.channels[{i}]", component_path("sources", name)),
                    missing(ch),
                ));
            }
            if seen.contains(&ch) {
                errors.push(err(
                    format!("{}.channels[{i}]", component_path("sources", name)),
                    format!("channel `{ch}` is listed twice"),
                ));
            }
            seen.push(ch);
        }
        for (key, ch) in source.selector.mentioned_channels() {
            if !source.channels.iter().any(|c| c == ch) {
                errors.push(err(
                    format!("{}.{key}", component_path("sources", name)),
                    format!("channel `{ch}` is not one of this source's channels"),
                ));
            }
        }
    }

    let mut consumers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (path, channel) in &declared.consumers {
        if !exists(channel) {
            let key = if path.starts_with("jobs.") {
                "input"
            } else {
                "channel"
            };
            errors.push(err(format!("{path}.{key}"), missing(channel)));
        }
        consumers
            .entry(channel.as_str())
            .or_default()
            .push(path.clone());
    }
    for name in &declared.channels {
        match consumers.get(name.as_str()).map(Vec::as_slice) {
            None | Some([]) => errors.push(err(
                component_path("channels", name),
                "no sink or job drains this channel: events put into it would never leave",
            )),
            Some([_]) => {}
            Some(many) => errors.push(err(
                component_path("channels", name),
                format!(
                    "consumed by {}; a channel has exactly one consumer (to copy events, give the source one channel per consumer)",
                    many.join(" and ")
                ),
            )),
        }
    }

    let mut listeners: Vec<(String, Listen)> = Vec::new();
    let http = config.http.iter().map(|h| {
        (
            "http.bind".to_string(),
            Listen {
                key: "bind",
                addr: h.bind,
                udp: false,
            },
        )
    });
    let sources = config.sources.iter().flat_map(|(n, s)| {
        s.config
            .listens()
            .into_iter()
            .map(move |l| (format!("{}.{}", component_path("sources", n), l.key), l))
    });
    let sinks = config.sinks.iter().flat_map(|(n, s)| {
        s.config
            .listens()
            .into_iter()
            .map(move |l| (format!("{}.{}", component_path("sinks", n), l.key), l))
    });
    for (path, listen) in http.chain(sources).chain(sinks) {
        if listen.addr.port() != 0 {
            if let Some((other, _)) = listeners.iter().find(|(_, l)| clashes(l, &listen)) {
                let proto = if listen.udp { "UDP" } else { "TCP" };
                errors.push(err(
                    &path,
                    format!(
                        "{proto} port {} is already used by {other}",
                        listen.addr.port()
                    ),
                ));
            }
        }
        listeners.push((path, listen));
    }
    errors
}

fn clashes(a: &Listen, b: &Listen) -> bool {
    let (a, b, same_proto) = (a.addr, b.addr, a.udp == b.udp);
    same_proto
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Config {
    /// One line for the startup log.
    pub fn summary(&self) -> String {
        format!(
            "{} source(s), {} channel(s), {} sink(s), {} job(s)",
            self.sources.len(),
            self.channels.len(),
            self.sinks.len(),
            self.jobs.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text, "t.toml")
            .unwrap_err()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const GOOD: &str = r#"
        [sources.in]
        type = "tcp"
        bind = "127.0.0.1:5000"
        channels = ["c"]
        [channels.c]
        type = "memory"
        max_bytes = "1MiB"
        [sinks.out]
        type = "console"
        channel = "c"
    "#;

    #[test]
    fn a_good_config_parses() {
        let c = parse(GOOD, "t").unwrap();
        assert_eq!(
            c.summary(),
            "1 source(s), 1 channel(s), 1 sink(s), 0 job(s)"
        );
    }

    #[test]
    fn the_embedded_default_is_valid() {
        parse(crate::DEFAULT_CONFIG, "<embedded default>").unwrap();
    }

    #[test]
    fn every_example_in_conf_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(e) = load_file(&path) {
                    panic!("{e}");
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 3,
            "only {checked} examples found in {}",
            dir.display()
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e = errors(&GOOD.replace("max_bytes", "max_bites"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("channels.c.max_bites: unknown field `max_bites`"),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = errors(&GOOD.replace("\"127.0.0.1:5000\"", "5000"));
        assert!(e[0].starts_with("sources.in.bind: "), "{e:?}");
        let e = errors(&GOOD.replace("\"1MiB\"", "\"lots\""));
        assert!(
            e[0].starts_with("channels.c.max_bytes: invalid size `lots`"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_type_lists_the_known_ones() {
        let e = errors(&GOOD.replace("\"console\"", "\"consol\""));
        assert_eq!(
            e,
            vec!["sinks.out.type: unknown type `consol`, expected one of: avro, console, kafka, null, spark"]
        );
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let e = errors(
            &GOOD
                .replace("\"console\"", "\"x\"")
                .replace("max_bytes", "y"),
        );
        // Both mistakes, and no cascade: the sink that failed to parse still counts as the consumer.
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn missing_channels_and_double_consumers_are_errors() {
        let e = errors(&GOOD.replace("channels = [\"c\"]", "channels = [\"nope\"]"));
        assert_eq!(
            e,
            vec!["sources.in.channels[0]: no channel named `nope` (channels: c)"]
        );
        let two = format!("{GOOD}\n[sinks.other]\ntype = \"null\"\nchannel = \"c\"\n");
        let e = errors(&two);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("channels.c: consumed by sinks.other and sinks.out"),
            "{e:?}"
        );
    }

    #[test]
    fn port_clashes_are_errors() {
        let text = format!(
            "{GOOD}\n[sources.again]\ntype = \"tcp\"\nbind = \"0.0.0.0:5000\"\nchannels = [\"c\"]\n"
        );
        let e = errors(&text);
        assert_eq!(
            e,
            vec!["sources.in.bind: TCP port 5000 is already used by sources.again.bind"]
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = errors("[sources.x]\ntype = \n");
        assert!(e[0].starts_with("line 2, column"), "{e:?}");
    }

    #[test]
    fn invalid_values_are_caught_by_component_checks() {
        let e = errors(&GOOD.replace("type = \"tcp\"", "type = \"tcp\"\nbatch_size = 0"));
        assert_eq!(e, vec!["sources.in.batch_size: must be at least 1"]);
    }

    #[test]
    fn interceptor_mistakes_name_their_entry() {
        let text = GOOD.replace(
            "channels = [\"c\"]",
            "channels = [\"c\"]\ninterceptors = [{ type = \"timestamp\" }, { type = \"static\", key = \"k\", vaule = \"v\" }]",
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("sources.in.interceptors[1]"), "{e:?}");
    }

    /// Found by the `config_toml` fuzz target (`fuzz/regressions/config_toml-empty-key-path`):
    /// an empty key made an error with an empty path, which names nothing.
    #[test]
    fn empty_and_dotted_keys_are_quoted_in_error_paths() {
        let input = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/config_toml-empty-key-path"
        ))
        .unwrap();
        let e = errors(&input);
        assert!(e[0].starts_with("'': unknown section"), "{e:?}");

        let e = errors(&format!(
            "{GOOD}\n[sinks.'']\ntype = \"null\"\nchannel = \"c\"\n"
        ));
        assert!(
            e[0].starts_with("channels.c: consumed by sinks.'' and sinks.out"),
            "{e:?}"
        );
        let e = errors(
            &GOOD
                .replace("[sinks.out]", "[sinks.\"a.b\"]")
                .replace("console", "consol"),
        );
        assert!(e[0].starts_with("sinks.'a.b'.type: unknown type"), "{e:?}");
        let e = errors(&GOOD.replace("max_bytes", "\"\""));
        assert!(e[0].starts_with("channels.c.'': unknown field"), "{e:?}");
        let e = errors("[sources.\"it's\"]\ntype = 1\n");
        assert!(
            e[0].starts_with("sources.\"it's\".type: must be a string"),
            "{e:?}"
        );
        assert_eq!(key_segment("a\tb"), "\"a\\u0009b\"");
    }

    #[test]
    fn selector_channels_must_belong_to_the_source() {
        let text = GOOD.replace(
            "channels = [\"c\"]",
            "channels = [\"c\"]\nselector = { type = \"multiplexing\", header = \"h\", mapping = { a = [\"zz\"] } }",
        );
        assert_eq!(
            errors(&text),
            vec!["sources.in.selector.mapping.a[0]: channel `zz` is not one of this source's channels"]
        );
    }
}
