-- Keel's background jobs, in the schema of the domain that enqueues them (shared::jobs).
-- The version "jobs0001" cannot collide with a domain's date-based migration versions, so both
-- sets live in the same __diesel_schema_migrations table.
--
-- A job is `available` (ready, or scheduled when run_at is in the future), `running` (claimed
-- under a lease), `failed` (waiting for its retry at run_at), `discarded` (out of attempts, or
-- refused by its handler) or `cancelled`. A completed job is deleted.
CREATE TABLE keel_jobs (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('available', 'running', 'failed', 'discarded', 'cancelled')),
    -- Claims so far: the attempt in progress while running.
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    run_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL,
    -- At most one live (available, running, failed) job per key.
    dedupe_key TEXT,
    -- The fencing token of the current claim: every change a worker makes checks it.
    lease_token TEXT,
    locked_by TEXT,
    lease_expires_at TIMESTAMP,
    attempted_at TIMESTAMP,
    finished_at TIMESTAMP,
    last_error TEXT
);

-- The claim: the oldest due jobs of a queue, in the claim's order.
CREATE INDEX keel_jobs_ready_idx ON keel_jobs (queue, run_at, id) WHERE state IN ('available', 'failed');
-- Expired leases, and heartbeats of the running set.
CREATE INDEX keel_jobs_running_idx ON keel_jobs (lease_expires_at) WHERE state = 'running';
CREATE UNIQUE INDEX keel_jobs_dedupe_idx ON keel_jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state IN ('available', 'running', 'failed');
-- Admin lists of failed, discarded and cancelled jobs, keyset by id.
CREATE INDEX keel_jobs_failed_idx ON keel_jobs (id) WHERE state = 'failed';
CREATE INDEX keel_jobs_discarded_idx ON keel_jobs (id) WHERE state = 'discarded';
CREATE INDEX keel_jobs_cancelled_idx ON keel_jobs (id) WHERE state = 'cancelled';

-- Periodic jobs: the last tick enqueued per schedule, so that one process enqueues each tick.
CREATE TABLE keel_job_schedules (
    name TEXT PRIMARY KEY,
    last_tick TIMESTAMP NOT NULL
);
