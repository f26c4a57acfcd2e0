//! End-to-end tests through the real gateway over HTTP, on every test backend: the public API,
//! tenant isolation, request validation, what the database stores, login throttling, the
//! gateway's own routes, and a gateway whose auth domain is remote.

// The async helpers below are test code too (clippy only exempts `#[test]` functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use auth::OrganizationId;
use auth::config::ThrottleConfig;
use gateway::GatewayConfig;
use reqwest::Method;
use serde_json::{Value, json};
use shared::backend_tests;
use shared::testing::TestBackend;
use tests::harness::{TestGateway, contains, database, gateway_config, stored_bytes};
use tests::{Client, Reply};

const PASSWORD: &str = "correct horse battery";

/// The sorted keys of a JSON object.
fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> =
        value.as_object().unwrap_or_else(|| panic!("not an object: {value}")).keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn str_of<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

/// Signs up and returns (token, user id, personal organization id).
async fn signup(api: &Client, email: &str) -> (String, String, String) {
    let reply = api.post("/v1/auth/signup", None, &json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let body = &reply.body;
    (str_of(body, "/token").into(), str_of(body, "/user/id").into(), str_of(body, "/organization/id").into())
}

async fn login(api: &Client, email: &str, password: &str) -> Reply {
    api.post("/v1/auth/login", None, &json!({"email": email, "password": password})).await
}

/// Logs in on behalf of `ip`, as a trusted proxy in front of the gateway would.
async fn login_from(api: &Client, ip: &str, email: &str, password: &str) -> Reply {
    let body = json!({"email": email, "password": password});
    Client::send(api.request(Method::POST, "/v1/auth/login", None).header("x-forwarded-for", ip).json(&body)).await
}

/// Sends a request with a raw body and content type.
async fn raw(api: &Client, path: &str, token: Option<&str>, content_type: &str, body: impl Into<String>) -> Reply {
    let builder = api.request(Method::POST, path, token).header("content-type", content_type).body(body.into());
    Client::send(builder).await
}

/// The issue's public API, step by step, with the exact shapes of the answers.
async fn public_api_flow(api: &Client) {
    // Signup: 201 {user, organization, token, expires_at}.
    let reply = api
        .post("/v1/auth/signup", None, &json!({"email": " Ada@Example.com", "password": PASSWORD, "name": "Ada"}))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(keys(&reply.body), ["expires_at", "organization", "token", "user"]);
    assert_eq!(keys(&reply.body["user"]), ["created_at", "email", "id", "name"]);
    assert_eq!(reply.body["user"]["email"], "ada@example.com");
    assert_eq!(keys(&reply.body["organization"]), ["created_at", "id", "name"]);
    let signup_token = str_of(&reply.body, "/token").to_owned();
    let ada_id = str_of(&reply.body, "/user/id").to_owned();
    let personal_id = str_of(&reply.body, "/organization/id").to_owned();
    let duplicate = api.post("/v1/auth/signup", None, &json!({"email": "ADA@example.com", "password": PASSWORD})).await;
    duplicate.assert_error(409, "email_taken");
    assert_eq!(duplicate.body["error"]["param"], "email");

    // Login: 200 {user, token, expires_at}; a wrong password and an unknown email look the same.
    let reply = login(api, "ada@example.com", PASSWORD).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(keys(&reply.body), ["expires_at", "token", "user"]);
    assert_eq!(reply.body["user"]["id"], ada_id.as_str());
    let token = str_of(&reply.body, "/token").to_owned();
    let wrong = login(api, "ada@example.com", "not the password").await;
    wrong.assert_error(401, "invalid_credentials");
    let unknown = login(api, "nobody@example.com", PASSWORD).await;
    assert_eq!((unknown.status, &unknown.body), (wrong.status, &wrong.body), "same answer for both");

    // Me, with a session.
    let me = api.get("/v1/auth/me", Some(&token)).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        me.body,
        json!({
            "kind": "session",
            "user": reply.body["user"],
            "organizations": [{"id": personal_id, "name": "Ada's organization", "role": "owner"}],
        })
    );
    let anonymous = api.get("/v1/auth/me", None).await;
    anonymous.assert_error(401, "unauthenticated");
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    api.get("/v1/auth/me", Some("keel_st_forged")).await.assert_error(401, "unauthenticated");

    // Organizations.
    let acme = api.post("/v1/organizations", Some(&token), &json!({"name": "Acme"})).await;
    assert_eq!(acme.status, 201, "{}", acme.body);
    assert_eq!(keys(&acme.body), ["created_at", "id", "name"]);
    let acme_id = str_of(&acme.body, "/id").to_owned();
    let orgs = api.get("/v1/organizations", Some(&token)).await;
    assert_eq!(
        orgs.body,
        json!({"data": [
            {"id": personal_id, "name": "Ada's organization", "role": "owner"},
            {"id": acme_id, "name": "Acme", "role": "owner"},
        ], "has_more": false, "next_after": null})
    );
    let page = api.get("/v1/organizations?limit=1", Some(&token)).await;
    assert_eq!((page.body["has_more"].clone(), page.body["next_after"].clone()), (json!(true), json!(personal_id)));
    api.get("/v1/organizations?limit=lots", Some(&token)).await.assert_error(400, "invalid_query");

    // Members.
    let members_path = format!("/v1/organizations/{acme_id}/members");
    let (bob_token, bob_id, _) = signup(api, "bob@example.com").await;
    let added = api.post(&members_path, Some(&token), &json!({"email": "bob@example.com", "role": "member"})).await;
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(keys(&added.body), ["joined_at", "role", "user"]);
    assert_eq!((added.body["user"]["id"].clone(), added.body["role"].clone()), (json!(bob_id), json!("member")));
    let listed = api.get(&members_path, Some(&token)).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let roles: Vec<(&str, &str)> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"]["id"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [(ada_id.as_str(), "owner"), (bob_id.as_str(), "member")]);
    let bob_path = format!("{members_path}/{bob_id}");
    api.post(&members_path, Some(&bob_token), &json!({"email": "x@example.com", "role": "member"}))
        .await
        .assert_error(403, "permission_denied");
    let promoted = api.json(Method::PATCH, &bob_path, Some(&token), &json!({"role": "admin"})).await;
    assert_eq!((promoted.status, promoted.body["role"].clone()), (200, json!("admin")), "{}", promoted.body);
    let ada_path = format!("{members_path}/{ada_id}");
    api.json(Method::PATCH, &ada_path, Some(&token), &json!({"role": "member"})).await.assert_error(409, "last_owner");
    api.delete(&ada_path, Some(&token)).await.assert_error(409, "last_owner");
    let removed = api.delete(&bob_path, Some(&token)).await;
    assert_eq!((removed.status, removed.body.clone()), (204, Value::Null));
    api.delete(&bob_path, Some(&token)).await.assert_error(404, "member_not_found");

    // API keys: the full key once, then never again.
    let keys_path = format!("/v1/organizations/{acme_id}/api-keys");
    let created = api.post(&keys_path, Some(&token), &json!({"name": "ci", "scopes": ["admin"]})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(keys(&created.body), ["created_at", "expires_at", "id", "key", "name", "prefix", "scopes"]);
    let key = str_of(&created.body, "/key").to_owned();
    let key_id = str_of(&created.body, "/id").to_owned();
    let prefix = str_of(&created.body, "/prefix").to_owned();
    assert!(key.starts_with(&prefix) && prefix.starts_with("keel_sk_"), "{key} / {prefix}");
    let as_key = api.get("/v1/auth/me", Some(&key)).await;
    assert_eq!(
        as_key.body,
        json!({
            "kind": "api_key",
            "organization": acme.body,
            "api_key": {"id": key_id, "name": "ci", "prefix": prefix, "scopes": ["admin"]},
        })
    );
    let listed = api.get(&keys_path, Some(&key)).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        keys(&listed.body["data"][0]),
        ["created_at", "created_by", "expires_at", "id", "last_used_at", "name", "prefix", "scopes"]
    );
    let secret = key.rsplit('_').next().unwrap();
    assert!(!listed.body.to_string().contains(secret), "listing shows no secret");
    api.post("/v1/organizations", Some(&key), &json!({"name": "x"})).await.assert_error(403, "session_required");
    let revoked = api.delete(&format!("{keys_path}/{key_id}"), Some(&token)).await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    api.get("/v1/auth/me", Some(&key)).await.assert_error(401, "unauthenticated");

    // Changing the password revokes the other sessions; logout revokes the one used.
    let change = json!({"current_password": PASSWORD, "new_password": "another fine password"});
    let changed = api.post("/v1/auth/password", Some(&token), &change).await;
    assert_eq!(changed.status, 204, "{}", changed.body);
    api.get("/v1/auth/me", Some(&signup_token)).await.assert_error(401, "unauthenticated");
    assert_eq!(api.get("/v1/auth/me", Some(&token)).await.status, 200);
    let out = raw(api, "/v1/auth/logout", Some(&token), "application/json", "").await;
    assert_eq!(out.status, 204, "{}", out.body);
    api.get("/v1/auth/me", Some(&token)).await.assert_error(401, "unauthenticated");
    login(api, "ada@example.com", PASSWORD).await.assert_error(401, "invalid_credentials");
    assert_eq!(login(api, "ada@example.com", "another fine password").await.status, 200);
}

backend_tests! {
    async fn the_public_api_works_end_to_end(backend) {
        let database = database(&backend);
        let gateway = TestGateway::in_process(&database).await;
        public_api_flow(&gateway.client()).await;
    }
}

backend_tests! {
    async fn another_organizations_member_gets_404_on_every_org_scoped_route(backend) {
        let database = database(&backend);
        let gateway = TestGateway::in_process(&database).await;
        let api = gateway.client();

        let (ada, ada_id, acme) = signup(&api, "ada@example.com").await;
        let (_, bob_id, _) = signup(&api, "bob@example.com").await;
        let members = format!("/v1/organizations/{acme}/members");
        let added = api.post(&members, Some(&ada), &json!({"email": "bob@example.com", "role": "member"})).await;
        assert_eq!(added.status, 201);
        let created = api.post(&format!("/v1/organizations/{acme}/api-keys"), Some(&ada), &json!({"name": "k"})).await;
        let key_id = str_of(&created.body, "/id").to_owned();
        let key = str_of(&created.body, "/key").to_owned();

        // Mallory owns her own organization and has an admin key for it.
        let (mallory, _, mallory_org) = signup(&api, "mallory@example.com").await;
        let body = json!({"name": "m", "scopes": ["admin"]});
        let mallory_key = api.post(&format!("/v1/organizations/{mallory_org}/api-keys"), Some(&mallory), &body).await;
        let mallory_key = str_of(&mallory_key.body, "/key").to_owned();

        let routes = |org: &str| {
            vec![
                (Method::GET, format!("/v1/organizations/{org}/members"), None),
                (
                    Method::POST,
                    format!("/v1/organizations/{org}/members"),
                    Some(json!({"email": "mallory@example.com", "role": "owner"})),
                ),
                (Method::PATCH, format!("/v1/organizations/{org}/members/{ada_id}"), Some(json!({"role": "member"}))),
                (Method::PATCH, format!("/v1/organizations/{org}/members/{bob_id}"), Some(json!({"role": "owner"}))),
                (Method::DELETE, format!("/v1/organizations/{org}/members/{ada_id}"), None),
                (Method::DELETE, format!("/v1/organizations/{org}/members/{bob_id}"), None),
                (Method::GET, format!("/v1/organizations/{org}/api-keys"), None),
                (Method::POST, format!("/v1/organizations/{org}/api-keys"), Some(json!({"name": "stolen"}))),
                (Method::DELETE, format!("/v1/organizations/{org}/api-keys/{key_id}"), None),
            ]
        };
        let nowhere = OrganizationId::new().to_string();
        for credential in [&mallory, &mallory_key] {
            for ((method, path, body), (_, nowhere_path, _)) in routes(&acme).into_iter().zip(routes(&nowhere)) {
                let send = |path: &str| {
                    let builder = api.request(method.clone(), path, Some(credential));
                    Client::send(match &body {
                        Some(body) => builder.json(body),
                        None => builder,
                    })
                };
                let reply = send(&path).await;
                reply.assert_error(404, "organization_not_found");
                let text = reply.body.to_string();
                assert!(!text.contains("ada@example.com") && !text.contains(&ada_id), "{method} {path}: {text}");
                // Exactly what an organization that does not exist answers.
                assert_eq!(reply.body, send(&nowhere_path).await.body, "{method} {path}");
            }
        }

        // Nothing changed.
        let listed = api.get(&members, Some(&ada)).await;
        let ids: Vec<&str> = listed.body["data"].as_array().unwrap().iter().map(|m| str_of(m, "/user/id")).collect();
        assert_eq!(ids, [ada_id.as_str(), bob_id.as_str()]);
        let roles: Vec<&str> = listed.body["data"].as_array().unwrap().iter().map(|m| str_of(m, "/role")).collect();
        assert_eq!(roles, ["owner", "member"]);
        let keys = api.get(&format!("/v1/organizations/{acme}/api-keys"), Some(&ada)).await;
        assert_eq!(keys.body["data"].as_array().unwrap().len(), 1);
        assert_eq!(api.get("/v1/auth/me", Some(&key)).await.status, 200);
    }
}

backend_tests! {
    async fn bad_bodies_get_the_envelope_and_store_nothing(backend) {
        let database = database(&backend);
        let gateway = TestGateway::in_process(&database).await;
        let api = gateway.client();
        let signup_path = "/v1/auth/signup";
        let email = "eve@example.com";
        let json_type = "application/json";

        // (body, content type, status, code, param)
        let cases: Vec<(String, &str, u16, &str, Option<&str>)> = vec![
            // Malformed JSON.
            (format!(r#"{{"email": "{email}", "password": "{PASSWORD}""#), json_type, 400, "invalid_json", None),
            ("not json at all".into(), json_type, 400, "invalid_json", None),
            // Missing fields: `param` names the field.
            (format!(r#"{{"email": "{email}"}}"#), json_type, 422, "invalid_body", Some("password")),
            // Wrong types.
            (format!(r#"{{"email": "{email}", "password": 12345678}}"#), json_type, 422, "invalid_body", Some("password")),
            (format!(r#"{{"email": ["{email}"], "password": "{PASSWORD}"}}"#), json_type, 422, "invalid_body", Some("email")),
            // Larger than http.body_limit_bytes (64 KiB).
            (
                format!(r#"{{"email": "{email}", "password": "{PASSWORD}", "name": "{}"}}"#, "n".repeat(70_000)),
                json_type,
                413,
                "payload_too_large",
                None,
            ),
            // Not JSON.
            (
                format!(r#"{{"email": "{email}", "password": "{PASSWORD}"}}"#),
                "text/plain",
                415,
                "unsupported_media_type",
                None,
            ),
            (format!("email={email}&password=x"), "application/x-www-form-urlencoded", 415, "unsupported_media_type", None),
            // Well-formed but invalid: a password longer than 128 characters is refused, not hashed.
            (
                format!(r#"{{"email": "{email}", "password": "{}"}}"#, "p".repeat(129)),
                json_type,
                422,
                "validation_failed",
                Some("password"),
            ),
            // Text Keel would store must not carry NUL, control or bidi-override characters.
            (
                format!(r#"{{"email": "eve\u0000@example.com", "password": "{PASSWORD}"}}"#),
                json_type,
                422,
                "validation_failed",
                Some("email"),
            ),
            (
                format!(r#"{{"email": "{email}", "password": "{PASSWORD}", "name": "Eve\u202Egnp.exe"}}"#),
                json_type,
                422,
                "validation_failed",
                Some("name"),
            ),
            (
                format!(r#"{{"email": "{email}", "password": "{PASSWORD}", "name": "Eve\u0007"}}"#),
                json_type,
                422,
                "validation_failed",
                Some("name"),
            ),
        ];
        for (body, content_type, status, code, param) in cases {
            let reply = raw(&api, signup_path, None, content_type, body).await;
            reply.assert_error(status, code);
            assert_eq!(reply.body["error"]["type"], "invalid_request_error", "{}", reply.body);
            assert_eq!(reply.body["error"]["param"], json!(param), "{}", reply.body);
        }
        // Logging in with such an email is just a wrong login, and queries nothing.
        let nul_login = json!({"email": "eve\u{0}@example.com", "password": PASSWORD});
        api.post("/v1/auth/login", None, &nul_login).await.assert_error(401, "invalid_credentials");

        // Nothing was stored: the account does not exist, and a valid signup then succeeds.
        login(&api, email, PASSWORD).await.assert_error(401, "invalid_credentials");
        let (token, _, org) = signup(&api, email).await;

        // The same on authenticated routes.
        let orgs_before = api.get("/v1/organizations", Some(&token)).await.body;
        raw(&api, "/v1/organizations", Some(&token), json_type, "{\"name\": ").await.assert_error(400, "invalid_json");
        raw(&api, "/v1/organizations", Some(&token), json_type, "{\"name\": 7}")
            .await
            .assert_error(422, "invalid_body");
        raw(&api, "/v1/organizations", Some(&token), json_type, "{}").await.assert_error(422, "invalid_body");
        assert_eq!(api.get("/v1/organizations", Some(&token)).await.body, orgs_before);
        let keys_path = format!("/v1/organizations/{org}/api-keys");
        let bad_scopes = json!({"name": "k", "scopes": ["everything"]});
        let refused = api.post(&keys_path, Some(&token), &bad_scopes).await;
        refused.assert_error(422, "validation_failed");
        assert_eq!(refused.body["error"]["param"], "scopes");
        let bad_date = json!({"name": "k", "expires_at": "tomorrow"});
        api.post(&keys_path, Some(&token), &bad_date).await.assert_error(422, "invalid_body");
        let bad_role = json!({"email": email, "role": "god"});
        api.post(&format!("/v1/organizations/{org}/members"), Some(&token), &bad_role)
            .await
            .assert_error(422, "invalid_body");
        assert_eq!(api.get(&keys_path, Some(&token)).await.body["data"], json!([]));
        // An id of the wrong shape names nothing.
        api.get("/v1/organizations/not-an-id/members", Some(&token)).await.assert_error(404, "not_found");
    }
}

backend_tests! {
    async fn the_database_holds_no_usable_secret(backend) {
        let database = database(&backend);
        let gateway = TestGateway::in_process(&database).await;
        let api = gateway.client();

        let email = "keeper@example.com";
        let (signup_token, user_id, org) = signup(&api, email).await;
        let login_token = str_of(&login(&api, email, PASSWORD).await.body, "/token").to_owned();
        let created =
            api.post(&format!("/v1/organizations/{org}/api-keys"), Some(&signup_token), &json!({"name": "k"})).await;
        let key = str_of(&created.body, "/key").to_owned();
        let key_id = str_of(&created.body, "/id").to_owned();
        assert_eq!(api.get("/v1/auth/me", Some(&key)).await.status, 200);
        assert_eq!(api.get("/v1/auth/me", Some(&login_token)).await.status, 200);

        let stored = stored_bytes(&database);
        // The dump does show the data, so the checks below can fail.
        for visible in [email, user_id.as_str(), key_id.as_str()] {
            assert!(contains(&stored, visible), "{visible} should be stored");
        }
        let key_secret = key.rsplit('_').next().unwrap();
        let secrets = [
            ("the API key", key.as_str()),
            ("the API key's secret part", key_secret),
            ("the signup session token", signup_token.as_str()),
            ("the signup session token's random part", signup_token.trim_start_matches("keel_st_")),
            ("the login session token", login_token.as_str()),
            ("the login session token's random part", login_token.trim_start_matches("keel_st_")),
            ("the password", PASSWORD),
        ];
        for (what, secret) in secrets {
            assert!(secret.len() >= 16, "{what} is too short to search for");
            assert!(!contains(&stored, secret), "{what} is stored in the database");
        }
    }
}

backend_tests! {
    async fn failed_logins_are_throttled_per_account_and_per_address(backend) {
        let database = database(&backend);
        let mut config = gateway_config(&database);
        config.auth.throttle = ThrottleConfig { window_secs: 900, max_failures_per_account: 3, max_failures_per_ip: 6 };
        let gateway = TestGateway::start(config, None).await;
        let api = gateway.client();
        signup(&api, "ada@example.com").await;
        signup(&api, "bob@example.com").await;

        for _ in 0..3 {
            login(&api, "ada@example.com", "wrong password").await.assert_error(401, "invalid_credentials");
        }
        // Locked: even the right password gets the lockout answer.
        let locked = login(&api, "ada@example.com", PASSWORD).await;
        locked.assert_error(429, "too_many_attempts");
        assert_eq!(locked.body["error"]["type"], "rate_limit_error");
        let retry_after: u64 = locked.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=900).contains(&retry_after), "{retry_after}");
        // Another account from the same address is not locked yet...
        assert_eq!(login(&api, "bob@example.com", PASSWORD).await.status, 200);
        // ... until the address has failed too often, whatever the accounts.
        for n in 0..3 {
            login(&api, &format!("nobody{n}@example.com"), PASSWORD).await.assert_error(401, "invalid_credentials");
        }
        login(&api, "bob@example.com", PASSWORD).await.assert_error(429, "too_many_attempts");
    }
}

#[tokio::test]
async fn request_ids_health_readiness_and_the_openapi_document() {
    let database = database(&TestBackend::Sqlite);
    let gateway = TestGateway::in_process(&database).await;
    let api = gateway.client();

    // Request ids: echoed when sane, generated (a UUIDv7) otherwise, on every answer.
    let health = Client::send(api.request(Method::GET, "/healthz", None).header("x-request-id", "req-123")).await;
    assert_eq!((health.status, health.header("x-request-id")), (200, Some("req-123")));
    assert_eq!(health.body, json!({"status": "ok"}));
    let missing = Client::send(api.request(Method::GET, "/nope", None).header("x-request-id", "req-404")).await;
    missing.assert_error(404, "not_found");
    assert_eq!(missing.header("x-request-id"), Some("req-404"));
    let generated = api.get("/v1/auth/me", None).await;
    let id = generated.header("x-request-id").expect("a generated id").to_owned();
    assert_eq!((id.len(), &id[14..15]), (36, "7"), "a UUIDv7: {id}");
    assert_ne!(api.get("/healthz", None).await.header("x-request-id"), Some(id.as_str()));
    let odd = Client::send(api.request(Method::GET, "/healthz", None).header("x-request-id", "a".repeat(200))).await;
    assert_eq!(odd.header("x-request-id").unwrap().len(), 36);

    let ready = api.get("/readyz", None).await;
    assert_eq!((ready.status, ready.body), (200, json!({"status": "ok"})));

    // The OpenAPI document is 3.1 and lists exactly the routes served...
    let document = api.get("/openapi.json", None).await;
    assert_eq!(document.status, 200);
    assert!(str_of(&document.body, "/openapi").starts_with("3.1."), "{}", document.body["openapi"]);
    let mut routes: Vec<(String, String)> = Vec::new();
    for (path, item) in document.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.push((method.clone(), path.clone()));
            }
        }
    }
    routes.sort();
    let mut expected: Vec<(String, String)> = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/openapi.json"),
        ("post", "/v1/auth/signup"),
        ("post", "/v1/auth/login"),
        ("post", "/v1/auth/logout"),
        ("post", "/v1/auth/password"),
        ("get", "/v1/auth/me"),
        ("get", "/v1/auth/principal"),
        ("get", "/v1/organizations"),
        ("post", "/v1/organizations"),
        ("get", "/v1/organizations/{org_id}/members"),
        ("post", "/v1/organizations/{org_id}/members"),
        ("patch", "/v1/organizations/{org_id}/members/{user_id}"),
        ("delete", "/v1/organizations/{org_id}/members/{user_id}"),
        ("get", "/v1/organizations/{org_id}/api-keys"),
        ("post", "/v1/organizations/{org_id}/api-keys"),
        ("delete", "/v1/organizations/{org_id}/api-keys/{key_id}"),
        ("get", "/v1/organizations/{org_id}/role"),
        // billing
        ("get", "/v1/plans"),
        ("get", "/v1/organizations/{org_id}/subscription"),
        ("put", "/v1/organizations/{org_id}/subscription"),
        ("post", "/v1/organizations/{org_id}/billing/credits"),
        ("get", "/v1/organizations/{org_id}/billing/budgets"),
        ("put", "/v1/organizations/{org_id}/billing/budgets"),
        ("put", "/v1/organizations/{org_id}/billing/budgets/api-keys/{key_id}"),
        ("get", "/v1/organizations/{org_id}/billing/balance"),
        ("get", "/v1/organizations/{org_id}/billing/usage"),
        ("get", "/v1/organizations/{org_id}/billing/ledger"),
        ("get", "/v1/organizations/{org_id}/billing/invoices"),
        ("get", "/v1/organizations/{org_id}/billing/invoices/{invoice_id}"),
        ("post", "/internal/billing/reserve"),
        ("post", "/internal/billing/settle"),
        ("post", "/internal/billing/holds/{hold_id}/release"),
        ("post", "/internal/billing/usage"),
        ("post", "/internal/billing/leases/extend"),
        ("post", "/internal/billing/leases/commit"),
        ("get", "/internal/billing/limits/{org_id}"),
        // inference
        ("post", "/v1/chat/completions"),
        ("post", "/v1/embeddings"),
        ("get", "/v1/models"),
        ("get", "/v1/models/{model}"),
        ("delete", "/v1/organizations/{org_id}/inference/cache"),
        // retrieval
        ("post", "/v1/files"),
        ("get", "/v1/files"),
        ("get", "/v1/files/{file_id}"),
        ("delete", "/v1/files/{file_id}"),
        ("get", "/v1/files/{file_id}/content"),
        ("post", "/v1/vector_stores"),
        ("get", "/v1/vector_stores"),
        ("get", "/v1/vector_stores/{vector_store_id}"),
        ("post", "/v1/vector_stores/{vector_store_id}"),
        ("delete", "/v1/vector_stores/{vector_store_id}"),
        ("post", "/v1/vector_stores/{vector_store_id}/files"),
        ("get", "/v1/vector_stores/{vector_store_id}/files"),
        ("get", "/v1/vector_stores/{vector_store_id}/files/{file_id}"),
        ("delete", "/v1/vector_stores/{vector_store_id}/files/{file_id}"),
        ("post", "/v1/vector_stores/{vector_store_id}/file_batches"),
        ("get", "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}"),
        ("post", "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel"),
        ("get", "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files"),
        ("post", "/v1/vector_stores/{vector_store_id}/search"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    expected.sort();
    assert_eq!(routes, expected);

    // ... and every route it lists is served (the fallback would answer "No such route.").
    let ids = [
        ("{org_id}", OrganizationId::new().to_string()),
        ("{user_id}", auth::UserId::new().to_string()),
        ("{key_id}", auth::ApiKeyId::new().to_string()),
        ("{invoice_id}", billing::InvoiceId::new().to_string()),
        ("{hold_id}", billing::HoldId::new().to_string()),
        ("{file_id}", inference::FileId::new().to_string()),
        ("{vector_store_id}", inference::VectorStoreId::new().to_string()),
        ("{batch_id}", inference::FileBatchId::new().to_string()),
    ];
    for (method, path) in &routes {
        let concrete = ids.iter().fold(path.clone(), |p, (placeholder, id)| p.replace(placeholder, id));
        let reply = Client::send(api.request(method.to_uppercase().parse().unwrap(), &concrete, None)).await;
        assert!(
            !(reply.status == 404 && reply.body["error"]["message"] == "No such route."),
            "{method} {path} is documented but not served"
        );
    }
}

backend_tests! {
    async fn a_gateway_with_a_remote_auth_service_serves_the_same_api(backend) {
        let database = database(&backend);

        // A: the auth service alone; it trusts B as a proxy, so it throttles by the real client.
        let mut a_config = gateway_config(&database);
        a_config.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        // Above the 3 failures of the public flow, which all come from 127.0.0.1.
        let ip_limit = 5;
        a_config.auth.throttle =
            ThrottleConfig { window_secs: 900, max_failures_per_account: 100, max_failures_per_ip: ip_limit };
        // A also serves billing, so that B, whose domains are all remote, opens no database.
        let a = TestGateway::start(a_config, Some(&[auth::DOMAIN, billing::DOMAIN])).await;

        // B: every route, auth and billing through A. Its database URL points nowhere: B must
        // not use one for them. Inference runs in B, on the test database.
        let mut b_config = GatewayConfig::default();
        b_config.http.addr = "127.0.0.1:0".into();
        b_config.http.workers = 2;
        // The test client stands for a proxy in front of B, so that it can speak for several addresses.
        b_config.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        b_config.database.url = "postgres://nobody@127.0.0.1:1/nothing".into();
        b_config.auth.url = Some(a.url().into());
        b_config.billing.url = Some(a.url().into());
        b_config.inference.database.url = Some(database.config().url.clone());
        let b = TestGateway::start(b_config, None).await;
        let (via_a, via_b) = (a.client(), b.client());

        public_api_flow(&via_b).await;

        // The same answers, errors included, through B as from A.
        let duplicate = json!({"email": "ada@example.com", "password": PASSWORD});
        let (from_a, from_b) = (
            via_a.post("/v1/auth/signup", None, &duplicate).await,
            via_b.post("/v1/auth/signup", None, &duplicate).await,
        );
        from_b.assert_error(409, "email_taken");
        assert_eq!((from_a.status, from_a.body), (from_b.status, from_b.body));
        assert_eq!(via_b.get("/readyz", None).await.status, 200);

        // Throttling by client address works across the hop.
        signup(&via_b, "eve@example.com").await;
        let attacker = "203.0.113.7";
        for n in 0..ip_limit {
            let reply = login_from(&via_b, attacker, &format!("nobody{n}@example.com"), PASSWORD).await;
            reply.assert_error(401, "invalid_credentials");
        }
        let locked = login_from(&via_b, attacker, "eve@example.com", PASSWORD).await;
        locked.assert_error(429, "too_many_attempts");
        assert!(locked.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()), "{:?}", locked.headers);
        let other = login_from(&via_b, "198.51.100.9", "eve@example.com", PASSWORD).await;
        assert_eq!(other.status, 200, "another address is not locked: {}", other.body);

        // When A goes away, B stays alive but is not ready, and auth calls fail as unavailable.
        a.stop().await;
        assert_eq!(via_b.get("/healthz", None).await.status, 200);
        via_b.get("/readyz", None).await.assert_error(503, "not_ready");
        let down = via_b.post("/v1/auth/login", None, &json!({"email": "eve@example.com", "password": PASSWORD})).await;
        down.assert_error(503, "service_unavailable");
        assert_eq!(down.body["error"]["message"], "The service is temporarily unavailable; retry later.");
    }
}

/// Reads the head of an HTTP/1.1 answer, up to and including the empty line.
fn read_head(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads one HTTP/1.1 answer with a `Content-Length` body; returns (status line, body).
fn read_answer(stream: &mut std::net::TcpStream) -> (String, String) {
    use std::io::Read;
    let head = read_head(stream);
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap().to_owned(), String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn a_graceful_stop_finishes_the_requests_in_flight() {
    use std::io::Write;
    use std::net::TcpStream;

    let database = database(&TestBackend::Sqlite);
    let gateway = TestGateway::in_process(&database).await;
    let addr = gateway.running.addr;

    // A first exchange makes sure the connection is accepted and owned by a worker.
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: keel\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut stream).0, "HTTP/1.1 200 OK");

    // A signup is in flight: its head is sent, and the server's `100 Continue` says the request
    // has reached the application, which now waits for the body.
    let body = json!({"email": "late@example.com", "password": PASSWORD}).to_string();
    write!(
        stream,
        "POST /v1/auth/signup HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    assert_eq!(read_head(&mut stream), "HTTP/1.1 100 Continue\r\n\r\n");

    // Stop; once the listener is closed, the stop is under way.
    let handle = gateway.running.handle.clone();
    let stopping = tokio::spawn(async move { handle.stop(true).await });
    while TcpStream::connect(addr).is_ok() {
        tokio::task::yield_now().await;
    }
    assert!(!stopping.is_finished(), "a graceful stop waits for the request in flight");

    // The request still completes, and then the server stops.
    stream.write_all(body.as_bytes()).unwrap();
    let (status, answer) = read_answer(&mut stream);
    assert_eq!(status, "HTTP/1.1 201 Created", "{answer}");
    assert!(answer.contains("\"token\""), "{answer}");
    stopping.await.unwrap();
    gateway.running.wait().await.unwrap();

    // The account exists.
    let again = TestGateway::in_process(&database).await;
    assert_eq!(login(&again.client(), "late@example.com", PASSWORD).await.status, 200);
}

/// Whether `check` holds within a second, trying every 10 ms.
async fn eventually<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Sends raw bytes on a fresh connection and reads the whole answer until the server closes.
fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (String, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.to_owned(), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_status_keel_sends_carries_the_envelope() {
    let database = database(&TestBackend::Sqlite);
    let gateway = TestGateway::in_process(&database).await;
    let api = gateway.client();

    // A known path with another method: 405 with Allow, in the envelope.
    let reply = api.delete("/v1/auth/signup", None).await;
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("POST"));
    let reply = Client::send(api.request(Method::PUT, "/v1/organizations", None)).await;
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("GET, POST"));
    assert!(reply.header("x-request-id").is_some());
    // An unknown path is still a 404.
    api.delete("/v1/auth/nothing", None).await.assert_error(404, "not_found");

    // Rejected before routing: too large a head, a malformed head, and they still get the
    // envelope (the codec alone would answer with an empty body).
    let addr = gateway.running.addr;
    let huge = format!("GET /healthz HTTP/1.1\r\nHost: keel\r\nCookie: {}\r\n\r\n", "c".repeat(200_000));
    let (head, body) = tokio::task::spawn_blocking(move || exchange(addr, huge.as_bytes())).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let many: String = (0..120).map(|n| format!("X-H{n}: v\r\n")).collect();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: keel\r\n{many}\r\n");
    let (head, body) = tokio::task::spawn_blocking(move || exchange(addr, request.as_bytes())).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    assert_eq!(body["error"]["code"], "headers_too_large");
    let (head, body) =
        tokio::task::spawn_blocking(move || exchange(addr, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert_eq!(body["error"]["code"], "bad_request");
    // The server is unharmed.
    assert_eq!(api.get("/healthz", None).await.status, 200);
}

#[tokio::test]
async fn the_openapi_document_types_every_error_from_one_place() {
    let database = database(&TestBackend::Sqlite);
    let gateway = TestGateway::in_process(&database).await;
    let document = gateway.client().get("/openapi.json", None).await.body;
    let envelope = json!({"$ref": "#/components/schemas/ErrorEnvelope"});
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let has = |status: &str| responses.contains_key(status);
            let what = format!("{method} {path}");
            for (status, response) in responses {
                let description = response["description"].as_str().unwrap_or_default();
                assert!(!description.trim().is_empty(), "{what} {status} has no description");
                if status.starts_with('4') || status.starts_with('5') || status == "default" {
                    assert_eq!(response["content"]["application/json"]["schema"], envelope, "{what} {status}");
                }
            }
            assert!(has("default"), "{what}: no default error response");
            if operation.get("security").is_some() {
                assert!(has("401"), "{what}: authenticated but no 401");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(has(status), "{what}: has a body but no {status}");
                }
            }
            if path.starts_with("/v1/") {
                assert!(has("503") && has("500"), "{what}: touches a database but documents no 503/500");
            }
            checked += 1;
        }
    }
    assert!(checked >= 18, "{checked} operations");
    // Domain codes carry their status from the error table.
    let signup = &document["paths"]["/v1/auth/signup"]["post"]["responses"];
    assert!(signup["409"]["description"].as_str().unwrap().contains("`email_taken`"));
    assert!(signup["422"]["description"].as_str().unwrap().contains("`validation_failed`"));
    assert!(signup["422"]["description"].as_str().unwrap().contains("`invalid_body`"));
    let login = &document["paths"]["/v1/auth/login"]["post"]["responses"];
    assert!(login["429"]["description"].as_str().unwrap().contains("`too_many_attempts`"));
}

/// Sends `attempts` logins at once and counts the answers by status.
async fn burst(api: &Client, attempts: Vec<(String, String, String)>) -> std::collections::BTreeMap<u16, usize> {
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(ip, email, password)| {
            let api = api.clone();
            tokio::spawn(async move { login_from(&api, &ip, &email, &password).await.status })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        *counts.entry(task.await.unwrap()).or_default() += 1;
    }
    counts
}

backend_tests! {
    async fn a_concurrent_burst_of_logins_cannot_bypass_the_throttle(backend) {
        let database = database(&backend);
        let mut config = gateway_config(&database);
        config.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        config.auth.throttle = ThrottleConfig { window_secs: 900, max_failures_per_account: 10, max_failures_per_ip: 10 };
        let gateway = TestGateway::start(config, None).await;
        let api = gateway.client();
        signup(&api, "ada@example.com").await;

        // Per account: 40 wrong passwords at once, from 40 addresses. (Not the right one among
        // them: a success forgets the account's failures, so attempts dispatched after it
        // would start a new count.)
        let attempts: Vec<_> = (0..40)
            .map(|n| (format!("198.51.100.{n}"), "ada@example.com".to_owned(), format!("wrong password {n}")))
            .collect();
        let counts = burst(&api, attempts).await;
        let checked = counts.get(&401).copied().unwrap_or(0);
        assert!(checked <= 10, "at most 10 passwords checked: {counts:?}");
        assert_eq!(counts.get(&429).copied().unwrap_or(0), 40 - checked, "{counts:?}");
        // The lockout holds, for the right password too.
        login(&api, "ada@example.com", PASSWORD).await.assert_error(429, "too_many_attempts");

        // Per address: 40 wrong logins on 40 accounts, at once, from one address.
        let attempts =
            (0..40).map(|n| ("203.0.113.9".to_owned(), format!("nobody{n}@example.com"), "wrong".to_owned())).collect();
        let counts = burst(&api, attempts).await;
        assert_eq!((counts.get(&401), counts.get(&429)), (Some(&10), Some(&30)), "{counts:?}");
    }

    async fn platform_administrators_are_flagged_by_the_operator_only(backend) {
        let database = database(&backend);
        let mut config = gateway_config(&database);
        if config.redis.url.is_none() {
            // Without Redis the command cannot reach the gateway's cache: it sees the change
            // when its cached session expires.
            config.auth.cache.l1_ttl_ms = 200;
        }
        let gateway = TestGateway::start(config.clone(), None).await;
        let api = gateway.client();
        let (token, _, _) = signup(&api, "root@example.com").await;
        let principal = api.get("/v1/auth/principal", Some(&token)).await;
        assert_eq!(principal.body["platform_admin"], false);
        // The command runs as another process would (its own pools, its own cache handle).
        let admin_flag = || async { api.get("/v1/auth/principal", Some(&token)).await.body["platform_admin"].clone() };
        gateway::compose::set_platform_admin(&config, " ROOT@example.com", true).await.unwrap();
        assert!(eventually(|| async { admin_flag().await == true }).await, "the grant never reached the gateway");
        gateway::compose::set_platform_admin(&config, "root@example.com", false).await.unwrap();
        assert!(eventually(|| async { admin_flag().await == false }).await, "the revocation never reached the gateway");
        let missing = gateway::compose::set_platform_admin(&config, "ghost@example.com", true).await.unwrap_err();
        assert!(missing.to_string().contains("No account with this email"), "{missing}");
    }

    async fn a_duplicate_signup_leaves_no_email_in_the_database_log(backend) {
        let database = database(&backend);
        let gateway = TestGateway::in_process(&database).await;
        let api = gateway.client();
        let email = format!("dup-{}@example.com", uuid::Uuid::now_v7().simple());
        let log = tests::harness::postgres_log(&database);
        let before = log.as_ref().map(|path| std::fs::metadata(path).unwrap().len());
        signup(&api, &email).await;
        for _ in 0..3 {
            let again = api.post("/v1/auth/signup", None, &json!({"email": email, "password": PASSWORD})).await;
            again.assert_error(409, "email_taken");
        }
        if let (Some(path), Some(before)) = (log, before) {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(path).unwrap();
            file.seek(std::io::SeekFrom::Start(before)).unwrap();
            let mut written = String::new();
            file.read_to_string(&mut written).unwrap();
            assert!(!written.contains(&email), "the server log holds the email:\n{written}");
        }
    }
}

backend_tests! {
    async fn rate_limits_answer_429_in_the_envelope_with_the_headers(backend) {
        let database = database(&backend);
        let mut config = gateway_config(&database);
        config.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        config.rate_limits.classes.insert("auth".into(), shared::ratelimit::Quota::new(3, 3600));
        // `default` would limit every class without its own quota, never the platform's routes.
        config.rate_limits.classes.insert("default".into(), shared::ratelimit::Quota::new(1, 3600));
        let gateway = TestGateway::start(config, None).await;
        let api = gateway.client();
        // Anonymous requests count against their address.
        let body = json!({"email": "nobody@example.com", "password": PASSWORD});
        for n in 0..3 {
            let reply = login_from(&api, "203.0.113.50", "nobody@example.com", PASSWORD).await;
            reply.assert_error(401, "invalid_credentials");
            assert_eq!(reply.header("ratelimit-policy"), Some(r#""auth";q=3;w=3600"#));
            assert_eq!(reply.header("ratelimit").map(|v| v.starts_with(&format!(r#""auth";r={}"#, 2 - n))), Some(true));
        }
        let refused = login_from(&api, "203.0.113.50", "nobody@example.com", PASSWORD).await;
        refused.assert_error(429, "rate_limited");
        assert_eq!(refused.body["error"]["type"], "rate_limit_error");
        assert!(refused.header("retry-after").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
        // Another address has its own budget; the platform's routes are never limited.
        let other = Client::send(api.request(Method::POST, "/v1/auth/login", None).header("x-forwarded-for", "203.0.113.51").json(&body)).await;
        other.assert_error(401, "invalid_credentials");
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/healthz", "/readyz"] {
            let reply = api.get(path, None).await;
            assert_eq!((reply.status, reply.header("ratelimit")), (200, None), "{path}");
        }
    }
}
