DROP TABLE rag_file_batch_files;
DROP TABLE rag_file_batches;
