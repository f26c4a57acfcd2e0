DROP TABLE rag_staged_chunks;
