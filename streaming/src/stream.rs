//! The operator graph (Spark's DStream API, in Rust).
//!
//! * An [`EventStream`] is a view of one or more inputs' events for the current batch. Its
//!   operators see `&Event` borrowed from the take transactions, so nothing is copied until an
//!   operator produces owned values ([`EventStream::map`] and friends), and
//!   [`EventStream::count_by_slice`] counts borrowed byte slices and allocates a `String` per
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

/// What the operators of one batch see.
pub struct BatchCx<'a> {
    /// The batch time `T` (ms since the Unix epoch).
    pub time_ms: i64,
    pub interval_ms: i64,
    inputs: &'a [Vec<&'a [Event]>],
    malformed: Cell<u64>,
}

impl<'a> BatchCx<'a> {
    pub(crate) fn new(time_ms: i64, interval_ms: i64, inputs: &'a [Vec<&'a [Event]>]) -> Self {
        BatchCx {
            time_ms,
            interval_ms,
            inputs,
            malformed: Cell::new(0),
        }
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

pub(crate) trait Node<T>: Send {
    fn compute(&mut self, cx: &BatchCx<'_>) -> Option<Vec<T>>;
    fn visit_state(&mut self, _f: &mut dyn FnMut(&mut dyn StateNode)) {}
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
        Stream::from_fn(move |cx| {
            let mut out = Vec::new();
            src.for_each(cx, &mut |e| out.extend(f(e)));
            Some(out)
        })
    }

    /// Like `flat_map` with at most one result; `None` counts the event as malformed.
    pub fn map_or_malformed<T: Send + 'static>(
        self,
        mut f: impl FnMut(&Event) -> Option<T> + Send + 'static,
    ) -> Stream<T> {
        let mut src = self.node;
        Stream::from_fn(move |cx| {
            let mut out = Vec::new();
            let mut bad = 0u64;
            src.for_each(cx, &mut |e| match f(e) {
                Some(v) => out.push(v),
                None => bad += 1,
            });
            cx.add_malformed(bad);
            Some(out)
        })
    }

    /// A closure over the whole batch's events.
    pub fn transform<T: Send + 'static>(
        self,
        mut f: impl FnMut(i64, &[&Event]) -> Vec<T> + Send + 'static,
    ) -> Stream<T> {
        let mut src = self.node;
        Stream::from_fn(move |cx| {
            let mut all = Vec::new();
            src.for_each(cx, &mut |e| all.push(e));
            Some(f(cx.time_ms, &all))
        })
    }

    /// Number of events in the batch (one element per batch, also for empty batches).
    pub fn count(self) -> Stream<u64> {
        let mut src = self.node;
        Stream::from_fn(move |cx| {
            let mut n = 0u64;
            src.for_each(cx, &mut |_| n += 1);
            Some(vec![n])
        })
    }

    /// The hot path of `StreamingRequestCount`: counts per key, where the key is a slice
    /// borrowed from the event (e.g. [`field`] of the body). Hashes the slice; allocates one
    /// `String` per distinct key. An event whose extractor returns `None`, or whose key is
    /// not UTF-8, counts as malformed. Results are sorted by key.
    pub fn count_by_slice(
        self,
        f: impl for<'e> Fn(&'e Event) -> Option<&'e [u8]> + Send + 'static,
    ) -> Stream<(String, u64)> {
        let mut src = self.node;
        Stream::from_fn(move |cx| {
            let mut counts: HashMap<&[u8], u64, FxBuild> = HashMap::default();
            let mut bad = 0u64;
            src.for_each(cx, &mut |e| match f(e) {
                Some(k) => *counts.entry(k).or_insert(0) += 1,
                None => bad += 1,
            });
            let mut out = Vec::with_capacity(counts.len());
            for (k, n) in counts {
                match std::str::from_utf8(k) {
                    Ok(s) => out.push((s.to_string(), n)),
                    Err(_) => bad += n,
                }
            }
            cx.add_malformed(bad);
            out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Some(out)
        })
    }

    /// Owned copies of the events (needed to window raw events).
    pub fn cloned(self) -> Stream<Event> {
        self.map(|e| e.clone())
    }
}

fn move_map<T>(mut f: impl FnMut(&Event) -> T) -> impl FnMut(&Event) -> Option<T> {
    move |e| Some(f(e))
}

/// The `n`th (0-based) `sep`-separated field of `bytes` — Spark's `line.split(" ")(n)` without
/// allocating. Note Java's `split` drops trailing empty strings; runs of separators give
/// empty fields here as there.
pub fn field(bytes: &[u8], sep: u8, n: usize) -> Option<&[u8]> {
    bytes.split(move |b| *b == sep).nth(n)
}

/// A batch-by-batch computation producing owned `T`s.
pub struct Stream<T> {
    pub(crate) node: Box<dyn Node<T>>,
}

struct FnNode<F>(F);

impl<T, F> Node<T> for FnNode<F>
where
    F: FnMut(&BatchCx<'_>) -> Option<Vec<T>> + Send,
{
    fn compute(&mut self, cx: &BatchCx<'_>) -> Option<Vec<T>> {
        (self.0)(cx)
    }
}

type BatchFn<T, U> = Box<dyn FnMut(&BatchCx<'_>, Vec<T>) -> Vec<U> + Send>;

/// A stateless operator over the parent's result; keeps the parent's state visible.
struct MapNode<T, U> {
    parent: Box<dyn Node<T>>,
    f: BatchFn<T, U>,
}

impl<T: 'static, U: 'static> Node<U> for MapNode<T, U> {
    fn compute(&mut self, cx: &BatchCx<'_>) -> Option<Vec<U>> {
        let v = self.parent.compute(cx)?;
        Some((self.f)(cx, v))
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.parent.visit_state(f)
    }
}

struct UnionNode<T>(Box<dyn Node<T>>, Box<dyn Node<T>>);

impl<T: Send + 'static> Node<T> for UnionNode<T> {
    fn compute(&mut self, cx: &BatchCx<'_>) -> Option<Vec<T>> {
        match (self.0.compute(cx), self.1.compute(cx)) {
            (None, None) => None,
            (a, b) => {
                let mut a = a.unwrap_or_default();
                a.extend(b.unwrap_or_default());
                Some(a)
            }
        }
    }
    fn visit_state(&mut self, f: &mut dyn FnMut(&mut dyn StateNode)) {
        self.0.visit_state(f);
        self.1.visit_state(f);
    }
}

impl<T: Send + 'static> Stream<T> {
    pub(crate) fn from_fn(f: impl FnMut(&BatchCx<'_>) -> Option<Vec<T>> + Send + 'static) -> Self {
        Stream {
            node: Box::new(FnNode(f)),
        }
    }

    fn then<U: Send + 'static>(
        self,
        f: impl FnMut(&BatchCx<'_>, Vec<T>) -> Vec<U> + Send + 'static,
    ) -> Stream<U> {
        Stream {
            node: Box::new(MapNode {
                parent: self.node,
                f: Box::new(f),
            }),
        }
    }

    pub fn map<U: Send + 'static>(self, mut f: impl FnMut(T) -> U + Send + 'static) -> Stream<U> {
        self.then(move |_, v| v.into_iter().map(&mut f).collect())
    }

    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U>>(
        self,
        mut f: impl FnMut(T) -> I + Send + 'static,
    ) -> Stream<U> {
        self.then(move |_, v| v.into_iter().flat_map(&mut f).collect())
    }

    pub fn filter(self, mut f: impl FnMut(&T) -> bool + Send + 'static) -> Stream<T> {
        self.then(move |_, mut v| {
            v.retain(|x| f(x));
            v
        })
    }

    /// A closure over the whole batch (Spark's `transform`); gets the batch time.
    pub fn transform<U: Send + 'static>(
        self,
        mut f: impl FnMut(i64, Vec<T>) -> Vec<U> + Send + 'static,
    ) -> Stream<U> {
        self.then(move |cx, v| f(cx.time_ms, v))
    }

    /// Both streams' elements (this one's first).
    pub fn union(self, other: Stream<T>) -> Stream<T> {
        Stream {
            node: Box::new(UnionNode(self.node, other.node)),
        }
    }

    /// One element per batch: the number of elements.
    pub fn count(self) -> Stream<u64> {
        self.then(|_, v| vec![v.len() as u64])
    }

    /// `(f(x), x)` pairs, key first (Spark's `keyBy`).
    pub fn key_by<K: Send + 'static>(
        self,
        mut f: impl FnMut(&T) -> K + Send + 'static,
    ) -> Stream<(K, T)> {
        self.then(move |_, v| v.into_iter().map(|x| (f(&x), x)).collect())
    }

    /// Occurrences of each distinct element, sorted by element.
    pub fn count_by_value(self) -> Stream<(T, u64)>
    where
        T: Hash + Eq + Ord,
    {
        self.then(|_, v| {
            let mut m: HashMap<T, u64> = HashMap::new();
            for x in v {
                *m.entry(x).or_insert(0) += 1;
            }
            sorted(m)
        })
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
                batches: VecDeque::new(),
            }),
        }
    }
}

fn sorted<K: Ord, V>(m: HashMap<K, V>) -> Vec<(K, V)> {
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
    /// Each batch's elements in `(T − length, T]`, oldest first.
    batches: VecDeque<(i64, Vec<T>)>,
}

impl<T: Data> Node<T> for WindowNode<T> {
    fn compute(&mut self, cx: &BatchCx<'_>) -> Option<Vec<T>> {
        let t = cx.time_ms;
        if let Some(v) = self.parent.compute(cx) {
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
            return None;
        }
        Some(
            self.batches
                .iter()
                .flat_map(|(_, v)| v.iter().cloned())
                .collect(),
        )
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
        self.then(move |_, v| sorted(reduce_into(HashMap::new(), v, &f)))
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
                state: HashMap::new(),
            }),
        }
    }
}

fn reduce_into<K: Hash + Eq, V>(
    mut m: HashMap<K, V>,
    items: Vec<(K, V)>,
    f: &dyn Fn(V, V) -> V,
) -> HashMap<K, V> {
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
    m
}

struct ReduceWindowNode<K, V> {
    parent: Box<dyn Node<(K, V)>>,
    f: ReduceFn<V>,
    inverse: Option<ReduceFn<V>>,
    length_ms: i64,
    slide_ms: i64,
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
    fn compute(&mut self, cx: &BatchCx<'_>) -> Option<Vec<(K, V)>> {
        let t = cx.time_ms;
        if let Some(v) = self.parent.compute(cx) {
            let reduced = sorted(reduce_into(HashMap::new(), v, &self.f));
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
            return None;
        }
        if self.inverse.is_some() {
            let mut out: Vec<(K, V)> = self
                .running
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect();
            out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Some(out)
        } else {
            let all: Vec<(K, V)> = self
                .batches
                .iter()
                .flat_map(|(_, v)| v.iter().cloned())
                .collect();
            Some(sorted(reduce_into(HashMap::new(), all, &self.f)))
        }
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
    state: HashMap<K, S>,
}

impl<K: Key, V: Send + 'static, S: Data> Node<(K, S)> for UpdateStateNode<K, V, S> {
    fn compute(&mut self, cx: &BatchCx<'_>) -> Option<Vec<(K, S)>> {
        let mut grouped: HashMap<K, Vec<V>> = HashMap::new();
        for (k, v) in self.parent.compute(cx).unwrap_or_default() {
            grouped.entry(k).or_default().push(v);
        }
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
        let mut out: Vec<(K, S)> = self
            .state
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(out)
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
