//! The operator graph (Spark's DStream API, in Rust).
//!
//! * A batch flows through the graph in **chunks** (one take transaction each): every chunk
//!   goes through the per-element operators (`map`, `flat_map`, `filter`, `key_by`, `union`)
//!   and is folded into the aggregations (`count`, `count_by_value`, `count_by_slice`,
//!   `reduce_by_key`, `reduce_by_key_and_window`, `update_state_by_key`) as it comes; at the
//!   end of the batch the aggregations produce the batch's result. So a batch's memory is the
//!   aggregation state plus one chunk, not the batch. What does hold a whole batch:
//!   `transform` (its closure sees the whole batch: [`EventStream::transform`] clones the
//!   events), `window` (keeps its elements for the window's length), `update_state_by_key`
//!   (groups the batch's values per key), and an output of a stream without an aggregation
//!   (it writes all of the batch's elements at once).
//! * An [`EventStream`] is a view of one or more inputs' events for the current chunk. Its
//!   operators see `&Event` borrowed from the take transactions, so nothing is copied until an
//!   operator produces owned values ([`EventStream::map`] and friends), and
//!   [`EventStream::count_by_slice`] counts borrowed byte slices and allocates a key per
//!   distinct key only.
//! * A [`Stream<T>`] is a batch-by-batch computation producing owned `T`s. Each batch, an
//!   output pulls its stream once; a stream is consumed by exactly one output or operator
//!   (there is no sharing/caching of a stream between outputs, unlike Spark).
//! * A batch's result is `Option<Vec<T>>`: `None` means "no result at this batch time" — a
//!   window only produces one at multiples of its slide (on the epoch grid) — and outputs
//!   skip those batches, as Spark's do.
//! * Stateful operators (`window`, `reduce_by_key_and_window`, `update_state_by_key`) keep
//!   their state in memory and expose it to the checkpoint through [`StateNode`]; the job
//!   visits them in a fixed depth-first order, which is how a checkpoint maps back to nodes.
//!   Results of keyed operators are sorted by key so that outputs are deterministic (and a
//!   replayed batch writes byte-identical files).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_core::Event;

use crate::input::InputPosition;

/// What the operators see of one chunk of a batch (at the end of the batch: no events).
pub struct BatchCx<'a> {
    /// The batch time `T` (ms since the Unix epoch).
    pub time_ms: i64,
    pub interval_ms: i64,
    inputs: &'a [Vec<&'a [Event]>],
    malformed: Cell<u64>,
    /// Where the batch came from, per input (set for the outputs: a transactional output
    /// commits the Kafka offsets with its records).
    positions: &'a [InputPosition],
}

impl<'a> BatchCx<'a> {
    pub(crate) fn new(time_ms: i64, interval_ms: i64, inputs: &'a [Vec<&'a [Event]>]) -> Self {
        BatchCx {
            time_ms,
            interval_ms,
            inputs,
            malformed: Cell::new(0),
            positions: &[],
        }
    }

    pub(crate) fn with_positions(mut self, positions: &'a [InputPosition]) -> Self {
        self.positions = positions;
        self
    }

    /// The batch's input positions, in input order (empty while chunks are folded).
    pub fn positions(&self) -> &[InputPosition] {
        self.positions
    }

    /// Counts records an operator could not interpret (reported per batch, never a panic).
    pub fn add_malformed(&self, n: u64) {
        self.malformed.set(self.malformed.get() + n);
    }

    pub fn malformed(&self) -> u64 {
        self.malformed.get()
    }
}

/// Values that can live in checkpointed state.
pub trait Data: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> Data for T {}

/// Keys of keyed operators: checkpointable, hashable and ordered (results are sorted).
pub trait Key: Data + Hash + Eq + Ord {}
impl<T: Data + Hash + Eq + Ord> Key for T {}

/// Errors restoring operator state from a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state of a `{kind}` operator does not decode: {source}")]
    Decode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("state of a `{kind}` operator does not encode: {source}")]
    Encode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// An operator with state that goes into checkpoints.
pub trait StateNode {
    fn kind(&self) -> &'static str;
    fn save(&self) -> Result<serde_json::Value, StateError>;
    fn load(&mut self, value: serde_json::Value) -> Result<(), StateError>;
    /// Checks durations against the batch interval (windows must be multiples of it).
    fn check_interval(&self, _interval_ms: i64) -> Result<(), String> {
        Ok(())
    }
}

/// A node of the graph. A batch is `chunk` once per chunk of events, then `finish` once;
/// the batch's result is everything appended by both. Per-element nodes append as chunks
/// come; aggregations fold chunks into a per-batch accumulator and append at `finish`.
pub(crate) trait Node<T>: Send {
    /// One chunk (`cx` holds its events): append what it yields now.
    fn chunk(&mut self, cx: &BatchCx<'_>, out: &mut Vec<T>);
    /// The end of the batch: append the rest of the result. `false` = no result at this batch
    /// time (a window between slides, and what follows it); such a node never yields in
    /// `chunk`, because only windows decide this and they yield only at `finish`.
    fn finish(&mut self, cx: &BatchCx<'_>, out: &mut Vec<T>) -> bool;
    fn visit_state(&mut self, _f: &mut dyn FnMut(&mut dyn StateNode)) {}
}

/// Runs a whole batch given as `(input index, chunk)` through `node`, as the job does.
#[cfg(test)]
pub(crate) fn compute_chunks<T>(
    node: &mut dyn Node<T>,
    time_ms: i64,
    interval_ms: i64,
    chunks: &[(usize, &[Event])],
) -> Option<Vec<T>> {
    let mut out = Vec::new();
    for (i, c) in chunks {
        let mut inputs: Vec<Vec<&[Event]>> = vec![Vec::new(); i + 1];
        inputs[*i].push(c);
        node.chunk(&BatchCx::new(time_ms, interval_ms, &inputs), &mut out);
    }
    let has = node.finish(&BatchCx::new(time_ms, interval_ms, &[]), &mut out);
    has.then_some(out)
}

pub(crate) trait EventNode: Send {
    fn for_each<'a>(&mut self, cx: &BatchCx<'a>, f: &mut dyn FnMut(&'a Event));
}

struct InputNode(usize);

impl EventNode for InputNode {
    fn for_each<'a>(&mut self, cx: &BatchCx<'a>, f: &mut dyn FnMut(&'a Event)) {
        let inputs: &'a [Vec<&'a [Event]>] = cx.inputs;
        if let Some(slices) = inputs.get(self.0) {
            for slice in slices {
                for e in slice.iter() {
                    f(e);
                }
            }
        }
    }
}

struct EventFilter {
    parent: Box<dyn EventNode>,
    pred: Box<dyn FnMut(&Event) -> bool + Send>,
}

impl EventNode for EventFilter {
    fn for_each<'a>(&mut self, cx: &BatchCx<'a>, f: &mut dyn FnMut(&'a Event)) {
        let pred = &mut self.pred;
        self.parent.for_each(cx, &mut |e| {
            if pred(e) {
                f(e)
            }
        });
    }
}

struct EventUnion(Box<dyn EventNode>, Box<dyn EventNode>);

impl EventNode for EventUnion {
    fn for_each<'a>(&mut self, cx: &BatchCx<'a>, f: &mut dyn FnMut(&'a Event)) {
        self.0.for_each(cx, f);
        self.1.for_each(cx, f);
    }
}

/// The events of one or more inputs in the current batch, borrowed.
pub struct EventStream {
    pub(crate) node: Box<dyn EventNode>,
}

/// Borrowed slice extractor for [`EventStream::count_by_slice`]: `None` = malformed record.
pub type SliceFn = Box<dyn for<'e> Fn(&'e Event) -> Option<&'e [u8]> + Send>;

impl EventStream {
    pub(crate) fn input(index: usize) -> Self {
        EventStream {
            node: Box::new(InputNode(index)),
        }
    }

    /// Keeps the events for which `pred` is true.
    pub fn filter(self, pred: impl FnMut(&Event) -> bool + Send + 'static) -> EventStream {
        EventStream {
            node: Box::new(EventFilter {
                parent: self.node,
                pred: Box::new(pred),
            }),
        }
    }

    /// Both streams' events (this one's first).
    pub fn union(self, other: EventStream) -> EventStream {
        EventStream {
            node: Box::new(EventUnion(self.node, other.node)),
        }
    }

    pub fn map<T: Send + 'static>(self, f: impl FnMut(&Event) -> T + Send + 'static) -> Stream<T> {
        self.flat_map(move_map(f))
    }

    pub fn flat_map<T: Send + 'static, I: IntoIterator<Item = T>>(
        self,
        mut f: impl FnMut(&Event) -> I + Send + 'static,
    ) -> Stream<T> {
        let mut src = self.node;
        Stream::from_chunks(move |cx, out| src.for_each(cx, &mut |e| out.extend(f(e))))
    }

    /// Like `flat_map` with at most one result; `None` counts the event as malformed.
    pub fn map_or_malformed<T: Send + 'static>(
        self,
        mut f: impl FnMut(&Event) -> Option<T> + Send + 'static,
    ) -> Stream<T> {
        let mut src = self.node;
        Stream::from_chunks(move |cx, out| {
            let mut bad = 0u64;
            src.for_each(cx, &mut |e| match f(e) {
                Some(v) => out.push(v),
                None => bad += 1,
            });
            cx.add_malformed(bad);
        })
    }

    /// A closure over the whole batch's events. It holds the whole batch: the events are
    /// cloned out of each chunk (bodies are shared, not copied) until the batch ends.
    pub fn transform<T: Send + 'static>(
        self,
        mut f: impl FnMut(i64, &[&Event]) -> Vec<T> + Send + 'static,
    ) -> Stream<T> {
        let mut src = self.node;
        Stream::from_fold(
            Vec::<Event>::new(),
            move |all, cx| src.for_each(cx, &mut |e| all.push(e.clone())),
            move |all, cx, out| {
                let refs: Vec<&Event> = all.iter().collect();
                out.extend(f(cx.time_ms, &refs));
            },
        )
    }

    /// Number of events in the batch (one element per batch, also for empty batches).
    pub fn count(self) -> Stream<u64> {
        let mut src = self.node;
        Stream::from_fold(
            0u64,
            move |n, cx| src.for_each(cx, &mut |_| *n += 1),
            |n, _, out| out.push(n),
        )
    }

    /// The hot path of `StreamingRequestCount`: counts per key, where the key is a slice
    /// borrowed from the event (e.g. [`field`] of the body). Hashes the slice; allocates one
    /// key per distinct key. An event whose extractor returns `None`, or whose key is not
    /// UTF-8, counts as malformed. Results are sorted by key.
    pub fn count_by_slice(
        self,
        f: impl for<'e> Fn(&'e Event) -> Option<&'e [u8]> + Send + 'static,
    ) -> Stream<(String, u64)> {
        let mut src = self.node;
        Stream::from_fold(
            SliceCounts::default(),
            move |counts, cx| {
                let mut bad = 0u64;
                src.for_each(cx, &mut |e| match f(e) {
                    Some(k) => counts.add(k, 1),
                    None => bad += 1,
                });
                cx.add_malformed(bad);
            },
            |counts, cx, out| {
                let mut bad = 0u64;
                out.reserve(counts.0.len());
                for (k, n) in counts.0 {
                    match String::from_utf8(k.into_vec()) {
                        Ok(s) => out.push((s, n)),
                        Err(_) => bad += n,
                    }
                }
                cx.add_malformed(bad);
                out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            },
        )
    }

    /// Owned copies of the events (needed to window raw events).
    pub fn cloned(self) -> Stream<Event> {
        self.map(|e| e.clone())
    }
}

/// Per-key counts of byte-slice keys across a batch's chunks: looked up by the borrowed
/// slice, so a key is copied only the first time it is seen.
#[derive(Default)]
pub(crate) struct SliceCounts<V = u64>(pub(crate) HashMap<Box<[u8]>, V, FxBuild>);

impl<V: Copy + std::ops::AddAssign> SliceCounts<V> {
    pub(crate) fn add(&mut self, k: &[u8], n: V) {
        match self.0.get_mut(k) {
            Some(c) => *c += n,
            None => {
                self.0.insert(k.into(), n);
            }
        }
    }
}

fn move_map<T>(mut f: impl FnMut(&Event) -> T) -> impl FnMut(&Event) -> Option<T> {
    move |e| Some(f(e))
}

/// The `n`th (0-based) `sep`-separated field of `bytes` — Spark's `line.split(" ")(n)` without
/// allocating. Note Java's `split` drops trailing empty strings; runs of separators give
/// empty fields here as there.
pub fn field(bytes: &[u8], sep: u8, n: usize) -> Option<&[u8]> {
    // memchr scans a word at a time; this runs once per event on the request-count path.
    let mut seps = memchr::memchr_iter(sep, bytes);
    let mut start = 0;
    for _ in 0..n {
        start = seps.next()? + 1;
    }
    let end = seps.next().unwrap_or(bytes.len());
    Some(&bytes[start..end])
}

/// A batch-by-batch computation producing owned `T`s.
pub struct Stream<T> {
    pub(crate) node: Box<dyn Node<T>>,
}

/// A source of elements computed chunk by chunk (from an [`EventStream`]).
struct ChunkSource<F>(F);

impl<T, F> Node<T> for ChunkSource<F>
where
    F: FnMut(&BatchCx<'_>, &mut Vec<T>) + Send,
{
    fn chunk(&mut self, cx: &BatchCx<'_>, out: &mut Vec<T>) {
        (self.0)(cx, out)
    }
    fn finish(&mut self, _cx: &BatchCx<'_>, _out: &mut Vec<T>) -> bool {
        true
    }
}

/// An aggregation straight over the events: folds every chunk into `acc`, emits at the end.
struct FoldSource<A, F, G> {
    acc: A,
    fold: F,
    done: G,
}

impl<T, A, F, G> Node<T> for FoldSource<A, F, G>
where
    A: Default + Send,
    F: FnMut(&mut A, &BatchCx<'_>) + Send,
    G: FnMut(A, &BatchCx<'_>, &mut Vec<T>) + Send,
{
    fn chunk(&mut self, cx: &BatchCx<'_>, _out: &mut Vec<T>) {
        (self.fold)(&mut self.acc, cx)
    }
    fn finish(&mut self, cx: &BatchCx<'_>, out: &mut Vec<T>) -> bool {
        (self.done)(std::mem::take(&mut self.acc), cx, out);
        true
    }
}

type ElemFn<T, U> = Box<dyn FnMut(std::vec::Drain<'_, T>, &mut Vec<U>) + Send>;

/// A per-element operator (`map`, `filter`, …): passes each chunk's elements on as they come.
struct ElemNode<T, U> {
    parent: Box<dyn Node<T>>,
    buf: Vec<T>,
    f: ElemFn<T, U>,
}

impl<T: Send + 'static, U: 'static> Node<U> for ElemNode<T, U> {
    fn chunk(&mut self, cx: &BatchCx<'_>, out: &mut Vec<U>) {
        self.parent.chunk(cx, &mut self.buf);
        if !self.buf.is_empty() {
            (self.f)(self.buf.drain(..), out);
        }
    }
    fn finish(&mut self, cx: &BatchCx<'_>, out: &mut Vec<U>) -> bool {
        let has = self.parent.finish(cx, &mut self.buf);
        (self.f)(self.buf.drain(..), out);
        has
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.parent.visit_state(f)
    }
}

type FoldFn<A, T> = Box<dyn FnMut(&mut A, std::vec::Drain<'_, T>) + Send>;
type DoneFn<A, U> = Box<dyn FnMut(A, &BatchCx<'_>, &mut Vec<U>) + Send>;

/// An aggregation over the parent's elements: folds them into `acc` chunk by chunk and
/// emits at the end of the batch.
struct FoldNode<T, A, U> {
    parent: Box<dyn Node<T>>,
    buf: Vec<T>,
    acc: A,
    fold: FoldFn<A, T>,
    done: DoneFn<A, U>,
}

impl<T: Send + 'static, A: Default + Send, U: 'static> Node<U> for FoldNode<T, A, U> {
    fn chunk(&mut self, cx: &BatchCx<'_>, _out: &mut Vec<U>) {
        self.parent.chunk(cx, &mut self.buf);
        if !self.buf.is_empty() {
            (self.fold)(&mut self.acc, self.buf.drain(..));
        }
    }
    fn finish(&mut self, cx: &BatchCx<'_>, out: &mut Vec<U>) -> bool {
        let has = self.parent.finish(cx, &mut self.buf);
        (self.fold)(&mut self.acc, self.buf.drain(..));
        let acc = std::mem::take(&mut self.acc);
        if has {
            (self.done)(acc, cx, out);
        }
        has
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.parent.visit_state(f)
    }
}

struct UnionNode<T>(Box<dyn Node<T>>, Box<dyn Node<T>>);

impl<T: Send + 'static> Node<T> for UnionNode<T> {
    fn chunk(&mut self, cx: &BatchCx<'_>, out: &mut Vec<T>) {
        self.0.chunk(cx, out);
        self.1.chunk(cx, out);
    }
    fn finish(&mut self, cx: &BatchCx<'_>, out: &mut Vec<T>) -> bool {
        // Each side's order is kept; between them, elements come as produced: inputs are
        // read one after the other, so two chunk-wise streams of different inputs give
        // this side's then the other's, while a window's elements come at the end.
        let a = self.0.finish(cx, out);
        let b = self.1.finish(cx, out);
        a || b
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.0.visit_state(f);
        self.1.visit_state(f);
    }
}

impl<T: Send + 'static> Stream<T> {
    /// A stream computed chunk by chunk: `f` appends what each chunk yields.
    pub(crate) fn from_chunks(f: impl FnMut(&BatchCx<'_>, &mut Vec<T>) + Send + 'static) -> Self {
        Stream {
            node: Box::new(ChunkSource(f)),
        }
    }

    /// An aggregation over the events: `fold` each chunk into the accumulator, `done` turns
    /// it into the batch's result (the accumulator starts from `A::default()` every batch).
    pub(crate) fn from_fold<A: Default + Send + 'static>(
        init: A,
        fold: impl FnMut(&mut A, &BatchCx<'_>) + Send + 'static,
        done: impl FnMut(A, &BatchCx<'_>, &mut Vec<T>) + Send + 'static,
    ) -> Self {
        Stream {
            node: Box::new(FoldSource {
                acc: init,
                fold,
                done,
            }),
        }
    }

    fn per_element<U: Send + 'static>(
        self,
        f: impl FnMut(std::vec::Drain<'_, T>, &mut Vec<U>) + Send + 'static,
    ) -> Stream<U> {
        Stream {
            node: Box::new(ElemNode {
                parent: self.node,
                buf: Vec::new(),
                f: Box::new(f),
            }),
        }
    }

    fn fold<A: Default + Send + 'static, U: Send + 'static>(
        self,
        fold: impl FnMut(&mut A, std::vec::Drain<'_, T>) + Send + 'static,
        done: impl FnMut(A, &BatchCx<'_>, &mut Vec<U>) + Send + 'static,
    ) -> Stream<U> {
        Stream {
            node: Box::new(FoldNode {
                parent: self.node,
                buf: Vec::new(),
                acc: A::default(),
                fold: Box::new(fold),
                done: Box::new(done),
            }),
        }
    }

    pub fn map<U: Send + 'static>(self, mut f: impl FnMut(T) -> U + Send + 'static) -> Stream<U> {
        self.per_element(move |v, out| out.extend(v.map(&mut f)))
    }

    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U>>(
        self,
        mut f: impl FnMut(T) -> I + Send + 'static,
    ) -> Stream<U> {
        self.per_element(move |v, out| out.extend(v.flat_map(&mut f)))
    }

    pub fn filter(self, mut f: impl FnMut(&T) -> bool + Send + 'static) -> Stream<T> {
        self.per_element(move |v, out| out.extend(v.filter(|x| f(x))))
    }

    /// A closure over the whole batch (Spark's `transform`); gets the batch time. Holds the
    /// whole batch's elements until the batch ends.
    pub fn transform<U: Send + 'static>(
        self,
        mut f: impl FnMut(i64, Vec<T>) -> Vec<U> + Send + 'static,
    ) -> Stream<U> {
        self.fold(
            |all: &mut Vec<T>, v| all.extend(v),
            move |all, cx, out| out.extend(f(cx.time_ms, all)),
        )
    }

    /// Both streams' elements, each in its order. Elements pass on as chunks come, so this
    /// one's come first when the two read different inputs (inputs are read one after the
    /// other); a window's elements come at the end of the batch.
    pub fn union(self, other: Stream<T>) -> Stream<T> {
        Stream {
            node: Box::new(UnionNode(self.node, other.node)),
        }
    }

    /// One element per batch: the number of elements.
    pub fn count(self) -> Stream<u64> {
        self.fold(
            |n: &mut u64, v| *n += v.len() as u64,
            |n, _, out| out.push(n),
        )
    }

    /// `(f(x), x)` pairs, key first (Spark's `keyBy`).
    pub fn key_by<K: Send + 'static>(
        self,
        mut f: impl FnMut(&T) -> K + Send + 'static,
    ) -> Stream<(K, T)> {
        self.per_element(move |v, out| out.extend(v.map(|x| (f(&x), x))))
    }

    /// Occurrences of each distinct element, sorted by element.
    pub fn count_by_value(self) -> Stream<(T, u64)>
    where
        T: Hash + Eq + Ord,
    {
        self.fold(
            |m: &mut HashMap<T, u64, FxBuild>, v| {
                for x in v {
                    *m.entry(x).or_insert(0) += 1;
                }
            },
            |m, _, out| out.extend(sorted(m)),
        )
    }

    /// Spark's `window(length, slide)`: at batch times that are multiples of `slide`, all
    /// elements of the batches in `(T − length, T]`. Both must be multiples of the batch
    /// interval (checked when the job is built).
    pub fn window(self, length: Duration, slide: Duration) -> Stream<T>
    where
        T: Data,
    {
        Stream {
            node: Box::new(WindowNode {
                parent: self.node,
                length_ms: length.as_millis() as i64,
                slide_ms: slide.as_millis() as i64,
                current: Vec::new(),
                batches: VecDeque::new(),
            }),
        }
    }
}

fn sorted<K: Ord, V, S>(m: HashMap<K, V, S>) -> Vec<(K, V)> {
    let mut v: Vec<(K, V)> = m.into_iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    v
}

fn check_window(length_ms: i64, slide_ms: i64, interval_ms: i64) -> Result<(), String> {
    if length_ms <= 0 || slide_ms <= 0 {
        return Err("window length and slide must be positive".into());
    }
    if length_ms % interval_ms != 0 || slide_ms % interval_ms != 0 {
        return Err(format!(
            "window length ({length_ms} ms) and slide ({slide_ms} ms) must be multiples of the batch interval ({interval_ms} ms)"
        ));
    }
    Ok(())
}

struct WindowNode<T> {
    parent: Box<dyn Node<T>>,
    length_ms: i64,
    slide_ms: i64,
    /// The current batch's elements so far.
    current: Vec<T>,
    /// Each batch's elements in `(T − length, T]`, oldest first.
    batches: VecDeque<(i64, Vec<T>)>,
}

impl<T: Data> Node<T> for WindowNode<T> {
    fn chunk(&mut self, cx: &BatchCx<'_>, _out: &mut Vec<T>) {
        self.parent.chunk(cx, &mut self.current);
    }
    fn finish(&mut self, cx: &BatchCx<'_>, out: &mut Vec<T>) -> bool {
        let t = cx.time_ms;
        let has = self.parent.finish(cx, &mut self.current);
        let v = std::mem::take(&mut self.current);
        if has {
            self.batches.push_back((t, v));
        }
        while self
            .batches
            .front()
            .is_some_and(|(bt, _)| *bt <= t - self.length_ms)
        {
            self.batches.pop_front();
        }
        if t.rem_euclid(self.slide_ms) != 0 {
            return false;
        }
        out.extend(self.batches.iter().flat_map(|(_, v)| v.iter().cloned()));
        true
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.parent.visit_state(f);
        f(self);
    }
}

impl<T: Data> StateNode for WindowNode<T> {
    fn kind(&self) -> &'static str {
        "window"
    }
    fn save(&self) -> Result<serde_json::Value, StateError> {
        serde_json::to_value(&self.batches).map_err(|source| StateError::Encode {
            kind: "window",
            source,
        })
    }
    fn load(&mut self, value: serde_json::Value) -> Result<(), StateError> {
        self.batches = serde_json::from_value(value).map_err(|source| StateError::Decode {
            kind: "window",
            source,
        })?;
        Ok(())
    }
    fn check_interval(&self, interval_ms: i64) -> Result<(), String> {
        check_window(self.length_ms, self.slide_ms, interval_ms)
    }
}

type ReduceFn<V> = Box<dyn Fn(V, V) -> V + Send>;

impl<K: Send + 'static, V: Send + 'static> Stream<(K, V)> {
    /// Combines the values of each key within the batch; sorted by key.
    pub fn reduce_by_key(self, f: impl Fn(V, V) -> V + Send + 'static) -> Stream<(K, V)>
    where
        K: Hash + Eq + Ord,
    {
        self.fold(
            move |m: &mut HashMap<K, V, FxBuild>, v| reduce_into(m, v, &f),
            |m, _, out| out.extend(sorted(m)),
        )
    }

    /// Spark's `reduceByKeyAndWindow`: per key, the reduction of all values in the window,
    /// at multiples of `slide`. With `inverse` (e.g. subtraction for a sum), the running
    /// result is updated incrementally — add the new batch, "subtract" the batches leaving
    /// the window — instead of re-reducing the whole window; a key disappears when no batch
    /// in the window has it, so both ways give the same results.
    pub fn reduce_by_key_and_window(
        self,
        f: impl Fn(V, V) -> V + Send + 'static,
        inverse: Option<Box<dyn Fn(V, V) -> V + Send>>,
        length: Duration,
        slide: Duration,
    ) -> Stream<(K, V)>
    where
        K: Key,
        V: Data,
    {
        Stream {
            node: Box::new(ReduceWindowNode {
                parent: self.node,
                f: Box::new(f),
                inverse,
                length_ms: length.as_millis() as i64,
                slide_ms: slide.as_millis() as i64,
                buf: Vec::new(),
                current: HashMap::default(),
                batches: VecDeque::new(),
                running: HashMap::new(),
            }),
        }
    }

    /// Spark's `updateStateByKey`: every batch, `f(key, new values, previous state)` for every
    /// key that has new values or state; `None` removes the key. Emits all keys' states,
    /// sorted by key.
    pub fn update_state_by_key<S: Data>(
        self,
        f: impl FnMut(&K, Vec<V>, Option<S>) -> Option<S> + Send + 'static,
    ) -> Stream<(K, S)>
    where
        K: Key,
    {
        Stream {
            node: Box::new(UpdateStateNode {
                parent: self.node,
                f: Box::new(f),
                buf: Vec::new(),
                grouped: HashMap::new(),
                state: HashMap::new(),
            }),
        }
    }
}

fn reduce_into<K: Hash + Eq, V, S: std::hash::BuildHasher>(
    m: &mut HashMap<K, V, S>,
    items: impl IntoIterator<Item = (K, V)>,
    f: &dyn Fn(V, V) -> V,
) {
    use std::collections::hash_map::Entry;
    for (k, v) in items {
        match m.entry(k) {
            Entry::Occupied(o) => {
                // Take the old value out to call `f` by value without requiring `V: Default`.
                let (k, old) = o.remove_entry();
                m.insert(k, f(old, v));
            }
            Entry::Vacant(slot) => {
                slot.insert(v);
            }
        }
    }
}

struct ReduceWindowNode<K, V> {
    parent: Box<dyn Node<(K, V)>>,
    f: ReduceFn<V>,
    inverse: Option<ReduceFn<V>>,
    length_ms: i64,
    slide_ms: i64,
    buf: Vec<(K, V)>,
    /// The current batch's per-key reduction so far.
    current: HashMap<K, V, FxBuild>,
    /// Each batch's per-key reduction in `(T − length, T]`, oldest first, sorted by key.
    batches: VecDeque<(i64, Vec<(K, V)>)>,
    /// With an inverse: the window's running reduction and how many batches hold each key.
    /// Not checkpointed: rebuilt from `batches` on load.
    running: HashMap<K, (V, u32)>,
}

impl<K: Key, V: Data> ReduceWindowNode<K, V> {
    fn add_running(&mut self, items: &[(K, V)]) {
        for (k, v) in items {
            match self.running.remove(k) {
                Some((old, n)) => {
                    self.running
                        .insert(k.clone(), ((self.f)(old, v.clone()), n + 1));
                }
                None => {
                    self.running.insert(k.clone(), (v.clone(), 1));
                }
            }
        }
    }
}

impl<K: Key, V: Data> Node<(K, V)> for ReduceWindowNode<K, V> {
    fn chunk(&mut self, cx: &BatchCx<'_>, _out: &mut Vec<(K, V)>) {
        self.parent.chunk(cx, &mut self.buf);
        if !self.buf.is_empty() {
            reduce_into(&mut self.current, self.buf.drain(..), &self.f);
        }
    }
    fn finish(&mut self, cx: &BatchCx<'_>, out: &mut Vec<(K, V)>) -> bool {
        let t = cx.time_ms;
        let has = self.parent.finish(cx, &mut self.buf);
        reduce_into(&mut self.current, self.buf.drain(..), &self.f);
        let current = std::mem::take(&mut self.current);
        if has {
            let reduced = sorted(current);
            if self.inverse.is_some() {
                self.add_running(&reduced);
            }
            self.batches.push_back((t, reduced));
        }
        while self
            .batches
            .front()
            .is_some_and(|(bt, _)| *bt <= t - self.length_ms)
        {
            let Some((_, old)) = self.batches.pop_front() else {
                break;
            };
            if let Some(inv) = &self.inverse {
                for (k, v) in old {
                    if let Some((cur, n)) = self.running.remove(&k) {
                        if n > 1 {
                            self.running.insert(k, (inv(cur, v), n - 1));
                        }
                    }
                }
            }
        }
        if t.rem_euclid(self.slide_ms) != 0 {
            return false;
        }
        if self.inverse.is_some() {
            let mut v: Vec<(K, V)> = self
                .running
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect();
            v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            out.extend(v);
        } else {
            let mut m: HashMap<K, V, FxBuild> = HashMap::default();
            let all = self.batches.iter().flat_map(|(_, v)| v.iter().cloned());
            reduce_into(&mut m, all, &self.f);
            out.extend(sorted(m));
        }
        true
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.parent.visit_state(f);
        f(self);
    }
}

impl<K: Key, V: Data> StateNode for ReduceWindowNode<K, V> {
    fn kind(&self) -> &'static str {
        "reduce_by_key_and_window"
    }
    fn save(&self) -> Result<serde_json::Value, StateError> {
        serde_json::to_value(&self.batches).map_err(|source| StateError::Encode {
            kind: self.kind(),
            source,
        })
    }
    fn load(&mut self, value: serde_json::Value) -> Result<(), StateError> {
        self.batches = serde_json::from_value(value).map_err(|source| StateError::Decode {
            kind: "reduce_by_key_and_window",
            source,
        })?;
        self.running.clear();
        if self.inverse.is_some() {
            let batches = std::mem::take(&mut self.batches);
            for (_, items) in &batches {
                self.add_running(items);
            }
            self.batches = batches;
        }
        Ok(())
    }
    fn check_interval(&self, interval_ms: i64) -> Result<(), String> {
        check_window(self.length_ms, self.slide_ms, interval_ms)
    }
}

type UpdateFn<K, V, S> = Box<dyn FnMut(&K, Vec<V>, Option<S>) -> Option<S> + Send>;

struct UpdateStateNode<K, V, S> {
    parent: Box<dyn Node<(K, V)>>,
    f: UpdateFn<K, V, S>,
    buf: Vec<(K, V)>,
    /// The current batch's values per key so far (`f` takes them all at once).
    grouped: HashMap<K, Vec<V>>,
    state: HashMap<K, S>,
}

impl<K: Key, V: Send + 'static, S: Data> UpdateStateNode<K, V, S> {
    fn group(&mut self) {
        for (k, v) in self.buf.drain(..) {
            self.grouped.entry(k).or_default().push(v);
        }
    }
}

impl<K: Key, V: Send + 'static, S: Data> Node<(K, S)> for UpdateStateNode<K, V, S> {
    fn chunk(&mut self, cx: &BatchCx<'_>, _out: &mut Vec<(K, S)>) {
        self.parent.chunk(cx, &mut self.buf);
        self.group();
    }
    fn finish(&mut self, cx: &BatchCx<'_>, out: &mut Vec<(K, S)>) -> bool {
        // Runs every batch, also when the parent has no result (a window between slides):
        // state may change with no new values.
        self.parent.finish(cx, &mut self.buf);
        self.group();
        let mut grouped = std::mem::take(&mut self.grouped);
        let old = std::mem::take(&mut self.state);
        let mut next = HashMap::with_capacity(old.len());
        for (k, s) in old {
            let vals = grouped.remove(&k).unwrap_or_default();
            if let Some(s) = (self.f)(&k, vals, Some(s)) {
                next.insert(k, s);
            }
        }
        for (k, vals) in grouped {
            if let Some(s) = (self.f)(&k, vals, None) {
                next.insert(k, s);
            }
        }
        self.state = next;
        let mut v: Vec<(K, S)> = self
            .state
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.extend(v);
        true
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.parent.visit_state(f);
        f(self);
    }
}

impl<K: Key, V: Send + 'static, S: Data> StateNode for UpdateStateNode<K, V, S> {
    fn kind(&self) -> &'static str {
        "update_state_by_key"
    }
    fn save(&self) -> Result<serde_json::Value, StateError> {
        let mut v: Vec<(&K, &S)> = self.state.iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        serde_json::to_value(v).map_err(|source| StateError::Encode {
            kind: "update_state_by_key",
            source,
        })
    }
    fn load(&mut self, value: serde_json::Value) -> Result<(), StateError> {
        let v: Vec<(K, S)> =
            serde_json::from_value(value).map_err(|source| StateError::Decode {
                kind: "update_state_by_key",
                source,
            })?;
        self.state = v.into_iter().collect();
        Ok(())
    }
}

/// FxHash (rustc's): a fast non-cryptographic hasher for the hot path, where keys come from
/// our own inputs' bytes and HashDoS is not a concern worth SipHash's cost.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(K);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
