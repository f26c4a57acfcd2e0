//! The local embedder against all-MiniLM-L6-v2 (feature `local-embedder`). The model comes from
//! `search/scripts/fetch-test-model.sh`; without it these tests skip, except under CI (`CI` set),
//! where a missing model fails them.
#![cfg(feature = "local-embedder")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use search::{
    Attributes, Chunker, ContentHash, Embedder, HnswConfig, HnswIndex, IndexChunk, KeywordIndex, LocalEmbedder, Scope,
    SearchEngine, SearchRequest, VectorIndex,
};
use uuid::Uuid;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KEEL_TEST_EMBED_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-minilm-l6-v2"));
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: the test model is missing at {}; run search/scripts/fetch-test-model.sh",
        dir.display()
    );
    eprintln!("skipped: no model at {} (run search/scripts/fetch-test-model.sh)", dir.display());
    None
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// sentence-transformers' documentation (sbert.net, "Usage") publishes these similarities for
/// all-MiniLM-L6-v2: 0.6660, 0.1046 and 0.1411.
#[test]
fn matches_the_published_sentence_transformers_similarities() {
    let Some(dir) = model_dir() else { return };
    let e = LocalEmbedder::load(&dir, 8).unwrap();
    assert_eq!(e.dimensions(), 384);
    let v = e.embed(&["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]).unwrap();
    for x in &v {
        assert_eq!(x.len(), 384);
        assert!((cos(x, x) - 1.0).abs() < 1e-4, "not normalised");
    }
    let close = |got: f32, want: f32| assert!((got - want).abs() < 0.002, "similarity {got}, published {want}");
    close(cos(&v[0], &v[1]), 0.6660);
    close(cos(&v[0], &v[2]), 0.1046);
    close(cos(&v[1], &v[2]), 0.1411);
}

#[test]
fn batching_and_padding_do_not_change_embeddings() {
    let Some(dir) = model_dir() else { return };
    let e = LocalEmbedder::load(&dir, 4).unwrap();
    let long =
        "A much longer sentence that forces the other members of its batch to be padded with many tokens. ".repeat(3);
    let alone = e.embed(&["short text"]).unwrap();
    let texts = ["short text", long.as_str(), "another one", "x", "short text"];
    let batched = e.embed(&texts).unwrap();
    assert_eq!(batched.len(), 5);
    assert!(cos(&alone[0], &batched[0]) > 0.9999);
    assert!(cos(&alone[0], &batched[4]) > 0.9999);
    // Texts beyond the model's 256 tokens are truncated, not refused.
    let huge = "word ".repeat(2000);
    assert_eq!(e.embed(&[huge.as_str()]).unwrap()[0].len(), 384);
    assert!(e.embed(&[]).unwrap().is_empty());
}

#[test]
fn search_by_meaning() {
    let Some(dir) = model_dir() else { return };
    let e = LocalEmbedder::load(&dir, 16).unwrap();
    let vectors: Arc<dyn VectorIndex> = Arc::new(HnswIndex::new(HnswConfig::default()).unwrap());
    let engine = SearchEngine::new(Chunker::new(), KeywordIndex::in_ram().unwrap(), Some(vectors));
    let scope = Scope::new("org_a", "vs_1");
    let texts = [
        "Customers can return purchased items within 30 days for a full reimbursement.",
        "Our office is closed on public holidays.",
        "The API rate limit is 600 requests per minute per key.",
        "Passwords are hashed with argon2id before they are stored.",
    ];
    let embedded = e.embed(&texts).unwrap();
    let chunks: Vec<IndexChunk> = texts
        .iter()
        .zip(embedded)
        .map(|(t, v)| IndexChunk { id: Uuid::now_v7(), text: t.to_string(), vector: Some(v) })
        .collect();
    engine.index_file(&scope, "file_1", ContentHash::of(b"faq"), Attributes::new(), chunks.clone()).unwrap();
    // No word in common with the right chunk: only meaning can find it.
    for (query, want) in [
        ("how do I get my money back", 0),
        ("how many calls can I make to the service", 2),
        ("how is my secret login stored", 3),
    ] {
        let q = e.embed(&[query]).unwrap().remove(0);
        let mut req = SearchRequest::new(query);
        req.vector = Some(&q);
        let hits = engine.search(&scope, &req).unwrap();
        assert_eq!(hits[0].id, chunks[want].id, "{query}");
        assert!(hits[0].vector_rank == Some(1));
    }
}

#[test]
fn a_missing_model_directory_is_an_error() {
    let err = LocalEmbedder::load(std::path::Path::new("/nonexistent/model"), 8).unwrap_err();
    assert!(err.to_string().starts_with("embedder error: cannot read /nonexistent/model/config.json"), "{err}");
}
