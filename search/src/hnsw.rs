//! The in-process [`VectorIndex`]: one usearch HNSW graph per [`Scope`] (so a query can only ever
//! walk its own organization's store), cosine metric, vectors stored as f16 by default.
//!
//! usearch has what the trait needs and hnsw_rs and instant-distance lack: deletes, filtered
//! search with a predicate, and save/load. `bench/ann compare` measures the three on the same data
//! (see `bench/RESULTS.md` for what has been measured so far).
//!
//! Concurrency: searches run in parallel; writers to one scope are serialised by a mutex; a batch
//! of 1,024 vectors or more is inserted by one thread per core. usearch needs one "thread
//! context" per concurrent caller, reserved up front: a gate bounds the callers inside the graph
//! to `max_concurrency`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};
use uuid::Uuid;

use crate::error::{Result, SearchError};
use crate::filter::{Attributes, Filter};
use crate::vector::{Scope, SnapshotInfo, VectorHit, VectorIndex, VectorRecord};

/// How vectors are stored in the graph (queries are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 4 bytes per dimension.
    F32,
    /// 2 bytes per dimension: half the memory, no measurable recall loss on embeddings.
    F16,
    /// 1 byte per dimension (for normalised vectors).
    I8,
}

impl Quantization {
    fn scalar_kind(self) -> ScalarKind {
        match self {
            Self::F32 => ScalarKind::F32,
            Self::F16 => ScalarKind::F16,
            Self::I8 => ScalarKind::I8,
        }
    }
}

/// Parameters of the in-process index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswConfig {
    /// Length of every vector (384 for all-MiniLM-L6-v2).
    pub dimensions: usize,
    /// HNSW `M`: links per node.
    pub connectivity: usize,
    /// `ef_construction`: candidate list length while inserting.
    pub expansion_add: usize,
    /// `ef_search`: candidate list length while searching (raised to `k` when smaller).
    pub expansion_search: usize,
    /// Storage of the vectors.
    pub quantization: Quantization,
    /// Callers allowed inside one scope's graph at once (searches and insert threads).
    pub max_concurrency: usize,
}

impl Default for HnswConfig {
    fn default() -> Self {
        Self {
            dimensions: 384,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            quantization: Quantization::F16,
            max_concurrency: 32,
        }
    }
}

impl HnswConfig {
    /// Checks that the parameters make sense.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(SearchError::invalid(format!("hnsw.{name}"), format!("must be between {lo} and {hi}, got {v}")))
            }
        };
        check("dimensions", self.dimensions, 1, 8192)?;
        check("connectivity", self.connectivity, 2, 128)?;
        check("expansion_add", self.expansion_add, 1, 4096)?;
        check("expansion_search", self.expansion_search, 1, 4096)?;
        check("max_concurrency", self.max_concurrency, 1, 1024)
    }

    fn options(&self) -> IndexOptions {
        IndexOptions {
            dimensions: self.dimensions,
            metric: MetricKind::Cos,
            quantization: self.quantization.scalar_kind(),
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
            multi: false,
        }
    }
}

/// A counting semaphore: at most `permits` callers inside a scope's graph.
#[derive(Debug)]
struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Permit<'a>(&'a Gate);

impl Gate {
    fn new(permits: usize) -> Self {
        Self { free: Mutex::new(permits), cv: Condvar::new() }
    }

    fn enter(&self) -> Permit<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.cv.wait(&mut free);
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.cv.notify_one();
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: Uuid,
    attrs: Arc<Attributes>,
}

/// The id ↔ slot (usearch key) maps of one scope.
#[derive(Debug, Default)]
struct Meta {
    slots: HashMap<Uuid, u64>,
    entries: Vec<Option<Entry>>,
    free: Vec<u64>,
}

impl Meta {
    fn entry(&self, slot: u64) -> Option<&Entry> {
        self.entries.get(slot as usize).and_then(Option::as_ref)
    }
}

struct ScopeIndex {
    index: RwLock<Index>,
    meta: RwLock<Meta>,
    writer: Mutex<()>,
    gate: Gate,
}

impl std::fmt::Debug for ScopeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeIndex").field("vectors", &self.meta.read().slots.len()).finish()
    }
}

/// The in-process HNSW index (usearch), one graph per scope.
#[derive(Debug)]
pub struct HnswIndex {
    config: HnswConfig,
    scopes: RwLock<HashMap<Scope, Arc<ScopeIndex>>>,
}

/// A batch at least this large is inserted by one thread per core.
const PARALLEL_ADD_MIN: usize = 1024;

impl HnswIndex {
    /// An empty index.
    pub fn new(config: HnswConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, scopes: RwLock::new(HashMap::new()) })
    }

    /// The configuration.
    pub fn config(&self) -> &HnswConfig {
        &self.config
    }

    /// Bytes held by the graphs and vectors of every scope (as usearch counts them), plus an
    /// estimate of the id maps.
    pub fn memory_bytes(&self) -> usize {
        self.scopes
            .read()
            .values()
            .map(|s| {
                let graph = s.index.read().memory_usage();
                let meta = s.meta.read();
                graph + meta.entries.capacity() * 40 + meta.slots.capacity() * 32
            })
            .sum()
    }

    /// Sets `ef_search` for every scope (and for scopes created later).
    pub fn set_expansion_search(&mut self, ef: usize) {
        self.config.expansion_search = ef.max(1);
        for s in self.scopes.read().values() {
            s.index.read().change_expansion_search(self.config.expansion_search);
        }
    }

    fn new_scope_index(&self) -> Result<ScopeIndex> {
        let index = Index::new(&self.config.options()).map_err(SearchError::index)?;
        index.reserve_capacity_and_threads(1024, self.config.max_concurrency).map_err(SearchError::index)?;
        Ok(ScopeIndex {
            index: RwLock::new(index),
            meta: RwLock::new(Meta::default()),
            writer: Mutex::new(()),
            gate: Gate::new(self.config.max_concurrency),
        })
    }

    fn scope(&self, scope: &Scope) -> Option<Arc<ScopeIndex>> {
        self.scopes.read().get(scope).cloned()
    }

    fn scope_or_create(&self, scope: &Scope) -> Result<Arc<ScopeIndex>> {
        if let Some(s) = self.scope(scope) {
            return Ok(s);
        }
        let mut scopes = self.scopes.write();
        if let Some(s) = scopes.get(scope) {
            return Ok(s.clone());
        }
        let s = Arc::new(self.new_scope_index()?);
        scopes.insert(scope.clone(), s.clone());
        Ok(s)
    }

    fn check_dims(&self, len: usize) -> Result<()> {
        if len == self.config.dimensions {
            Ok(())
        } else {
            Err(SearchError::DimensionMismatch { expected: self.config.dimensions, got: len })
        }
    }

    /// Exact search over the vectors that pass the filter: used when the filtered graph walk
    /// found fewer than `k` although more vectors match (very selective filters).
    fn exact_filtered(
        &self,
        index: &Index,
        meta: &Meta,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<VectorHit>> {
        let qn = norm(query);
        let mut buf = vec![0f32; self.config.dimensions];
        let mut hits = Vec::new();
        for (slot, entry) in meta.entries.iter().enumerate() {
            let Some(entry) = entry else { continue };
            if !filter.matches(&entry.attrs) {
                continue;
            }
            let n = index.get(slot as u64, &mut buf).map_err(SearchError::index)?;
            if n == 0 {
                continue;
            }
            let score = dot(query, &buf) / (qn * norm(&buf)).max(f32::MIN_POSITIVE);
            hits.push(VectorHit { id: entry.id, score });
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k);
        Ok(hits)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

impl VectorIndex for HnswIndex {
    fn dimensions(&self) -> usize {
        self.config.dimensions
    }

    fn add(&self, scope: &Scope, records: Vec<VectorRecord>) -> Result<()> {
        for r in &records {
            self.check_dims(r.vector.len())?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let s = self.scope_or_create(scope)?;
        let _writer = s.writer.lock();

        // Replaced ids leave the graph first; then every record gets a slot.
        let mut slots = Vec::with_capacity(records.len());
        {
            let replaced: Vec<u64> = {
                let meta = s.meta.read();
                records.iter().filter_map(|r| meta.slots.get(&r.id).copied()).collect()
            };
            if !replaced.is_empty() {
                let index = s.index.write();
                for &slot in &replaced {
                    index.remove(slot).map_err(SearchError::index)?;
                }
            }
            let mut meta = s.meta.write();
            for r in &records {
                let slot = match meta.slots.get(&r.id) {
                    Some(&slot) => slot,
                    None => match meta.free.pop() {
                        Some(slot) => slot,
                        None => {
                            meta.entries.push(None);
                            (meta.entries.len() - 1) as u64
                        }
                    },
                };
                meta.slots.insert(r.id, slot);
                meta.entries[slot as usize] = Some(Entry { id: r.id, attrs: r.attributes.clone() });
                slots.push(slot);
            }
        }

        // Grow the graph's capacity if needed (this moves memory: no one else may be inside).
        {
            let index = s.index.read();
            let needed = index.size() + records.len();
            if index.capacity() < needed {
                drop(index);
                let index = s.index.write();
                let target = needed.max(index.capacity() * 3 / 2).max(1024);
                index.reserve_capacity_and_threads(target, self.config.max_concurrency).map_err(SearchError::index)?;
            }
        }

        let index = s.index.read();
        let insert = |part: &[(u64, &VectorRecord)]| -> Result<()> {
            let _permit = s.gate.enter();
            for (slot, r) in part {
                index.add(*slot, &r.vector).map_err(SearchError::index)?;
            }
            Ok(())
        };
        let pairs: Vec<(u64, &VectorRecord)> = slots.into_iter().zip(records.iter()).collect();
        if pairs.len() < PARALLEL_ADD_MIN {
            return insert(&pairs);
        }
        let threads =
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(self.config.max_concurrency);
        let per = pairs.len().div_ceil(threads);
        std::thread::scope(|ts| {
            let handles: Vec<_> = pairs.chunks(per).map(|part| ts.spawn(|| insert(part))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(SearchError::Index("an insert thread panicked".into()))))
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    }

    fn delete(&self, scope: &Scope, ids: &[Uuid]) -> Result<usize> {
        let Some(s) = self.scope(scope) else {
            return Ok(0);
        };
        let _writer = s.writer.lock();
        let index = s.index.write();
        let mut meta = s.meta.write();
        let mut removed = 0;
        for id in ids {
            if let Some(slot) = meta.slots.remove(id) {
                index.remove(slot).map_err(SearchError::index)?;
                meta.entries[slot as usize] = None;
                meta.free.push(slot);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn delete_scope(&self, scope: &Scope) -> Result<usize> {
        let removed = self.scopes.write().remove(scope);
        Ok(removed.map_or(0, |s| s.meta.read().slots.len()))
    }

    fn search(&self, scope: &Scope, query: &[f32], k: usize, filter: Option<&Filter>) -> Result<Vec<VectorHit>> {
        self.check_dims(query.len())?;
        if let Some(f) = filter {
            f.validate()?;
        }
        let Some(s) = self.scope(scope) else {
            return Ok(Vec::new());
        };
        if k == 0 {
            return Ok(Vec::new());
        }
        let _permit = s.gate.enter();
        let index = s.index.read();
        let meta = s.meta.read();
        let found = match filter {
            None => index.search(query, k),
            Some(f) => index.filtered_search(query, k, |slot| meta.entry(slot).is_some_and(|e| f.matches(&e.attrs))),
        }
        .map_err(SearchError::index)?;
        let mut hits: Vec<VectorHit> = found
            .keys
            .iter()
            .zip(&found.distances)
            .filter_map(|(&slot, &d)| meta.entry(slot).map(|e| VectorHit { id: e.id, score: 1.0 - d }))
            .collect();
        if let Some(f) = filter
            && hits.len() < k
        {
            let matching = meta.entries.iter().flatten().filter(|e| f.matches(&e.attrs)).count();
            if matching > hits.len() {
                hits = self.exact_filtered(&index, &meta, query, k, f)?;
            }
        }
        Ok(hits)
    }

    fn len(&self, scope: &Scope) -> Result<usize> {
        Ok(self.scope(scope).map_or(0, |s| s.meta.read().slots.len()))
    }

    fn snapshot(&self, dir: &Path, watermark: u64) -> Result<SnapshotInfo> {
        let snap = |e: std::io::Error| SearchError::Snapshot(e.to_string());
        let tmp = sibling(dir, "tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(snap)?;
        }
        fs::create_dir_all(&tmp).map_err(snap)?;
        let scopes: Vec<(Scope, Arc<ScopeIndex>)> =
            self.scopes.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut manifest = Manifest { format: 1, config: self.config.clone(), watermark, scopes: Vec::new() };
        let mut vectors = 0;
        for (i, (scope, s)) in scopes.iter().enumerate() {
            let _writer = s.writer.lock();
            let graph = format!("scope-{i}.usearch");
            let entries = format!("scope-{i}.json");
            let path = tmp.join(&graph);
            let path = path.to_str().ok_or_else(|| SearchError::Snapshot("the snapshot path is not UTF-8".into()))?;
            s.index.read().save(path).map_err(|e| SearchError::Snapshot(e.to_string()))?;
            let meta = s.meta.read();
            vectors += meta.slots.len();
            let file = SnapshotEntries::from_meta(&meta);
            let json = serde_json::to_vec(&file).map_err(|e| SearchError::Snapshot(e.to_string()))?;
            fs::write(tmp.join(&entries), json).map_err(snap)?;
            manifest.scopes.push(ManifestScope { scope: scope.clone(), graph, entries });
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| SearchError::Snapshot(e.to_string()))?;
        fs::write(tmp.join(MANIFEST), json).map_err(snap)?;
        let old = sibling(dir, "old");
        if old.exists() {
            fs::remove_dir_all(&old).map_err(snap)?;
        }
        if dir.exists() {
            fs::rename(dir, &old).map_err(snap)?;
        }
        fs::rename(&tmp, dir).map_err(snap)?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(snap)?;
        }
        Ok(SnapshotInfo { scopes: scopes.len(), vectors, watermark })
    }

    fn restore(&self, dir: &Path) -> Result<Option<u64>> {
        let bad = |e: String| SearchError::Snapshot(format!("{}: {e}", dir.display()));
        let manifest_path = dir.join(MANIFEST);
        if !manifest_path.exists() {
            return Ok(None);
        }
        let raw = fs::read(&manifest_path).map_err(|e| bad(e.to_string()))?;
        let manifest: Manifest = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
        if manifest.format != 1 {
            return Err(bad(format!("unknown snapshot format {}", manifest.format)));
        }
        if manifest.config.dimensions != self.config.dimensions {
            return Err(bad(format!(
                "the snapshot has {} dimensions, the index {}",
                manifest.config.dimensions, self.config.dimensions
            )));
        }
        let mut scopes = HashMap::new();
        for m in &manifest.scopes {
            let s = self.new_scope_index()?;
            let path = dir.join(&m.graph);
            let path = path.to_str().ok_or_else(|| bad("path is not UTF-8".into()))?;
            {
                let index = s.index.write();
                index.load(path).map_err(|e| bad(e.to_string()))?;
                if index.dimensions() != self.config.dimensions {
                    return Err(bad("a graph has other dimensions".into()));
                }
                index
                    .reserve_capacity_and_threads(index.size().max(1024), self.config.max_concurrency)
                    .map_err(|e| bad(e.to_string()))?;
                index.change_expansion_search(self.config.expansion_search);
            }
            let raw = fs::read(dir.join(&m.entries)).map_err(|e| bad(e.to_string()))?;
            let entries: SnapshotEntries = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
            *s.meta.write() = entries.into_meta().map_err(bad)?;
            scopes.insert(m.scope.clone(), Arc::new(s));
        }
        *self.scopes.write() = scopes;
        Ok(Some(manifest.watermark))
    }
}

const MANIFEST: &str = "manifest.json";

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    config: HnswConfig,
    watermark: u64,
    scopes: Vec<ManifestScope>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestScope {
    scope: Scope,
    graph: String,
    entries: String,
}

/// One scope's id map on disk; attribute sets shared between chunks are written once.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotEntries {
    slots: usize,
    attributes: Vec<Attributes>,
    /// (slot, id, index into `attributes`)
    entries: Vec<(u64, Uuid, usize)>,
}

impl SnapshotEntries {
    fn from_meta(meta: &Meta) -> Self {
        let mut seen: HashMap<usize, usize> = HashMap::new();
        let mut attributes = Vec::new();
        let mut entries = Vec::with_capacity(meta.slots.len());
        for (slot, e) in meta.entries.iter().enumerate() {
            let Some(e) = e else { continue };
            let ptr = Arc::as_ptr(&e.attrs) as usize;
            let at = *seen.entry(ptr).or_insert_with(|| {
                attributes.push((*e.attrs).clone());
                attributes.len() - 1
            });
            entries.push((slot as u64, e.id, at));
        }
        Self { slots: meta.entries.len(), attributes, entries }
    }

    fn into_meta(self) -> Result<Meta, String> {
        let attrs: Vec<Arc<Attributes>> = self.attributes.into_iter().map(Arc::new).collect();
        let mut meta = Meta {
            slots: HashMap::with_capacity(self.entries.len()),
            entries: vec![None; self.slots],
            free: Vec::new(),
        };
        for (slot, id, at) in self.entries {
            let attrs = attrs.get(at).ok_or("attribute index out of range")?.clone();
            let cell = meta.entries.get_mut(slot as usize).ok_or("slot out of range")?;
            *cell = Some(Entry { id, attrs });
            meta.slots.insert(id, slot);
        }
        meta.free = (0..meta.entries.len() as u64).filter(|&s| meta.entries[s as usize].is_none()).collect();
        Ok(meta)
    }
}
