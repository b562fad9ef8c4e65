//! Operators against simple models over random inputs, including a checkpoint round trip
//! (save state, build a fresh graph, load, continue) at a random batch.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use weir_core::Event;

use crate::stream::{compute_chunks, EventStream, Stream};

const B: i64 = 1000;

fn key_values(e: &Event) -> (u8, i64) {
    let b = &e.body;
    (b[0], b[1] as i64)
}

/// Runs `make()`'s stream over `batches` (batch i at time (i+1)·B), restoring from a
/// checkpoint into a fresh graph before batch `restart_at`.
fn run<T: Send + 'static>(
    make: &dyn Fn() -> Stream<T>,
    batches: &[Vec<Event>],
    restart_at: usize,
) -> Vec<Option<Vec<T>>> {
    let mut s = make();
    let mut out = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        if i == restart_at {
            let mut saved = Vec::new();
            s.node.visit_state(&mut |n| saved.push(n.save().unwrap()));
            s = make();
            let mut it = saved.into_iter();
            s.node
                .visit_state(&mut |n| n.load(it.next().unwrap()).unwrap());
        }
        // Batches arrive in chunks of 1 to 4 events (varying by batch), as the job takes them.
        let chunks: Vec<(usize, &[Event])> = batch.chunks(1 + i % 4).map(|c| (0, c)).collect();
        out.push(compute_chunks(
            s.node.as_mut(),
            (i as i64 + 1) * B,
            B,
            &chunks,
        ));
    }
    out
}

fn batches_strategy() -> impl Strategy<Value = Vec<Vec<Event>>> {
    proptest::collection::vec(
        proptest::collection::vec(
            (0u8..4, 0u8..10).prop_map(|(k, v)| Event::new(vec![b'a' + k, v])),
            0..6,
        ),
        1..14,
    )
}

fn window_model(batches: &[Vec<Event>], len: i64, slide: i64) -> Vec<Option<Vec<(u8, i64)>>> {
    (0..batches.len())
        .map(|i| {
            let t = (i as i64 + 1) * B;
            if t % slide != 0 {
                return None;
            }
            let mut v = Vec::new();
            for (j, b) in batches.iter().enumerate().take(i + 1) {
                let bt = (j as i64 + 1) * B;
                if bt > t - len {
                    v.extend(b.iter().map(key_values));
                }
            }
            Some(v)
        })
        .collect()
}

fn sums(v: &[(u8, i64)]) -> Vec<(u8, i64)> {
    let mut m = BTreeMap::new();
    for (k, x) in v {
        *m.entry(*k).or_insert(0) += x;
    }
    m.into_iter().collect()
}

proptest! {
    #[test]
    fn window_matches_model(batches in batches_strategy(), len in 1i64..5, slide in 1i64..4, restart in 0usize..14) {
        let make = move || EventStream::input(0).map(key_values)
            .window(Duration::from_millis((len * B) as u64), Duration::from_millis((slide * B) as u64));
        let got = run(&make, &batches, restart);
        prop_assert_eq!(got, window_model(&batches, len * B, slide * B));
    }

    #[test]
    fn reduce_by_key_and_window_matches_model_with_and_without_inverse(
        batches in batches_strategy(), len in 1i64..5, slide in 1i64..4, restart in 0usize..14, inverse: bool,
    ) {
        let make = move || {
            let inv: Option<Box<dyn Fn(i64, i64) -> i64 + Send>> =
                if inverse { Some(Box::new(|a, b| a - b)) } else { None };
            EventStream::input(0).map(key_values).reduce_by_key_and_window(
                |a, b| a + b, inv,
                Duration::from_millis((len * B) as u64), Duration::from_millis((slide * B) as u64))
        };
        let got = run(&make, &batches, restart);
        let want: Vec<_> = window_model(&batches, len * B, slide * B)
            .into_iter().map(|w| w.map(|v| sums(&v))).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn update_state_by_key_keeps_running_totals(batches in batches_strategy(), restart in 0usize..14) {
        // Running sum per key.
        let make = || EventStream::input(0).map(key_values).update_state_by_key(
            |_k: &u8, vals: Vec<i64>, old: Option<i64>| Some(old.unwrap_or(0) + vals.iter().sum::<i64>()));
        let got = run(&make, &batches, restart);
        let mut model = BTreeMap::new();
        for (i, b) in batches.iter().enumerate() {
            for (k, x) in b.iter().map(key_values) {
                *model.entry(k).or_insert(0) += x;
            }
            prop_assert_eq!(got[i].clone(), Some(model.clone().into_iter().collect::<Vec<_>>()));
        }
    }

    #[test]
    fn count_by_value_and_count_by_slice_agree(batches in batches_strategy()) {
        let a = run(&|| EventStream::input(0).map(|e| e.body[0]).count_by_value(), &batches, usize::MAX);
        let b = run(&|| EventStream::input(0).count_by_slice(|e| Some(&e.body[..1])), &batches, usize::MAX);
        for (x, y) in a.into_iter().zip(b) {
            let x: Vec<(String, u64)> = x.unwrap().into_iter().map(|(k, n)| ((k as char).to_string(), n)).collect();
            prop_assert_eq!(x, y.unwrap());
        }
    }
}

#[test]
fn basic_operators() {
    let batches = vec![vec![
        Event::new("a 1"),
        Event::new("b 2"),
        Event::new("a 3"),
    ]];
    // The same events on two inputs, each in two chunks, as the job reads them: input 0's
    // chunks, then input 1's.
    let left = EventStream::input(0)
        .filter(|e| e.body[0] == b'a')
        .map(|e| String::from_utf8_lossy(&e.body).into_owned());
    let right = EventStream::input(1)
        .flat_map(|e| {
            e.body
                .split(|b| *b == b' ')
                .map(|s| s.to_vec())
                .collect::<Vec<_>>()
        })
        .map(|v| String::from_utf8(v).unwrap())
        .filter(|s| s.len() == 1 && s.as_bytes()[0].is_ascii_digit());
    let mut s = left.union(right).transform(|t, mut v| {
        v.push(format!("t={t}"));
        v
    });
    let b = &batches[0];
    let chunks = [(0, &b[..2]), (0, &b[2..]), (1, &b[..1]), (1, &b[1..])];
    assert_eq!(
        compute_chunks(s.node.as_mut(), B, B, &chunks).unwrap(),
        vec!["a 1", "a 3", "1", "2", "3", "t=1000"]
    );
    let counts = run(
        &|| {
            EventStream::input(0)
                .map(|e| e.body[0])
                .key_by(|b| *b as char)
                .map(|(k, _)| (k, 1u64))
                .reduce_by_key(|a, b| a + b)
        },
        &batches,
        usize::MAX,
    );
    assert_eq!(counts[0].clone().unwrap(), vec![('a', 2), ('b', 1)]);
    let n = run(&|| EventStream::input(0).count(), &[vec![]], usize::MAX);
    assert_eq!(n[0], Some(vec![0]));
}

proptest! {
    /// `field` is Java's/Rust's split-then-index (runs of separators give empty fields).
    #[test]
    fn field_is_split_nth(bytes in proptest::collection::vec(prop_oneof![Just(b' '), Just(b'a'), Just(b'b')], 0..12), n in 0usize..5) {
        prop_assert_eq!(crate::stream::field(&bytes, b' ', n), bytes.split(|b| *b == b' ').nth(n));
    }
}
