#!/bin/bash
# The read replica: on first start, copy the primary with pg_basebackup (-R writes
# standby.signal and primary_conninfo), then run PostgreSQL as a hot standby that streams WAL.
set -euo pipefail

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "replica: waiting for postgres-primary"
    until pg_isready -q -h postgres-primary -U "$POSTGRES_USER" -d "$POSTGRES_DB"; do sleep 1; done
    echo "replica: base backup from postgres-primary"
    PGPASSWORD="$POSTGRES_REPLICATION_PASSWORD" pg_basebackup \
        --host=postgres-primary --username=replicator --pgdata="$PGDATA" \
        --wal-method=stream --write-recovery-conf --checkpoint=fast --progress
    # The password must survive in primary_conninfo for reconnects; keep the file private.
    chmod 0600 "$PGDATA/postgresql.auto.conf"
fi

exec postgres -c hot_standby=on
