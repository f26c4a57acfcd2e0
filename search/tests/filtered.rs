//! The filtered-search planner of `HnswIndex`: the exact scan and the filtered graph walk against
//! brute force, the plan chosen from exact match counts, and those counts across adds,
//! replacements, deletes, scope deletion and snapshot/restore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use search::{
    AttributeValue, Attributes, Filter, FilterPlan, HnswConfig, HnswIndex, Quantization, Scope, VectorIndex,
    VectorRecord, filtered_expansion,
};
use uuid::Uuid;

mod common;

use common::{DIM, brute_force, id, random_vectors};

fn config() -> HnswConfig {
    HnswConfig { dimensions: DIM, quantization: Quantization::F32, ..HnswConfig::default() }
}

/// `part` = i % 50 (a value keeps 2%), `even` = i is even (50%).
fn attr_sets() -> Vec<Arc<Attributes>> {
    (0..50)
        .map(|p| {
            let mut a = Attributes::new();
            a.insert("part".into(), AttributeValue::Number(p as f64));
            a.insert("even".into(), AttributeValue::Bool(p % 2 == 0));
            Arc::new(a)
        })
        .collect()
}

/// Adds `data`, the `i`-th vector with the attributes `attributes(i)`, in batches under 1,024
/// (one insert thread, so the graph is the same on every run).
fn fill_with(index: &HnswIndex, scope: &Scope, data: &[Vec<f32>], attributes: impl Fn(usize) -> Arc<Attributes>) {
    for (b, part) in data.chunks(500).enumerate() {
        let recs = part
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = b * 500 + j;
                VectorRecord { id: id(i), vector: v.clone(), attributes: attributes(i) }
            })
            .collect();
        index.add(scope, recs).unwrap();
    }
}

/// Adds `data` with the attribute set `i % 50`.
fn fill(index: &HnswIndex, scope: &Scope, data: &[Vec<f32>], sets: &[Arc<Attributes>]) {
    fill_with(index, scope, data, |i| sets[i % 50].clone());
}

/// A new index of `config` holding `data` as [`fill`] adds it.
fn filled(config: HnswConfig, scope: &Scope, data: &[Vec<f32>]) -> HnswIndex {
    let index = HnswIndex::new(config).unwrap();
    fill(&index, scope, data, &attr_sets());
    index
}

/// Which vectors (by index) pass a filter, for brute force.
type Keep = Box<dyn Fn(usize) -> bool>;

fn filter(json: serde_json::Value) -> Filter {
    serde_json::from_value(json).unwrap()
}

fn ids(index: &HnswIndex, scope: &Scope, q: &[f32], k: usize, f: &Filter) -> Vec<Uuid> {
    index.search(scope, q, k, Some(f)).unwrap().iter().map(|h| h.id).collect()
}

fn matching(index: &HnswIndex, scope: &Scope, f: &Filter) -> usize {
    match index.filter_plan(scope, 10, f).unwrap() {
        FilterPlan::Empty => 0,
        FilterPlan::Exact { matching } | FilterPlan::Walk { matching, .. } => matching,
    }
}

#[test]
fn exact_plan_and_walk_plan_return_the_brute_force_ids() {
    let mut rng = StdRng::seed_from_u64(11);
    let data = random_vectors(&mut rng, 2_000);
    let scope = Scope::new("org_a", "vs_1");
    // Every filtered search scans exactly.
    let exact = filled(HnswConfig { exact_filter_max: 100_000_000, ..config() }, &scope, &data);
    // Every filtered search walks the graph, with an ef as large as the selective filter's
    // matches, so that the walk is exhaustive on this small graph.
    let walk =
        filled(HnswConfig { exact_filter_max: 0, filtered_expansion_search: Some(600), ..config() }, &scope, &data);
    let cases: Vec<(Filter, Keep)> = vec![
        // Selective: 40 vectors.
        (filter(serde_json::json!({"type": "eq", "key": "part", "value": 3})), Box::new(|i| i % 50 == 3)),
        // 6%: 120 vectors.
        (
            filter(serde_json::json!({"type": "in", "key": "part", "value": [7, 8, 9]})),
            Box::new(|i| (7..=9).contains(&(i % 50))),
        ),
        // Broad: half.
        (filter(serde_json::json!({"type": "eq", "key": "even", "value": true})), Box::new(|i| i % 2 == 0)),
    ];
    for (f, keep) in &cases {
        assert!(matches!(exact.filter_plan(&scope, 10, f).unwrap(), FilterPlan::Exact { .. }));
        assert!(matches!(walk.filter_plan(&scope, 10, f).unwrap(), FilterPlan::Walk { expansion: 600, .. }));
        for q in random_vectors(&mut rng, 20) {
            let truth = brute_force(&data, &q, 10, keep);
            assert_eq!(ids(&exact, &scope, &q, 10, f), truth, "exact plan, {f:?}");
            assert_eq!(ids(&walk, &scope, &q, 10, f), truth, "walk plan, {f:?}");
        }
    }
    // Scores are cosine similarities, best first, in both plans: a stored vector finds itself.
    let own = filter(serde_json::json!({"type": "eq", "key": "part", "value": 17}));
    for index in [&exact, &walk] {
        let hits = index.search(&scope, &data[17], 5, Some(&own)).unwrap();
        assert_eq!(hits[0].id, id(17));
        assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

/// The exact scan streams its own copy of the vectors (per attribute set): that copy must follow
/// every replacement, move between sets and delete.
#[test]
fn the_exact_scan_follows_replacements_and_deletes() {
    let mut rng = StdRng::seed_from_u64(23);
    let mut data = random_vectors(&mut rng, 1_500);
    let fresh = random_vectors(&mut rng, 1_500);
    let scope = Scope::new("org_a", "vs_1");
    let sets = attr_sets();
    let index = filled(HnswConfig { exact_filter_max: 100_000_000, ..config() }, &scope, &data);
    // A third replaced by new vectors in another attribute set, a third deleted.
    let set_of = |i: usize| if i % 3 == 1 { (i + 7) % 50 } else { i % 50 };
    let replaced: Vec<VectorRecord> = (0..data.len())
        .filter(|i| i % 3 == 1)
        .map(|i| VectorRecord { id: id(i), vector: fresh[i].clone(), attributes: sets[set_of(i)].clone() })
        .collect();
    index.add(&scope, replaced).unwrap();
    for i in (0..data.len()).filter(|i| i % 3 == 1) {
        data[i] = fresh[i].clone();
    }
    let deleted: Vec<Uuid> = (0..data.len()).filter(|i| i % 3 == 2).map(id).collect();
    assert_eq!(index.delete(&scope, &deleted).unwrap(), deleted.len());

    // Which attribute sets (by `part`) pass each filter.
    let cases: Vec<(Filter, Keep)> = vec![
        (filter(serde_json::json!({"type": "eq", "key": "part", "value": 3})), Box::new(|p| p == 3)),
        (
            filter(serde_json::json!({"type": "in", "key": "part", "value": [7, 8, 9]})),
            Box::new(|p| (7..=9).contains(&p)),
        ),
        (filter(serde_json::json!({"type": "eq", "key": "even", "value": true})), Box::new(|p| p % 2 == 0)),
    ];
    for (f, part_passes) in &cases {
        let keep = |i: usize| i % 3 != 2 && part_passes(set_of(i));
        assert_eq!(matching(&index, &scope, f), (0..data.len()).filter(|&i| keep(i)).count());
        for q in random_vectors(&mut rng, 20) {
            assert_eq!(ids(&index, &scope, &q, 10, f), brute_force(&data, &q, 10, keep), "{f:?}");
        }
    }
}

#[test]
fn the_exact_scan_reads_half_precision_vectors_right() {
    // The default storage is f16, which the exact scan converts itself.
    let mut rng = StdRng::seed_from_u64(12);
    let data = random_vectors(&mut rng, 600);
    let scope = Scope::new("org_a", "vs_1");
    let index = filled(HnswConfig { dimensions: DIM, ..HnswConfig::default() }, &scope, &data);
    let f = filter(serde_json::json!({"type": "lt", "key": "part", "value": 10}));
    assert!(matches!(index.filter_plan(&scope, 10, &f).unwrap(), FilterPlan::Exact { matching: 120 }));
    let mut total = 0;
    for q in random_vectors(&mut rng, 20) {
        let hits = index.search(&scope, &q, 10, Some(&f)).unwrap();
        for h in &hits {
            let i = h.id.as_u128() as usize - 1;
            let exact: f32 = data[i].iter().zip(&q).map(|(a, b)| a * b).sum();
            // f16 keeps about 3 decimal digits.
            assert!((h.score - exact).abs() < 2e-3, "score {} against {exact}", h.score);
        }
        let truth: HashSet<Uuid> = brute_force(&data, &q, 10, |i| i % 50 < 10).into_iter().collect();
        total += hits.iter().filter(|h| truth.contains(&h.id)).count();
    }
    // Rounding to f16 may swap near-ties at the 10th place, no more.
    assert!(total >= 195, "{total} of 200");
}

#[test]
fn a_filter_that_matches_nothing_returns_nothing() {
    let mut rng = StdRng::seed_from_u64(13);
    let data = random_vectors(&mut rng, 300);
    let scope = Scope::new("org_a", "vs_1");
    for exact_filter_max in [0, 1000] {
        let index = filled(HnswConfig { exact_filter_max, ..config() }, &scope, &data);
        for f in [
            filter(serde_json::json!({"type": "eq", "key": "part", "value": 99})),
            filter(serde_json::json!({"type": "eq", "key": "missing", "value": "x"})),
            filter(serde_json::json!({"type": "and", "filters": [
                {"type": "eq", "key": "part", "value": 3}, {"type": "eq", "key": "even", "value": true}]})),
        ] {
            assert_eq!(index.filter_plan(&scope, 10, &f).unwrap(), FilterPlan::Empty);
            assert!(index.search(&scope, &data[0], 10, Some(&f)).unwrap().is_empty());
        }
        let unknown = Scope::new("org_a", "vs_none");
        let any = filter(serde_json::json!({"type": "ne", "key": "part", "value": 1}));
        assert_eq!(index.filter_plan(&unknown, 10, &any).unwrap(), FilterPlan::Empty);
    }
}

#[test]
fn the_plan_follows_the_exact_match_count() {
    let mut rng = StdRng::seed_from_u64(14);
    let data = random_vectors(&mut rng, 1_000);
    let scope = Scope::new("org_a", "vs_1");
    let index = filled(HnswConfig { exact_filter_max: 100, expansion_search: 128, ..config() }, &scope, &data);
    let part3 = filter(serde_json::json!({"type": "eq", "key": "part", "value": 3}));
    assert_eq!(index.filter_plan(&scope, 10, &part3).unwrap(), FilterPlan::Exact { matching: 20 });
    let lt5 = filter(serde_json::json!({"type": "lt", "key": "part", "value": 5}));
    assert_eq!(index.filter_plan(&scope, 10, &lt5).unwrap(), FilterPlan::Exact { matching: 100 });
    let lt6 = filter(serde_json::json!({"type": "lt", "key": "part", "value": 6}));
    assert_eq!(
        index.filter_plan(&scope, 10, &lt6).unwrap(),
        FilterPlan::Walk { matching: 120, expansion: filtered_expansion(128, 10, 120, 1000) }
    );
    let even = filter(serde_json::json!({"type": "eq", "key": "even", "value": true}));
    assert_eq!(
        index.filter_plan(&scope, 10, &even).unwrap(),
        FilterPlan::Walk { matching: 500, expansion: filtered_expansion(128, 10, 500, 1000) }
    );
    // k = 0 asks for nothing.
    assert_eq!(index.filter_plan(&scope, 0, &even).unwrap(), FilterPlan::Empty);
    // An invalid filter is refused by the plan as by the search.
    let deep = (0..10).fold(part3.clone(), |f, _| Filter::And { filters: vec![f] });
    assert!(index.filter_plan(&scope, 10, &deep).is_err());
}

#[test]
fn filtered_expansion_is_bounded_by_k_and_ef() {
    for (matching, total) in [(1, 1_000_000), (10_000, 1_000_000), (100_000, 1_000_000), (500_000, 1_000_000)] {
        for (ef, k) in [(192, 10), (64, 10), (16, 50)] {
            let e = filtered_expansion(ef, k, matching, total);
            assert!(e >= k && e <= ef.max(k), "ef {ef} k {k} share {matching}/{total}: {e}");
        }
    }
    assert_eq!(filtered_expansion(192, 10, 1_000_000, 1_000_000), 192);
    // Less selective never gets a smaller ef.
    let mut last = 0;
    for matching in (1..=100).map(|p| p * 10_000) {
        let e = filtered_expansion(192, 10, matching, 1_000_000);
        assert!(e >= last);
        last = e;
    }
}

#[test]
fn the_walk_falls_back_to_the_exact_scan_when_it_finds_fewer_than_k() {
    // 6 vectors of 3,000 pass, scattered over the graph; a small walk cannot be relied on to find
    // them all, the fallback must.
    let mut rng = StdRng::seed_from_u64(15);
    let data = random_vectors(&mut rng, 3_000);
    let scope = Scope::new("org_a", "vs_1");
    let index =
        HnswIndex::new(HnswConfig { exact_filter_max: 0, filtered_expansion_search: Some(10), ..config() }).unwrap();
    let mut rare = Attributes::new();
    rare.insert("rare".into(), AttributeValue::Bool(true));
    let rare = Arc::new(rare);
    let common = Arc::new(Attributes::new());
    fill_with(&index, &scope, &data, |i| if i % 500 == 17 { rare.clone() } else { common.clone() });
    let f = filter(serde_json::json!({"type": "eq", "key": "rare", "value": true}));
    assert!(matches!(index.filter_plan(&scope, 10, &f).unwrap(), FilterPlan::Walk { matching: 6, .. }));
    for q in random_vectors(&mut rng, 10) {
        let found = ids(&index, &scope, &q, 10, &f);
        assert_eq!(found, brute_force(&data, &q, 10, |i| i % 500 == 17));
    }
}

#[test]
fn the_filtered_walk_keeps_its_recall() {
    // The walk with the default ef rule against brute force, on 8,000 random vectors with a 10%
    // and a 50% filter (the exact scan is switched off).
    let mut rng = StdRng::seed_from_u64(16);
    let data = random_vectors(&mut rng, 8_000);
    let scope = Scope::new("org_a", "vs_1");
    let index = filled(HnswConfig { exact_filter_max: 0, expansion_search: 128, ..config() }, &scope, &data);
    let cases: Vec<(Filter, Keep)> = vec![
        (filter(serde_json::json!({"type": "lt", "key": "part", "value": 5})), Box::new(|i| i % 50 < 5)),
        (filter(serde_json::json!({"type": "eq", "key": "even", "value": false})), Box::new(|i| i % 2 == 1)),
    ];
    for (f, keep) in &cases {
        let mut hit = 0;
        let queries = random_vectors(&mut rng, 50);
        for q in &queries {
            let truth: HashSet<Uuid> = brute_force(&data, q, 10, keep).into_iter().collect();
            let found = ids(&index, &scope, q, 10, f);
            assert_eq!(found.len(), 10);
            hit += found.iter().filter(|id| truth.contains(id)).count();
        }
        let recall = hit as f64 / (queries.len() * 10) as f64;
        assert!(recall >= 0.95, "{f:?}: recall@10 {recall}");
    }
}

#[test]
fn match_counts_stay_exact_through_changes_and_snapshots() {
    let mut rng = StdRng::seed_from_u64(17);
    let data = random_vectors(&mut rng, 1_000);
    let sets = attr_sets();
    let scope = Scope::new("org_a", "vs_1");
    let index = HnswIndex::new(config()).unwrap();
    fill(&index, &scope, &data, &sets);
    let part3 = filter(serde_json::json!({"type": "eq", "key": "part", "value": 3}));
    let even = filter(serde_json::json!({"type": "eq", "key": "even", "value": true}));
    let fresh = filter(serde_json::json!({"type": "eq", "key": "fresh", "value": true}));
    assert_eq!((matching(&index, &scope, &part3), matching(&index, &scope, &even)), (20, 500));

    // Replace the 20 vectors of part 3 with a new attribute set whose content equals part 4's but
    // is another allocation (interned by content), and 5 of them with a new set.
    let mut part4 = (*sets[4]).clone();
    let recs = (0..20)
        .map(|j| {
            let i = j * 50 + 3;
            let attributes = if j < 5 {
                let mut a = Attributes::new();
                a.insert("fresh".into(), AttributeValue::Bool(true));
                Arc::new(a)
            } else {
                Arc::new(part4.clone())
            };
            VectorRecord { id: id(i), vector: data[i].clone(), attributes }
        })
        .collect();
    index.add(&scope, recs).unwrap();
    assert_eq!(matching(&index, &scope, &part3), 0);
    assert_eq!(matching(&index, &scope, &fresh), 5);
    let part4f = filter(serde_json::json!({"type": "eq", "key": "part", "value": 4}));
    assert_eq!(matching(&index, &scope, &part4f), 35);
    assert_eq!(matching(&index, &scope, &even), 515);

    // Deletes, including unknown and repeated ids.
    let gone: Vec<Uuid> = (0..1000).filter(|i| i % 50 == 4).map(id).chain([Uuid::from_u128(9_999_999)]).collect();
    assert_eq!(index.delete(&scope, &gone).unwrap(), 20);
    assert_eq!(index.delete(&scope, &gone).unwrap(), 0);
    assert_eq!(matching(&index, &scope, &part4f), 15);
    assert_eq!(matching(&index, &scope, &even), 495);
    // Re-adding deleted ids counts them again; the search sees exactly the live ones.
    part4.insert("back".into(), AttributeValue::Bool(true));
    let back = Arc::new(part4);
    let recs =
        (0..3).map(|j| VectorRecord { id: id(j * 50 + 4), vector: data[j * 50 + 4].clone(), attributes: back.clone() });
    index.add(&scope, recs.collect()).unwrap();
    assert_eq!(matching(&index, &scope, &part4f), 18);
    let hits = index.search(&scope, &data[4], 100, Some(&part4f)).unwrap();
    assert_eq!(hits.len(), 18);

    // Snapshot and restore keep every count.
    let dir = tempfile::tempdir().unwrap();
    index.snapshot(&dir.path().join("v"), 1).unwrap();
    let restored = HnswIndex::new(config()).unwrap();
    restored.restore(&dir.path().join("v")).unwrap();
    for f in [&part3, &part4f, &even, &fresh] {
        assert_eq!(matching(&restored, &scope, f), matching(&index, &scope, f), "{f:?}");
    }
    assert_eq!(restored.len(&scope).unwrap(), 983);
    // ... and the restored index keeps counting.
    restored.delete(&scope, &[id(4)]).unwrap();
    assert_eq!(matching(&restored, &scope, &part4f), 17);

    // A deleted scope starts from zero.
    assert_eq!(index.delete_scope(&scope).unwrap(), 983);
    assert_eq!(matching(&index, &scope, &even), 0);
    fill(&index, &scope, &data[..100], &sets);
    assert_eq!(matching(&index, &scope, &even), 50);
    assert_eq!(matching(&index, &scope, &part3), 2);
}
