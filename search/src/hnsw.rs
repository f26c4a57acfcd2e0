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
use crate::filter::{AttributeValue, Attributes, Filter};
use crate::scan::{self, Codes};
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
    /// A filtered search whose filter matches at most this many vectors of the scope scores
    /// those vectors exactly instead of walking the graph (see [`FilterPlan`]). 0 = always walk.
    pub exact_filter_max: usize,
    /// `ef_search` of the filtered graph walk (raised to `k`). Unset (the default): a function of
    /// `expansion_search` and of the share of the scope's vectors that the filter matches, see
    /// [`filtered_expansion`].
    pub filtered_expansion_search: Option<usize>,
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
            exact_filter_max: EXACT_FILTER_MAX,
            filtered_expansion_search: None,
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
        check("max_concurrency", self.max_concurrency, 1, 1024)?;
        check("exact_filter_max", self.exact_filter_max, 0, 100_000_000)?;
        if let Some(ef) = self.filtered_expansion_search {
            check("filtered_expansion_search", ef, 1, 4096)?;
        }
        Ok(())
    }

    fn options(&self) -> IndexOptions {
        IndexOptions {
            dimensions: self.dimensions,
            metric: MetricKind::Cos,
            quantization: self.quantization.scalar_kind(),
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            // The candidate list of a search is max(this, the number of results asked for):
            // searches ask for max(k, ef) results and keep k, so that each query chooses its ef.
            expansion_search: 1,
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

/// A live vector of a scope: its id and its position in its attribute set's `slots`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: Uuid,
    pos: usize,
}

/// One distinct attribute set of a scope (the chunks of a file share one) and the slots of its
/// live vectors: `slots.len()` is the number of vectors that carry it. `codes` holds the same
/// vectors, quantized, in the same order: the rows a filtered exact scan streams.
#[derive(Debug)]
struct AttrSet {
    attrs: Arc<Attributes>,
    hash: u64,
    slots: Vec<u64>,
    codes: Codes,
}

/// `Meta::set_of` of a free slot.
const NO_SET: u32 = u32::MAX;

/// The id ↔ slot (usearch key) maps of one scope and its interned attribute sets.
#[derive(Debug, Default)]
struct Meta {
    slots: HashMap<Uuid, u64>,
    entries: Vec<Option<Entry>>,
    /// The attribute set of each slot (`NO_SET` when free); the filtered walk's predicate reads
    /// only this array and the query's per-set verdicts.
    set_of: Vec<u32>,
    free: Vec<u64>,
    /// Interned attribute sets by id; `None` when freed (its id is then in `free_sets`).
    sets: Vec<Option<AttrSet>>,
    free_sets: Vec<u32>,
    /// Set ids by the hash of their content, for interning by content.
    by_content: HashMap<u64, Vec<u32>>,
}

/// The hash of an attribute set's content, consistent with its `==` (numbers by value, so 0 and
/// -0 hash alike).
fn content_hash(attrs: &Attributes) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    attrs.len().hash(&mut h);
    for (key, value) in attrs {
        key.hash(&mut h);
        match value {
            AttributeValue::Bool(b) => (0u8, *b).hash(&mut h),
            AttributeValue::Number(n) => (1u8, if *n == 0.0 { 0 } else { n.to_bits() }).hash(&mut h),
            AttributeValue::String(s) => (2u8, s).hash(&mut h),
        }
    }
    h.finish()
}

impl Meta {
    fn entry(&self, slot: u64) -> Option<&Entry> {
        self.entries.get(slot as usize).and_then(Option::as_ref)
    }

    /// The id of the set equal to `attrs`, created (with no slot yet) if there is none.
    fn intern(&mut self, attrs: &Arc<Attributes>) -> u32 {
        let hash = content_hash(attrs);
        if let Some(ids) = self.by_content.get(&hash) {
            for &id in ids {
                if let Some(set) = &self.sets[id as usize]
                    && (Arc::ptr_eq(&set.attrs, attrs) || set.attrs == *attrs)
                {
                    return id;
                }
            }
        }
        let set = AttrSet { attrs: attrs.clone(), hash, slots: Vec::new(), codes: Codes::default() };
        let id = match self.free_sets.pop() {
            Some(id) => {
                self.sets[id as usize] = Some(set);
                id
            }
            None => {
                self.sets.push(Some(set));
                (self.sets.len() - 1) as u32
            }
        };
        self.by_content.entry(hash).or_default().push(id);
        id
    }

    /// Frees a set that no live vector carries any more.
    fn release_if_unused(&mut self, id: u32) {
        let Some(set) = &self.sets[id as usize] else { return };
        if !set.slots.is_empty() {
            return;
        }
        let hash = set.hash;
        if let Some(ids) = self.by_content.get_mut(&hash) {
            ids.retain(|&x| x != id);
            if ids.is_empty() {
                self.by_content.remove(&hash);
            }
        }
        self.sets[id as usize] = None;
        self.free_sets.push(id);
    }

    /// Records `id` with `vector` at the free `slot` (already in `entries`) with the interned set
    /// `set`.
    fn occupy(&mut self, slot: u64, id: Uuid, set: u32, vector: &[f32]) {
        let Some(s) = self.sets[set as usize].as_mut() else { return };
        let pos = s.slots.len();
        s.slots.push(slot);
        s.codes.push(vector);
        self.entries[slot as usize] = Some(Entry { id, pos });
        self.set_of[slot as usize] = set;
        self.slots.insert(id, slot);
    }

    /// Clears `slot`: its set loses it (and is freed when that was its last vector). The id map
    /// and the free list are the caller's.
    fn vacate(&mut self, slot: u64) {
        let Some(entry) = self.entries[slot as usize].take() else { return };
        let set = std::mem::replace(&mut self.set_of[slot as usize], NO_SET);
        if let Some(s) = self.sets[set as usize].as_mut() {
            s.slots.swap_remove(entry.pos);
            s.codes.swap_remove(entry.pos);
            if let Some(&moved) = s.slots.get(entry.pos)
                && let Some(e) = self.entries[moved as usize].as_mut()
            {
                e.pos = entry.pos;
            }
        }
        self.release_if_unused(set);
    }

    /// A free slot, growing the arrays when none is free.
    fn take_free_slot(&mut self) -> u64 {
        match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.entries.push(None);
                self.set_of.push(NO_SET);
                (self.entries.len() - 1) as u64
            }
        }
    }

    /// The filter's verdict on every set (evaluated once per distinct set) and the exact number of
    /// live vectors that pass it.
    fn select(&self, filter: &Filter) -> Selection {
        let mut count = 0;
        let pass = self
            .sets
            .iter()
            .map(|s| {
                s.as_ref().is_some_and(|s| {
                    let ok = filter.matches(&s.attrs);
                    if ok {
                        count += s.slots.len();
                    }
                    ok
                })
            })
            .collect();
        Selection { pass, count }
    }
}

/// A filter evaluated against a scope's attribute sets.
#[derive(Debug)]
struct Selection {
    /// By set id: does the set pass the filter.
    pass: Vec<bool>,
    /// Live vectors whose set passes.
    count: usize,
}

impl Selection {
    /// Does the vector at `slot` pass: two array loads.
    fn keeps(&self, meta: &Meta, slot: u64) -> bool {
        meta.set_of.get(slot as usize).and_then(|&set| self.pass.get(set as usize)).copied().unwrap_or(false)
    }
}

/// How a filtered search runs, chosen per query from the exact number of vectors that pass the
/// filter (the filter is evaluated once per distinct attribute set, not per vector).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterPlan {
    /// Nothing passes: no search at all.
    Empty,
    /// At most `exact_filter_max` vectors pass: each of them is scored, exact results.
    Exact {
        /// Vectors that pass the filter.
        matching: usize,
    },
    /// The graph walk that skips vectors failing the filter, with this `ef`; if it finds fewer
    /// than k although more pass, the exact scan answers instead.
    Walk {
        /// Vectors that pass the filter.
        matching: usize,
        /// The walk's `ef_search`.
        expansion: usize,
    },
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
                graph
                    + meta.entries.capacity() * 40
                    + meta.set_of.capacity() * 4
                    + meta.slots.capacity() * 32
                    + meta
                        .sets
                        .iter()
                        .flatten()
                        .map(|s| s.slots.capacity() * 8 + s.codes.capacity_bytes() + 64)
                        .sum::<usize>()
            })
            .sum()
    }

    /// Sets `ef_search` for every scope.
    pub fn set_expansion_search(&mut self, ef: usize) {
        self.config.expansion_search = ef.max(1);
    }

    /// Sets [`HnswConfig::exact_filter_max`].
    pub fn set_exact_filter_max(&mut self, matching: usize) {
        self.config.exact_filter_max = matching;
    }

    /// Sets [`HnswConfig::filtered_expansion_search`].
    pub fn set_filtered_expansion_search(&mut self, ef: Option<usize>) {
        self.config.filtered_expansion_search = ef.map(|ef| ef.max(1));
    }

    /// The plan a search of `scope` for `k` results with `filter` would run now.
    /// Errors: `InvalidParameter` (a filter over the limits).
    pub fn filter_plan(&self, scope: &Scope, k: usize, filter: &Filter) -> Result<FilterPlan> {
        filter.validate()?;
        let Some(s) = self.scope(scope) else {
            return Ok(FilterPlan::Empty);
        };
        let meta = s.meta.read();
        Ok(self.plan(&meta, k, meta.select(filter).count))
    }

    fn plan(&self, meta: &Meta, k: usize, matching: usize) -> FilterPlan {
        if matching == 0 || k == 0 {
            FilterPlan::Empty
        } else if matching <= self.config.exact_filter_max {
            FilterPlan::Exact { matching }
        } else {
            let expansion = match self.config.filtered_expansion_search {
                Some(ef) => ef.max(k),
                None => filtered_expansion(self.config.expansion_search, k, matching, meta.slots.len()),
            };
            FilterPlan::Walk { matching, expansion }
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

    /// Exact search over the vectors that pass the filter: the plan for selective filters, and
    /// the answer when the filtered graph walk found fewer than `k` although more vectors pass.
    ///
    /// Two passes: every matching vector is ranked by its quantized codes (streamed per attribute
    /// set, see [`scan`]), then the best [`rescored`] of them are scored again from the graph's
    /// own vectors, so the scores are those of an unfiltered search and the quantization can only
    /// change which vectors tie at the margin.
    fn exact_filtered(
        &self,
        index: &Index,
        meta: &Meta,
        sel: &Selection,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<VectorHit>> {
        let by_score = |a: &(f32, u64), b: &(f32, u64)| b.0.total_cmp(&a.0);
        let q = scan::Query::new(query);
        let mut ranked: Vec<(f32, u64)> = Vec::with_capacity(sel.count);
        for set in meta.sets.iter().zip(&sel.pass).filter(|&(_, &pass)| pass).filter_map(|(s, _)| s.as_ref()) {
            set.codes.for_each_cosine(&q, |row, cosine| ranked.push((cosine, set.slots[row])));
        }
        keep_best(&mut ranked, rescored(k), by_score);

        let qn = dot(query, query).sqrt();
        let mut scored: Vec<(f32, u64)> = Vec::with_capacity(ranked.len());
        let mut score = |slot: u64, (d, n): (f32, f32)| {
            scored.push((d / (qn * n.sqrt()).max(f32::MIN_POSITIVE), slot));
        };
        if self.config.quantization == Quantization::F16 {
            // The stored halves, converted here: usearch's own conversion to f32 is slower.
            let mut buf = vec![0i16; self.config.dimensions];
            for &(_, slot) in &ranked {
                if index.get(slot, usearch::f16::from_mut_i16s(&mut buf)).map_err(SearchError::index)? > 0 {
                    score(slot, dot_norm_f16(query, &buf));
                }
            }
        } else {
            let mut buf = vec![0f32; self.config.dimensions];
            for &(_, slot) in &ranked {
                if index.get(slot, &mut buf).map_err(SearchError::index)? > 0 {
                    score(slot, dot_norm(query, &buf));
                }
            }
        }
        keep_best(&mut scored, k, by_score);
        scored.sort_unstable_by(by_score);
        Ok(scored
            .into_iter()
            .filter_map(|(score, slot)| meta.entry(slot).map(|e| VectorHit { id: e.id, score }))
            .collect())
    }
}

/// How many of the vectors ranked by their codes the exact scan scores again for `k` results.
/// The margin covers the quantization's error (a few ten-thousandths in cosine at 384
/// dimensions) many times over: bench/RESULTS.md measures recall@10 of the scan against exact
/// f32 search.
fn rescored(k: usize) -> usize {
    k.saturating_mul(4).saturating_add(32)
}

/// Keeps the `n` first of `v` in `order` (unsorted).
fn keep_best<T>(v: &mut Vec<T>, n: usize, order: impl FnMut(&T, &T) -> std::cmp::Ordering) {
    if n == 0 {
        v.clear();
    } else if v.len() > n {
        v.select_nth_unstable_by(n - 1, order);
        v.truncate(n);
    }
}

/// The largest number of vectors a filter may match for the exact scan to answer (the default of
/// [`HnswConfig::exact_filter_max`]). At 1M×384 (f16, one thread, bench/RESULTS.md "The exact
/// scan streams its vectors") the scan costs about 20 ns per matching vector: 50,000 matches
/// (5%) in p50 0.84 / p99 0.93 ms, where the filtered walk took 0.86 / 1.96 ms; at 2% the walk
/// needed 2.1 / 4.6–5.7 ms, and it slows further as the share falls. Above it the walk wins: at
/// 10% (100,000) it answered in p50 0.6 ms against the scan's 2.2 ms, reading far less memory.
pub const EXACT_FILTER_MAX: usize = 50_000;

/// The smallest `ef` of a filtered walk (unless `k` or `ef` is smaller): at 1M×384 a 1% filter
/// needed ef 24 for recall@10 0.95.
pub const FILTERED_EXPANSION_MIN: usize = 24;

/// The `ef` of a filtered graph walk that keeps `matching` of the scope's `total` vectors, from
/// the base `ef`: `ef × 2 × share`, within [max(k, min(FILTERED_EXPANSION_MIN, ef)), max(ef, k)].
///
/// The walk's work grows as ef / share (it collects ef matching vectors); this rule keeps it
/// that of a 50% filter. Measured at 1M×384 with base ef 192: 50% → 192 (recall@10 0.994),
/// 10% → 39 (0.987–0.99, against 0.991 at 192 but p50 2–3 ms instead of 17 ms), 5% → 24
/// (0.991). A walk with ef / share above about 1,000 got 2–3× slower per step on that data.
pub fn filtered_expansion(ef: usize, k: usize, matching: usize, total: usize) -> usize {
    let share = (matching as f64 / total.max(1) as f64).min(1.0);
    let lo = k.max(FILTERED_EXPANSION_MIN.min(ef));
    let scaled = (ef as f64 * 2.0 * share).ceil() as usize;
    scaled.clamp(lo, ef.max(lo))
}

/// Dot product of two equal-length slices, in 8 lanes so that the compiler vectorizes it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    let mut acc = [0f32; 8];
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
}

/// `(a·b, b·b)` in one pass, in 8 lanes.
fn dot_norm(a: &[f32], b: &[f32]) -> (f32, f32) {
    dot_norm_by(a, b, |y| y)
}

/// `(a·b, b·b)` with `b` in IEEE half precision (as usearch stores it), in 8 lanes.
fn dot_norm_f16(a: &[f32], b: &[i16]) -> (f32, f32) {
    dot_norm_by(a, b, f16_to_f32)
}

/// `(a·b, b·b)` with each element of `b` read through `to_f32`, in 8 lanes so that the
/// compiler vectorizes it (`to_f32` is inlined into each instance).
fn dot_norm_by<T: Copy>(a: &[f32], b: &[T], to_f32: impl Fn(T) -> f32) -> (f32, f32) {
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    let mut d = [0f32; 8];
    let mut n = [0f32; 8];
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..8 {
            let y = to_f32(y[i]);
            d[i] += x[i] * y;
            n[i] += y * y;
        }
    }
    let (mut dr, mut nr) = (0f32, 0f32);
    for (x, &y) in ar.iter().zip(br) {
        let y = to_f32(y);
        dr += x * y;
        nr += y * y;
    }
    (d.iter().sum::<f32>() + dr, n.iter().sum::<f32>() + nr)
}

/// An IEEE half as f32, without branches (so that it vectorizes): the exponent and mantissa
/// bits moved into place and rebiased by a multiplication by 2^112, which also gets subnormals
/// right. Infinities and NaNs come out as ±65536 and finite values; usearch stores neither for
/// finite embeddings.
fn f16_to_f32(h: i16) -> f32 {
    let h = u32::from(h as u16);
    let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
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
                    Some(&slot) => {
                        // A replacement keeps its slot; its old attribute set loses it first.
                        meta.vacate(slot);
                        slot
                    }
                    None => meta.take_free_slot(),
                };
                let set = meta.intern(&r.attributes);
                meta.occupy(slot, r.id, set, &r.vector);
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
                meta.vacate(slot);
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
        let Some(filter) = filter else {
            let found = index.search(query, k.max(self.config.expansion_search)).map_err(SearchError::index)?;
            return Ok(hits_of(&meta, &found, k));
        };
        let sel = meta.select(filter);
        match self.plan(&meta, k, sel.count) {
            FilterPlan::Empty => Ok(Vec::new()),
            FilterPlan::Exact { .. } => self.exact_filtered(&index, &meta, &sel, query, k),
            FilterPlan::Walk { matching, expansion } => {
                let found = index
                    .filtered_search(query, expansion, |slot| sel.keeps(&meta, slot))
                    .map_err(SearchError::index)?;
                let hits = hits_of(&meta, &found, k);
                if hits.len() < k.min(matching) {
                    return self.exact_filtered(&index, &meta, &sel, query, k);
                }
                Ok(hits)
            }
        }
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
                // As in `HnswConfig::options`: each search passes its own ef as its result count.
                index.change_expansion_search(1);
            }
            let raw = fs::read(dir.join(&m.entries)).map_err(|e| bad(e.to_string()))?;
            let entries: SnapshotEntries = serde_json::from_slice(&raw).map_err(|e| bad(e.to_string()))?;
            let meta = {
                let index = s.index.read();
                entries.into_meta(self.config.dimensions, |slot, vector| match index.get(slot, vector) {
                    Ok(n) if n > 0 => Ok(()),
                    Ok(_) => Err(format!("the graph has no vector for slot {slot}")),
                    Err(e) => Err(e.to_string()),
                })
            };
            *s.meta.write() = meta.map_err(bad)?;
            scopes.insert(m.scope.clone(), Arc::new(s));
        }
        *self.scopes.write() = scopes;
        Ok(Some(manifest.watermark))
    }
}

/// The first `k` of usearch's matches (best first) as hits.
fn hits_of(meta: &Meta, found: &usearch::ffi::Matches, k: usize) -> Vec<VectorHit> {
    found
        .keys
        .iter()
        .zip(&found.distances)
        .filter_map(|(&slot, &d)| meta.entry(slot).map(|e| VectorHit { id: e.id, score: 1.0 - d }))
        .take(k)
        .collect()
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
        let mut at_of_set = vec![usize::MAX; meta.sets.len()];
        let mut attributes = Vec::new();
        for (id, set) in meta.sets.iter().enumerate() {
            if let Some(set) = set {
                at_of_set[id] = attributes.len();
                attributes.push((*set.attrs).clone());
            }
        }
        let mut entries = Vec::with_capacity(meta.slots.len());
        for (slot, e) in meta.entries.iter().enumerate() {
            let Some(e) = e else { continue };
            entries.push((slot as u64, e.id, at_of_set[meta.set_of[slot] as usize]));
        }
        Self { slots: meta.entries.len(), attributes, entries }
    }

    /// The id map back, each live vector read by `read` (the graph's copy) for its codes.
    fn into_meta(
        self,
        dims: usize,
        mut read: impl FnMut(u64, &mut [f32]) -> Result<(), String>,
    ) -> Result<Meta, String> {
        let mut meta = Meta {
            slots: HashMap::with_capacity(self.entries.len()),
            entries: vec![None; self.slots],
            set_of: vec![NO_SET; self.slots],
            ..Meta::default()
        };
        // Interned once per attribute set of the file (equal sets merge).
        let sets: Vec<u32> = self.attributes.into_iter().map(|a| meta.intern(&Arc::new(a))).collect();
        let mut vector = vec![0f32; dims];
        for (slot, id, at) in self.entries {
            let set = *sets.get(at).ok_or("attribute index out of range")?;
            if slot as usize >= meta.entries.len() {
                return Err("slot out of range".into());
            }
            if meta.entries[slot as usize].is_some() || meta.slots.contains_key(&id) {
                return Err("a slot or an id appears twice".into());
            }
            read(slot, &mut vector)?;
            meta.occupy(slot, id, set, &vector);
        }
        // Sets that no entry carries (none in a snapshot this code wrote) are freed.
        for id in 0..meta.sets.len() as u32 {
            meta.release_if_unused(id);
        }
        meta.free = (0..meta.entries.len() as u64).filter(|&s| meta.entries[s as usize].is_none()).collect();
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Every invariant of the interned sets: each live slot is in its set's list at its `pos`,
    /// with the codes of its vector (`vectors` by id) at the same position, each set's list holds
    /// exactly its slots, no two live sets are equal, the content index lists exactly the live
    /// sets, freed ids are free.
    fn check(meta: &Meta, vectors: &HashMap<Uuid, Vec<f32>>) {
        let live = meta.entries.iter().flatten().count();
        assert_eq!(live, meta.slots.len());
        assert_eq!(meta.entries.len(), meta.set_of.len());
        let mut per_set = vec![0usize; meta.sets.len()];
        for (slot, e) in meta.entries.iter().enumerate() {
            match e {
                Some(e) => {
                    let set = meta.set_of[slot];
                    per_set[set as usize] += 1;
                    let s = meta.sets[set as usize].as_ref().unwrap();
                    assert_eq!(s.slots[e.pos], slot as u64);
                    assert_eq!(meta.slots[&e.id], slot as u64);
                    let mut expected = Codes::default();
                    expected.push(&vectors[&e.id]);
                    assert_eq!(s.codes.row(e.pos), expected.row(0));
                }
                None => {
                    assert_eq!(meta.set_of[slot], NO_SET);
                    assert!(meta.free.contains(&(slot as u64)));
                }
            }
        }
        let mut indexed = 0;
        for (id, set) in meta.sets.iter().enumerate() {
            match set {
                Some(s) => {
                    assert!(!s.slots.is_empty(), "set {id} has no live vector");
                    assert_eq!(s.slots.len(), per_set[id]);
                    assert_eq!(s.codes.len(), per_set[id]);
                    assert_eq!(s.hash, content_hash(&s.attrs));
                    assert!(meta.by_content[&s.hash].contains(&(id as u32)));
                    let equal = meta.sets.iter().flatten().filter(|o| o.attrs == s.attrs).count();
                    assert_eq!(equal, 1, "set {id} is interned twice");
                    indexed += 1;
                }
                None => assert!(meta.free_sets.contains(&(id as u32))),
            }
        }
        assert_eq!(meta.by_content.values().map(Vec::len).sum::<usize>(), indexed);
    }

    #[test]
    fn interned_sets_stay_exact_under_random_changes() {
        let index = HnswIndex::new(HnswConfig { dimensions: 4, ..HnswConfig::default() }).unwrap();
        let scope = Scope::new("o", "s");
        let mut rng = StdRng::seed_from_u64(1);
        // Sets by content (0..6, some built twice as distinct allocations) and 0.0 / -0.0.
        let set = |c: u32| {
            let mut a = Attributes::new();
            if c < 5 {
                a.insert("c".into(), AttributeValue::Number(f64::from(c)));
            } else {
                a.insert("c".into(), AttributeValue::Number(-0.0));
            }
            Arc::new(a)
        };
        let mut vectors = HashMap::new();
        for _ in 0..300 {
            let n = rng.random_range(1..20);
            if rng.random_bool(0.6) {
                let records = (0..n)
                    .map(|_| VectorRecord {
                        id: Uuid::from_u128(rng.random_range(0..60)),
                        vector: (0..4).map(|_| rng.random_range(-1.0..1.0)).collect(),
                        attributes: set(rng.random_range(0..6)),
                    })
                    .collect::<Vec<_>>();
                // One id twice in a batch is not this test's subject.
                let mut seen = std::collections::HashSet::new();
                let records: Vec<_> = records.into_iter().filter(|r| seen.insert(r.id)).collect();
                for r in &records {
                    vectors.insert(r.id, r.vector.clone());
                }
                index.add(&scope, records).unwrap();
            } else {
                let ids: Vec<Uuid> = (0..n).map(|_| Uuid::from_u128(rng.random_range(0..60))).collect();
                for id in &ids {
                    vectors.remove(id);
                }
                index.delete(&scope, &ids).unwrap();
            }
            // A delete before the first add leaves no scope.
            let Some(s) = index.scope(&scope) else { continue };
            let meta = s.meta.read();
            check(&meta, &vectors);
            // -0.0 and 0.0 are one set.
            assert!(meta.sets.iter().flatten().count() <= 5);
            // The restored copy has the same counts per content.
            let restored = SnapshotEntries::from_meta(&meta)
                .into_meta(4, |slot, v| {
                    v.copy_from_slice(&vectors[&meta.entry(slot).unwrap().id]);
                    Ok(())
                })
                .unwrap();
            check(&restored, &vectors);
            let counts = |m: &Meta| {
                let mut c: Vec<(String, usize)> = m
                    .sets
                    .iter()
                    .flatten()
                    .map(|s| (serde_json::to_string(&*s.attrs).unwrap(), s.slots.len()))
                    .collect();
                c.sort();
                c
            };
            assert_eq!(counts(&meta), counts(&restored));
        }
    }

    #[test]
    fn half_precision_conversion() {
        // 1, -2, 0.5, the largest half, the smallest subnormal, -0.
        for (bits, value) in
            [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x3800, 0.5), (0x7bff, 65504.0), (0x0001, 5.960_464_5e-8)]
        {
            assert_eq!(f16_to_f32(bits as i16), value, "{bits:#x}");
        }
        assert_eq!(f16_to_f32(0x8000u16 as i16).to_bits(), (-0.0f32).to_bits());
        let a: Vec<f32> = (0..13).map(|i| i as f32 * 0.25).collect();
        let h: Vec<i16> = vec![0x3c00; 13];
        let (d, n) = dot_norm_f16(&a, &h);
        assert_eq!((d, n), (a.iter().sum::<f32>(), 13.0));
        assert_eq!(dot_norm(&a, &a).0, dot(&a, &a));
    }
}
