//! The engine end to end without an embedder model: prepare → index → search, keyword-only and
//! hybrid (with hand-made vectors), filters, content-hash dedupe, deletes, tenant isolation and an
//! on-disk keyword index reopened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use search::{
    AttributeValue, Attributes, Chunker, ChunkingStrategy, ContentHash, Filter, HnswConfig, HnswIndex, IndexChunk,
    IndexOutcome, KeywordChunk, KeywordIndex, Scope, SearchEngine, SearchError, SearchMode, SearchRequest, VectorIndex,
};
use uuid::Uuid;

fn engine(vectors: Option<Arc<dyn VectorIndex>>) -> SearchEngine {
    SearchEngine::new(Chunker::new(), KeywordIndex::in_ram().unwrap(), vectors)
}

fn attrs(pairs: &[(&str, AttributeValue)]) -> Attributes {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn chunks(texts: &[&str]) -> Vec<IndexChunk> {
    texts.iter().map(|t| IndexChunk { id: Uuid::now_v7(), text: t.to_string(), vector: None }).collect()
}

const DOCS: &[&str] = &[
    "Refunds are accepted within thirty days of purchase.",
    "Shipping to Europe takes five business days.",
    "Passwords must be at least twelve characters long.",
    "Invoices are emailed on the first day of each month.",
];

#[test]
fn keyword_search_finds_the_right_chunk_and_only_in_its_scope() {
    let e = engine(None);
    assert_eq!(e.mode(), SearchMode::Keyword);
    let a = Scope::new("org_a", "vs_1");
    let b = Scope::new("org_b", "vs_1");
    let a2 = Scope::new("org_a", "vs_2");
    let ca = chunks(DOCS);
    let cb = chunks(DOCS);
    e.index_file(&a, "file_1", ContentHash::of(b"a"), Attributes::new(), ca.clone()).unwrap();
    e.index_file(&b, "file_1", ContentHash::of(b"a"), Attributes::new(), cb.clone()).unwrap();

    let hits = e.search(&a, &SearchRequest::new("how do refunds work")).unwrap();
    assert_eq!(hits[0].id, ca[0].id);
    assert!((hits[0].score - 1.0).abs() < 1e-6);
    let b_ids: Vec<Uuid> = cb.iter().map(|c| c.id).collect();
    for q in ["refunds", "shipping europe", "passwords", "invoices month", "days"] {
        for h in e.search(&a, &SearchRequest::new(q)).unwrap() {
            assert!(!b_ids.contains(&h.id), "org_a found org_b's chunk for {q:?}");
        }
        for h in e.search(&b, &SearchRequest::new(q)).unwrap() {
            assert!(b_ids.contains(&h.id), "org_b found another scope's chunk for {q:?}");
        }
        assert!(e.search(&a2, &SearchRequest::new(q)).unwrap().is_empty());
    }
    // Query syntax never fails: lenient parsing.
    for q in ["\"unclosed", "AND OR", "title:(", "***", ""] {
        e.search(&a, &SearchRequest::new(q)).unwrap();
    }
}

#[test]
fn filters_apply_to_keyword_search() {
    let e = engine(None);
    let s = Scope::new("org_a", "vs_1");
    let en = chunks(&["Refund policy in English: thirty days."]);
    let fr = chunks(&["Refund policy, version française: trente jours."]);
    e.index_file(
        &s,
        "f_en",
        ContentHash::of(b"en"),
        attrs(&[("lang", "en".into()), ("year", 2024.0.into())]),
        en.clone(),
    )
    .unwrap();
    e.index_file(
        &s,
        "f_fr",
        ContentHash::of(b"fr"),
        attrs(&[("lang", "fr".into()), ("year", 2019.0.into())]),
        fr.clone(),
    )
    .unwrap();
    let only = |json: serde_json::Value| -> Vec<Uuid> {
        let f: Filter = serde_json::from_value(json).unwrap();
        let mut req = SearchRequest::new("refund policy");
        req.filter = Some(&f);
        e.search(&s, &req).unwrap().iter().map(|h| h.id).collect()
    };
    assert_eq!(only(serde_json::json!({"type": "eq", "key": "lang", "value": "fr"})), [fr[0].id]);
    assert_eq!(only(serde_json::json!({"type": "gt", "key": "year", "value": 2020})), [en[0].id]);
    assert!(only(serde_json::json!({"type": "and", "filters": [{"type": "eq", "key": "lang", "value": "fr"}, {"type": "gt", "key": "year", "value": 2020}]})).is_empty());
    assert_eq!(only(serde_json::json!({"type": "or", "filters": [{"type": "eq", "key": "lang", "value": "fr"}, {"type": "gt", "key": "year", "value": 2020}]})).len(), 2);
}

#[test]
fn identical_content_is_not_reindexed_and_changes_replace() {
    let e = engine(None);
    let s = Scope::new("org_a", "vs_1");
    let strategy = ChunkingStrategy::Auto;
    let body = b"# Policy\n\nRefunds within thirty days.\n\n# Shipping\n\nFive business days.";
    let p = e.prepare("policy.md", None, body, &strategy).unwrap();
    assert_eq!(p.chunks.len(), 1);
    let first = chunks(&[&p.chunks[0].text]);
    assert_eq!(
        e.index_file(&s, "file_1", p.hash, Attributes::new(), first.clone()).unwrap(),
        IndexOutcome::Indexed { chunks: 1 }
    );
    assert!(e.is_indexed(&s, "file_1", &p.hash));
    // Same bytes again: the same hash, nothing to do.
    let again = e.prepare("policy.md", None, body, &strategy).unwrap();
    assert_eq!(again.hash, p.hash);
    assert_eq!(
        e.index_file(&s, "file_1", again.hash, Attributes::new(), chunks(&["ignored"])).unwrap(),
        IndexOutcome::Unchanged
    );
    assert_eq!(e.keyword().len(&s), 1);
    // New content replaces the old chunks.
    let p2 = e.prepare("policy.md", None, b"Returns are free of charge.", &strategy).unwrap();
    assert_ne!(p2.hash, p.hash);
    let second = chunks(&[&p2.chunks[0].text]);
    e.index_file(&s, "file_1", p2.hash, Attributes::new(), second.clone()).unwrap();
    assert!(e.search(&s, &SearchRequest::new("refunds thirty")).unwrap().is_empty());
    assert_eq!(e.search(&s, &SearchRequest::new("returns")).unwrap()[0].id, second[0].id);
    assert_eq!(e.keyword().len(&s), 1);
    // Other chunking parameters are other content.
    let other = ChunkingStrategy::Static {
        params: search::StaticChunking { max_chunk_size_tokens: 200, chunk_overlap_tokens: 0 },
    };
    assert_ne!(e.prepare("policy.md", None, b"Returns are free of charge.", &other).unwrap().hash, p2.hash);
}

#[test]
fn deleting_files_and_stores_removes_their_chunks() {
    let e = engine(None);
    let s = Scope::new("org_a", "vs_1");
    let other = Scope::new("org_a", "vs_2");
    let c1 = chunks(&["alpha bravo"]);
    e.index_file(&s, "f1", ContentHash::of(b"1"), Attributes::new(), c1).unwrap();
    e.index_file(&s, "f2", ContentHash::of(b"2"), Attributes::new(), chunks(&["alpha charlie"])).unwrap();
    e.index_file(&other, "f3", ContentHash::of(b"3"), Attributes::new(), chunks(&["alpha delta"])).unwrap();
    assert_eq!(e.search(&s, &SearchRequest::new("alpha")).unwrap().len(), 2);
    assert!(e.delete_file(&s, "f1").unwrap());
    assert!(!e.delete_file(&s, "f1").unwrap());
    assert_eq!(e.search(&s, &SearchRequest::new("alpha")).unwrap().len(), 1);
    assert!(e.search(&s, &SearchRequest::new("bravo")).unwrap().is_empty());
    e.delete_scope(&s).unwrap();
    assert!(e.search(&s, &SearchRequest::new("alpha")).unwrap().is_empty());
    assert_eq!(e.search(&other, &SearchRequest::new("alpha")).unwrap().len(), 1);
}

#[test]
fn hybrid_fuses_keyword_and_vector_results() {
    let vectors: Arc<dyn VectorIndex> =
        Arc::new(HnswIndex::new(HnswConfig { dimensions: 3, ..HnswConfig::default() }).unwrap());
    let e = engine(Some(vectors));
    assert_eq!(e.mode(), SearchMode::Hybrid);
    let s = Scope::new("org_a", "vs_1");
    let mk = |text: &str, v: [f32; 3]| IndexChunk { id: Uuid::now_v7(), text: text.into(), vector: Some(v.to_vec()) };
    let keyword_match = mk("the word zebra appears here", [0.0, 0.0, 1.0]);
    let vector_match = mk("nothing in common", [1.0, 0.0, 0.0]);
    let both = mk("zebra and more", [0.9, 0.1, 0.0]);
    e.index_file(
        &s,
        "f",
        ContentHash::of(b"x"),
        Attributes::new(),
        vec![keyword_match.clone(), vector_match.clone(), both.clone()],
    )
    .unwrap();
    // Without a vector the engine needs every chunk's embedding.
    let err = e.index_file(&s, "g", ContentHash::of(b"y"), Attributes::new(), chunks(&["no vector"])).unwrap_err();
    assert!(matches!(err, SearchError::InvalidParameter { .. }));

    let q = [1.0, 0.0, 0.0];
    let mut req = SearchRequest::new("zebra");
    req.vector = Some(&q);
    let hits = e.search(&s, &req).unwrap();
    assert_eq!(hits[0].id, both.id, "in both lists: first");
    assert!(hits[0].text_rank.is_some() && hits[0].vector_rank.is_some());
    let ids: Vec<Uuid> = hits.iter().map(|h| h.id).collect();
    assert!(ids.contains(&keyword_match.id) && ids.contains(&vector_match.id));
    // Weights move the balance: vectors only.
    req.weights.text_weight = 0.0;
    let hits = e.search(&s, &req).unwrap();
    assert_eq!(hits[0].id, vector_match.id);
    // A keyword-only query on a hybrid engine still works.
    assert_eq!(e.search(&s, &SearchRequest::new("zebra")).unwrap().len(), 2);
    // Thresholds and bounds.
    let mut req = SearchRequest::new("zebra");
    req.score_threshold = 0.99;
    assert_eq!(e.search(&s, &req).unwrap().len(), 1);
    req.max_num_results = 51;
    assert!(
        matches!(e.search(&s, &req), Err(SearchError::InvalidParameter { ref param, .. }) if param == "max_num_results")
    );
    // Deleting the file removes its vectors too.
    e.delete_file(&s, "f").unwrap();
    assert_eq!(e.vectors().unwrap().len(&s).unwrap(), 0);
}

#[test]
fn prepare_refuses_corrupt_and_unknown_files() {
    let e = engine(None);
    let err = e
        .prepare("scan.pdf", Some("application/pdf"), b"%PDF-1.7\n\x00\x01garbage", &ChunkingStrategy::Auto)
        .unwrap_err();
    assert!(matches!(err, SearchError::Corrupt { format: "pdf", .. }), "{err:?}");
    let err = e.prepare("image.png", None, b"\x89PNG", &ChunkingStrategy::Auto).unwrap_err();
    assert!(matches!(err, SearchError::UnsupportedFormat(_)));
    let bad = ChunkingStrategy::Static {
        params: search::StaticChunking { max_chunk_size_tokens: 50, chunk_overlap_tokens: 0 },
    };
    assert!(matches!(e.prepare("a.txt", None, b"x", &bad), Err(SearchError::InvalidParameter { .. })));
}

#[test]
fn an_on_disk_keyword_index_reopens_with_its_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scope::new("org_a", "vs_1");
    let id = Uuid::now_v7();
    {
        let k = KeywordIndex::open_in_dir(dir.path()).unwrap();
        k.add_file(
            &s,
            "f1",
            &[KeywordChunk { id, text: "durable keyword index" }],
            Arc::new(attrs(&[("tier", "gold".into())])),
        )
        .unwrap();
        k.add_file(
            &s,
            "f2",
            &[KeywordChunk { id: Uuid::now_v7(), text: "durable but silver" }],
            Arc::new(attrs(&[("tier", "silver".into())])),
        )
        .unwrap();
        k.commit().unwrap();
    }
    let k = KeywordIndex::open_in_dir(dir.path()).unwrap();
    assert_eq!(k.len(&s), 2);
    let f: Filter = serde_json::from_value(serde_json::json!({"type": "eq", "key": "tier", "value": "gold"})).unwrap();
    let hits = k.search(&s, "durable", 10, Some(&f)).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, id);
    // New chunks after reopening get fresh slots (no clash with the stored ones).
    k.add_file(
        &s,
        "f3",
        &[KeywordChunk { id: Uuid::now_v7(), text: "durable bronze" }],
        Arc::new(attrs(&[("tier", "bronze".into())])),
    )
    .unwrap();
    k.commit().unwrap();
    assert_eq!(k.search(&s, "durable", 10, Some(&f)).unwrap().len(), 1);
    assert_eq!(k.search(&s, "durable", 10, None).unwrap().len(), 3);
}
