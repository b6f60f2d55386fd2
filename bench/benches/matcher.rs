//! FAQ matching: time to find the best answer for one customer message in
//! a tenant's index of 100, 1,000 and 5,000 entries (the target: under
//! 10 µs at 1,000). `cargo bench -p alphadome-bench --bench matcher`.

use std::hint::black_box;

use alphadome_responder::matcher::{FaqEntry, FaqIndex};
use alphadome_testkit::load::{customer_text, synthetic_faq};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn index(n: usize) -> FaqIndex {
    FaqIndex::build(
        synthetic_faq(n, 0)
            .into_iter()
            .enumerate()
            .map(|(i, (q, a))| FaqEntry {
                id: uuid::Uuid::from_u128(i as u128),
                question: q,
                answer: a,
                category: None,
                priority: 0,
                confidence: 1.0,
            }),
    )
}

fn matching(c: &mut Criterion) {
    let messages: Vec<String> = (0..64).map(customer_text).collect();
    let mut g = c.benchmark_group("faq_best_match");
    for n in [100, 1_000, 5_000] {
        let idx = index(n);
        assert_eq!(idx.len(), n);
        let mut k = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &idx, |b, idx| {
            b.iter(|| {
                k = (k + 1) % messages.len();
                black_box(idx.best(black_box(&messages[k])).map(|m| m.score))
            })
        });
    }
    g.finish();
    let idx = index(1_000);
    c.bench_function("faq_build_index_1000", |b| {
        b.iter(|| black_box(index(1_000).len()))
    });
    drop(idx);
}

criterion_group!(benches, matching);
criterion_main!(benches);
