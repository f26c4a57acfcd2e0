//! The in-process vector index through the `VectorIndex` trait: recall against exact search,
//! filters, deletes, replacement, snapshot/restore and tenant isolation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use search::{
    AttributeValue, Attributes, Filter, HnswConfig, HnswIndex, Scope, SearchError, VectorIndex, VectorRecord,
};
use uuid::Uuid;

mod common;

use common::{DIM, brute_force, id, random_vectors};

fn config() -> HnswConfig {
    HnswConfig { dimensions: DIM, ..HnswConfig::default() }
}

fn attrs(pairs: &[(&str, AttributeValue)]) -> Arc<Attributes> {
    Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn records(vectors: &[Vec<f32>], attr: impl Fn(usize) -> Arc<Attributes>) -> Vec<VectorRecord> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| VectorRecord { id: id(i), vector: v.clone(), attributes: attr(i) })
        .collect()
}

fn recall(found: &[Uuid], truth: &[Uuid]) -> f64 {
    let t: HashSet<_> = truth.iter().collect();
    found.iter().filter(|id| t.contains(id)).count() as f64 / truth.len() as f64
}

#[test]
fn recall_against_exact_search_on_random_vectors() {
    let mut rng = StdRng::seed_from_u64(1);
    let data = random_vectors(&mut rng, 5_000);
    let index = HnswIndex::new(config()).unwrap();
    let scope = Scope::new("org_a", "vs_1");
    index.add(&scope, records(&data, |_| Arc::new(Attributes::new()))).unwrap();
    assert_eq!(index.len(&scope).unwrap(), 5_000);
    let queries = random_vectors(&mut rng, 100);
    let mut total = 0.0;
    for q in &queries {
        let hits = index.search(&scope, q, 10, None).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "not sorted");
        let ids: Vec<Uuid> = hits.iter().map(|h| h.id).collect();
        total += recall(&ids, &brute_force(&data, q, 10, |_| true));
    }
    let r = total / queries.len() as f64;
    assert!(r >= 0.95, "recall@10 {r}");
    // The score is the cosine similarity: a stored vector finds itself with score ~1.
    let hit = index.search(&scope, &data[42], 1, None).unwrap();
    assert_eq!(hit[0].id, Uuid::from_u128(43));
    assert!((hit[0].score - 1.0).abs() < 2e-3, "{}", hit[0].score);
}

#[test]
fn filters_keep_only_matching_vectors_and_stay_accurate() {
    let mut rng = StdRng::seed_from_u64(2);
    let data = random_vectors(&mut rng, 3_000);
    let index = HnswIndex::new(config()).unwrap();
    let scope = Scope::new("org_a", "vs_1");
    let sets: Vec<Arc<Attributes>> = (0..100)
        .map(|i| {
            attrs(&[
                ("year", AttributeValue::Number(2000.0 + (i % 25) as f64)),
                ("lang", AttributeValue::String(if i % 2 == 0 { "en" } else { "fr" }.into())),
            ])
        })
        .collect();
    index.add(&scope, records(&data, |i| sets[i % 100].clone())).unwrap();
    let year = |i: usize| 2000 + (i % 100) % 25;
    type Keep = Box<dyn Fn(usize) -> bool>;
    let cases: Vec<(serde_json::Value, Keep)> = vec![
        (serde_json::json!({"type": "eq", "key": "lang", "value": "fr"}), Box::new(|i| (i % 100) % 2 == 1)),
        (serde_json::json!({"type": "gte", "key": "year", "value": 2020}), Box::new(move |i| year(i) >= 2020)),
        // Very selective: 1 value of 25 and one language = 2% of the vectors.
        (
            serde_json::json!({"type": "and", "filters": [{"type": "eq", "key": "year", "value": 2003}, {"type": "ne", "key": "lang", "value": "en"}]}),
            Box::new(move |i| year(i) == 2003 && (i % 100) % 2 == 1),
        ),
        (
            serde_json::json!({"type": "or", "filters": [{"type": "lt", "key": "year", "value": 2001}, {"type": "gt", "key": "year", "value": 2023}]}),
            Box::new(move |i| year(i) < 2001 || year(i) > 2023),
        ),
    ];
    for (json, keep) in cases {
        let filter: Filter = serde_json::from_value(json.clone()).unwrap();
        let mut total = 0.0;
        for q in random_vectors(&mut rng, 30) {
            let hits = index.search(&scope, &q, 10, Some(&filter)).unwrap();
            for h in &hits {
                let i = h.id.as_u128() as usize - 1;
                assert!(keep(i), "{json}: vector {i} does not match");
            }
            total += recall(&hits.iter().map(|h| h.id).collect::<Vec<_>>(), &brute_force(&data, &q, 10, &keep));
        }
        assert!(total / 30.0 >= 0.9, "{json}: recall {}", total / 30.0);
    }
    // A filter nothing passes finds nothing.
    let none: Filter = serde_json::from_value(serde_json::json!({"type": "eq", "key": "lang", "value": "de"})).unwrap();
    assert!(index.search(&scope, &data[0], 10, Some(&none)).unwrap().is_empty());
}

#[test]
fn deletes_and_replacements() {
    let mut rng = StdRng::seed_from_u64(3);
    let data = random_vectors(&mut rng, 2_000);
    let index = HnswIndex::new(config()).unwrap();
    let scope = Scope::new("org_a", "vs_1");
    index.add(&scope, records(&data, |_| Arc::new(Attributes::new()))).unwrap();
    let gone: Vec<Uuid> = (1..=1000u128).map(Uuid::from_u128).collect();
    assert_eq!(index.delete(&scope, &gone).unwrap(), 1000);
    assert_eq!(index.delete(&scope, &gone).unwrap(), 0);
    assert_eq!(index.len(&scope).unwrap(), 1000);
    let gone: HashSet<Uuid> = gone.into_iter().collect();
    for q in data.iter().take(50) {
        for h in index.search(&scope, q, 10, None).unwrap() {
            assert!(!gone.contains(&h.id), "a deleted vector came back");
        }
    }
    // Re-adding an id replaces its vector and attributes.
    let id = Uuid::from_u128(1500);
    let flag = attrs(&[("new", AttributeValue::Bool(true))]);
    index.add(&scope, vec![VectorRecord { id, vector: data[0].clone(), attributes: flag }]).unwrap();
    assert_eq!(index.len(&scope).unwrap(), 1000);
    let f: Filter = serde_json::from_value(serde_json::json!({"type": "eq", "key": "new", "value": true})).unwrap();
    let hits = index.search(&scope, &data[0], 5, Some(&f)).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, id);
    assert!(hits[0].score > 0.99);
    // Slots freed by deletes are reused: adding 1000 new vectors keeps working.
    let more = random_vectors(&mut rng, 1000);
    let recs = more
        .iter()
        .enumerate()
        .map(|(i, v)| VectorRecord {
            id: Uuid::from_u128(10_000 + i as u128),
            vector: v.clone(),
            attributes: Arc::new(Attributes::new()),
        })
        .collect();
    index.add(&scope, recs).unwrap();
    assert_eq!(index.len(&scope).unwrap(), 2000);
    assert_eq!(index.search(&scope, &more[7], 1, None).unwrap()[0].id, Uuid::from_u128(10_007));
}

#[test]
fn tenants_never_see_each_other() {
    let mut rng = StdRng::seed_from_u64(4);
    let data = random_vectors(&mut rng, 500);
    let index = HnswIndex::new(config()).unwrap();
    let a = Scope::new("org_a", "vs_1");
    let b = Scope::new("org_b", "vs_1"); // same store id, other organization
    let a2 = Scope::new("org_a", "vs_2");
    let ids_b: Vec<VectorRecord> = data
        .iter()
        .enumerate()
        .map(|(i, v)| VectorRecord {
            id: Uuid::from_u128(100_000 + i as u128),
            vector: v.clone(),
            attributes: Arc::new(Attributes::new()),
        })
        .collect();
    index.add(&a, records(&data, |_| Arc::new(Attributes::new()))).unwrap();
    index.add(&b, ids_b).unwrap();
    for q in data.iter().take(100) {
        for h in index.search(&a, q, 50, None).unwrap() {
            assert!(h.id.as_u128() < 100_000, "org_a saw org_b's vector");
        }
        for h in index.search(&b, q, 50, None).unwrap() {
            assert!(h.id.as_u128() >= 100_000, "org_b saw org_a's vector");
        }
        assert!(index.search(&a2, q, 50, None).unwrap().is_empty());
    }
    // Deleting org_b's ids through org_a's scope does nothing, and deleting a scope leaves the other.
    let b_ids: Vec<Uuid> = (0..500u128).map(|i| Uuid::from_u128(100_000 + i)).collect();
    assert_eq!(index.delete(&a, &b_ids).unwrap(), 0);
    assert_eq!(index.len(&b).unwrap(), 500);
    assert_eq!(index.delete_scope(&a).unwrap(), 500);
    assert_eq!(index.len(&a).unwrap(), 0);
    assert_eq!(index.len(&b).unwrap(), 500);
    assert!(index.search(&a, &data[0], 10, None).unwrap().is_empty());
}

#[test]
fn snapshot_and_restore() {
    let mut rng = StdRng::seed_from_u64(5);
    let data = random_vectors(&mut rng, 1_500);
    let index = HnswIndex::new(config()).unwrap();
    let a = Scope::new("org_a", "vs_1");
    let b = Scope::new("org_b", "vs_9");
    let tag = attrs(&[("tag", AttributeValue::String("x".into()))]);
    index
        .add(&a, records(&data[..1000], |i| if i % 2 == 0 { tag.clone() } else { Arc::new(Attributes::new()) }))
        .unwrap();
    index.add(&b, records(&data[1000..], |_| Arc::new(Attributes::new()))).unwrap();
    index.delete(&a, &[Uuid::from_u128(1)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("vectors");
    let info = index.snapshot(&snap, 77).unwrap();
    assert_eq!((info.scopes, info.vectors, info.watermark), (2, 1499, 77));
    // A second snapshot replaces the first.
    index.snapshot(&snap, 78).unwrap();

    let restored = HnswIndex::new(config()).unwrap();
    assert_eq!(restored.restore(&dir.path().join("missing")).unwrap(), None);
    assert_eq!(restored.restore(&snap).unwrap(), Some(78));
    assert_eq!(restored.len(&a).unwrap(), 999);
    assert_eq!(restored.len(&b).unwrap(), 500);
    let f: Filter = serde_json::from_value(serde_json::json!({"type": "eq", "key": "tag", "value": "x"})).unwrap();
    for q in data.iter().take(20) {
        assert_eq!(index.search(&a, q, 10, None).unwrap(), restored.search(&a, q, 10, None).unwrap());
        assert_eq!(index.search(&a, q, 10, Some(&f)).unwrap(), restored.search(&a, q, 10, Some(&f)).unwrap());
    }
    // The restored index keeps working: deletes and adds.
    restored.delete(&a, &[Uuid::from_u128(2)]).unwrap();
    restored.add(&a, records(&data[..1], |_| Arc::new(Attributes::new()))).unwrap();
    assert_eq!(restored.len(&a).unwrap(), 999);

    // Other dimensions and garbage are errors, not panics.
    let other = HnswIndex::new(HnswConfig { dimensions: 8, ..HnswConfig::default() }).unwrap();
    assert!(matches!(other.restore(&snap), Err(SearchError::Snapshot(_))));
    std::fs::write(snap.join("scope-0.usearch"), b"not a graph").unwrap();
    assert!(matches!(HnswIndex::new(config()).unwrap().restore(&snap), Err(SearchError::Snapshot(_))));
}

#[test]
fn wrong_dimensions_are_errors() {
    let index = HnswIndex::new(config()).unwrap();
    let scope = Scope::new("o", "s");
    let err = index
        .add(
            &scope,
            vec![VectorRecord { id: Uuid::nil(), vector: vec![0.0; 3], attributes: Arc::new(Attributes::new()) }],
        )
        .unwrap_err();
    assert_eq!(err, SearchError::DimensionMismatch { expected: DIM, got: 3 });
    assert!(index.search(&scope, &[1.0; 5], 3, None).is_err());
    assert!(index.search(&scope, &[1.0; DIM], 3, None).unwrap().is_empty());
}

#[test]
fn concurrent_searches_while_adding() {
    let mut rng = StdRng::seed_from_u64(6);
    let data = random_vectors(&mut rng, 4_000);
    let index = Arc::new(HnswIndex::new(HnswConfig { max_concurrency: 4, ..config() }).unwrap());
    let scope = Scope::new("org_a", "vs_1");
    index.add(&scope, records(&data[..1000], |_| Arc::new(Attributes::new()))).unwrap();
    std::thread::scope(|s| {
        for t in 0..6 {
            let index = index.clone();
            let scope = scope.clone();
            let data = &data;
            s.spawn(move || {
                for i in 0..200 {
                    let hits = index.search(&scope, &data[(t * 200 + i) % 1000], 5, None).unwrap();
                    assert!(!hits.is_empty());
                }
            });
        }
        let writer = index.clone();
        let scope = scope.clone();
        let data = &data;
        s.spawn(move || {
            for part in 1..4 {
                let recs = data[part * 1000..(part + 1) * 1000]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| VectorRecord {
                        id: Uuid::from_u128((part * 1000 + i) as u128 + 1),
                        vector: v.clone(),
                        attributes: Arc::new(Attributes::new()),
                    })
                    .collect();
                writer.add(&scope, recs).unwrap();
            }
        });
    });
    assert_eq!(index.len(&scope).unwrap(), 4000);
}
