//! The database pools' metrics against real engines: SQLite always, PostgreSQL when configured.

// The helpers below are test code too (clippy only exempts `#[test]` functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::db::{Db, DbError};
use shared::metrics::{BuildInfo, Format, Metrics};
use shared::testing::{TestDatabase, backends};

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn checkouts_waits_timeouts_and_pool_sizes_are_reported() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let mut settings = database.domain("metered");
        settings.pool.max_size = 1;
        settings.pool.min_idle = Some(1);
        settings.pool.connection_timeout_ms = 200;
        let db = Db::connect(&settings).unwrap();
        let metrics = Metrics::new(&BuildInfo { version: "0".into(), commit: "unknown".into() });
        db.observe(metrics.db());
        db.observe(metrics.db()); // a second call changes nothing

        db.ping().await.unwrap();

        // Hold the only connection while another checkout waits for it, then gives up.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = tokio::spawn({
            let db = db.clone();
            async move {
                db.run(move |_conn| {
                    held_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok::<_, DbError>(())
                })
                .await
            }
        });
        held_rx.await.unwrap();
        let text = metrics.encode(Format::Prometheus).unwrap();
        let pool = r#"domain="metered",pool="primary""#;
        assert_eq!(
            sample(&text, &format!(r#"keel_db_pool_connections{{{pool},state="in_use"}}"#)),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&text, &format!(r#"keel_db_pool_connections{{{pool},state="idle"}}"#)), Some(0.0), "{text}");
        assert_eq!(sample(&text, &format!("keel_db_pool_max_connections{{{pool}}}")), Some(1.0), "{text}");

        let error = db.ping().await.unwrap_err();
        assert!(matches!(error, DbError::Unavailable(_)), "{error}");
        release_tx.send(()).unwrap();
        holder.await.unwrap().unwrap();

        let text = metrics.encode(Format::Prometheus).unwrap();
        assert_eq!(sample(&text, &format!("keel_db_pool_waits_total{{{pool}}}")), Some(1.0), "{text}");
        assert_eq!(sample(&text, &format!("keel_db_pool_wait_duration_seconds_count{{{pool}}}")), Some(3.0), "{text}");
        let waited = sample(&text, &format!("keel_db_pool_wait_duration_seconds_sum{{{pool}}}")).unwrap();
        assert!(waited >= 0.2, "the failed checkout waited the pool's timeout: {waited}");
        assert_eq!(sample(&text, r#"keel_db_unavailable_total{domain="metered"}"#), Some(1.0), "{text}");
        assert_eq!(sample(&text, &format!(r#"keel_db_pool_connections{{{pool},state="idle"}}"#)), Some(1.0), "{text}");
    }
}
