#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of `AuthService` against real databases: SQLite always, PostgreSQL when
//! `KEEL_TEST_DATABASE_URL` is set. The cross-crate contract story lives in the `tests` crate;
//! these cover the rules that need a controlled clock or a look into the tables.

use auth::config::{Argon2Config, ThrottleConfig};
use auth::*;
use chrono::Duration;
use diesel::prelude::*;
use shared::backend_tests;
use shared::db::{Conn, Db, DbError};
use shared::module::Module;
use shared::scope::ScopeDef;
use shared::testing::{TestBackend, TestDatabase};
use shared::{ManualClock, PageRequest, Secret};
use std::net::IpAddr;
use std::sync::Arc;

const FAST: Argon2Config = Argon2Config { memory_kib: 1024, iterations: 1, parallelism: 1 };
const PASSWORD: &str = "correct horse battery";

struct Fixture {
    _database: TestDatabase,
    db: Db,
    clock: ManualClock,
    service: AuthService,
}

fn config() -> AuthConfig {
    AuthConfig {
        argon2: FAST,
        session_ttl_secs: 3600,
        throttle: ThrottleConfig { window_secs: 600, max_failures_per_account: 3, max_failures_per_ip: 5 },
        ..AuthConfig::default()
    }
}

/// A scope another domain declares (as inference will), default for new keys.
const INFERENCE: ScopeDef = ScopeDef { name: "inference", description: "Chat and embeddings.", default: true };

async fn service_on(db: &Db, clock: &ManualClock, config: AuthConfig) -> AuthService {
    let modules: Vec<Arc<dyn Module>> = vec![Arc::new(AuthModule::default())];
    let mut platform = shared::testing::platform_with(&modules, Arc::new(clock.clone()));
    platform.scopes = shared::scope::Scopes::new([auth::SCOPES, &[INFERENCE]].concat());
    AuthService::new(db.clone(), config, &platform).await.unwrap()
}

async fn fixture(backend: &TestBackend) -> Fixture {
    let modules: Vec<Arc<dyn Module>> = vec![Arc::new(AuthModule::default())];
    let database = TestDatabase::migrated(backend, &modules);
    let db = database.open(auth::DOMAIN).await;
    let clock = ManualClock::default();
    let service = service_on(&db, &clock, config()).await;
    Fixture { _database: database, db, clock, service }
}

fn from_ip(ip: &str) -> RequestContext {
    RequestContext { client_ip: Some(ip.parse::<IpAddr>().unwrap()) }
}

async fn signup(api: &dyn AuthApi, email: &str) -> SignupResponse {
    let request = SignupRequest { email: email.into(), password: PASSWORD.into(), name: None };
    api.signup(request, RequestContext::default()).await.unwrap()
}

async fn login(
    api: &dyn AuthApi,
    email: &str,
    password: &str,
    context: RequestContext,
) -> Result<LoginResponse, AuthError> {
    api.login(LoginRequest { email: email.into(), password: password.into() }, context).await
}

diesel::table! {
    users (id) {
        id -> Text,
        email -> Text,
        password_hash -> Text,
    }
}

diesel::table! {
    memberships (organization_id, user_id) {
        organization_id -> Text,
        user_id -> Text,
        role -> Text,
    }
}

async fn stored_hash(db: &Db, email: &str) -> String {
    let email = email.to_owned();
    db.run(move |conn: &mut Conn| {
        users::table
            .filter(users::email.eq(email))
            .select(users::password_hash)
            .first::<String>(conn)
            .map_err(DbError::from)
    })
    .await
    .unwrap()
}

backend_tests! {
    async fn login_lockout_per_account_holds_even_for_the_right_password_until_the_window_slides(backend) {
        let f = fixture(&backend).await;
        signup(&f.service, "ada@example.com").await;
        for _ in 0..3 {
            let err = login(&f.service, "ada@example.com", "wrong password", from_ip("192.0.2.1")).await.unwrap_err();
            assert_eq!(err, AuthError::InvalidCredentials);
        }
        // Locked: the right password from another address gets the lockout answer too.
        let err = login(&f.service, "ADA@example.com ", PASSWORD, from_ip("192.0.2.2")).await.unwrap_err();
        assert_eq!(err, AuthError::TooManyAttempts { retry_after_secs: 600 });

        f.clock.advance(Duration::seconds(601));
        login(&f.service, "ada@example.com", PASSWORD, from_ip("192.0.2.2")).await.unwrap();
    }
}

backend_tests! {
    async fn login_lockout_per_client_ip_covers_every_account_and_unknown_emails(backend) {
        let f = fixture(&backend).await;
        signup(&f.service, "bob@example.com").await;
        for n in 0..5 {
            let email = format!("nobody{n}@example.com");
            let err = login(&f.service, &email, "whatever1", from_ip("198.51.100.7")).await.unwrap_err();
            assert_eq!(err, AuthError::InvalidCredentials, "unknown email answers like a wrong password");
        }
        let err = login(&f.service, "bob@example.com", PASSWORD, from_ip("198.51.100.7")).await.unwrap_err();
        assert!(matches!(err, AuthError::TooManyAttempts { .. }), "{err:?}");
        // Another address is not affected.
        login(&f.service, "bob@example.com", PASSWORD, from_ip("198.51.100.8")).await.unwrap();
    }
}

backend_tests! {
    async fn a_successful_login_clears_the_account_failures(backend) {
        let f = fixture(&backend).await;
        signup(&f.service, "cy@example.com").await;
        for _ in 0..2 {
            login(&f.service, "cy@example.com", "wrong password", RequestContext::default()).await.unwrap_err();
        }
        login(&f.service, "cy@example.com", PASSWORD, RequestContext::default()).await.unwrap();
        for _ in 0..2 {
            login(&f.service, "cy@example.com", "wrong password", RequestContext::default()).await.unwrap_err();
        }
        login(&f.service, "cy@example.com", PASSWORD, RequestContext::default()).await.unwrap();
    }
}

backend_tests! {
    async fn sessions_expire_after_their_ttl(backend) {
        let f = fixture(&backend).await;
        let signed = signup(&f.service, "dee@example.com").await;
        assert_eq!(signed.expires_at, f.clock_now_plus(3600));
        f.service.authenticate(&signed.token).await.unwrap();
        f.clock.advance(Duration::seconds(3600));
        assert_eq!(f.service.authenticate(&signed.token).await.unwrap_err(), AuthError::Unauthenticated);
    }
}

impl Fixture {
    fn clock_now_plus(&self, secs: i64) -> chrono::DateTime<chrono::Utc> {
        use shared::Clock;
        self.clock.now() + Duration::seconds(secs)
    }
}

backend_tests! {
    async fn login_upgrades_a_hash_made_with_other_parameters(backend) {
        let f = fixture(&backend).await;
        signup(&f.service, "eve@example.com").await;
        let old = stored_hash(&f.db, "eve@example.com").await;
        assert!(old.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{old}");

        let stronger =
            AuthConfig { argon2: Argon2Config { memory_kib: 2048, iterations: 2, parallelism: 1 }, ..config() };
        let upgraded_service = service_on(&f.db, &f.clock, stronger).await;
        login(&upgraded_service, "eve@example.com", PASSWORD, RequestContext::default()).await.unwrap();
        let new = stored_hash(&f.db, "eve@example.com").await;
        assert!(new.starts_with("$argon2id$v=19$m=2048,t=2,p=1$"), "{new}");
        // The same password still works, under both services.
        login(&upgraded_service, "eve@example.com", PASSWORD, RequestContext::default()).await.unwrap();
        login(&f.service, "eve@example.com", PASSWORD, RequestContext::default()).await.unwrap();
    }
}

backend_tests! {
    async fn invalid_signups_store_nothing(backend) {
        let f = fixture(&backend).await;
        let cases = [
            ("not-an-email", PASSWORD.to_owned(), "email"),
            ("fay@example.com", "short".to_owned(), "password"),
            ("fay@example.com", "x".repeat(129), "password"),
        ];
        for (email, password, field) in cases {
            let request = SignupRequest { email: email.into(), password: Secret::new(password), name: None };
            match f.service.signup(request, RequestContext::default()).await.unwrap_err() {
                AuthError::Validation { field: got, .. } => assert_eq!(got, field),
                other => panic!("expected a validation error, got {other:?}"),
            }
        }
        let err = login(&f.service, "fay@example.com", &"x".repeat(129), RequestContext::default()).await.unwrap_err();
        assert!(matches!(err, AuthError::Validation { .. }), "an over-long password is refused before hashing");
        assert_eq!(
            login(&f.service, "fay@example.com", "short", RequestContext::default()).await.unwrap_err(),
            AuthError::InvalidCredentials
        );
        signup(&f.service, "fay@example.com").await;
    }
}

backend_tests! {
    async fn changing_the_password_revokes_the_other_sessions_only(backend) {
        let f = fixture(&backend).await;
        let first = signup(&f.service, "gus@example.com").await;
        let second = login(&f.service, "gus@example.com", PASSWORD, RequestContext::default()).await.unwrap();
        let principal = f.service.authenticate(&second.token).await.unwrap();

        let wrong =
            ChangePasswordRequest { current_password: "nope nope".into(), new_password: "new password 1".into() };
        let err = f.service.change_password(&principal, wrong, RequestContext::default()).await.unwrap_err();
        assert_eq!(err, AuthError::IncorrectPassword);
        let too_short = ChangePasswordRequest { current_password: PASSWORD.into(), new_password: "short".into() };
        assert!(matches!(
            f.service.change_password(&principal, too_short, RequestContext::default()).await,
            Err(AuthError::Validation { .. })
        ));

        let change = ChangePasswordRequest { current_password: PASSWORD.into(), new_password: "new password 1".into() };
        f.service.change_password(&principal, change, RequestContext::default()).await.unwrap();
        assert_eq!(f.service.authenticate(&first.token).await.unwrap_err(), AuthError::Unauthenticated);
        f.service.authenticate(&second.token).await.unwrap();
        assert_eq!(
            login(&f.service, "gus@example.com", PASSWORD, RequestContext::default()).await.unwrap_err(),
            AuthError::InvalidCredentials
        );
        login(&f.service, "gus@example.com", "new password 1", RequestContext::default()).await.unwrap();
    }
}

backend_tests! {
    async fn api_keys_expire_and_record_last_use_at_most_once_a_minute(backend) {
        let f = fixture(&backend).await;
        let owner = signup(&f.service, "hal@example.com").await;
        let principal = f.service.authenticate(&owner.token).await.unwrap();
        let org = owner.organization.id;
        use shared::Clock;
        let request = CreateApiKeyRequest {
            name: "ci".into(),
            scopes: None,
            expires_at: Some(f.clock.now() + Duration::seconds(300)),
        };
        let key = f.service.create_api_key(&principal, org, request).await.unwrap();
        assert_eq!(key.scopes, vec!["inference".to_owned()], "the declared defaults");

        // The last use is written in the background (the request does not wait for it).
        let last_used = || async {
            f.service.list_api_keys(&principal, org, PageRequest::default()).await.unwrap().data[0].last_used_at
        };
        let written = |expected| async move {
            for _ in 0..500 {
                if last_used().await == expected {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("last_used_at never became {expected:?}");
        };
        assert_eq!(last_used().await, None);
        f.service.authenticate(&key.key).await.unwrap();
        let first_use = Some(f.clock.now());
        written(first_use).await;

        f.clock.advance(Duration::seconds(30));
        f.service.authenticate(&key.key).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(last_used().await, first_use, "not rewritten within a minute");

        f.clock.advance(Duration::seconds(31));
        f.service.authenticate(&key.key).await.unwrap();
        written(Some(f.clock.now())).await;

        f.clock.advance(Duration::seconds(300));
        assert_eq!(f.service.authenticate(&key.key).await.unwrap_err(), AuthError::Unauthenticated);

        let past = CreateApiKeyRequest { name: "old".into(), scopes: None, expires_at: Some(f.clock.now()) };
        assert!(matches!(
            f.service.create_api_key(&principal, org, past).await,
            Err(AuthError::Validation { ref field, .. }) if field == "expires_at"
        ));
        let unknown = CreateApiKeyRequest { name: "x".into(), scopes: Some(vec!["everything".into()]), expires_at: None };
        assert!(matches!(
            f.service.create_api_key(&principal, org, unknown).await,
            Err(AuthError::Validation { ref field, .. }) if field == "scopes"
        ));
        // A key without scopes identifies its organization and may do nothing else.
        let none = CreateApiKeyRequest { name: "none".into(), scopes: Some(vec![]), expires_at: None };
        assert_eq!(f.service.create_api_key(&principal, org, none).await.unwrap().scopes, Vec::<String>::new());
    }
}

backend_tests! {
    async fn a_tampered_api_key_is_refused(backend) {
        let f = fixture(&backend).await;
        let owner = signup(&f.service, "ivy@example.com").await;
        let principal = f.service.authenticate(&owner.token).await.unwrap();
        let request = CreateApiKeyRequest { name: "k".into(), scopes: None, expires_at: None };
        let key = f.service.create_api_key(&principal, owner.organization.id, request).await.unwrap();
        let mut tampered = key.key.expose().to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(f.service.authenticate(&Secret::new(tampered)).await.unwrap_err(), AuthError::Unauthenticated);
        for garbage in ["", "keel_sk_", "keel_st_00", "Bearer x"] {
            assert_eq!(f.service.authenticate(&Secret::new(garbage)).await.unwrap_err(), AuthError::Unauthenticated);
        }
    }
}

backend_tests! {
    async fn members_are_paginated_by_keyset(backend) {
        let f = fixture(&backend).await;
        let owner = signup(&f.service, "jo@example.com").await;
        let principal = f.service.authenticate(&owner.token).await.unwrap();
        let org = owner.organization.id;
        for n in 0..4 {
            let email = format!("m{n}@example.com");
            signup(&f.service, &email).await;
            let request = AddMemberRequest { email, role: Role::Member };
            f.service.add_member(&principal, org, request).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = f.service.list_members(&principal, org, PageRequest { limit: Some(2), after }).await.unwrap();
            assert!(page.data.len() <= 2);
            seen.extend(page.data.iter().map(|m| m.user.id));
            if !page.has_more {
                assert_eq!(page.next_after, None);
                break;
            }
            after = page.next_after;
        }
        assert_eq!(seen.len(), 5);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen, "ordered by id, no duplicates");

        let bad = PageRequest { limit: None, after: Some("garbage".into()) };
        assert!(matches!(f.service.list_members(&principal, org, bad).await, Err(AuthError::Validation { .. })));
    }
}

backend_tests! {
    async fn two_owners_demoting_each_other_at_once_leave_one_owner(backend) {
        let f = fixture(&backend).await;
        let a = signup(&f.service, "ka@example.com").await;
        let b = signup(&f.service, "kb@example.com").await;
        let pa = f.service.authenticate(&a.token).await.unwrap();
        let pb = f.service.authenticate(&b.token).await.unwrap();
        let org = a.organization.id;
        let add = AddMemberRequest { email: "kb@example.com".into(), role: Role::Owner };
        f.service.add_member(&pa, org, add).await.unwrap();

        let demote = || UpdateMemberRequest { role: Role::Member };
        let (ra, rb) = tokio::join!(
            f.service.update_member(&pa, org, b.user.id, demote()),
            f.service.update_member(&pb, org, a.user.id, demote()),
        );
        let successes = [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count();
        assert_eq!(successes, 1, "{ra:?} {rb:?}");
        for result in [ra, rb] {
            if let Err(err) = result {
                assert!(matches!(err, AuthError::LastOwner | AuthError::PermissionDenied), "{err:?}");
            }
        }
        let org_id = org.to_string();
        let owners: i64 =
            f.db.run(move |conn: &mut Conn| {
                memberships::table
                    .filter(memberships::organization_id.eq(org_id))
                    .filter(memberships::role.eq("owner"))
                    .count()
                    .get_result(conn)
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(owners, 1);
    }
}

backend_tests! {
    async fn api_key_scopes_govern_organization_management(backend) {
        let f = fixture(&backend).await;
        let owner = signup(&f.service, "lu@example.com").await;
        let principal = f.service.authenticate(&owner.token).await.unwrap();
        let org = owner.organization.id;
        signup(&f.service, "lv@example.com").await;

        let plain = CreateApiKeyRequest { name: "plain".into(), scopes: None, expires_at: None };
        let plain = f.service.create_api_key(&principal, org, plain).await.unwrap();
        let plain = f.service.authenticate(&plain.key).await.unwrap();
        assert_eq!(
            f.service.list_api_keys(&plain, org, PageRequest::default()).await.unwrap_err(),
            AuthError::InsufficientScope("admin".into())
        );
        // Reading members needs no admin scope.
        assert_eq!(f.service.list_members(&plain, org, PageRequest::default()).await.unwrap().data.len(), 1);
        assert_eq!(f.service.logout(&plain).await.unwrap_err(), AuthError::SessionRequired);

        let admin = CreateApiKeyRequest { name: "admin".into(), scopes: Some(vec!["admin".into()]), expires_at: None };
        let admin = f.service.create_api_key(&principal, org, admin).await.unwrap();
        let admin = f.service.authenticate(&admin.key).await.unwrap();
        let add = AddMemberRequest { email: "lv@example.com".into(), role: Role::Member };
        f.service.add_member(&admin, org, add).await.unwrap();
        let owner_grant = AddMemberRequest { email: "lu@example.com".into(), role: Role::Owner };
        assert_eq!(f.service.add_member(&admin, org, owner_grant).await.unwrap_err(), AuthError::PermissionDenied);

        // A key never reaches another organization.
        let other = signup(&f.service, "lw@example.com").await;
        assert_eq!(
            f.service.list_members(&admin, other.organization.id, PageRequest::default()).await.unwrap_err(),
            AuthError::OrganizationNotFound
        );
        let orgs = f.service.list_organizations(&admin, PageRequest::default()).await.unwrap();
        assert_eq!(orgs.data.len(), 1);
        assert_eq!(orgs.data[0].id, org);
        assert_eq!(orgs.data[0].role, Role::Admin);
    }
}

backend_tests! {
    async fn a_cached_credential_costs_no_database_query(backend) {
        let f = fixture(&backend).await;
        let owner = signup(&f.service, "nq@example.com").await;
        let session = f.service.authenticate(&owner.token).await.unwrap();
        let org = owner.organization.id;
        let request = CreateApiKeyRequest { name: "hot".into(), scopes: None, expires_at: None };
        let key = f.service.create_api_key(&session, org, request).await.unwrap();
        // Warm: the first use loads the key, its organization and records its use.
        let principal = f.service.authenticate(&key.key).await.unwrap();
        f.service.me(&principal).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;

        let before = f.db.query_count();
        for _ in 0..100 {
            let principal = f.service.authenticate(&key.key).await.unwrap();
            assert!(matches!(f.service.me(&principal).await.unwrap(), MeResponse::ApiKey { .. }));
            f.service.authenticate(&owner.token).await.unwrap();
        }
        assert_eq!(f.db.query_count(), before, "no query for cached credentials");

        // Revocations reach the cache at once: the next request is refused.
        f.service.revoke_api_key(&session, org, key.id).await.unwrap();
        assert_eq!(f.service.authenticate(&key.key).await.unwrap_err(), AuthError::Unauthenticated);
        f.service.logout(&session).await.unwrap();
        assert_eq!(f.service.authenticate(&owner.token).await.unwrap_err(), AuthError::Unauthenticated);
        // An unknown key is looked up once, then answered from the cache too.
        let forged = Secret::new(format!("keel_sk_{}_{}", "a".repeat(16), "b".repeat(64)));
        assert_eq!(f.service.authenticate(&forged).await.unwrap_err(), AuthError::Unauthenticated);
        let before = f.db.query_count();
        assert_eq!(f.service.authenticate(&forged).await.unwrap_err(), AuthError::Unauthenticated);
        assert_eq!(f.db.query_count(), before);
    }
}
