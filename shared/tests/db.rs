#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The database layer against real engines: SQLite always, PostgreSQL when configured.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use shared::backend_tests;
use shared::config::Backend;
use shared::db::{Conn, Db, DbError};
use shared::testing::TestDatabase;

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Text)]
    value: String,
}

fn text(conn: &mut Conn, sql: &str) -> Result<String, DbError> {
    Ok(diesel::sql_query(sql).get_result::<One>(conn)?.value)
}

backend_tests! {
    async fn each_domain_gets_its_own_schema_or_file_with_the_right_session_settings(backend) {
        let database = TestDatabase::new(&backend);
        let settings = database.domain("alpha");
        let db = Db::connect(&settings).unwrap();
        db.ping().await.unwrap();
        match db.backend() {
            Backend::Postgres => {
                let schema = db.run(|conn| text(conn, "SELECT current_schema()::text AS value")).await.unwrap();
                assert_eq!(schema, "alpha");
                let app =
                    db.run(|conn| text(conn, "SELECT current_setting('application_name') AS value")).await.unwrap();
                assert_eq!(app, "keel-alpha");
            }
            Backend::Sqlite => {
                assert!(settings.url.expose().ends_with("alpha.db"));
                let mode =
                    db.run(|conn| text(conn, "SELECT journal_mode AS value FROM pragma_journal_mode()")).await.unwrap();
                assert_eq!(mode, "wal");
                let fk = db
                    .run(|conn| text(conn, "SELECT CAST(foreign_keys AS TEXT) AS value FROM pragma_foreign_keys()"))
                    .await
                    .unwrap();
                assert_eq!(fk, "1");
                assert!(std::path::Path::new(settings.url.expose()).exists());
            }
        }
        // A second domain in the same database is separate.
        let beta = Db::connect(&database.domain("beta")).unwrap();
        db.run(|conn| {
            diesel::sql_query("CREATE TABLE things (id TEXT PRIMARY KEY)").execute(conn).map_err(DbError::from)
        })
        .await
        .unwrap();
        let missing =
            beta.run(|conn| diesel::sql_query("SELECT id FROM things").execute(conn).map_err(DbError::from)).await;
        assert!(missing.is_err(), "beta must not see alpha's tables");
    }
}

backend_tests! {
    async fn a_failed_transaction_rolls_back_and_unique_violations_are_recognised(backend) {
        let database = TestDatabase::new(&backend);
        let db = Db::connect(&database.domain("gamma")).unwrap();
        db.run(|conn| {
            diesel::sql_query("CREATE TABLE things (id TEXT PRIMARY KEY)").execute(conn).map_err(DbError::from)
        })
        .await
        .unwrap();
        let result: Result<(), DbError> = db
            .transaction(|conn| {
                diesel::sql_query("INSERT INTO things (id) VALUES ('a')").execute(conn)?;
                diesel::sql_query("INSERT INTO things (id) VALUES ('a')").execute(conn)?;
                Ok(())
            })
            .await;
        let err = result.unwrap_err();
        assert!(err.is_unique_violation(), "{err:?}");
        let count = db.run(|conn| text(conn, "SELECT CAST(COUNT(*) AS TEXT) AS value FROM things")).await.unwrap();
        assert_eq!(count, "0", "the first insert was rolled back");
    }
}

backend_tests! {
    async fn reads_go_to_the_replica_when_one_is_configured(backend) {
        let database = TestDatabase::new(&backend);
        if backend == shared::testing::TestBackend::Sqlite {
            // SQLite has no replicas: configuring one is refused up front.
            let mut config = database.config();
            config.replica_url = Some(config.url.clone());
            let refused = config.for_domain("delta", &Default::default()).unwrap_err();
            assert_eq!(refused.to_string(), "a read replica needs PostgreSQL");
            return;
        }
        let mut settings = database.domain("delta");
        let db = Db::connect(&settings).unwrap();
        db.run(|conn| {
            diesel::sql_query("CREATE TABLE things (id TEXT PRIMARY KEY)").execute(conn).map_err(DbError::from)
        })
        .await
        .unwrap();
        // The same server stands in for a replica; the replica pool names its connections.
        settings.replica_url = Some(settings.url.clone());
        let with_replica = Db::connect(&settings).unwrap();
        let app = |conn: &mut Conn| text(conn, "SELECT current_setting('application_name') AS value");
        assert_eq!(with_replica.run_read(app).await.unwrap(), "keel-delta-replica");
        assert_eq!(with_replica.run(app).await.unwrap(), "keel-delta");
        let count = with_replica
            .run_read(|conn| text(conn, "SELECT CAST(COUNT(*) AS TEXT) AS value FROM things"))
            .await
            .unwrap();
        assert_eq!(count, "0", "the replica pool uses the domain's schema too");
        // Without a replica, run_read uses the primary.
        assert_eq!(db.run_read(app).await.unwrap(), "keel-delta");
    }
}

/// Runs `sql` on a connection of its own (not from the pool).
fn out_of_band(database: &TestDatabase, sql: &str) {
    let url = database.domain("epsilon").url;
    let mut conn = diesel::PgConnection::establish(url.expose()).unwrap();
    conn.batch_execute(sql).unwrap();
}

backend_tests! {
    async fn lost_connections_are_unavailable_never_internal_and_the_pool_replaces_them(backend) {
        let database = TestDatabase::new(&backend);
        let mut settings = database.domain("epsilon");
        settings.pool.max_size = 4;
        // No idle check, to see what a connection that died under a burst does.
        settings.pool.check_idle_after_ms = 3_600_000;
        let db = Db::connect(&settings).unwrap();
        let name = database.postgres_name().map(str::to_owned);
        let Some(name) = name else {
            // SQLite: a file locked by another writer beyond busy_timeout is unavailability.
            settings.busy_timeout_ms = 50;
            let db = Db::connect(&settings).unwrap();
            db.run(|c| c.batch_execute("CREATE TABLE t (x INTEGER)").map_err(DbError::from)).await.unwrap();
            let mut locker = diesel::SqliteConnection::establish(settings.url.expose()).unwrap();
            locker.batch_execute("BEGIN EXCLUSIVE").unwrap();
            let locked = db.run(|c| c.batch_execute("INSERT INTO t VALUES (1)").map_err(DbError::from)).await;
            assert!(matches!(locked, Err(DbError::Unavailable(_))), "{locked:?}");
            locker.batch_execute("ROLLBACK").unwrap();
            db.run(|c| c.batch_execute("INSERT INTO t VALUES (1)").map_err(DbError::from)).await.unwrap();
            return;
        };
        // Four connections in the pool.
        let burst = (0..4).map(|_| db.run(|c| c.batch_execute("SELECT pg_sleep(0.05)").map_err(DbError::from)));
        for result in futures_util::future::join_all(burst).await {
            result.unwrap();
        }
        out_of_band(
            &database,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND application_name = 'keel-epsilon'"
            ),
        );
        // Each dead connection fails its request as unavailable, once, and is dropped.
        let mut lost = 0;
        for _ in 0..12 {
            match db.run(|c| c.batch_execute("SELECT 1").map_err(DbError::from)).await {
                Ok(()) => {}
                Err(DbError::Unavailable(_)) => lost += 1,
                Err(other) => panic!("a lost connection must be unavailable: {other:?}"),
            }
        }
        assert!(lost <= 4, "{lost} failures for 4 dead connections");
        db.ping().await.unwrap();

        // With the idle check on, connections cut while idle never reach a query.
        settings.pool.check_idle_after_ms = 0;
        let db = Db::connect(&settings).unwrap();
        db.ping().await.unwrap();
        out_of_band(
            &database,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND application_name = 'keel-epsilon'"
            ),
        );
        for _ in 0..8 {
            db.run(|c| c.batch_execute("SELECT 1").map_err(DbError::from)).await.unwrap();
        }
    }
}

backend_tests! {
    async fn an_sqlite_transaction_does_not_fail_when_another_connection_writes_after_its_first_read(backend) {
        if backend != shared::testing::TestBackend::Sqlite {
            return; // PostgreSQL's row versions have no such failure to guard against.
        }
        let database = TestDatabase::new(&backend);
        let settings = database.domain("epsilon");
        let db = Db::connect(&settings).unwrap();
        db.run(|conn| {
            diesel::sql_query("CREATE TABLE things (id TEXT PRIMARY KEY)").execute(conn).map_err(DbError::from)
        })
        .await
        .unwrap();
        // Another connection (here a thread with its own connection, in production a background
        // UPDATE or another process) writes between the transaction's first read and its first
        // write. A deferred transaction would fail with "database is locked" whatever the busy
        // timeout; an immediate one makes the other writer wait its turn.
        let path = settings.url.expose().to_owned();
        let written: Result<(), DbError> = db
            .transaction(move |conn| {
                text(conn, "SELECT CAST(COUNT(*) AS TEXT) AS value FROM things")?;
                let other = std::thread::spawn(move || {
                    let mut other = SqliteConnection::establish(&path).unwrap();
                    other.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
                    other.batch_execute("INSERT INTO things (id) VALUES ('other')")
                });
                std::thread::sleep(std::time::Duration::from_millis(300));
                diesel::sql_query("INSERT INTO things (id) VALUES ('ours')").execute(conn)?;
                Ok(other)
            })
            .await
            .map(|other| other.join().unwrap().unwrap());
        written.unwrap();
        let count = db.run(|conn| text(conn, "SELECT CAST(COUNT(*) AS TEXT) AS value FROM things")).await.unwrap();
        assert_eq!(count, "2", "both writers committed");
    }
}

/// The calling thread's name and whether it is a background one: on Linux `SCHED_BATCH` at a
/// nice value of `nice` + 10 (19 at most), whichever thread started it.
fn thread_here(nice: i32) -> (Option<String>, bool) {
    #[cfg(target_os = "linux")]
    let background = {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        thread_priority::thread_schedule_policy().unwrap() == batch
            && rustix::process::getpriority_process(None).unwrap() == (nice + shared::db::BACKGROUND_NICE).min(19)
    };
    #[cfg(not(target_os = "linux"))]
    let background = nice == 0;
    (std::thread::current().name().map(str::to_owned), background)
}

/// The nice value of the calling (ordinary) thread.
fn own_nice() -> i32 {
    #[cfg(target_os = "linux")]
    return rustix::process::getpriority_process(None).unwrap();
    #[cfg(not(target_os = "linux"))]
    0
}

backend_tests! {
    async fn work_in_background_runs_on_its_own_threads_at_a_lower_priority(backend) {
        let database = TestDatabase::new(&backend);
        let db = Db::connect(&database.domain("gamma")).unwrap();
        let nice = own_nice();
        let (name, background) = db.run(move |_| Ok::<_, DbError>(thread_here(nice))).await.unwrap();
        assert_ne!(name.as_deref(), Some("keel-db-background"));
        assert!(!background, "the ordinary pool keeps the process's priority");
        let scoped = db.clone();
        let (bg_name, bg) = shared::db::in_background(async move {
            // A transaction too, with what it wrote visible afterwards.
            scoped
                .transaction(|conn| conn.batch_execute("CREATE TABLE marks (id INTEGER PRIMARY KEY)").map_err(DbError::from))
                .await?;
            scoped.run(move |_| Ok::<_, DbError>(thread_here(nice))).await
        })
        .await
        .unwrap();
        assert_eq!(bg_name.as_deref(), Some("keel-db-background"));
        assert!(bg, "the background pool steps aside");
        db.run(|conn| conn.batch_execute("INSERT INTO marks (id) VALUES (1)").map_err(DbError::from)).await.unwrap();
        // Outside the scope, the ordinary pool again.
        let (after, _) = db.run(move |_| Ok::<_, DbError>(thread_here(nice))).await.unwrap();
        assert_ne!(after.as_deref(), Some("keel-db-background"));
    }

    async fn a_spawned_background_task_runs_on_the_background_thread_and_pool(backend) {
        let database = TestDatabase::new(&backend);
        let db = Db::connect(&database.domain("delta")).unwrap();
        let nice = own_nice();
        let spawned = db.clone();
        let (task, pool) = shared::db::spawn_background(async move {
            let task = thread_here(nice);
            // Timers work there: the runtime is driven by its own thread.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let pool = spawned.run(move |_| Ok::<_, DbError>(thread_here(nice))).await.unwrap();
            (task, pool)
        })
        .await
        .unwrap();
        assert_eq!(task.0.as_deref(), Some("keel-background"));
        assert!(task.1, "the background thread steps aside");
        assert_eq!(pool.0.as_deref(), Some("keel-db-background"));
        assert!(pool.1);
    }
}
