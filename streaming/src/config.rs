//! Declarative jobs: `[jobs.NAME]` in the agent's TOML.
//!
//! ```toml
//! [jobs.request_count]
//! input = "to_job"
//! batch_interval = "2s"
//! steps = [{ split = " ", field = 2 }, { count_by_value = {} }]
//! output = { type = "print", n = 10 }
//! ```
//!
//! Each event flows through the steps as one byte string (the body at first):
//! `split`+`field`, `regex` (+`group`), `json` (dotted path) and `header` replace it,
//! `filter`/`filter_not` keep or drop it, `key_by = [steps…]` derives a key from it (the value
//! stays), then at most one aggregation — `count_by_value = {}` or `reduce_by_key = "sum" |
//! "min" | "max"` (values parsed as numbers) — and an optional `window`. Without an
//! aggregation the job outputs the extracted strings. A record a step cannot interpret (no
//! such field, no regex match, not JSON, missing header, key not UTF-8, value not a number)
//! counts as malformed in the batch metrics; it never fails the job.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use regex::bytes::Regex;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use weir_core::{Channel, ConfigDuration, Event};

use crate::clock::SharedClock;
use crate::job::{Job, JobError, JobOptions, StreamingContext};
use crate::output::{text_event, EventsFn, OutputFmt, PrintTarget};
use crate::rate::PidConfig;
use crate::stream::{BatchCx, EventStream, SliceCounts, Stream};

/// `[jobs.NAME]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// The input (shorthand for `inputs = [input]`): a channel name, or
    /// `{ kafka = { … } }` for the Kafka direct input.
    #[serde(default)]
    pub input: Option<InputRef>,
    /// Inputs; their batches are unioned. The job is each channel's only consumer.
    #[serde(default)]
    pub inputs: Vec<InputRef>,
    /// Batch interval `B`; batch times are multiples of it since the Unix epoch.
    #[serde(default = "default_batch_interval")]
    pub batch_interval: ConfigDuration,
    /// The operator steps, in order (see the module docs).
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Window over the (aggregated) results; the same as a final `{ window = … }` step.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// Where results go.
    pub output: OutputConfig,
    /// Spark's PID rate estimator limits how many events the next batch takes.
    #[serde(default)]
    pub backpressure: bool,
    /// Records/s per input before the first estimate (Spark's `backpressure.initialRate`).
    #[serde(default)]
    pub initial_rate: Option<u64>,
    /// Hard cap, records/s per input (Spark's `receiver.maxRate`).
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// Most events one batch takes from one input.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// How often window/state is checkpointed; unset = every batch. Inputs stay uncommitted
    /// until the checkpoint that covers them.
    #[serde(default)]
    pub checkpoint_interval: Option<ConfigDuration>,
    /// Batches kept in the job's metrics.
    #[serde(default = "default_retained_batches")]
    pub retained_batches: usize,
    /// PID gains (defaults are Spark's).
    #[serde(default)]
    pub pid: PidSection,
}

/// One job input: `"channel"` or `{ kafka = { … } }`. The Kafka direct input lives in
/// `weir_kafka::direct` (this crate does not depend on librdkafka): its table is kept as
/// is for the agent to check and build.
#[derive(Clone, Debug, PartialEq)]
pub enum InputRef {
    Channel(String),
    Kafka(serde_json::Value),
}

impl<'de> Deserialize<'de> for InputRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(InputRef::Channel(s)),
            serde_json::Value::Object(mut m) if m.len() == 1 && m.contains_key("kafka") => {
                Ok(InputRef::Kafka(m.remove("kafka").unwrap_or_default()))
            }
            _ => Err(D::Error::custom(
                "expected a channel name or a table `{ kafka = { … } }`",
            )),
        }
    }
}

const fn default_batch_interval() -> ConfigDuration {
    ConfigDuration::from_secs(2)
}
const fn default_max_batch_events() -> usize {
    2_000_000
}
const fn default_retained_batches() -> usize {
    1000
}

/// `pid = { proportional, integral, derived, min_rate }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PidSection {
    #[serde(default = "default_kp")]
    pub proportional: f64,
    #[serde(default = "default_ki")]
    pub integral: f64,
    #[serde(default)]
    pub derived: f64,
    #[serde(default = "default_min_rate")]
    pub min_rate: f64,
}

const fn default_kp() -> f64 {
    1.0
}
const fn default_ki() -> f64 {
    0.2
}
const fn default_min_rate() -> f64 {
    100.0
}

impl Default for PidSection {
    fn default() -> Self {
        PidSection {
            proportional: default_kp(),
            integral: default_ki(),
            derived: 0.0,
            min_rate: default_min_rate(),
        }
    }
}

/// One step; exactly one of the step keys must be present.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Split on this literal separator and keep field `field` (0-based).
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default)]
    pub field: Option<usize>,
    /// Extract with a regex (bytes); keeps capture `group` (default 1 if the regex has a
    /// group, else the whole match). No match = malformed.
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub group: Option<usize>,
    /// Parse as JSON and keep the field at this dotted path (`"req.user"`).
    #[serde(default)]
    pub json: Option<String>,
    /// Replace the value by this event header.
    #[serde(default)]
    pub header: Option<String>,
    /// Keep only values matching this regex.
    #[serde(default)]
    pub filter: Option<String>,
    /// Drop values matching this regex.
    #[serde(default)]
    pub filter_not: Option<String>,
    /// Steps deriving the key from the current value (which stays the value).
    #[serde(default)]
    pub key_by: Option<Vec<StepConfig>>,
    /// Count occurrences per key (the key if `key_by` was used, else the value).
    #[serde(default)]
    pub count_by_value: Option<Empty>,
    /// Reduce numeric values per key: "sum", "min" or "max". Needs `key_by` first.
    #[serde(default)]
    pub reduce_by_key: Option<ReduceOp>,
    /// Window over the results so far (last step only).
    #[serde(default)]
    pub window: Option<WindowConfig>,
}

/// `{}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    Sum,
    Min,
    Max,
}

/// `window = { length = "60s", slide = "10s" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Span of the window; a multiple of the batch interval.
    pub length: ConfigDuration,
    /// How often it is computed; a multiple of the batch interval (default: the batch interval).
    #[serde(default)]
    pub slide: Option<ConfigDuration>,
    /// Update sums/counts incrementally with the inverse function (Spark's
    /// `reduceByKeyAndWindow(f, invF, …)`); only for `count_by_value` and `sum`.
    #[serde(default)]
    pub inverse: bool,
}

/// `output = { type = "print" | "file" | "avro" | "kafka", … }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputConfig {
    /// Spark's `print(n)` on standard output.
    #[serde(alias = "console")]
    Print {
        #[serde(default = "default_print_n")]
        n: usize,
    },
    /// One file per batch, `<dir>/<prefix>-<batch time ms>[.<suffix>]`, replaced atomically.
    File {
        dir: PathBuf,
        #[serde(default = "default_prefix")]
        prefix: String,
        #[serde(default)]
        suffix: Option<String>,
    },
    /// Results as Flume events (body = the result's text, `timestamp` header = batch time)
    /// to a Flume AvroSource; the agent supplies the client as [`BuildContext::events_output`].
    Avro { hostname: String, port: u16 },
    /// Results as records of a Kafka topic (key = the result's key, value = its count or
    /// text, see [`Row::into_record`]), with a `transactional_id` in one transaction per
    /// batch together with the batch's Kafka input offsets. The table is kept as is for the
    /// agent, which checks it and supplies the output as
    /// [`BuildContext::transactional_output`] (`weir_kafka::output`).
    Kafka(serde_json::Value),
}

const fn default_print_n() -> usize {
    10
}
fn default_prefix() -> String {
    "batch".to_string()
}

/// What the agent hands to [`JobConfig::build`].
pub struct BuildContext {
    /// The channels named by `input`/`inputs`, in that order ([`JobConfig::input_names`]).
    pub inputs: Vec<Arc<dyn Channel>>,
    /// The inputs the agent built for the `{ kafka = … }` entries, in their order
    /// ([`JobConfig::kafka_inputs`]).
    pub kafka_inputs: Vec<Box<dyn crate::JobInput>>,
    /// The agent's data dir; checkpoints go to `<data_dir>/jobs/<name>/`.
    pub data_dir: PathBuf,
    pub shutdown: CancellationToken,
    /// Required for `output.type = "avro"`: sends one batch of events, `Ok` once accepted.
    pub events_output: Option<EventsFn>,
    /// Required for `output.type = "kafka"`: writes one batch's records and commits its
    /// input positions with them.
    pub transactional_output: Option<crate::TransactionalFn>,
    /// Test hooks: replace the clock and the `print` target.
    pub clock: Option<SharedClock>,
    pub print_target: Option<PrintTarget>,
    /// The agent's handle on the job's batch metrics (kept across restarts).
    pub metrics: Option<crate::JobMetrics>,
}

impl BuildContext {
    pub fn new(
        inputs: Vec<Arc<dyn Channel>>,
        data_dir: PathBuf,
        shutdown: CancellationToken,
    ) -> Self {
        BuildContext {
            inputs,
            kafka_inputs: Vec::new(),
            data_dir,
            shutdown,
            events_output: None,
            transactional_output: None,
            clock: None,
            print_target: None,
            metrics: None,
        }
    }
}

/// A result row of a declarative job.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Row {
    Text(String),
    Pair(String, f64),
}

impl Row {
    /// The row as a record for the `kafka` output: a pair's key in the `key` header and its
    /// value as text in the body (`3`, `2.5`); a text as the body, without a key.
    pub fn into_record(self) -> Event {
        match self {
            Row::Text(s) => Event::new(s),
            Row::Pair(k, v) => Event::new(v.to_text()).with_header("key", k),
        }
    }
}

impl OutputFmt for Row {
    fn fmt_into(&self, out: &mut String) {
        match self {
            Row::Text(s) => out.push_str(s),
            Row::Pair(k, v) => (k.as_str(), *v).fmt_into(out),
        }
    }
}

#[derive(Clone, Debug)]
enum Extract {
    Split { sep: Vec<u8>, field: usize },
    Regex { re: Regex, group: usize },
    Json { path: Vec<String> },
    Header(String),
    Filter { re: Regex, keep_matching: bool },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Agg {
    Count,
    Reduce(ReduceOp),
}

#[derive(Clone, Debug)]
struct Plan {
    pre: Vec<Extract>,
    key: Option<Vec<Extract>>,
    post: Vec<Extract>,
    agg: Option<Agg>,
    window: Option<(i64, i64, bool)>,
}

type Problems = Vec<(String, String)>;

fn compile_regex(pattern: &str, path: String, problems: &mut Problems) -> Option<Regex> {
    match Regex::new(pattern) {
        Ok(re) => Some(re),
        Err(e) => {
            problems.push((path, format!("invalid regex: {e}")));
            None
        }
    }
}

/// Compiles extraction steps (also used for `key_by`); aggregation/window keys are rejected.
fn compile_extracts(steps: &[StepConfig], base: &str, problems: &mut Problems) -> Vec<Extract> {
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let path = format!("{base}[{i}]");
        if let Some(e) = compile_extract(s, &path, problems) {
            out.push(e);
        }
    }
    out
}

fn step_kinds(s: &StepConfig) -> Vec<&'static str> {
    let mut k = Vec::new();
    if s.split.is_some() {
        k.push("split");
    }
    if s.regex.is_some() {
        k.push("regex");
    }
    if s.json.is_some() {
        k.push("json");
    }
    if s.header.is_some() {
        k.push("header");
    }
    if s.filter.is_some() {
        k.push("filter");
    }
    if s.filter_not.is_some() {
        k.push("filter_not");
    }
    if s.key_by.is_some() {
        k.push("key_by");
    }
    if s.count_by_value.is_some() {
        k.push("count_by_value");
    }
    if s.reduce_by_key.is_some() {
        k.push("reduce_by_key");
    }
    if s.window.is_some() {
        k.push("window");
    }
    k
}

fn compile_extract(s: &StepConfig, path: &str, problems: &mut Problems) -> Option<Extract> {
    let kinds = step_kinds(s);
    if kinds.len() != 1 {
        problems.push((
            path.to_string(),
            if kinds.is_empty() {
                "a step needs one of split, regex, json, header, filter, filter_not, key_by, count_by_value, reduce_by_key, window".to_string()
            } else {
                format!("a step has exactly one kind, found {}", kinds.join(", "))
            },
        ));
        return None;
    }
    if s.field.is_some() && s.split.is_none() {
        problems.push((format!("{path}.field"), "`field` goes with `split`".into()));
    }
    if s.group.is_some() && s.regex.is_none() {
        problems.push((format!("{path}.group"), "`group` goes with `regex`".into()));
    }
    if let Some(sep) = &s.split {
        if sep.is_empty() {
            problems.push((
                format!("{path}.split"),
                "the separator must not be empty".into(),
            ));
            return None;
        }
        let Some(field) = s.field else {
            problems.push((
                format!("{path}.field"),
                "`split` needs `field` (0-based)".into(),
            ));
            return None;
        };
        return Some(Extract::Split {
            sep: sep.as_bytes().to_vec(),
            field,
        });
    }
    if let Some(p) = &s.regex {
        let re = compile_regex(p, format!("{path}.regex"), problems)?;
        let groups = re.captures_len() - 1;
        let group = s.group.unwrap_or(if groups > 0 { 1 } else { 0 });
        if group > groups {
            problems.push((
                format!("{path}.group"),
                format!("the regex has {groups} capture groups, group {group} does not exist"),
            ));
            return None;
        }
        return Some(Extract::Regex { re, group });
    }
    if let Some(j) = &s.json {
        let path_parts: Vec<String> = j.split('.').map(str::to_string).collect();
        if j.is_empty() || path_parts.iter().any(|p| p.is_empty()) {
            problems.push((
                format!("{path}.json"),
                "expected a dotted path such as \"req.user\"".into(),
            ));
            return None;
        }
        return Some(Extract::Json { path: path_parts });
    }
    if let Some(h) = &s.header {
        return Some(Extract::Header(h.clone()));
    }
    if let Some(p) = &s.filter {
        let re = compile_regex(p, format!("{path}.filter"), problems)?;
        return Some(Extract::Filter {
            re,
            keep_matching: true,
        });
    }
    if let Some(p) = &s.filter_not {
        let re = compile_regex(p, format!("{path}.filter_not"), problems)?;
        return Some(Extract::Filter {
            re,
            keep_matching: false,
        });
    }
    problems.push((
        path.to_string(),
        format!("`{}` is not allowed here", kinds[0]),
    ));
    None
}

impl JobConfig {
    /// Every input, in order.
    pub fn input_refs(&self) -> impl Iterator<Item = &InputRef> {
        self.input.iter().chain(&self.inputs)
    }

    /// The input channel names, in order.
    pub fn input_names(&self) -> Vec<String> {
        self.input_refs()
            .filter_map(|i| match i {
                InputRef::Channel(c) => Some(c.clone()),
                InputRef::Kafka(_) => None,
            })
            .collect()
    }

    /// The `{ kafka = … }` input tables, in order, with their key paths (`input.kafka`,
    /// `inputs[1].kafka`).
    pub fn kafka_inputs(&self) -> Vec<(String, &serde_json::Value)> {
        let single = self.input.iter().map(|i| ("input".to_string(), i));
        let listed = (self.inputs.iter().enumerate()).map(|(n, i)| (format!("inputs[{n}]"), i));
        single
            .chain(listed)
            .filter_map(|(at, i)| match i {
                InputRef::Kafka(v) => Some((format!("{at}.kafka"), v)),
                InputRef::Channel(_) => None,
            })
            .collect()
    }

    /// Every problem as `(key path relative to the job table, message)`, e.g.
    /// `("steps[1].regex", "invalid regex: …")`; empty when the job can be built.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        self.plan(&mut problems);
        problems
    }

    fn plan(&self, problems: &mut Problems) -> Plan {
        if self.input.is_some() && !self.inputs.is_empty() {
            problems.push((
                "inputs".into(),
                "give either `input` or `inputs`, not both".into(),
            ));
        }
        if self.input_refs().next().is_none() {
            problems.push(("input".into(), "a job needs an input".into()));
        }
        let b = self.batch_interval.0.as_millis() as i64;
        if b <= 0 {
            problems.push(("batch_interval".into(), "must be at least 1ms".into()));
        }
        if self.max_batch_events == 0 {
            problems.push(("max_batch_events".into(), "must be at least 1".into()));
        }
        if self.pid.min_rate.is_nan() || self.pid.min_rate <= 0.0 {
            problems.push(("pid.min_rate".into(), "must be > 0".into()));
        }
        let mut plan = Plan {
            pre: Vec::new(),
            key: None,
            post: Vec::new(),
            agg: None,
            window: None,
        };
        let mut window: Option<(&WindowConfig, String)> = None;
        for (i, s) in self.steps.iter().enumerate() {
            let path = format!("steps[{i}]");
            let kinds = step_kinds(s);
            if window.is_some() {
                problems.push((path.clone(), "no step may follow `window`".into()));
                continue;
            }
            if kinds.len() == 1 && kinds[0] == "window" {
                window = s.window.as_ref().map(|w| (w, format!("{path}.window")));
                continue;
            }
            if kinds.len() == 1 && (kinds[0] == "count_by_value" || kinds[0] == "reduce_by_key") {
                if plan.agg.is_some() {
                    problems.push((path, "only one aggregation step is allowed".into()));
                    continue;
                }
                if let Some(op) = s.reduce_by_key {
                    if plan.key.is_none() {
                        problems.push((
                            format!("{path}.reduce_by_key"),
                            "needs a `key_by` step before it (the key; the value is what is reduced)".into(),
                        ));
                    }
                    plan.agg = Some(Agg::Reduce(op));
                } else {
                    plan.agg = Some(Agg::Count);
                }
                continue;
            }
            if plan.agg.is_some() {
                problems.push((path, "after an aggregation only `window` may follow".into()));
                continue;
            }
            if kinds.len() == 1 && kinds[0] == "key_by" {
                if plan.key.is_some() {
                    problems.push((
                        format!("{path}.key_by"),
                        "only one `key_by` step is allowed".into(),
                    ));
                    continue;
                }
                let nested = s.key_by.as_deref().unwrap_or_default();
                if nested.is_empty() {
                    problems.push((format!("{path}.key_by"), "needs at least one step".into()));
                }
                plan.key = Some(compile_extracts(
                    nested,
                    &format!("{path}.key_by"),
                    problems,
                ));
                continue;
            }
            if let Some(e) = compile_extract(s, &path, problems) {
                if plan.key.is_some() {
                    plan.post.push(e);
                } else {
                    plan.pre.push(e);
                }
            }
        }
        if let Some(w) = &self.window {
            if window.is_some() {
                problems.push((
                    "window".into(),
                    "give `window` either as a step or at the top level, not both".into(),
                ));
            } else {
                window = Some((w, "window".into()));
            }
        }
        if plan.key.is_some() && plan.agg.is_none() {
            problems.push((
                "steps".into(),
                "`key_by` needs an aggregation (`count_by_value` or `reduce_by_key`) after it"
                    .into(),
            ));
        }
        if let Some((w, path)) = window {
            let len = w.length.0.as_millis() as i64;
            let slide = w.slide.map(|d| d.0.as_millis() as i64).unwrap_or(b);
            if b > 0 && (len <= 0 || len % b != 0) {
                problems.push((
                    format!("{path}.length"),
                    format!(
                        "must be a positive multiple of batch_interval ({})",
                        self.batch_interval
                    ),
                ));
            }
            if b > 0 && (slide <= 0 || slide % b != 0) {
                problems.push((
                    format!("{path}.slide"),
                    format!(
                        "must be a positive multiple of batch_interval ({})",
                        self.batch_interval
                    ),
                ));
            }
            if w.inverse
                && !matches!(
                    plan.agg,
                    Some(Agg::Count) | Some(Agg::Reduce(ReduceOp::Sum))
                )
            {
                problems.push((
                    format!("{path}.inverse"),
                    "only `count_by_value` and `reduce_by_key = \"sum\"` have an inverse".into(),
                ));
            }
            plan.window = Some((len, slide, w.inverse));
        }
        match &self.output {
            OutputConfig::File { dir, prefix, .. } => {
                if dir.as_os_str().is_empty() {
                    problems.push(("output.dir".into(), "must not be empty".into()));
                }
                if prefix.contains('/') || prefix.is_empty() {
                    problems.push((
                        "output.prefix".into(),
                        "must be a non-empty file name prefix without `/`".into(),
                    ));
                }
            }
            OutputConfig::Avro { hostname, .. } if hostname.is_empty() => {
                problems.push(("output.hostname".into(), "must not be empty".into()));
            }
            _ => {}
        }
        plan
    }

    /// Builds the job: `name` is the `[jobs.NAME]` key. Fails with [`JobError::Config`]
    /// listing [`JobConfig::check`]'s problems, or when `cx.inputs` does not match the names.
    pub fn build(&self, name: &str, cx: BuildContext) -> Result<Job, JobError> {
        let mut problems = Vec::new();
        let plan = self.plan(&mut problems);
        let cfg_err = |problem: String| JobError::Config {
            job: name.to_string(),
            problem,
        };
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|(p, m)| format!("{p}: {m}")).collect();
            return Err(cfg_err(text.join("; ")));
        }
        if cx.inputs.len() != self.input_names().len()
            || cx.kafka_inputs.len() != self.kafka_inputs().len()
        {
            return Err(cfg_err(format!(
                "expected {} input channels and {} kafka inputs, the agent passed {} and {}",
                self.input_names().len(),
                self.kafka_inputs().len(),
                cx.inputs.len(),
                cx.kafka_inputs.len()
            )));
        }
        let mut options = JobOptions::new(self.batch_interval.0);
        options.checkpoint_interval = self.checkpoint_interval.map(|d| d.0);
        options.backpressure = self.backpressure;
        options.pid = PidConfig {
            proportional: self.pid.proportional,
            integral: self.pid.integral,
            derived: self.pid.derived,
            min_rate: self.pid.min_rate,
        };
        options.initial_rate = self.initial_rate;
        options.max_rate = self.max_rate;
        options.max_batch_events = self.max_batch_events;
        options.retained_batches = self.retained_batches;
        options.data_dir = Some(cx.data_dir.clone());
        options.metrics = cx.metrics.clone();
        let mut ctx = StreamingContext::new(name, options);
        if let Some(c) = cx.clock.clone() {
            ctx = ctx.with_clock(c);
        }
        let mut events: Option<EventStream> = None;
        let (mut channels, mut kafka) = (cx.inputs.into_iter(), cx.kafka_inputs.into_iter());
        for input in self.input_refs() {
            let s = match input {
                InputRef::Channel(_) => channels.next().map(|ch| ctx.channel(ch)),
                InputRef::Kafka(_) => kafka.next().map(|k| ctx.input(k)),
            };
            let Some(s) = s else { continue };
            events = Some(match events {
                None => s,
                Some(prev) => prev.union(s),
            });
        }
        let Some(events) = events else {
            return Err(cfg_err("a job needs an input".into()));
        };
        let rows = plan_stream(events, plan);
        let output = match &self.output {
            OutputConfig::Print { n } => match cx.print_target {
                Some(t) => rows.print_to(*n, t),
                None => rows.print(*n),
            },
            OutputConfig::File {
                dir,
                prefix,
                suffix,
            } => rows.file(dir.clone(), prefix.clone(), suffix.clone()),
            OutputConfig::Kafka(_) => match cx.transactional_output {
                Some(send) => rows.transactional(send, |_, row| row.into_record()),
                None => {
                    return Err(cfg_err(
                        "output type `kafka` needs the agent to supply a transactional output"
                            .into(),
                    ))
                }
            },
            OutputConfig::Avro { .. } => match cx.events_output {
                Some(send) => rows.events(send, text_event),
                None => {
                    return Err(cfg_err(
                        "output type `avro` needs the agent to supply an events output".into(),
                    ))
                }
            },
        };
        ctx.add_output(output);
        ctx.build(cx.shutdown)
    }
}

/// What a step made of a record.
enum Step<'a> {
    Keep(Cow<'a, [u8]>),
    Drop,
    Malformed,
}

fn apply<'a>(steps: &[Extract], e: &'a Event, mut cur: Cow<'a, [u8]>) -> Step<'a> {
    for s in steps {
        cur = match s {
            Extract::Split { sep, field } => {
                let found = match cur {
                    Cow::Borrowed(b) => split_field(b, sep, *field).map(Cow::Borrowed),
                    Cow::Owned(ref o) => {
                        split_field(o, sep, *field).map(|f| Cow::Owned(f.to_vec()))
                    }
                };
                match found {
                    Some(v) => v,
                    None => return Step::Malformed,
                }
            }
            Extract::Regex { re, group } => {
                let found = match cur {
                    Cow::Borrowed(b) => re
                        .captures(b)
                        .and_then(|c| c.get(*group))
                        .map(|m| Cow::Borrowed(m.as_bytes())),
                    Cow::Owned(ref o) => re
                        .captures(o)
                        .and_then(|c| c.get(*group))
                        .map(|m| Cow::Owned(m.as_bytes().to_vec())),
                };
                match found {
                    Some(v) => v,
                    None => return Step::Malformed,
                }
            }
            Extract::Json { path } => match json_field(&cur, path) {
                Some(v) => Cow::Owned(v),
                None => return Step::Malformed,
            },
            Extract::Header(h) => match e.headers.get(h) {
                Some(v) => Cow::Borrowed(v.as_bytes()),
                None => return Step::Malformed,
            },
            Extract::Filter { re, keep_matching } => {
                if re.is_match(&cur) != *keep_matching {
                    return Step::Drop;
                }
                cur
            }
        };
    }
    Step::Keep(cur)
}

fn split_field<'b>(bytes: &'b [u8], sep: &[u8], n: usize) -> Option<&'b [u8]> {
    if let [one] = sep {
        return crate::stream::field(bytes, *one, n);
    }
    let mut rest = bytes;
    for _ in 0..n {
        let at = find(rest, sep)?;
        rest = &rest[at + sep.len()..];
    }
    Some(match find(rest, sep) {
        Some(at) => &rest[..at],
        None => rest,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn json_field(bytes: &[u8], path: &[String]) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut cur = &v;
    for p in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(p)?,
            serde_json::Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match cur {
        serde_json::Value::String(s) => Some(s.clone().into_bytes()),
        serde_json::Value::Null | serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
            None
        }
        other => Some(other.to_string().into_bytes()),
    }
}

fn combine(op: ReduceOp, a: f64, b: f64) -> f64 {
    match op {
        ReduceOp::Sum => a + b,
        ReduceOp::Min => a.min(b),
        ReduceOp::Max => a.max(b),
    }
}

fn parse_number(v: &[u8]) -> Option<f64> {
    std::str::from_utf8(v)
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
}

fn plan_stream(events: EventStream, plan: Plan) -> Stream<Row> {
    let mut src = events.node;
    let Plan {
        pre,
        key,
        post,
        agg,
        window,
    } = plan;
    match agg {
        None => {
            let texts = Stream::from_chunks(move |cx: &BatchCx<'_>, out: &mut Vec<String>| {
                let mut bad = 0u64;
                src.for_each(
                    cx,
                    &mut |e| match apply(&pre, e, Cow::Borrowed(&e.body[..])) {
                        Step::Keep(v) => match std::str::from_utf8(&v) {
                            Ok(s) => out.push(s.to_string()),
                            Err(_) => bad += 1,
                        },
                        Step::Drop => {}
                        Step::Malformed => bad += 1,
                    },
                );
                cx.add_malformed(bad);
            });
            let texts = match window {
                Some((len, slide, _)) => texts.window(ms(len), ms(slide)),
                None => texts,
            };
            texts.map(Row::Text)
        }
        Some(agg) => {
            // The hot path: keys stay borrowed from the events (a `Cow`) and are looked up in
            // the batch's per-key map by slice, so a key is copied once per distinct key; each
            // chunk is folded in as it comes.
            let fold = move |acc: &mut SliceCounts<f64>, cx: &BatchCx<'_>| {
                let mut bad = 0u64;
                src.for_each(cx, &mut |e| {
                    let v = match apply(&pre, e, Cow::Borrowed(&e.body[..])) {
                        Step::Keep(v) => v,
                        Step::Drop => return,
                        Step::Malformed => {
                            bad += 1;
                            return;
                        }
                    };
                    let (k, v) = match &key {
                        None => (v, None),
                        Some(ks) => {
                            let k = match apply(ks, e, v.clone()) {
                                Step::Keep(k) => k,
                                Step::Drop => return,
                                Step::Malformed => {
                                    bad += 1;
                                    return;
                                }
                            };
                            match apply(&post, e, v) {
                                Step::Keep(v) => (k, Some(v)),
                                Step::Drop => return,
                                Step::Malformed => {
                                    bad += 1;
                                    return;
                                }
                            }
                        }
                    };
                    if std::str::from_utf8(&k).is_err() {
                        bad += 1;
                        return;
                    }
                    match agg {
                        Agg::Count => acc.add(&k, 1.0),
                        Agg::Reduce(op) => {
                            let Some(x) = v.as_deref().and_then(parse_number) else {
                                bad += 1;
                                return;
                            };
                            match acc.0.get_mut(&k[..]) {
                                Some(cur) => *cur = combine(op, *cur, x),
                                None => {
                                    acc.0.insert(k[..].into(), x);
                                }
                            }
                        }
                    }
                });
                cx.add_malformed(bad);
            };
            let pairs = Stream::from_fold(
                SliceCounts::<f64>::default(),
                fold,
                |acc, _cx: &BatchCx<'_>, out: &mut Vec<(String, f64)>| {
                    out.extend(
                        acc.0
                            .into_iter()
                            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v)),
                    );
                    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                },
            );
            let op = match agg {
                Agg::Count => ReduceOp::Sum,
                Agg::Reduce(op) => op,
            };
            let pairs = match window {
                Some((len, slide, inverse)) => {
                    let inv: Option<Box<dyn Fn(f64, f64) -> f64 + Send>> = inverse.then(|| {
                        Box::new(|a: f64, b: f64| a - b) as Box<dyn Fn(f64, f64) -> f64 + Send>
                    });
                    pairs.reduce_by_key_and_window(
                        move |a, b| combine(op, a, b),
                        inv,
                        ms(len),
                        ms(slide),
                    )
                }
                None => pairs,
            };
            pairs.map(|(k, v)| Row::Pair(k, v))
        }
    }
}

fn ms(v: i64) -> std::time::Duration {
    std::time::Duration::from_millis(v.max(0) as u64)
}
