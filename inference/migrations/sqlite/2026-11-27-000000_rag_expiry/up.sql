-- The purge of expired vector stores reads the stores with an expiry whose last activity is
-- older than a day (the shortest expiry), then tests each one's own expiry.
CREATE INDEX rag_vector_stores_expiry_idx ON rag_vector_stores (last_active_at)
    WHERE expires_after_days IS NOT NULL;
