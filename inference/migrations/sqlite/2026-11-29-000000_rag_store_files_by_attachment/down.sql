CREATE INDEX rag_store_files_status_idx ON rag_store_files (vector_store_id, status, file_id);
DROP INDEX rag_store_files_status_attached_idx;
DROP INDEX rag_store_files_attached_idx;
