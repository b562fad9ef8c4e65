//! Output operations: `print`, `file`, `events` (forward results as Flume events, e.g.
//! through the agent's Avro client), `transactional` (e.g. the Kafka output) and
//! `for_each_batch`. An output runs once per batch in definition order; a batch whose stream
//! has no result at that time (a window between slides) is skipped, except by
//! `transactional`, which also commits the batch's input positions.
//!
//! Idempotence matters for exactly-once: after a crash the engine re-runs the uncommitted
//! batches with the same batch times and the same events. The `file` output names each file
//! by batch time and writes it temp → fsync → rename → fsync(dir), so a replay overwrites;
//! a `transactional` output commits the batch's input positions with its results and
//! recognises a replayed batch it committed before; `print`, `events` and `for_each_batch`
//! repeat their effect (at-least-once).

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use weir_core::Event;

use crate::input::InputPosition;
use crate::stream::{BatchCx, Node, StateNode, Stream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends a batch of events somewhere (the agent supplies one for `type = "avro"`); `Ok` means
/// the receiver accepted them all.
pub type EventsFn =
    Arc<dyn Fn(Vec<Event>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Writes a batch's results and commits its input positions with them, in one transaction
/// (the agent supplies one for `type = "kafka"`): `(batch time, events, the batch's input
/// positions in input order)`. Called for every batch, also a replayed one and one without
/// results. `Ok` once written, or when this batch was committed before (a replay after a
/// crash).
pub type TransactionalFn = Arc<
    dyn Fn(i64, Vec<Event>, Vec<InputPosition>) -> BoxFuture<'static, Result<(), BoxError>>
        + Send
        + Sync,
>;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("file output could not write `{path}`: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("print output failed: {0}")]
    Print(#[source] std::io::Error),
    #[error("events output failed: {0}")]
    Events(#[source] BoxError),
    #[error("for_each_batch output failed: {0}")]
    ForEach(#[source] BoxError),
    #[error("transactional output failed: {0}")]
    Transactional(#[source] BoxError),
}

/// How an element is written by `print`, `file` and `events`: like Spark's `toString`
/// (tuples as `(a,1)`, strings bare).
pub trait OutputFmt {
    fn fmt_into(&self, out: &mut String);
    fn to_text(&self) -> String {
        let mut s = String::new();
        self.fmt_into(&mut s);
        s
    }
}

macro_rules! display_fmt {
    ($($t:ty),*) => {$(
        impl OutputFmt for $t {
            fn fmt_into(&self, out: &mut String) {
                let _ = write!(out, "{}", self);
            }
        }
    )*};
}
display_fmt!(String, str, u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, f32, f64, bool, char);

impl<T: OutputFmt + ?Sized> OutputFmt for &T {
    fn fmt_into(&self, out: &mut String) {
        (**self).fmt_into(out)
    }
}

impl OutputFmt for Event {
    fn fmt_into(&self, out: &mut String) {
        out.push_str(&String::from_utf8_lossy(&self.body));
    }
}

impl<A: OutputFmt, B: OutputFmt> OutputFmt for (A, B) {
    fn fmt_into(&self, out: &mut String) {
        out.push('(');
        self.0.fmt_into(out);
        out.push(',');
        self.1.fmt_into(out);
        out.push(')');
    }
}

impl<A: OutputFmt, B: OutputFmt, C: OutputFmt> OutputFmt for (A, B, C) {
    fn fmt_into(&self, out: &mut String) {
        out.push('(');
        self.0.fmt_into(out);
        out.push(',');
        self.1.fmt_into(out);
        out.push(',');
        self.2.fmt_into(out);
        out.push(')');
    }
}

impl<T: OutputFmt> OutputFmt for Option<T> {
    fn fmt_into(&self, out: &mut String) {
        match self {
            Some(v) => {
                out.push_str("Some(");
                v.fmt_into(out);
                out.push(')');
            }
            None => out.push_str("None"),
        }
    }
}

/// Spark's `DStream.print(num)` text for one batch: header, the first `n` elements, `...`
/// when there are more, and a blank line.
pub fn format_print<T: OutputFmt>(time_ms: i64, items: &[T], n: usize) -> String {
    let mut s = String::new();
    s.push_str("-------------------------------------------\n");
    let _ = writeln!(s, "Time: {time_ms} ms");
    s.push_str("-------------------------------------------\n");
    for item in items.iter().take(n) {
        item.fmt_into(&mut s);
        s.push('\n');
    }
    if items.len() > n {
        s.push_str("...\n");
    }
    s.push('\n');
    s
}

/// Where `print` writes (stdout by default; tests pass a buffer).
pub type PrintTarget = Arc<Mutex<dyn Write + Send>>;

/// A registered output: a stream plus what to do with each batch's result.
pub struct Output {
    pub(crate) runner: Box<dyn OutputRunner>,
}

pub(crate) trait OutputRunner: Send {
    /// One chunk of the batch through the output's stream (nothing is written yet).
    fn chunk(&mut self, cx: &BatchCx<'_>);
    /// The end of the batch: write its result.
    fn finish<'s>(&'s mut self, cx: &BatchCx<'_>) -> BoxFuture<'s, Result<(), OutputError>>;
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode));
}

type WriteFn<T> = Box<dyn FnMut(i64, Vec<T>) -> BoxFuture<'static, Result<(), OutputError>> + Send>;

struct Op<T> {
    node: Box<dyn Node<T>>,
    /// The batch's elements so far (an aggregation yields only at the end of the batch).
    items: Vec<T>,
    write: WriteFn<T>,
}

impl<T: Send + 'static> OutputRunner for Op<T> {
    fn chunk(&mut self, cx: &BatchCx<'_>) {
        self.node.chunk(cx, &mut self.items);
    }
    fn finish<'s>(&'s mut self, cx: &BatchCx<'_>) -> BoxFuture<'s, Result<(), OutputError>> {
        let has = self.node.finish(cx, &mut self.items);
        let items = std::mem::take(&mut self.items);
        if has {
            (self.write)(cx.time_ms, items)
        } else {
            Box::pin(async { Ok(()) })
        }
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.node.visit_state(f)
    }
}

/// An output that commits the batch's input positions: runs for every batch, with results
/// or not, so that the positions advance with empty batches too.
struct TxOp<T> {
    node: Box<dyn Node<T>>,
    items: Vec<T>,
    send: TransactionalFn,
    to_event: Box<dyn FnMut(i64, T) -> Event + Send>,
}

impl<T: Send + 'static> OutputRunner for TxOp<T> {
    fn chunk(&mut self, cx: &BatchCx<'_>) {
        self.node.chunk(cx, &mut self.items);
    }
    fn finish<'s>(&'s mut self, cx: &BatchCx<'_>) -> BoxFuture<'s, Result<(), OutputError>> {
        self.node.finish(cx, &mut self.items);
        let time = cx.time_ms;
        let events: Vec<Event> = std::mem::take(&mut self.items)
            .into_iter()
            .map(|x| (self.to_event)(time, x))
            .collect();
        let fut = (self.send)(time, events, cx.positions().to_vec());
        Box::pin(async move { fut.await.map_err(OutputError::Transactional) })
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.node.visit_state(f)
    }
}

impl<T: Send + 'static> Stream<T> {
    /// Writes each batch's elements, made events by `to_event(batch time, element)`, with
    /// `send` (e.g. `weir_kafka::output`), which also commits the batch's input positions;
    /// `send` is called for every batch, so that the positions advance with empty results
    /// too.
    pub fn transactional(
        self,
        send: TransactionalFn,
        to_event: impl FnMut(i64, T) -> Event + Send + 'static,
    ) -> Output {
        Output {
            runner: Box::new(TxOp {
                node: self.node,
                items: Vec::new(),
                send,
                to_event: Box::new(to_event),
            }),
        }
    }

    fn output(
        self,
        write: impl FnMut(i64, Vec<T>) -> BoxFuture<'static, Result<(), OutputError>> + Send + 'static,
    ) -> Output {
        Output {
            runner: Box::new(Op {
                node: self.node,
                items: Vec::new(),
                write: Box::new(write),
            }),
        }
    }

    /// Spark's `print(n)` to standard output.
    pub fn print(self, n: usize) -> Output
    where
        T: OutputFmt,
    {
        self.print_to(n, Arc::new(Mutex::new(std::io::stdout())))
    }

    /// `print(n)` into any writer.
    pub fn print_to(self, n: usize, target: PrintTarget) -> Output
    where
        T: OutputFmt,
    {
        self.output(move |time, items| {
            let text = format_print(time, &items, n);
            let target = target.clone();
            Box::pin(async move {
                let mut w = target.lock().unwrap_or_else(|p| p.into_inner());
                w.write_all(text.as_bytes())
                    .and_then(|_| w.flush())
                    .map_err(OutputError::Print)
            })
        })
    }

    /// One file per batch, `<dir>/<prefix>-<batch time ms>[.<suffix>]`, one element per line,
    /// written atomically so a replayed batch overwrites instead of duplicating. Written even
    /// for empty batches (an empty file), like Spark's `saveAsTextFiles`.
    pub fn file(
        self,
        dir: impl Into<PathBuf>,
        prefix: impl Into<String>,
        suffix: Option<String>,
    ) -> Output
    where
        T: OutputFmt,
    {
        let dir = dir.into();
        let prefix = prefix.into();
        self.output(move |time, items| {
            let mut text = String::new();
            for item in &items {
                item.fmt_into(&mut text);
                text.push('\n');
            }
            let name = match &suffix {
                Some(s) => format!("{prefix}-{time}.{s}"),
                None => format!("{prefix}-{time}"),
            };
            let dir = dir.clone();
            Box::pin(async move {
                let path = dir.join(&name);
                // Blocking file I/O off the runtime threads.
                tokio::task::spawn_blocking(move || write_atomic(&dir, &name, text.as_bytes()))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                    .map_err(|source| OutputError::File { path, source })
            })
        })
    }

    /// Forwards each batch's elements as events through `send` (one call per batch, skipped
    /// when empty). `to_event` builds the event; see [`text_event`] for the default.
    pub fn events(
        self,
        send: EventsFn,
        mut to_event: impl FnMut(i64, T) -> Event + Send + 'static,
    ) -> Output {
        self.output(move |time, items| {
            let events: Vec<Event> = items.into_iter().map(|x| to_event(time, x)).collect();
            let send = send.clone();
            Box::pin(async move {
                if events.is_empty() {
                    return Ok(());
                }
                send(events).await.map_err(OutputError::Events)
            })
        })
    }

    /// A closure over each batch's result (Spark's `foreachRDD`).
    pub fn for_each_batch(
        self,
        mut f: impl FnMut(i64, Vec<T>) -> Result<(), BoxError> + Send + 'static,
    ) -> Output {
        self.output(move |time, items| {
            let r = f(time, items).map_err(OutputError::ForEach);
            Box::pin(async move { r })
        })
    }
}

/// The default element → event conversion: the element's text as body, the batch time in
/// the `timestamp` header (Flume's convention, ms).
pub fn text_event<T: OutputFmt>(time_ms: i64, item: T) -> Event {
    Event::new(item.to_text()).with_header("timestamp", time_ms.to_string())
}

/// Writes `dir/name` atomically: temp file, fsync, rename over, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_looks_like_sparks() {
        let items = vec![("a".to_string(), 3u64), ("b".to_string(), 1)];
        assert_eq!(
            format_print(2000, &items, 10),
            "-------------------------------------------\nTime: 2000 ms\n-------------------------------------------\n(a,3)\n(b,1)\n\n"
        );
        assert!(format_print(2000, &items, 1).ends_with("(a,3)\n...\n\n"));
    }
}
