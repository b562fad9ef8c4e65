//! `weir import-flume`: converts a Flume agent's `.properties` config into weir TOML.
//!
//! Every property of the chosen agent is either translated or listed in
//! [`Conversion::untranslated`] with its name and the reason; nothing is dropped silently.
//! Properties of other agents in the same file are ignored, as Flume ignores them.

use std::collections::{BTreeMap, BTreeSet};

use toml::{Table, Value};

/// The result: a weir config and what could not be carried over.
#[derive(Debug)]
pub struct Conversion {
    pub agent: String,
    pub toml: String,
    pub untranslated: Vec<Untranslated>,
}

/// One Flume property (or line) weir's config does not express.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Untranslated {
    /// The full property name (`a1.sources.r1.threads`) or `line N`.
    pub property: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("no properties for agent `{agent}` (agents in the file: {found})")]
    NoSuchAgent { agent: String, found: String },
    #[error("the file configures several agents ({found}); choose one with --agent")]
    SeveralAgents { found: String },
    #[error("the file configures no agent (no `<agent>.sources`, `.channels` or `.sinks` key)")]
    NoAgent,
}

/// Reads Java `.properties` text: `#`/`!` comments, `=`, `:` or whitespace separators,
/// backslash line continuations and escapes (`\uXXXX`, `\t`, …). Returns (key, value, line).
/// A line with a key and no separator is a key with an empty value, as in Java.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String, usize)>, ImportError> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let first = i + 1;
        let trimmed = raw.trim_start_matches([' ', '\t', '\u{c}']);
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            continue;
        }
        let mut logical = String::from(trimmed);
        while ends_with_odd_backslashes(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next.trim_start_matches([' ', '\t', '\u{c}'])),
                None => break,
            }
        }
        let (key, value) = split_key_value(&logical);
        let key = unescape(key).map_err(|message| ImportError::Syntax {
            line: first,
            message,
        })?;
        let value = unescape(value).map_err(|message| ImportError::Syntax {
            line: first,
            message,
        })?;
        out.push((key, value, first));
    }
    Ok(out)
}

fn ends_with_odd_backslashes(s: &str) -> bool {
    s.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1
}

fn split_key_value(line: &str) -> (&str, &str) {
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' | ' ' | '\t' | '\u{c}' => {
                let key = &line[..i];
                let mut rest = line[i..].trim_start_matches([' ', '\t', '\u{c}']);
                if c != '=' && c != ':' {
                    if let Some(r) = rest.strip_prefix(['=', ':']) {
                        rest = r;
                    }
                } else {
                    rest = &rest[1..];
                }
                return (key, rest.trim_start_matches([' ', '\t', '\u{c}']));
            }
            _ => {}
        }
    }
    (line, "")
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = (hex.len() == 4)
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| format!("malformed \\uxxxx escape `\\u{hex}`"))?;
                // Surrogate halves (a Java string's UTF-16) cannot stand alone in Rust.
                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// The properties of one agent, consumed as they are translated; what is left at the end is
/// untranslated.
struct Props {
    agent: String,
    map: BTreeMap<String, (String, usize)>,
    untranslated: Vec<Untranslated>,
}

impl Props {
    fn full(&self, key: &str) -> String {
        format!("{}.{key}", self.agent)
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.map.remove(key).map(|(v, _)| v)
    }

    /// Takes every key under `prefix.` (the returned keys are relative to it).
    fn take_prefix(&mut self, prefix: &str) -> BTreeMap<String, String> {
        let p = format!("{prefix}.");
        let keys: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with(&p))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let v = self.map.remove(&k)?.0;
                Some((k[p.len()..].to_string(), v))
            })
            .collect()
    }

    fn note(&mut self, key: &str, reason: impl Into<String>) {
        let property = self.full(key);
        self.untranslated.push(Untranslated {
            property,
            reason: reason.into(),
        });
    }

    fn note_rest(&mut self, prefix: &str, rest: BTreeMap<String, String>, reason: &str) {
        for k in rest.keys() {
            self.note(&format!("{prefix}.{k}"), reason);
        }
    }
}

fn list(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

fn int(v: &str) -> Option<i64> {
    v.trim().parse().ok()
}

fn boolean(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn millis(v: &str) -> Option<Value> {
    int(v)
        .filter(|n| *n >= 0)
        .map(|n| Value::String(format!("{n}ms")))
}

/// A component's own properties, with helpers that record what they took.
struct Component<'a> {
    props: &'a mut Props,
    /// `sources.r1`
    prefix: String,
    keys: BTreeMap<String, String>,
    out: Table,
}

impl Component<'_> {
    fn take(&mut self, key: &str) -> Option<String> {
        self.keys.remove(key)
    }

    fn note(&mut self, key: &str, reason: &str) {
        let prefix = self.prefix.clone();
        self.props.note(&format!("{prefix}.{key}"), reason);
    }

    fn set(&mut self, key: &str, value: Value) {
        self.out.insert(key.to_string(), value);
    }

    /// Copies a property through `f`; a value `f` rejects is listed.
    fn map(&mut self, from: &str, to: &str, f: impl Fn(&str) -> Option<Value>) {
        if let Some(v) = self.take(from) {
            match f(&v) {
                Some(value) => self.set(to, value),
                None => self.note(from, &format!("cannot read `{v}` as a {to} value")),
            }
        }
    }

    fn map_int(&mut self, from: &str, to: &str) {
        self.map(from, to, |v| int(v).map(Value::Integer));
    }

    fn map_bool(&mut self, from: &str, to: &str) {
        self.map(from, to, |v| boolean(v).map(Value::Boolean));
    }

    fn map_str(&mut self, from: &str, to: &str) {
        self.map(from, to, |v| Some(Value::String(v.to_string())));
    }

    /// Flume's `bind`/`host` + `port` → `bind = "host:port"`.
    fn bind(&mut self, host_key: &str, default_host: Option<&str>) {
        let host = self.take(host_key).or(default_host.map(str::to_string));
        match (host, self.take("port")) {
            (Some(h), Some(p)) if int(&p).is_some() => {
                self.set("bind", Value::String(format!("{h}:{p}")))
            }
            (h, p) => {
                let why = format!("needs `{host_key}` and a numeric `port` (got {h:?}, {p:?})");
                self.note(host_key, &why);
            }
        }
    }

    /// Whatever the translation did not take.
    fn finish(mut self, reason: &str) -> Table {
        let rest = std::mem::take(&mut self.keys);
        let prefix = self.prefix.clone();
        self.props.note_rest(&prefix, rest, reason);
        self.out
    }
}

const NO_EQUIVALENT: &str = "no weir equivalent; weir's default behaviour applies";

/// Converts the properties of `agent` (or of the only agent in the file).
pub fn convert(text: &str, agent: Option<&str>) -> Result<Conversion, ImportError> {
    let entries = parse_properties(text)?;
    let mut agents = BTreeSet::new();
    for (k, _, _) in &entries {
        if let Some((a, rest)) = k.split_once('.') {
            if ["sources", "channels", "sinks", "sinkgroups"].contains(&rest) {
                agents.insert(a.to_string());
            }
        }
    }
    let found = || agents.iter().cloned().collect::<Vec<_>>().join(", ");
    let agent = match agent {
        Some(a) if agents.contains(a) => a.to_string(),
        Some(a) => {
            return Err(ImportError::NoSuchAgent {
                agent: a.to_string(),
                found: found(),
            })
        }
        None if agents.len() == 1 => agents.iter().next().cloned().unwrap_or_default(),
        None if agents.is_empty() => return Err(ImportError::NoAgent),
        None => return Err(ImportError::SeveralAgents { found: found() }),
    };
    let mut props = Props {
        agent: agent.clone(),
        map: BTreeMap::new(),
        untranslated: Vec::new(),
    };
    let prefix = format!("{agent}.");
    for (k, v, line) in entries {
        if let Some(rest) = k.strip_prefix(&prefix) {
            if v.contains("${") {
                props.untranslated.push(Untranslated {
                    property: k.clone(),
                    reason: format!("line {line}: value substitution `{v}` is kept literally; put the resolved value in"),
                });
            }
            props.map.insert(rest.to_string(), (v, line));
        }
    }

    let mut root = Table::new();
    let mut agent_table = Table::new();
    agent_table.insert("name".into(), Value::String(agent.clone()));
    root.insert("agent".into(), Value::Table(agent_table));

    let channel_names = props.take("channels").map(|v| list(&v)).unwrap_or_default();
    let source_names = props.take("sources").map(|v| list(&v)).unwrap_or_default();
    let sink_names = props.take("sinks").map(|v| list(&v)).unwrap_or_default();
    let group_names = props
        .take("sinkgroups")
        .map(|v| list(&v))
        .unwrap_or_default();

    let mut channels = Table::new();
    for name in &channel_names {
        if let Some(t) = convert_channel(&mut props, name) {
            channels.insert(name.clone(), Value::Table(t));
        }
    }
    let mut sources = Table::new();
    for name in &source_names {
        if let Some(t) = convert_source(&mut props, name, &channels) {
            sources.insert(name.clone(), Value::Table(t));
        }
    }
    let mut sinks = Table::new();
    for name in &sink_names {
        if let Some(t) = convert_sink(&mut props, name) {
            sinks.insert(name.clone(), Value::Table(t));
        }
    }
    for g in &group_names {
        convert_sink_group(&mut props, g, &mut sinks);
    }
    one_sink_per_channel(&mut props, &mut sinks);

    for (k, (_, line)) in std::mem::take(&mut props.map) {
        props.untranslated.push(Untranslated {
            property: format!("{agent}.{k}"),
            reason: format!(
                "line {line}: not a property of any listed source, channel, sink or sink group"
            ),
        });
    }
    if !sources.is_empty() {
        root.insert("sources".into(), Value::Table(sources));
    }
    if !channels.is_empty() {
        root.insert("channels".into(), Value::Table(channels));
    }
    if !sinks.is_empty() {
        root.insert("sinks".into(), Value::Table(sinks));
    }
    let body = toml::to_string(&root).unwrap_or_default();
    let mut toml = format!(
        "# Converted from Flume agent `{}` by `weir import-flume`.\n# Check it with `weir validate --config FILE`.\n",
        agent.escape_debug()
    );
    if !props.untranslated.is_empty() {
        toml.push_str("# Not translated (see the list `weir import-flume` printed):\n");
        for u in &props.untranslated {
            // Keys and values may hold any character (`\n` escapes); a comment must stay one line.
            toml.push_str(&format!(
                "#   {}: {}\n",
                u.property.escape_debug(),
                u.reason.escape_debug()
            ));
        }
    }
    toml.push('\n');
    toml.push_str(&body);
    Ok(Conversion {
        agent,
        toml,
        untranslated: props.untranslated,
    })
}

/// Flume type names are case-insensitive aliases or class names.
fn type_alias(t: &str) -> String {
    let lower = t.to_ascii_lowercase();
    match lower.as_str() {
        "org.apache.flume.source.avrosource" => "avro".into(),
        "org.apache.flume.source.netcatsource" => "netcat".into(),
        "org.apache.flume.source.taildir.taildirsource" => "taildir".into(),
        "org.apache.flume.source.spooldirectorysource" => "spooldir".into(),
        "org.apache.flume.channel.memorychannel" => "memory".into(),
        "org.apache.flume.channel.file.filechannel" => "file".into(),
        "org.apache.flume.sink.loggersink" => "logger".into(),
        "org.apache.flume.sink.nullsink" => "null".into(),
        "org.apache.flume.sink.avrosink" => "avro".into(),
        "org.apache.spark.streaming.flume.sink.sparksink" => "spark".into(),
        _ => lower,
    }
}

fn component<'a>(props: &'a mut Props, kind: &str, name: &str) -> Component<'a> {
    let prefix = format!("{kind}.{name}");
    let keys = props.take_prefix(&prefix);
    Component {
        props,
        prefix,
        keys,
        out: Table::new(),
    }
}

fn convert_channel(props: &mut Props, name: &str) -> Option<Table> {
    let mut c = component(props, "channels", name);
    let ty = c.take("type").map(|t| type_alias(&t));
    match ty.as_deref() {
        Some("memory") => {
            c.set("type", Value::String("memory".into()));
            c.map_int("capacity", "max_events");
            c.map_int("transactionCapacity", "transaction_capacity");
            c.map_int("byteCapacity", "max_bytes");
            if c.take("keep-alive").is_some() {
                c.note("keep-alive", "weir refuses a put at once when the channel is full (the source answers FAILED) instead of waiting");
            }
            if c.take("byteCapacityBufferPercentage").is_some() {
                c.note(
                    "byteCapacityBufferPercentage",
                    "weir counts body and header bytes exactly",
                );
            }
        }
        Some("file") => {
            c.set("type", Value::String("file".into()));
            c.map_int("capacity", "max_events");
            c.map_int("transactionCapacity", "transaction_capacity");
            c.map_int("maxFileSize", "segment_bytes");
            for k in ["checkpointDir", "dataDirs", "backupCheckpointDir"] {
                if c.take(k).is_some() {
                    c.note(k, "weir keeps a file channel's log under agent.data_dir/channels/NAME; set agent.data_dir");
                }
            }
            for k in [
                "checkpointInterval",
                "useDualCheckpoints",
                "checkpointOnClose",
                "keep-alive",
                "minimumRequiredSpace",
            ] {
                if c.take(k).is_some() {
                    c.note(k, "weir's write-ahead log has no checkpoints or space reserve; puts fail cleanly on a full disk");
                }
            }
        }
        Some(other) => {
            let why = format!("channel type `{other}` is not supported by weir; channel skipped");
            c.note("type", &why);
            c.finish("belongs to a skipped channel");
            return None;
        }
        None => {
            c.note("type", "channel has no type; skipped");
            c.finish("belongs to a skipped channel");
            return None;
        }
    }
    Some(c.finish(NO_EQUIVALENT))
}

fn convert_source(props: &mut Props, name: &str, channels: &Table) -> Option<Table> {
    let mut c = component(props, "sources", name);
    let ty = c.take("type").map(|t| type_alias(&t));
    match ty.as_deref() {
        Some("avro") => {
            c.set("type", Value::String("avro".into()));
            c.bind("bind", None);
            c.map("compression-type", "compression", |v| {
                match v.to_ascii_lowercase().as_str() {
                    "deflate" => Some(Value::String("deflate".into())),
                    "none" => Some(Value::String("none".into())),
                    _ => None,
                }
            });
            let filter_on = c
                .take("ipFilter")
                .and_then(|v| boolean(&v))
                .unwrap_or(false);
            match c.take("ipFilterRules") {
                Some(rules) if filter_on => c.set("ip_filter", Value::String(rules)),
                Some(_) => c.note(
                    "ipFilterRules",
                    "ipFilter is not true, so Flume ignores these rules",
                ),
                None => {}
            }
            for k in [
                "ssl",
                "keystore",
                "keystore-password",
                "keystore-type",
                "exclude-protocols",
                "include-protocols",
                "exclude-cipher-suites",
                "include-cipher-suites",
            ] {
                if c.take(k).is_some() {
                    c.note(k, "weir's TLS takes PEM files: convert the keystore (keytool/openssl) and set tls = { cert = \"…\", key = \"…\" }");
                }
            }
            if c.take("threads").is_some() {
                c.note(
                    "threads",
                    "weir serves connections on async tasks; use max_connections to bound them",
                );
            }
        }
        Some("netcat") => {
            c.set("type", Value::String("tcp".into()));
            c.bind("bind", None);
            c.map_int("max-line-length", "max_line_length");
            // Flume acknowledges every event unless told otherwise; weir's default is off.
            let ack = c
                .take("ack-every-event")
                .and_then(|v| boolean(&v))
                .unwrap_or(true);
            c.set("ack", Value::Boolean(ack));
            if let Some(enc) = c.take("encoding") {
                if !enc.eq_ignore_ascii_case("utf-8") {
                    c.note(
                        "encoding",
                        "weir reads lines as bytes and keeps them as they are",
                    );
                }
            }
        }
        Some("netcatudp") => {
            c.set("type", Value::String("udp".into()));
            c.bind("bind", Some("0.0.0.0"));
            c.set("mode", Value::String("datagram".into()));
            c.map_str("remoteAddressHeader", "remote_address_header");
        }
        Some(t @ ("syslogtcp" | "syslogudp" | "multiport_syslogtcp")) => {
            c.set("type", Value::String("syslog".into()));
            let mode = if t == "syslogudp" { "udp" } else { "tcp" };
            c.set("mode", Value::String(mode.into()));
            if t == "multiport_syslogtcp" {
                let host = c.take("host").unwrap_or_else(|| "0.0.0.0".into());
                match c.take("ports").map(|p| list(&p)) {
                    Some(ports) if ports.len() == 1 => {
                        c.set("bind", Value::String(format!("{host}:{}", ports[0])))
                    }
                    _ => c.note(
                        "ports",
                        "weir's syslog source listens on one port: make one source per port",
                    ),
                }
            } else {
                c.bind("host", (mode == "udp").then_some("0.0.0.0"));
            }
            c.map_int("eventSize", "max_message_bytes");
            c.map("keepFields", "keep_fields", |v| {
                match v.to_ascii_lowercase().as_str() {
                    "all" | "true" => Some(Value::String("all".into())),
                    "none" | "false" => Some(Value::String("none".into())),
                    _ => None,
                }
            });
            c.map_str("clientIPHeader", "client_ip_header");
        }
        Some("spooldir") => {
            c.set("type", Value::String("spooldir".into()));
            c.map_str("spoolDir", "dir");
            c.map_str("fileSuffix", "completed_suffix");
            c.map("deletePolicy", "delete_policy", |v| {
                Some(Value::String(v.to_ascii_lowercase()))
            });
            c.map_str("trackerDir", "tracker_dir");
            c.map("consumeOrder", "consume_order", |v| {
                Some(Value::String(v.to_ascii_lowercase()))
            });
            c.map_bool("recursiveDirectorySearch", "recursive");
            c.map("pollDelay", "poll_interval", millis);
            c.map_int("batchSize", "batch_size");
            c.map_bool("fileHeader", "file_header");
            c.map_bool("basenameHeader", "basename_header");
            for (k, default) in [("includePattern", "^.*$"), ("ignorePattern", "^$")] {
                if let Some(v) = c.take(k) {
                    if v != default {
                        c.note(k, "Flume's pattern is a regex, weir's include_pattern/ignore_pattern are globs: write the glob by hand");
                    }
                }
            }
        }
        Some("taildir") => {
            c.set("type", Value::String("taildir".into()));
            let groups = c.take("filegroups").map(|g| list(&g)).unwrap_or_default();
            let mut out_groups = Table::new();
            for g in &groups {
                let mut group = Table::new();
                match c.take(&format!("filegroups.{g}")) {
                    Some(path) => match regex_path_to_glob(&path) {
                        Some(glob) => {
                            group.insert("paths".into(), strings(&[glob]));
                        }
                        None => c.note(
                            &format!("filegroups.{g}"),
                            "the file-name regex has no glob equivalent: write the glob by hand",
                        ),
                    },
                    None => c.note("filegroups", &format!("group `{g}` has no path")),
                }
                let headers = c
                    .keys
                    .keys()
                    .filter(|k| k.starts_with(&format!("headers.{g}.")))
                    .cloned()
                    .collect::<Vec<_>>();
                let mut h = Table::new();
                for k in headers {
                    if let Some(v) = c.take(&k) {
                        h.insert(
                            k[format!("headers.{g}.").len()..].to_string(),
                            Value::String(v),
                        );
                    }
                }
                if !h.is_empty() {
                    group.insert("headers".into(), Value::Table(h));
                }
                if group.contains_key("paths") {
                    out_groups.insert(g.clone(), Value::Table(group));
                }
            }
            if !out_groups.is_empty() {
                c.set("groups", Value::Table(out_groups));
            }
            c.map_str("positionFile", "position_file");
            c.map_int("batchSize", "batch_size");
            c.map("skipToEnd", "start_at", |v| {
                boolean(v).map(|b| Value::String(if b { "end" } else { "beginning" }.into()))
            });
            c.map_bool("fileHeader", "file_header");
            c.map_bool("byteOffsetHeader", "byte_offset_header");
            for k in [
                "idleTimeout",
                "writePosInterval",
                "cachePatternMatching",
                "backoffSleepIncrement",
                "maxBackoffSleep",
                "maxBatchCount",
            ] {
                if c.take(k).is_some() {
                    c.note(k, "weir watches files with inotify and writes positions after each commit; no equivalent setting");
                }
            }
        }
        Some(other) => {
            let why = format!("source type `{other}` is not supported by weir; source skipped");
            c.note("type", &why);
            c.finish("belongs to a skipped source");
            return None;
        }
        None => {
            c.note("type", "source has no type; skipped");
            c.finish("belongs to a skipped source");
            return None;
        }
    }
    let wanted = c.take("channels").map(|v| list(&v)).unwrap_or_default();
    let kept: Vec<String> = wanted
        .iter()
        .filter(|n| channels.contains_key(*n))
        .cloned()
        .collect();
    if kept.len() != wanted.len() {
        c.note(
            "channels",
            "names a channel that is not converted; left out",
        );
    }
    c.set("channels", strings(&kept));
    selector(&mut c);
    interceptors(&mut c);
    Some(c.finish(NO_EQUIVALENT))
}

/// `/var/log/app/.*\.log` → `/var/log/app/*.log`, when the regex is a simple file pattern.
fn regex_path_to_glob(path: &str) -> Option<String> {
    let (dir, file) = path.rsplit_once('/')?;
    let mut glob = String::new();
    let mut chars = file.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                glob.push('*');
            }
            '.' => glob.push('?'),
            '\\' => match chars.next() {
                Some(e) if !e.is_alphanumeric() => glob.push(e),
                _ => return None,
            },
            '^' | '$' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '+' | '*' | '?' => return None,
            c => glob.push(c),
        }
    }
    Some(format!("{dir}/{glob}"))
}

fn selector(c: &mut Component<'_>) {
    let ty = c.take("selector.type").map(|t| t.to_ascii_lowercase());
    match ty.as_deref() {
        None | Some("replicating") => {
            if let Some(opt) = c.take("selector.optional") {
                let mut t = Table::new();
                t.insert("type".into(), Value::String("replicating".into()));
                t.insert("optional".into(), strings(&list(&opt)));
                c.set("selector", Value::Table(t));
            }
        }
        Some("multiplexing") => {
            let mut t = Table::new();
            t.insert("type".into(), Value::String("multiplexing".into()));
            let header = c
                .take("selector.header")
                .unwrap_or_else(|| "flume.selector.header".into());
            t.insert("header".into(), Value::String(header));
            let mut mapping = Table::new();
            let mut optional = Table::new();
            let keys: Vec<String> = c.keys.keys().cloned().collect();
            for k in keys {
                if let Some(v) = k.strip_prefix("selector.mapping.") {
                    let chans = c.take(&k).map(|x| list(&x)).unwrap_or_default();
                    mapping.insert(v.to_string(), strings(&chans));
                } else if let Some(v) = k.strip_prefix("selector.optional.") {
                    let chans = c.take(&k).map(|x| list(&x)).unwrap_or_default();
                    optional.insert(v.to_string(), strings(&chans));
                }
            }
            t.insert("mapping".into(), Value::Table(mapping));
            if !optional.is_empty() {
                t.insert("optional".into(), Value::Table(optional));
            }
            if let Some(d) = c.take("selector.default") {
                t.insert("default".into(), strings(&list(&d)));
            }
            c.set("selector", Value::Table(t));
        }
        Some(other) => {
            let why = format!("selector `{other}` is not supported (weir has replicating and multiplexing); every event goes to every channel");
            c.note("selector.type", &why);
        }
    }
}

fn interceptors(c: &mut Component<'_>) {
    let Some(names) = c.take("interceptors").map(|v| list(&v)) else {
        return;
    };
    let mut out = Vec::new();
    for n in names {
        let p = format!("interceptors.{n}");
        let ty = c.take(&format!("{p}.type")).map(|t| t.to_ascii_lowercase());
        let mut t = Table::new();
        let take = |c: &mut Component<'_>, from: &str| c.take(&format!("{p}.{from}"));
        match ty.as_deref() {
            Some("timestamp")
            | Some("org.apache.flume.interceptor.timestampinterceptor$builder") => {
                t.insert("type".into(), Value::String("timestamp".into()));
                if let Some(h) = take(c, "headerName") {
                    t.insert("header".into(), Value::String(h));
                }
                if let Some(b) = take(c, "preserveExisting").and_then(|v| boolean(&v)) {
                    t.insert("preserve_existing".into(), Value::Boolean(b));
                }
            }
            Some("host") | Some("org.apache.flume.interceptor.hostinterceptor$builder") => {
                t.insert("type".into(), Value::String("host".into()));
                if let Some(h) = take(c, "hostHeader") {
                    t.insert("header".into(), Value::String(h));
                }
                if let Some(b) = take(c, "useIP").and_then(|v| boolean(&v)) {
                    t.insert("use_ip".into(), Value::Boolean(b));
                }
                if let Some(b) = take(c, "preserveExisting").and_then(|v| boolean(&v)) {
                    t.insert("preserve_existing".into(), Value::Boolean(b));
                }
            }
            Some("static") | Some("org.apache.flume.interceptor.staticinterceptor$builder") => {
                t.insert("type".into(), Value::String("static".into()));
                t.insert(
                    "key".into(),
                    Value::String(take(c, "key").unwrap_or_else(|| "key".into())),
                );
                t.insert(
                    "value".into(),
                    Value::String(take(c, "value").unwrap_or_else(|| "value".into())),
                );
                if let Some(b) = take(c, "preserveExisting").and_then(|v| boolean(&v)) {
                    t.insert("preserve_existing".into(), Value::Boolean(b));
                }
            }
            other => {
                let why = format!("interceptor type `{}` is not supported (weir has timestamp, host, static); left out", other.unwrap_or("(none)"));
                c.note(&format!("{p}.type"), &why);
                let rest: Vec<String> = c
                    .keys
                    .keys()
                    .filter(|k| k.starts_with(&format!("{p}.")))
                    .cloned()
                    .collect();
                for k in rest {
                    c.take(&k);
                    c.note(&k, "belongs to a skipped interceptor");
                }
                continue;
            }
        }
        out.push(Value::Table(t));
    }
    if !out.is_empty() {
        c.set("interceptors", Value::Array(out));
    }
}

fn convert_sink(props: &mut Props, name: &str) -> Option<Table> {
    let mut c = component(props, "sinks", name);
    let ty = c.take("type").map(|t| type_alias(&t));
    match ty.as_deref() {
        Some("avro") => {
            c.set("type", Value::String("avro".into()));
            match (c.take("hostname"), c.take("port")) {
                (Some(h), Some(p)) if int(&p).is_some() => {
                    c.set("hosts", strings(&[format!("{h}:{p}")]))
                }
                _ => c.note(
                    "hostname",
                    "an avro sink needs `hostname` and a numeric `port`",
                ),
            }
            c.map_int("batch-size", "batch_size");
            c.map("compression-type", "compression", |v| {
                match v.to_ascii_lowercase().as_str() {
                    "deflate" => Some(Value::String("deflate".into())),
                    "none" => Some(Value::String("none".into())),
                    _ => None,
                }
            });
            c.map_int("compression-level", "compression_level");
            c.map("connect-timeout", "connect_timeout", millis);
            c.map("request-timeout", "request_timeout", millis);
            c.map(
                "reset-connection-interval",
                "reset_connection_interval",
                |v| int(v).map(|s| Value::String(format!("{s}s"))),
            );
            let ssl = c.take("ssl").and_then(|v| boolean(&v)).unwrap_or(false);
            let trust_all = c
                .take("trust-all-certs")
                .and_then(|v| boolean(&v))
                .unwrap_or(false);
            if ssl && trust_all {
                let mut t = Table::new();
                t.insert("trust_all".into(), Value::Boolean(true));
                c.set("tls", Value::Table(t));
            } else if ssl {
                c.note(
                    "ssl",
                    "weir's TLS client takes a PEM CA file: set tls = { ca = \"ca.pem\" }",
                );
            }
            for k in [
                "truststore",
                "truststore-password",
                "truststore-type",
                "exclude-protocols",
                "maxIoWorkers",
            ] {
                if c.take(k).is_some() {
                    c.note(k, "no weir equivalent (TLS trust comes from a PEM CA file)");
                }
            }
        }
        Some("spark") => {
            c.set("type", Value::String("spark".into()));
            c.bind("hostname", None);
            c.map_int("threads", "threads");
            c.map("timeout", "transaction_timeout", |v| {
                int(v).map(|s| Value::String(format!("{s}s")))
            });
            if c.take("backoffInterval").is_some() {
                c.note(
                    "backoffInterval",
                    "weir's spark sink waits on the channel instead of polling",
                );
            }
        }
        Some("logger") => {
            c.set("type", Value::String("console".into()));
            c.map_int("maxBytesToLog", "max_body_bytes");
        }
        Some("null") => {
            c.set("type", Value::String("null".into()));
            c.map_int("batchSize", "batch_size");
        }
        Some(other) => {
            let why = format!("sink type `{other}` is not supported by weir; sink skipped");
            c.note("type", &why);
            c.finish("belongs to a skipped sink");
            return None;
        }
        None => {
            c.note("type", "sink has no type; skipped");
            c.finish("belongs to a skipped sink");
            return None;
        }
    }
    match c.take("channel") {
        Some(ch) => c.set("channel", Value::String(ch)),
        None => c.note("channel", "a sink needs a channel"),
    }
    Some(c.finish(NO_EQUIVALENT))
}

/// A failover or load-balancing group of avro sinks on one channel becomes one avro sink
/// with several hosts.
fn convert_sink_group(props: &mut Props, name: &str, sinks: &mut Table) {
    let mut c = component(props, "sinkgroups", name);
    let members = c.take("sinks").map(|v| list(&v)).unwrap_or_default();
    let processor = c
        .take("processor.type")
        .map(|t| t.to_ascii_lowercase())
        .unwrap_or_else(|| "default".into());
    let avro: Vec<(String, Table)> = members
        .iter()
        .filter_map(|m| match sinks.get(m) {
            Some(Value::Table(t)) if t.get("type").and_then(Value::as_str) == Some("avro") => {
                Some((m.clone(), t.clone()))
            }
            _ => None,
        })
        .collect();
    let channels: BTreeSet<&str> = avro
        .iter()
        .filter_map(|(_, t)| t.get("channel").and_then(Value::as_str))
        .collect();
    if processor == "default"
        || avro.len() != members.len()
        || channels.len() != 1
        || avro.is_empty()
    {
        c.note("sinks", "only a group of avro sinks on one channel is translated (into one avro sink with several hosts); the sinks stay separate");
        c.finish("belongs to an untranslated sink group");
        return;
    }
    let mut order: Vec<(i64, usize, String, Vec<Value>)> = avro
        .iter()
        .enumerate()
        .map(|(i, (m, t))| {
            let prio = c
                .take(&format!("processor.priority.{m}"))
                .and_then(|p| int(&p))
                .unwrap_or(0);
            let hosts = t
                .get("hosts")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            (-prio, i, m.clone(), hosts)
        })
        .collect();
    order.sort_by_key(|o| (o.0, o.1));
    let (first, mut merged) = (order[0].2.clone(), avro[0].1.clone());
    merged.insert(
        "hosts".into(),
        Value::Array(order.iter().flat_map(|o| o.3.clone()).collect()),
    );
    let selection = match processor.as_str() {
        "failover" => "failover".to_string(),
        "load_balance" => match c
            .take("processor.selector")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            Some("random") => "random".into(),
            _ => "round_robin".into(),
        },
        other => {
            let why = format!("processor `{other}` is not supported; treated as failover");
            c.note("processor.type", &why);
            "failover".into()
        }
    };
    merged.insert("selection".into(), Value::String(selection));
    c.map("processor.maxpenalty", "max_penalty", millis);
    c.map("processor.selector.maxTimeOut", "max_penalty", millis);
    if let Some(p) = c.out.remove("max_penalty") {
        merged.insert("max_penalty".into(), p);
    }
    if c.take("processor.backoff").is_some() {
        c.note(
            "processor.backoff",
            "weir's avro sink always penalises a failed host (1 s doubling to max_penalty)",
        );
    }
    for (_, _, m, _) in &order {
        sinks.remove(m);
    }
    sinks.insert(first, Value::Table(merged));
    c.finish(NO_EQUIVALENT);
}

/// weir drains each channel with exactly one sink (Flume allows competing sinks).
fn one_sink_per_channel(props: &mut Props, sinks: &mut Table) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let names: Vec<String> = sinks.keys().cloned().collect();
    for n in names {
        let ch = sinks
            .get(&n)
            .and_then(|s| s.get("channel"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(ch) = ch {
            if let Some(first) = seen.get(&ch) {
                let why = format!("channel `{ch}` is already drained by sink `{first}`; weir allows one sink per channel, so this sink was left out");
                props.note(&format!("sinks.{n}"), why);
                sinks.remove(&n);
            } else {
                seen.insert(ch, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_properties_syntax() {
        let text = "# comment\n! also\n a = 1\nb:2\nc 3\nd=multi \\\n   line\ne=\\u0041\\t!\nf\n";
        let p = parse_properties(text).unwrap();
        let kv: Vec<(&str, &str)> = p.iter().map(|(k, v, _)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            kv,
            [
                ("a", "1"),
                ("b", "2"),
                ("c", "3"),
                ("d", "multi line"),
                ("e", "A\t!"),
                ("f", "")
            ]
        );
        assert_eq!(
            parse_properties("x=\\u12G4").unwrap_err(),
            ImportError::Syntax {
                line: 1,
                message: "malformed \\uxxxx escape `\\u12G4`".into()
            }
        );
    }

    #[test]
    fn regex_file_patterns_become_globs_when_simple() {
        assert_eq!(
            regex_path_to_glob("/var/log/app/.*\\.log").as_deref(),
            Some("/var/log/app/*.log")
        );
        assert_eq!(
            regex_path_to_glob("/var/log/a.log").as_deref(),
            Some("/var/log/a?log")
        );
        assert_eq!(regex_path_to_glob("/var/log/(a|b)\\.log"), None);
    }

    /// Found by the flume_import fuzz target: a key with an escaped newline broke the comment
    /// listing it, so the output was not TOML.
    #[test]
    fn control_characters_in_untranslated_names_stay_inside_comments() {
        let c = convert(
            "a.sources = r\na.sources.r.type = avro\na.x\\ny\\r = 1\n",
            None,
        )
        .unwrap();
        assert!(c.untranslated.iter().any(|u| u.property == "a.x\ny\r"));
        let parsed: Result<Table, _> = c.toml.parse();
        assert!(parsed.is_ok(), "{}", c.toml);
        // …and in the agent's name, which the header comment repeats.
        let c = convert("\\u0000a\\n.sources = r\n", None).unwrap();
        let parsed: Result<Table, _> = c.toml.parse();
        assert!(parsed.is_ok(), "{}", c.toml);
    }

    #[test]
    fn agent_choice() {
        let two = "a1.sources = r\nb2.sinks = k\n";
        assert!(matches!(
            convert(two, None),
            Err(ImportError::SeveralAgents { .. })
        ));
        assert!(matches!(
            convert(two, Some("zz")),
            Err(ImportError::NoSuchAgent { .. })
        ));
        assert_eq!(convert("x=1\n", None).unwrap_err(), ImportError::NoAgent);
        assert_eq!(convert(two, Some("b2")).unwrap().agent, "b2");
    }
}
