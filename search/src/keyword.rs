//! Keyword search: BM25 over chunks with tantivy, in RAM or in a directory.
//!
//! One tantivy index holds every organization's chunks; each document carries its scope's key
//! and every query is `+scope:<key> +(<the user's query>)`, built in one place
//! ([`KeywordIndex::search`]), so no query can match another scope's chunks. The user's query is
//! parsed leniently (never a syntax error) with OR semantics and English stemming. Attribute
//! filters run in the collector through the same [`Filter::matches`] as the vector index, on
//! attributes held in memory by the chunk's slot (a u64 fast field).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{MappedMutexGuard, Mutex, MutexGuard, RwLock};
use tantivy::collector::{DocSetCollector, FilterCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use uuid::Uuid;

use crate::error::{Result, SearchError};
use crate::filter::{Attributes, Filter};
use crate::vector::Scope;

/// A keyword search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeywordHit {
    /// The chunk's id.
    pub id: Uuid,
    /// Its BM25 score (unbounded, larger is better).
    pub score: f32,
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    scope: Field,
    file: Field,
    chunk: Field,
    slot: Field,
    attrs: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let scope = b.add_text_field("scope", STRING);
    let file = b.add_text_field("file", STRING | STORED);
    let chunk = b.add_text_field("chunk", STRING | STORED);
    let slot = b.add_u64_field("slot", FAST | INDEXED | STORED);
    let attrs = b.add_text_field("attrs", STORED);
    let text = b.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    (b.build(), Fields { scope, file, chunk, slot, attrs, text })
}

/// The unambiguous key of a scope (length-prefixed, so no pair of ids can collide).
fn scope_key(scope: &Scope) -> String {
    format!("{}:{}/{}", scope.organization.len(), scope.organization, scope.store)
}

fn file_key(scope: &Scope, file: &str) -> String {
    format!("{}#{}", scope_key(scope), file)
}

/// What the index remembers in memory about its chunks.
#[derive(Debug, Default)]
struct Memory {
    attrs: HashMap<u64, Arc<Attributes>>,
    files: HashMap<String, Vec<u64>>,
    scopes: HashMap<String, HashSet<String>>,
}

/// A chunk to index.
#[derive(Debug, Clone, Copy)]
pub struct KeywordChunk<'a> {
    /// The chunk's id.
    pub id: Uuid,
    /// Its text.
    pub text: &'a str,
}

/// The BM25 index.
pub struct KeywordIndex {
    index: Index,
    fields: Fields,
    /// Created on the first write of an index in memory: its term table (4 MiB at this budget)
    /// and threads cost nothing in a process that serves no vector store.
    writer: Mutex<Option<IndexWriter>>,
    reader: IndexReader,
    parser: QueryParser,
    memory: Arc<RwLock<Memory>>,
    next_slot: AtomicU64,
}

impl std::fmt::Debug for KeywordIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeywordIndex").field("chunks", &self.memory.read().attrs.len()).finish()
    }
}

/// The indexing memory budget of the single writer thread.
const WRITER_BUDGET: usize = 64 * 1024 * 1024;

impl KeywordIndex {
    /// An index in memory.
    pub fn in_ram() -> Result<Self> {
        let (schema, fields) = schema();
        Self::with_index(Index::create_in_ram(schema), fields, false)
    }

    /// An index in a directory, created when missing, reopened (with its chunks' attributes)
    /// when present.
    pub fn open_in_dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(SearchError::index)?;
        let (schema, fields) = schema();
        let directory = MmapDirectory::open(dir).map_err(SearchError::index)?;
        let index = Index::open_or_create(directory, schema).map_err(SearchError::index)?;
        // The writer at once: a directory another process writes fails here, not at first use.
        let this = Self::with_index(index, fields, true)?;
        this.load_memory()?;
        Ok(this)
    }

    fn with_index(index: Index, fields: Fields, eager_writer: bool) -> Result<Self> {
        let writer = if eager_writer { Some(Self::new_writer(&index)?) } else { None };
        let reader =
            index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(SearchError::index)?;
        let parser = QueryParser::for_index(&index, vec![fields.text]);
        Ok(Self {
            index,
            fields,
            writer: Mutex::new(writer),
            reader,
            parser,
            memory: Arc::new(RwLock::new(Memory::default())),
            next_slot: AtomicU64::new(0),
        })
    }

    fn new_writer(index: &Index) -> Result<IndexWriter> {
        index.writer_with_num_threads(1, WRITER_BUDGET).map_err(SearchError::index)
    }

    /// The writer, created if this is the first write.
    fn writer(&self) -> Result<MappedMutexGuard<'_, IndexWriter>> {
        let mut writer = self.writer.lock();
        if writer.is_none() {
            *writer = Some(Self::new_writer(&self.index)?);
        }
        MutexGuard::try_map(writer, Option::as_mut).map_err(|_| SearchError::Index("no index writer".into()))
    }

    /// Rebuilds the in-memory maps from the stored fields of a reopened index.
    fn load_memory(&self) -> Result<()> {
        let searcher = self.reader.searcher();
        let docs = searcher.search(&AllQuery, &DocSetCollector).map_err(SearchError::index)?;
        let mut memory = self.memory.write();
        let mut max_slot = None;
        for addr in docs {
            let doc: TantivyDocument = searcher.doc(addr).map_err(SearchError::index)?;
            let (Some(slot), Some(file), Some(attrs)) = (
                doc.get_first(self.fields.slot).and_then(|v| v.as_u64()),
                doc.get_first(self.fields.file).and_then(|v| v.as_str()),
                doc.get_first(self.fields.attrs).and_then(|v| v.as_str()),
            ) else {
                return Err(SearchError::Index("a stored chunk lacks its fields".into()));
            };
            let attrs: Attributes = serde_json::from_str(attrs).map_err(SearchError::index)?;
            memory.attrs.insert(slot, Arc::new(attrs));
            let (scope, _) = file.split_once('#').unwrap_or((file, ""));
            memory.scopes.entry(scope.to_owned()).or_default().insert(file.to_owned());
            memory.files.entry(file.to_owned()).or_default().push(slot);
            max_slot = max_slot.max(Some(slot));
        }
        self.next_slot.store(max_slot.map_or(0, |s| s + 1), Ordering::Relaxed);
        Ok(())
    }

    /// Indexes a file's chunks in a scope, replacing what the file had. Visible after
    /// [`commit`](Self::commit).
    pub fn add_file(
        &self,
        scope: &Scope,
        file: &str,
        chunks: &[KeywordChunk<'_>],
        attributes: Arc<Attributes>,
    ) -> Result<()> {
        let fkey = file_key(scope, file);
        let skey = scope_key(scope);
        let attrs_json = serde_json::to_string(&*attributes).map_err(SearchError::index)?;
        let writer = self.writer()?;
        let mut memory = self.memory.write();
        writer.delete_term(Term::from_field_text(self.fields.file, &fkey));
        for slot in memory.files.remove(&fkey).unwrap_or_default() {
            memory.attrs.remove(&slot);
        }
        let mut slots = Vec::with_capacity(chunks.len());
        for c in chunks {
            let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
            let mut doc = TantivyDocument::default();
            doc.add_text(self.fields.scope, &skey);
            doc.add_text(self.fields.file, &fkey);
            doc.add_text(self.fields.chunk, c.id.to_string());
            doc.add_u64(self.fields.slot, slot);
            doc.add_text(self.fields.attrs, &attrs_json);
            doc.add_text(self.fields.text, c.text);
            writer.add_document(doc).map_err(SearchError::index)?;
            memory.attrs.insert(slot, attributes.clone());
            slots.push(slot);
        }
        memory.files.insert(fkey.clone(), slots);
        memory.scopes.entry(skey).or_default().insert(fkey);
        Ok(())
    }

    /// Removes a file's chunks from a scope. Visible after [`commit`](Self::commit).
    pub fn delete_file(&self, scope: &Scope, file: &str) -> Result<()> {
        let fkey = file_key(scope, file);
        let writer = self.writer()?;
        let mut memory = self.memory.write();
        writer.delete_term(Term::from_field_text(self.fields.file, &fkey));
        for slot in memory.files.remove(&fkey).unwrap_or_default() {
            memory.attrs.remove(&slot);
        }
        if let Some(files) = memory.scopes.get_mut(&scope_key(scope)) {
            files.remove(&fkey);
        }
        Ok(())
    }

    /// Removes every chunk of a scope. Visible after [`commit`](Self::commit).
    pub fn delete_scope(&self, scope: &Scope) -> Result<()> {
        let skey = scope_key(scope);
        let writer = self.writer()?;
        let mut memory = self.memory.write();
        writer.delete_term(Term::from_field_text(self.fields.scope, &skey));
        for fkey in memory.scopes.remove(&skey).unwrap_or_default() {
            for slot in memory.files.remove(&fkey).unwrap_or_default() {
                memory.attrs.remove(&slot);
            }
        }
        Ok(())
    }

    /// Makes every change so far durable (for a directory index) and visible to searches.
    pub fn commit(&self) -> Result<()> {
        {
            let mut writer = self.writer.lock();
            // No writer yet: nothing was written, so nothing to commit or to show.
            let Some(writer) = writer.as_mut() else { return Ok(()) };
            writer.commit().map_err(SearchError::index)?;
        }
        self.reader.reload().map_err(SearchError::index)
    }

    /// The number of chunks (committed or not) in a scope.
    pub fn len(&self, scope: &Scope) -> usize {
        let memory = self.memory.read();
        memory
            .scopes
            .get(&scope_key(scope))
            .map_or(0, |files| files.iter().map(|f| memory.files.get(f).map_or(0, Vec::len)).sum())
    }

    /// The `k` best chunks of the scope for the query by BM25 among those whose attributes pass
    /// the filter. A query without searchable terms finds nothing.
    pub fn search(&self, scope: &Scope, query: &str, k: usize, filter: Option<&Filter>) -> Result<Vec<KeywordHit>> {
        if let Some(f) = filter {
            f.validate()?;
        }
        if k == 0 || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let (user_query, _errors) = self.parser.parse_query_lenient(query);
        let scope_term = Term::from_field_text(self.fields.scope, &scope_key(scope));
        let query: Box<dyn Query> = Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(TermQuery::new(scope_term, IndexRecordOption::Basic))),
            (Occur::Must, user_query),
        ]));
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(k).order_by_score();
        let found = match filter {
            None => searcher.search(&query, &top),
            Some(f) => {
                let memory = self.memory.clone();
                let f = Arc::new(f.clone());
                let keep = move |slot: u64| memory.read().attrs.get(&slot).is_some_and(|a| f.matches(a));
                searcher.search(&query, &FilterCollector::new("slot".to_owned(), keep, top))
            }
        }
        .map_err(SearchError::index)?;
        let mut hits = Vec::with_capacity(found.len());
        for (score, addr) in found {
            let doc: TantivyDocument = searcher.doc(addr).map_err(SearchError::index)?;
            let id = doc
                .get_first(self.fields.chunk)
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| SearchError::Index("a stored chunk has no id".into()))?;
            hits.push(KeywordHit { id, score });
        }
        Ok(hits)
    }

    /// The index's size on disk or in memory, in bytes (segments' files).
    pub fn size_bytes(&self) -> u64 {
        self.reader
            .searcher()
            .segment_readers()
            .iter()
            .map(|s| s.space_usage().map(|u| u.total().get_bytes()).unwrap_or_default())
            .sum()
    }

    /// The tantivy index, for tests and tools.
    pub fn tantivy(&self) -> &Index {
        &self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_in_memory_creates_its_writer_on_the_first_write() {
        let index = KeywordIndex::in_ram().unwrap();
        let scope = Scope::new("org_1", "vs_1");
        assert!(index.writer.lock().is_none());
        // Committing and searching an index never written need no writer.
        index.commit().unwrap();
        assert!(index.search(&scope, "refund", 5, None).unwrap().is_empty());
        assert!(index.writer.lock().is_none());

        let chunk = KeywordChunk { id: Uuid::now_v7(), text: "the refund policy" };
        index.add_file(&scope, "file_1", &[chunk], Arc::new(Attributes::new())).unwrap();
        assert!(index.writer.lock().is_some());
        index.commit().unwrap();
        let hits = index.search(&scope, "refund", 5, None).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].id, chunk.id);
    }
}
