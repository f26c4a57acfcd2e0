-- Ingestion in steps (prepare, embed per batch, index): the chunks of an ingestion in progress
-- wait here until the index step moves them to rag_chunks in the transaction that completes
-- the attachment. A table of their own, not a flag on rag_chunks: no search, index rebuild or
-- change-log catch-up reads this table, so staged chunks cannot leak into them by a missing
-- filter. Deleting the attachment (detach, file or store deleted, expiry) deletes its staged
-- chunks by the foreign key.
CREATE TABLE rag_staged_chunks (
    vector_store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    -- The embedding batch (a job) the chunk belongs to.
    embed_batch INTEGER NOT NULL,
    -- The chunk's id once live.
    id TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    -- Little-endian f32s once its batch is embedded; NULL before, or with no embedder.
    embedding BLOB,
    -- SHA-256 of the text.
    content_hash TEXT NOT NULL,
    PRIMARY KEY (vector_store_id, file_id, ordinal),
    FOREIGN KEY (vector_store_id, file_id) REFERENCES rag_store_files (vector_store_id, file_id) ON DELETE CASCADE
);
-- A batch's chunks (the embed step), and the count of those left to embed.
CREATE INDEX rag_staged_chunks_batch_idx ON rag_staged_chunks (vector_store_id, file_id, embed_batch);
-- The foreign key's cascade from a file deleted everywhere (rag_store_files by file_id).
CREATE INDEX rag_staged_chunks_file_idx ON rag_staged_chunks (file_id);
