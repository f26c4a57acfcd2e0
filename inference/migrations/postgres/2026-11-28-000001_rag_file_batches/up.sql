-- Vector-store file batches (OpenAI's `vector_store.files_batch`): files attached together,
-- whose status and counts are read from their attachments, and cancelled together.
CREATE TABLE rag_file_batches (
    id TEXT PRIMARY KEY,
    vector_store_id TEXT NOT NULL REFERENCES rag_vector_stores (id) ON DELETE CASCADE,
    organization_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
-- Deleting a store deletes its batches (the cascade looks them up by store).
CREATE INDEX rag_file_batches_store_idx ON rag_file_batches (vector_store_id);

-- The files of a batch. A join table rather than a column of rag_store_files: a file already
-- attached can be part of a later batch too, and an attachment outlives no batch row (a
-- detach or a file's delete removes its memberships by cascade).
CREATE TABLE rag_file_batch_files (
    batch_id TEXT NOT NULL REFERENCES rag_file_batches (id) ON DELETE CASCADE,
    vector_store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    -- The batch's files page by keyset on file_id.
    PRIMARY KEY (batch_id, file_id),
    FOREIGN KEY (vector_store_id, file_id) REFERENCES rag_store_files (vector_store_id, file_id) ON DELETE CASCADE
);
-- The cascade from a detached attachment.
CREATE INDEX rag_file_batch_files_attachment_idx ON rag_file_batch_files (vector_store_id, file_id);
