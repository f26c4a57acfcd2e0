-- A store's files are listed by attachment time (OpenAI's order), the file id breaking ties:
-- the keyset of both lists, with and without a status filter. The second index also serves
-- file_counts (by store and status), as the one it replaces did.
CREATE INDEX rag_store_files_attached_idx ON rag_store_files (vector_store_id, created_at, file_id);
CREATE INDEX rag_store_files_status_attached_idx ON rag_store_files (vector_store_id, status, created_at, file_id);
DROP INDEX rag_store_files_status_idx;
