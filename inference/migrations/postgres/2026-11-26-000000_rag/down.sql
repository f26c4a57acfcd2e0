DROP TABLE rag_changes;
DROP TABLE rag_chunks;
DROP TABLE rag_store_files;
DROP TABLE rag_vector_stores;
DROP TABLE rag_files;
