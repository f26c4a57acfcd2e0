//! Retrieval benchmarks. Run through `bench/search.sh`, which pins the process with taskset.
//!
//!   ann-bench compare LIB N          LIB = usearch | hnsw_rs | instant-distance: build time,
//!                                    memory, recall@10 and one-thread latency on the same data
//!   ann-bench index N                the `search` crate's HnswIndex through the VectorIndex
//!                                    trait: build, memory, recall@10, p50/p99, QPS from two
//!                                    threads, with and without attribute filters, ef sweep
//!   ann-bench ingest DOCS            parse + chunk + BM25 indexing throughput (no embedding)
//!   ann-bench embed CHUNKS MODEL_DIR the local embedder's chunks per second
//!
//! Data: synthetic clustered unit vectors (1,000 Gaussian clusters in 384 dimensions, seed 7),
//! queries drawn from the same mixture. Exact top-10 (brute force) is cached in target/.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use search::{
    AttributeValue, Attributes, Filter, FilterPlan, HnswConfig, HnswIndex, Quantization, Scope, VectorIndex,
    VectorRecord,
};
use uuid::Uuid;

const DIM: usize = 384;
const K: usize = 10;
const QUERIES: usize = 1000;
const RECALL_QUERIES: usize = 300;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// `n` unit vectors from a mixture of 1,000 Gaussian clusters, flat.
fn clustered(n: usize, seed: u64) -> Vec<f32> {
    let mut crng = StdRng::seed_from_u64(7);
    let unit = Normal::new(0.0f32, 1.0).unwrap();
    let centers: Vec<Vec<f32>> = (0..1000).map(|_| (0..DIM).map(|_| unit.sample(&mut crng)).collect()).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let noise = Normal::new(0.0f32, 0.9).unwrap();
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let c = &centers[rng.random_range(0..centers.len())];
        let start = out.len();
        out.extend(c.iter().map(|x| x + noise.sample(&mut rng)));
        normalize(&mut out[start..]);
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Exact top-k by brute force over the rows that pass `keep`, two threads.
fn exact(data: &[f32], queries: &[f32], keep: &(dyn Fn(usize) -> bool + Sync)) -> Vec<Vec<usize>> {
    let nq = queries.len() / DIM;
    let mut out = vec![Vec::new(); nq];
    std::thread::scope(|s| {
        let chunks: Vec<_> = out.chunks_mut(nq.div_ceil(2)).enumerate().collect();
        for (part, slot) in chunks {
            s.spawn(move || {
                for (j, res) in slot.iter_mut().enumerate() {
                    let qi = part * nq.div_ceil(2) + j;
                    let q = &queries[qi * DIM..(qi + 1) * DIM];
                    let mut best: Vec<(f32, usize)> = Vec::with_capacity(K + 1);
                    for (i, row) in data.chunks_exact(DIM).enumerate() {
                        if !keep(i) {
                            continue;
                        }
                        let d = dot(q, row);
                        if best.len() < K || d > best[K - 1].0 {
                            best.push((d, i));
                            best.sort_by(|a, b| b.0.total_cmp(&a.0));
                            best.truncate(K);
                        }
                    }
                    *res = best.into_iter().map(|(_, i)| i).collect();
                }
            });
        }
    });
    out
}

/// `$ANN_CACHE` (`target/ann-cache` by default), created if missing.
fn cache_dir() -> PathBuf {
    let dir = PathBuf::from(std::env::var("ANN_CACHE").unwrap_or_else(|_| "target/ann-cache".into()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cached_truth(
    name: &str,
    n: usize,
    data: &[f32],
    queries: &[f32],
    keep: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<Vec<usize>> {
    let dir = cache_dir();
    let path = dir.join(format!("truth-{name}-{n}-{RECALL_QUERIES}.json"));
    if let Ok(raw) = std::fs::read(&path) {
        return serde_json::from_slice(&raw).unwrap();
    }
    let t = Instant::now();
    let truth = exact(data, &queries[..RECALL_QUERIES * DIM], keep);
    println!(
        "exact search ({name}): {:.1} ms per query over {n} vectors (2 threads)",
        t.elapsed().as_secs_f64() * 1000.0 / RECALL_QUERIES as f64 * 2.0
    );
    std::fs::write(&path, serde_json::to_vec(&truth).unwrap()).unwrap();
    truth
}

/// The rows of `data` as records with ids 0.., each with the attributes `attrs(row)`.
fn records(data: &[f32], attrs: impl Fn(usize) -> Arc<Attributes>) -> Vec<VectorRecord> {
    data.chunks_exact(DIM)
        .enumerate()
        .map(|(i, v)| VectorRecord { id: Uuid::from_u128(i as u128), vector: v.to_vec(), attributes: attrs(i) })
        .collect()
}

fn recall(found: &[Vec<usize>], truth: &[Vec<usize>]) -> f64 {
    let mut hit = 0usize;
    let mut total = 0usize;
    for (f, t) in found.iter().zip(truth) {
        let t: HashSet<_> = t.iter().collect();
        hit += f.iter().filter(|i| t.contains(i)).count();
        total += t.len();
    }
    hit as f64 / total.max(1) as f64
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `search` once per query on this thread; returns the results and p50/p99/mean in ms.
fn latencies(nq: usize, mut search: impl FnMut(usize) -> Vec<usize>) -> (Vec<Vec<usize>>, f64, f64, f64) {
    let mut found = Vec::with_capacity(nq);
    let mut times = Vec::with_capacity(nq);
    for qi in 0..nq {
        let t = Instant::now();
        found.push(search(qi));
        times.push(t.elapsed());
    }
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / nq as f64 * 1000.0;
    times.sort();
    (found, percentile(&times, 0.5), percentile(&times, 0.99), mean)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "compare" => compare(&arg(2), arg(3).parse().unwrap_or(100_000)),
        "index" => index(arg(2).parse().unwrap_or(1_000_000)),
        "ingest" => ingest(arg(2).parse().unwrap_or(2_000)),
        #[cfg(feature = "local-embedder")]
        "embed" => embed(arg(2).parse().unwrap_or(256), &arg(3)),
        _ => println!("usage: ann-bench compare LIB N | index N | ingest DOCS | embed CHUNKS MODEL_DIR"),
    }
}

fn compare(lib: &str, n: usize) {
    let data = clustered(n, 1);
    let queries = clustered(QUERIES, 2);
    let truth = cached_truth("all", n, &data, &queries, &|_| true);
    let q = |i: usize| &queries[i * DIM..(i + 1) * DIM];
    let base = rss_mib();
    println!("## {lib}, {n} x {DIM}, M=16 (instant-distance: fixed 32), ef_construction=128");
    match lib {
        "usearch" => {
            let idx = HnswIndex::new(HnswConfig { quantization: Quantization::F32, ..HnswConfig::default() }).unwrap();
            let scope = Scope::new("org", "store");
            let attrs = Arc::new(Attributes::new());
            let t = Instant::now();
            let recs = records(&data, |_| attrs.clone());
            idx.add(&scope, recs).unwrap();
            println!("build: {:.1} s, RSS +{:.0} MiB", t.elapsed().as_secs_f64(), rss_mib() - base);
            let mut idx = idx;
            for ef in [32, 64, 128, 256] {
                idx.set_expansion_search(ef);
                let (found, p50, p99, _) = latencies(QUERIES, |i| {
                    idx.search(&scope, q(i), K, None).unwrap().iter().map(|h| h.id.as_u128() as usize).collect()
                });
                println!(
                    "ef={ef}: recall@10 {:.4}, p50 {p50:.3} ms, p99 {p99:.3} ms",
                    recall(&found[..RECALL_QUERIES], &truth)
                );
            }
        }
        "hnsw_rs" => {
            use hnsw_rs::prelude::*;
            let t = Instant::now();
            let hnsw: Hnsw<f32, DistDot> = Hnsw::new(16, n, 16, 128, DistDot {});
            let rows: Vec<(&[f32], usize)> = data.chunks_exact(DIM).enumerate().map(|(i, v)| (v, i)).collect();
            hnsw.parallel_insert_slice(&rows);
            println!("build: {:.1} s, RSS +{:.0} MiB", t.elapsed().as_secs_f64(), rss_mib() - base);
            for ef in [32, 64, 128, 256] {
                let (found, p50, p99, _) =
                    latencies(QUERIES, |i| hnsw.search(q(i), K, ef).iter().map(|nb| nb.d_id).collect());
                println!(
                    "ef={ef}: recall@10 {:.4}, p50 {p50:.3} ms, p99 {p99:.3} ms",
                    recall(&found[..RECALL_QUERIES], &truth)
                );
            }
        }
        "instant-distance" => {
            #[derive(Clone)]
            struct P(Vec<f32>);
            impl instant_distance::Point for P {
                fn distance(&self, other: &Self) -> f32 {
                    1.0 - dot(&self.0, &other.0)
                }
            }
            let points: Vec<P> = data.chunks_exact(DIM).map(|v| P(v.to_vec())).collect();
            let values: Vec<usize> = (0..n).collect();
            for ef in [64, 128] {
                let t = Instant::now();
                let map = instant_distance::Builder::default()
                    .ef_construction(128)
                    .ef_search(ef)
                    .build(points.clone(), values.clone());
                println!(
                    "build (ef_search={ef}): {:.1} s, RSS +{:.0} MiB",
                    t.elapsed().as_secs_f64(),
                    rss_mib() - base
                );
                let mut s = instant_distance::Search::default();
                let (found, p50, p99, _) =
                    latencies(QUERIES, |i| map.search(&P(q(i).to_vec()), &mut s).take(K).map(|it| *it.value).collect());
                println!(
                    "ef={ef}: recall@10 {:.4}, p50 {p50:.3} ms, p99 {p99:.3} ms",
                    recall(&found[..RECALL_QUERIES], &truth)
                );
            }
        }
        other => println!("unknown library {other}"),
    }
}

fn index(n: usize) {
    let data = clustered(n, 1);
    let queries = clustered(QUERIES, 2);
    let truth = cached_truth("all", n, &data, &queries, &|_| true);
    let q = |i: usize| &queries[i * DIM..(i + 1) * DIM];
    let quant = match std::env::var("ANN_QUANT").as_deref() {
        Ok("f32") => Quantization::F32,
        Ok("i8") => Quantization::I8,
        _ => Quantization::F16,
    };
    let mut idx = HnswIndex::new(HnswConfig { quantization: quant, ..HnswConfig::default() }).unwrap();
    let scope = Scope::new("org_bench", "vs_bench");
    // Attributes: `bucket` 0..9 (a filter on one value keeps 10%), `even` (keeps 50%), `part`
    // 0..99 (a filter on one value keeps 1%). Vector i has the set i % 100.
    let attr_sets: Vec<Arc<Attributes>> = (0..100)
        .map(|b| {
            let mut a = Attributes::new();
            a.insert("bucket".into(), AttributeValue::Number((b % 10) as f64));
            a.insert("even".into(), AttributeValue::Bool(b % 2 == 0));
            a.insert("part".into(), AttributeValue::Number(b as f64));
            Arc::new(a)
        })
        .collect();
    println!("## search::HnswIndex (usearch), {n} x {DIM}, {quant:?}, M=16, ef_construction=128");
    // The built index is cached as a snapshot (HnswIndex::snapshot), so that a re-run after a
    // change to the search logic restores it in seconds instead of rebuilding it.
    let snapshot = cache_dir().join(format!("index-{n}-{quant:?}-attrs100"));
    let t = Instant::now();
    if idx.restore(&snapshot).unwrap().is_some() {
        println!(
            "restored from the snapshot {} in {:.1} s; index memory {:.0} MiB (usearch's count + id maps)",
            snapshot.display(),
            t.elapsed().as_secs_f64(),
            idx.memory_bytes() as f64 / 1048576.0
        );
    } else {
        let base = rss_mib();
        let recs = records(&data, |i| attr_sets[i % 100].clone());
        idx.add(&scope, recs).unwrap();
        let build = t.elapsed().as_secs_f64();
        println!(
            "build: {build:.1} s ({:.0} vectors/s, 2 threads); index memory {:.0} MiB (usearch's count + id maps); RSS +{:.0} MiB over the raw data",
            n as f64 / build,
            idx.memory_bytes() as f64 / 1048576.0,
            rss_mib() - base
        );
        let t = Instant::now();
        idx.snapshot(&snapshot, 0).unwrap();
        println!("snapshot written to {} in {:.1} s", snapshot.display(), t.elapsed().as_secs_f64());
    }
    assert_eq!(idx.len(&scope).unwrap(), n, "the cached snapshot holds another data set");
    let ids = |h: Vec<search::VectorHit>| -> Vec<usize> { h.iter().map(|h| h.id.as_u128() as usize).collect() };
    let mut chosen = None;
    for ef in [32, 64, 96, 128, 192, 256] {
        idx.set_expansion_search(ef);
        let (found, p50, p99, mean) = latencies(QUERIES, |i| ids(idx.search(&scope, q(i), K, None).unwrap()));
        let r = recall(&found[..RECALL_QUERIES], &truth);
        println!("ef={ef}: recall@10 {r:.4}, one thread p50 {p50:.3} ms, p99 {p99:.3} ms, mean {mean:.3} ms");
        if r >= 0.95 && chosen.is_none() {
            chosen = Some(ef);
        }
    }
    // The smallest ef reaching recall@10 >= 0.95 (or ANN_EF) for the QPS and filter runs.
    let ef: usize = std::env::var("ANN_EF").ok().and_then(|s| s.parse().ok()).or(chosen).unwrap_or(256);
    idx.set_expansion_search(ef);
    filters(&mut idx, &scope, n, &data, &queries, ef);

    let idx = Arc::new(idx);
    // QPS from two threads for 5 s.
    let stop = Instant::now() + Duration::from_secs(5);
    let total: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let idx = idx.clone();
                let scope = scope.clone();
                let queries = &queries;
                s.spawn(move || {
                    let mut n = 0usize;
                    while Instant::now() < stop {
                        let qi = (n * 2 + t) % QUERIES;
                        idx.search(&scope, &queries[qi * DIM..(qi + 1) * DIM], K, None).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    println!("ef={ef}: QPS from two threads {:.0}", total as f64 / 5.0);
}

/// The filtered searches: for each filter, the planner's choice (1,000 queries), then, on 300
/// queries, the exact scan forced (`exact_filter_max` = everything) and the filtered graph walk
/// forced at fixed ef values (`ANN_SWEEP=0` skips those).
fn filters(idx: &mut HnswIndex, scope: &Scope, n: usize, data: &[f32], queries: &[f32], ef: usize) {
    let q = |i: usize| &queries[i * DIM..(i + 1) * DIM];
    let ids = |h: Vec<search::VectorHit>| -> Vec<usize> { h.iter().map(|h| h.id.as_u128() as usize).collect() };
    let sweep = std::env::var("ANN_SWEEP").as_deref() != Ok("0");
    let default_exact_max = idx.config().exact_filter_max;
    println!("filters: exact_filter_max {default_exact_max}, base ef {ef}");
    for (name, truth_name, filter, keep, sweep_efs) in [
        (
            "even = true (50%)",
            "feven17",
            serde_json::json!({"type": "eq", "key": "even", "value": true}),
            Box::new(|i: usize| i.is_multiple_of(2)) as Box<dyn Fn(usize) -> bool + Sync>,
            &[10, 16, 32, 64, 128, 192][..],
        ),
        (
            "bucket = 3 (10%)",
            "fbucket16",
            serde_json::json!({"type": "eq", "key": "bucket", "value": 3}),
            Box::new(|i: usize| i % 10 == 3),
            &[10, 16, 24, 32, 48, 64, 96, 128, 192][..],
        ),
        (
            "bucket in [1,2] and even (10%)",
            "fbucket30",
            serde_json::json!({"type": "and", "filters": [{"type": "in", "key": "bucket", "value": [1, 2]}, {"type": "eq", "key": "even", "value": true}]}),
            Box::new(|i: usize| i % 10 == 2),
            &[10, 16, 24, 32, 48, 64, 96, 128, 192][..],
        ),
        (
            "part < 5 (5%)",
            "fpart-lt5",
            serde_json::json!({"type": "lt", "key": "part", "value": 5}),
            Box::new(|i: usize| i % 100 < 5),
            &[10, 16, 24, 32, 48, 64, 96, 192][..],
        ),
        (
            "part < 2 (2%)",
            "fpart-lt2",
            serde_json::json!({"type": "lt", "key": "part", "value": 2}),
            Box::new(|i: usize| i % 100 < 2),
            &[16, 24, 32, 48][..],
        ),
        (
            "part = 7 (1%)",
            "fpart-eq7",
            serde_json::json!({"type": "eq", "key": "part", "value": 7}),
            Box::new(|i: usize| i % 100 == 7),
            &[10, 16, 24, 32, 48, 96, 192][..],
        ),
    ] {
        let filter: Filter = serde_json::from_value(filter).unwrap();
        let truth = cached_truth(truth_name, n, data, queries, &*keep);
        let plan = idx.filter_plan(scope, K, &filter).unwrap();
        let (found, p50, p99, mean) = latencies(QUERIES, |i| ids(idx.search(scope, q(i), K, Some(&filter)).unwrap()));
        println!(
            "filter {name}, ef={ef}, plan {plan:?}: recall@10 {:.4}, one thread p50 {p50:.3} ms, p99 {p99:.3} ms, mean {mean:.3} ms",
            recall(&found[..RECALL_QUERIES], &truth)
        );
        if !sweep {
            continue;
        }
        let matching = match plan {
            FilterPlan::Exact { matching } | FilterPlan::Walk { matching, .. } => matching,
            FilterPlan::Empty => 0,
        };
        if matching <= 200_000 {
            idx.set_exact_filter_max(usize::MAX);
            let (found, p50, p99, mean) =
                latencies(RECALL_QUERIES, |i| ids(idx.search(scope, q(i), K, Some(&filter)).unwrap()));
            println!(
                "  forced exact scan of {matching}: recall@10 {:.4}, p50 {p50:.3} ms, p99 {p99:.3} ms, mean {mean:.3} ms ({:.0} ns per matching vector)",
                recall(&found, &truth),
                mean * 1e6 / matching as f64
            );
        }
        idx.set_exact_filter_max(0);
        for &walk_ef in sweep_efs {
            idx.set_filtered_expansion_search(Some(walk_ef));
            let (found, p50, p99, mean) =
                latencies(RECALL_QUERIES, |i| ids(idx.search(scope, q(i), K, Some(&filter)).unwrap()));
            println!(
                "  forced walk, ef={walk_ef}: recall@10 {:.4}, p50 {p50:.3} ms, p99 {p99:.3} ms, mean {mean:.3} ms",
                recall(&found, &truth)
            );
        }
        idx.set_filtered_expansion_search(None);
        idx.set_exact_filter_max(default_exact_max);
    }
}

fn words(rng: &mut StdRng, n: usize) -> String {
    const VOCAB: &[&str] = &[
        "refund",
        "policy",
        "invoice",
        "customer",
        "shipping",
        "order",
        "account",
        "password",
        "billing",
        "support",
        "delivery",
        "warranty",
        "product",
        "return",
        "payment",
        "subscription",
        "the",
        "a",
        "of",
        "and",
        "to",
        "within",
        "days",
        "after",
        "before",
        "request",
        "email",
        "contact",
        "team",
        "service",
    ];
    (0..n).map(|_| VOCAB[rng.random_range(0..VOCAB.len())]).collect::<Vec<_>>().join(" ")
}

fn ingest(docs: usize) {
    let mut rng = StdRng::seed_from_u64(3);
    // Markdown documents of ~20 sections of 3 paragraphs (~12 KB each).
    let files: Vec<String> = (0..docs)
        .map(|d| {
            (0..20)
                .map(|s| {
                    format!(
                        "## Section {d}.{s}\n\n{}.\n\n{}.\n\n{}.\n",
                        words(&mut rng, 60),
                        words(&mut rng, 80),
                        words(&mut rng, 40)
                    )
                })
                .collect::<String>()
        })
        .collect();
    let bytes: usize = files.iter().map(String::len).sum();
    let chunker = search::Chunker::new();
    let engine = search::SearchEngine::new(chunker, search::KeywordIndex::in_ram().unwrap(), None);
    let strategy = search::ChunkingStrategy::Auto;
    let t = Instant::now();
    let mut prepared = Vec::with_capacity(docs);
    for (i, f) in files.iter().enumerate() {
        prepared.push(engine.prepare(&format!("doc{i}.md"), None, f.as_bytes(), &strategy).unwrap());
    }
    let t_chunk = t.elapsed().as_secs_f64();
    let chunks: usize = prepared.iter().map(|p| p.chunks.len()).sum();
    let scope = Scope::new("org_bench", "vs_bench");
    let t2 = Instant::now();
    for (i, p) in prepared.iter().enumerate() {
        let kw: Vec<search::KeywordChunk<'_>> =
            p.chunks.iter().map(|c| search::KeywordChunk { id: Uuid::now_v7(), text: &c.text }).collect();
        engine.keyword().add_file(&scope, &format!("file-{i}"), &kw, Arc::new(Attributes::new())).unwrap();
    }
    engine.keyword().commit().unwrap();
    let t_index = t2.elapsed().as_secs_f64();
    println!(
        "## ingestion without embedding: {docs} Markdown files, {:.1} MB, {chunks} chunks (800/400 tokens)",
        bytes as f64 / 1e6
    );
    println!(
        "parse + chunk: {:.1} s = {:.0} chunks/s ({:.1} MB/s)",
        t_chunk,
        chunks as f64 / t_chunk,
        bytes as f64 / 1e6 / t_chunk
    );
    println!(
        "BM25 indexing (tantivy, in RAM, one writer thread, one commit): {:.1} s = {:.0} chunks/s",
        t_index,
        chunks as f64 / t_index
    );
    println!("end to end: {:.0} chunks/s", chunks as f64 / (t_chunk + t_index));
    let t3 = Instant::now();
    let mut n = 0;
    while t3.elapsed() < Duration::from_secs(3) {
        engine.keyword().search(&scope, "refund policy within days", 10, None).unwrap();
        n += 1;
    }
    println!("keyword search over {chunks} chunks: {:.3} ms mean", 3000.0 / n as f64);
}

#[cfg(feature = "local-embedder")]
fn embed(n: usize, dir: &str) {
    use search::Embedder;
    let mut rng = StdRng::seed_from_u64(4);
    let e = search::LocalEmbedder::load(std::path::Path::new(dir), 32).unwrap();
    for (label, len) in
        [("~60-token chunks", 45), ("256-token chunks (the model's limit; longer chunks are truncated)", 230)]
    {
        let texts: Vec<String> = (0..n).map(|_| words(&mut rng, len)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let t = Instant::now();
        e.embed(&refs).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!("local embedder ({}), {label}: {n} chunks in {s:.1} s = {:.1} chunks/s", e.model(), n as f64 / s);
    }
}
