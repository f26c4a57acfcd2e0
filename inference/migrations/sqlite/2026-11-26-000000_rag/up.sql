-- Retrieval: files, vector stores, their files, chunks, and the change log every process reads
-- to keep its in-process index current. Ids are prefixed UUIDv7 strings made by the
-- application (file_…, vs_…; chunks are bare UUIDs); times are Unix seconds. Organization and
-- API key ids are auth's, stored without a foreign key (another domain).

-- Uploaded files, content included.
CREATE TABLE rag_files (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    content_type TEXT,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    content BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
-- The organization's files, keyset by id (ids are time-ordered); and by purpose.
CREATE INDEX rag_files_organization_idx ON rag_files (organization_id, id);
CREATE INDEX rag_files_purpose_idx ON rag_files (organization_id, purpose, id);

CREATE TABLE rag_vector_stores (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    name TEXT,
    -- A JSON object of up to 16 string pairs.
    metadata TEXT NOT NULL,
    -- expires_after: `days` after last_active_at (the only anchor).
    expires_after_days INTEGER,
    last_active_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX rag_vector_stores_organization_idx ON rag_vector_stores (organization_id, id);

-- A file attached to a store, and its ingestion.
-- status: in_progress, completed, failed, cancelled.
CREATE TABLE rag_store_files (
    vector_store_id TEXT NOT NULL REFERENCES rag_vector_stores (id) ON DELETE CASCADE,
    file_id TEXT NOT NULL REFERENCES rag_files (id) ON DELETE CASCADE,
    organization_id TEXT NOT NULL,
    -- The key that attached it: ingestion's embeddings are billed to it.
    api_key_id TEXT,
    status TEXT NOT NULL,
    last_error_code TEXT,
    last_error_message TEXT,
    -- A JSON object: the attributes filters test.
    attributes TEXT NOT NULL,
    max_chunk_size_tokens INTEGER NOT NULL,
    chunk_overlap_tokens INTEGER NOT NULL,
    -- SHA-256 of the content and the chunking parameters, once ingested.
    content_hash TEXT,
    -- The embedder the chunks' vectors came from (NULL: keyword only).
    embedding_model TEXT,
    usage_bytes BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (vector_store_id, file_id)
);
-- Deleting a file detaches it everywhere.
CREATE INDEX rag_store_files_file_idx ON rag_store_files (file_id);
-- file_counts, and the list filtered by status.
CREATE INDEX rag_store_files_status_idx ON rag_store_files (vector_store_id, status, file_id);
-- Reuse of an identical ingestion (same content and parameters) within the organization.
CREATE INDEX rag_store_files_hash_idx ON rag_store_files (organization_id, content_hash);

-- Chunks: the source of truth of both indexes.
CREATE TABLE rag_chunks (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    vector_store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    -- Little-endian f32s; NULL when no embedder is configured.
    embedding BLOB,
    -- SHA-256 of the text.
    content_hash TEXT NOT NULL,
    -- A re-run ingestion can never write a file's chunk twice.
    UNIQUE (vector_store_id, file_id, ordinal)
);
CREATE INDEX rag_chunks_file_idx ON rag_chunks (file_id);

-- Every change to the indexed chunks, in commit order. kind: file_indexed (reload the file's
-- chunks), file_removed, store_removed.
CREATE TABLE rag_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id TEXT NOT NULL,
    vector_store_id TEXT NOT NULL,
    file_id TEXT,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
