#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The dedicated `LISTEN` connection against a real PostgreSQL (skipped without
//! `KEEL_TEST_DATABASE_URL`): notifications arrive, and after the server drops the connection
//! the listener reconnects by itself and says so.

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use shared::db::listen::{ListenEvent, ListenOptions, Listener};
use shared::testing::{TestBackend, TestDatabase, backends};
use std::time::Duration;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(60);

async fn next(events: &mut broadcast::Receiver<ListenEvent>) -> ListenEvent {
    tokio::time::timeout(WAIT, events.recv()).await.expect("no listener event in time").unwrap()
}

#[tokio::test]
async fn notifications_arrive_and_the_listener_reconnects_after_the_server_drops_it() {
    for backend in backends() {
        let TestBackend::Postgres(_) = backend else { continue };
        let database = TestDatabase::new(&backend);
        let url = database.domain("listen").url;
        let options = ListenOptions { application_name: "keel-listen-test".into(), ..ListenOptions::default() };
        assert!(Listener::start(url.clone(), vec!["Bad Channel".into()], options.clone()).is_err());
        let listener = Listener::start(url.clone(), vec!["alpha".into(), "beta".into()], options).unwrap();
        let mut events = listener.subscribe();
        assert_eq!(next(&mut events).await, ListenEvent::Connected);
        assert!(listener.is_connected());

        let mut sender = PgConnection::establish(url.expose()).unwrap();
        sender.batch_execute("NOTIFY alpha, 'one'; NOTIFY gamma, 'ignored'; NOTIFY beta, 'two'").unwrap();
        assert_eq!(
            next(&mut events).await,
            ListenEvent::Notification { channel: "alpha".into(), payload: "one".into() }
        );
        assert_eq!(
            next(&mut events).await,
            ListenEvent::Notification { channel: "beta".into(), payload: "two".into() }
        );

        // A notification sent inside a transaction arrives on commit only.
        sender
            .batch_execute("BEGIN; NOTIFY alpha, 'rolled back'; ROLLBACK; BEGIN; NOTIFY alpha, 'committed'; COMMIT")
            .unwrap();
        assert_eq!(
            next(&mut events).await,
            ListenEvent::Notification { channel: "alpha".into(), payload: "committed".into() }
        );

        sender
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'keel-listen-test' AND datname = current_database()",
            )
            .unwrap();
        assert_eq!(next(&mut events).await, ListenEvent::Connected, "reconnected after the server dropped it");
        sender.batch_execute("NOTIFY alpha, 'after'").unwrap();
        assert_eq!(
            next(&mut events).await,
            ListenEvent::Notification { channel: "alpha".into(), payload: "after".into() }
        );
        drop(listener);
    }
}
