//! The auth contract, told once as a story over `Arc<dyn AuthApi>`: whatever implements the
//! trait (the in-process service, the HTTP client in front of a remote gateway) must pass it
//! step by step, with the same results and the same error variants.

use auth::*;
use chrono::{Duration, Utc};
use shared::{PageRequest, Secret};
use std::sync::Arc;

const ADA_PASSWORD: &str = "correct horse battery";
const BOB_PASSWORD: &str = "bob's long password";
const NEW_PASSWORD: &str = "a brand new passphrase";

fn no_context() -> RequestContext {
    RequestContext::default()
}

fn signup_request(email: &str, password: &str, name: Option<&str>) -> SignupRequest {
    SignupRequest { email: email.into(), password: password.into(), name: name.map(Into::into) }
}

fn login_request(email: &str, password: &str) -> LoginRequest {
    LoginRequest { email: email.into(), password: password.into() }
}

fn first_page() -> PageRequest {
    PageRequest::default()
}

#[track_caller]
fn assert_validation<T: std::fmt::Debug>(result: Result<T, AuthError>, expected_field: &str) {
    match result {
        Err(AuthError::Validation { field, message }) => {
            assert_eq!(field, expected_field, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected a validation error on {expected_field}, got {other:?}"),
    }
}

/// The whole story. Panics at the first step whose result differs from the contract.
pub async fn auth_contract(api: Arc<dyn AuthApi>) {
    let api = api.as_ref();

    // --- Signup: the email is normalised, a personal organization comes with the account.
    let started = Utc::now() - Duration::seconds(5);
    let ada = api
        .signup(signup_request("  Ada@Example.COM ", ADA_PASSWORD, Some("  Ada Lovelace ")), no_context())
        .await
        .unwrap();
    assert_eq!(ada.user.email, "ada@example.com");
    assert_eq!(ada.user.name.as_deref(), Some("Ada Lovelace"));
    assert!(ada.user.created_at >= started);
    assert_eq!(ada.organization.name, "Ada Lovelace's organization");
    assert!(ada.token.expose().starts_with("keel_st_"), "session tokens carry their kind");
    assert!(ada.expires_at > Utc::now() + Duration::days(29), "sessions last 30 days by default");

    // Invalid input is refused before anything is stored.
    assert_validation(api.signup(signup_request("not-an-email", ADA_PASSWORD, None), no_context()).await, "email");
    assert_validation(api.signup(signup_request("short@example.com", "1234567", None), no_context()).await, "password");
    let too_long = "x".repeat(129);
    assert_validation(api.signup(signup_request("long@example.com", &too_long, None), no_context()).await, "password");
    assert_eq!(
        api.login(login_request("short@example.com", "1234567"), no_context()).await.unwrap_err(),
        AuthError::InvalidCredentials,
        "a refused signup stored no account"
    );

    // --- Duplicate signup, whatever the case and whitespace of the email.
    for email in ["ada@example.com", "ADA@EXAMPLE.COM", "\tAda@example.com  "] {
        let duplicate = api.signup(signup_request(email, "another password", None), no_context()).await;
        assert_eq!(duplicate.unwrap_err(), AuthError::EmailTaken, "{email:?}");
    }

    // --- Login.
    let login = api.login(login_request(" ADA@example.com", ADA_PASSWORD), no_context()).await.unwrap();
    assert_eq!(login.user, ada.user);
    assert_ne!(login.token, ada.token, "each login opens its own session");

    // Wrong password and unknown email: the same error.
    let wrong = api.login(login_request("ada@example.com", "wrong password"), no_context()).await;
    assert_eq!(wrong.unwrap_err(), AuthError::InvalidCredentials);
    let unknown = api.login(login_request("nobody@example.com", ADA_PASSWORD), no_context()).await;
    assert_eq!(unknown.unwrap_err(), AuthError::InvalidCredentials);

    // --- Authenticate.
    let session = api.authenticate(&login.token).await.unwrap();
    assert_eq!(session.kind, PrincipalKind::Session);
    assert_eq!(session.user_id, Some(ada.user.id));
    assert!(session.session_id.is_some());
    assert_eq!((session.organization_id, session.api_key_id), (None, None));
    assert!(session.scopes.is_empty());
    let signup_session = api.authenticate(&ada.token).await.unwrap();
    assert_ne!(signup_session.session_id, session.session_id);
    for garbage in ["", "garbage", "keel_st_0000", &format!("keel_st_{}", "0".repeat(64)), "keel_sk_00_00"] {
        assert_eq!(
            api.authenticate(&Secret::new(garbage)).await.unwrap_err(),
            AuthError::Unauthenticated,
            "{garbage:?}"
        );
    }

    // --- Me.
    let personal = Membership { id: ada.organization.id, name: ada.organization.name.clone(), role: Role::Owner };
    assert_eq!(
        api.me(&session).await.unwrap(),
        MeResponse::Session { user: ada.user.clone(), organizations: vec![personal.clone()] }
    );

    // --- Organizations.
    let acme = api.create_organization(&session, CreateOrganizationRequest { name: "  Acme  ".into() }).await.unwrap();
    assert_eq!(acme.name, "Acme");
    assert_validation(api.create_organization(&session, CreateOrganizationRequest { name: " ".into() }).await, "name");
    let acme_membership = Membership { id: acme.id, name: "Acme".into(), role: Role::Owner };

    let orgs = api.list_organizations(&session, first_page()).await.unwrap();
    assert_eq!(orgs.data, vec![personal.clone(), acme_membership.clone()]);
    assert!(!orgs.has_more);
    // Keyset pages.
    let page = api.list_organizations(&session, PageRequest { limit: Some(1), after: None }).await.unwrap();
    assert_eq!((page.data, page.has_more), (vec![personal.clone()], true));
    let after = page.next_after.expect("a cursor to the next page");
    let page = api.list_organizations(&session, PageRequest { limit: Some(1), after: Some(after) }).await.unwrap();
    assert_eq!((page.data, page.has_more, page.next_after), (vec![acme_membership.clone()], false, None));

    // --- Members and roles.
    let bob = api.signup(signup_request("bob@example.com", BOB_PASSWORD, None), no_context()).await.unwrap();
    assert_eq!(bob.organization.name, "bob's organization", "without a name, the email's local part");
    let carol = api.signup(signup_request("carol@example.com", BOB_PASSWORD, None), no_context()).await.unwrap();
    let bob_session = api.authenticate(&bob.token).await.unwrap();

    // Outsiders see nothing of Acme: not found, never forbidden.
    assert_eq!(
        api.list_members(&bob_session, acme.id, first_page()).await.unwrap_err(),
        AuthError::OrganizationNotFound
    );
    let add_bob = AddMemberRequest { email: " BOB@example.com".into(), role: Role::Member };
    assert_eq!(
        api.add_member(&bob_session, acme.id, add_bob.clone()).await.unwrap_err(),
        AuthError::OrganizationNotFound
    );

    assert_eq!(api.organization_role(&bob_session, acme.id).await.unwrap_err(), AuthError::OrganizationNotFound);

    let bob_member = api.add_member(&session, acme.id, add_bob.clone()).await.unwrap();
    assert_eq!((bob_member.user.clone(), bob_member.role), (bob.user.clone(), Role::Member));
    assert_eq!(api.organization_role(&bob_session, acme.id).await.unwrap(), Role::Member);
    assert_eq!(api.organization_role(&session, acme.id).await.unwrap(), Role::Owner);
    assert_eq!(api.add_member(&session, acme.id, add_bob).await.unwrap_err(), AuthError::AlreadyMember);
    let ghost = AddMemberRequest { email: "ghost@example.com".into(), role: Role::Member };
    assert_eq!(api.add_member(&session, acme.id, ghost).await.unwrap_err(), AuthError::UserNotFound);

    let members = api.list_members(&session, acme.id, first_page()).await.unwrap();
    let roles: Vec<_> = members.data.iter().map(|m| (m.user.id, m.role)).collect();
    assert_eq!(roles, vec![(ada.user.id, Role::Owner), (bob.user.id, Role::Member)]);
    assert_eq!(members.data[1], bob_member);
    assert_eq!(api.me(&bob_session).await.unwrap(), {
        let bob_personal =
            Membership { id: bob.organization.id, name: bob.organization.name.clone(), role: Role::Owner };
        let mut organizations = vec![bob_personal, Membership { role: Role::Member, ..acme_membership.clone() }];
        organizations.sort_by_key(|m| m.id);
        MeResponse::Session { user: bob.user.clone(), organizations }
    });

    // A member sees the members but manages nothing.
    assert_eq!(api.list_members(&bob_session, acme.id, first_page()).await.unwrap().data.len(), 2);
    let add_carol = AddMemberRequest { email: "carol@example.com".into(), role: Role::Member };
    assert_eq!(
        api.add_member(&bob_session, acme.id, add_carol.clone()).await.unwrap_err(),
        AuthError::PermissionDenied
    );
    let to_member = UpdateMemberRequest { role: Role::Member };
    assert_eq!(
        api.update_member(&bob_session, acme.id, ada.user.id, to_member.clone()).await.unwrap_err(),
        AuthError::PermissionDenied
    );
    assert_eq!(api.remove_member(&bob_session, acme.id, ada.user.id).await.unwrap_err(), AuthError::PermissionDenied);
    let key_request = CreateApiKeyRequest { name: "ci".into(), scopes: None, expires_at: None };
    assert_eq!(
        api.create_api_key(&bob_session, acme.id, key_request.clone()).await.unwrap_err(),
        AuthError::PermissionDenied
    );
    assert_eq!(api.list_api_keys(&bob_session, acme.id, first_page()).await.unwrap_err(), AuthError::PermissionDenied);

    // An admin manages members, but only an owner grants or touches `owner`.
    let promoted = api.update_member(&session, acme.id, bob.user.id, UpdateMemberRequest { role: Role::Admin }).await;
    assert_eq!(promoted.unwrap().role, Role::Admin);
    let carol_member = api.add_member(&bob_session, acme.id, add_carol).await.unwrap();
    assert_eq!((carol_member.user.id, carol_member.role), (carol.user.id, Role::Member));
    let to_owner = UpdateMemberRequest { role: Role::Owner };
    assert_eq!(
        api.update_member(&bob_session, acme.id, carol.user.id, to_owner.clone()).await.unwrap_err(),
        AuthError::PermissionDenied
    );
    assert_eq!(
        api.update_member(&bob_session, acme.id, ada.user.id, to_member.clone()).await.unwrap_err(),
        AuthError::PermissionDenied
    );
    assert_eq!(api.remove_member(&bob_session, acme.id, ada.user.id).await.unwrap_err(), AuthError::PermissionDenied);
    assert_eq!(
        api.update_member(&session, acme.id, UserId::new(), to_member.clone()).await.unwrap_err(),
        AuthError::MemberNotFound
    );

    // The owner grants `owner`; with two owners one may step down.
    let carol_owner = api.update_member(&session, acme.id, carol.user.id, to_owner).await.unwrap();
    assert_eq!(carol_owner.role, Role::Owner);
    let demoted = api.update_member(&session, acme.id, carol.user.id, to_member.clone()).await.unwrap();
    assert_eq!(demoted.role, Role::Member);

    // The last owner can be neither demoted nor removed, not even by themself.
    for role in [Role::Admin, Role::Member] {
        let result = api.update_member(&session, acme.id, ada.user.id, UpdateMemberRequest { role }).await;
        assert_eq!(result.unwrap_err(), AuthError::LastOwner, "{role:?}");
    }
    assert_eq!(api.remove_member(&session, acme.id, ada.user.id).await.unwrap_err(), AuthError::LastOwner);

    // An admin removes a member; a member leaves by themself.
    api.remove_member(&bob_session, acme.id, carol.user.id).await.unwrap();
    assert_eq!(api.remove_member(&session, acme.id, carol.user.id).await.unwrap_err(), AuthError::MemberNotFound);
    let ids: Vec<_> =
        api.list_members(&session, acme.id, first_page()).await.unwrap().data.iter().map(|m| m.user.id).collect();
    assert_eq!(ids, vec![ada.user.id, bob.user.id]);

    // --- API keys: create, use, list, revoke.
    let key = api.create_api_key(&session, acme.id, key_request.clone()).await.unwrap();
    assert_eq!(key.name, "ci");
    assert_eq!(key.scopes, Vec::<String>::new(), "the defaults the registered domains declare: none yet");
    assert_eq!(key.expires_at, None);
    assert!(key.prefix.starts_with("keel_sk_"), "{}", key.prefix);
    assert!(key.key.expose().starts_with(&key.prefix));
    assert!(key.key.expose().len() > key.prefix.len() + 32, "the secret part follows the prefix");
    let past = CreateApiKeyRequest { expires_at: Some(Utc::now() - Duration::minutes(1)), ..key_request.clone() };
    assert_validation(api.create_api_key(&session, acme.id, past).await, "expires_at");
    let unknown_scope = CreateApiKeyRequest { scopes: Some(vec!["everything".into()]), ..key_request.clone() };
    assert_validation(api.create_api_key(&session, acme.id, unknown_scope).await, "scopes");

    let key_principal = api.authenticate(&key.key).await.unwrap();
    assert_eq!(key_principal.kind, PrincipalKind::ApiKey);
    assert_eq!((key_principal.organization_id, key_principal.api_key_id), (Some(acme.id), Some(key.id)));
    assert_eq!((key_principal.user_id, key_principal.session_id), (None, None));
    assert_eq!(key_principal.scopes, Vec::<String>::new());
    assert_eq!(key_principal.key_created_by, Some(ada.user.id));
    assert_eq!(
        api.me(&key_principal).await.unwrap(),
        MeResponse::ApiKey {
            organization: acme.clone(),
            api_key: KeyIdentity { id: key.id, name: "ci".into(), prefix: key.prefix.clone(), scopes: Vec::new() },
        }
    );
    // A tampered secret with a valid lookup part is refused.
    let mut tampered = key.key.expose().to_owned();
    let last = if tampered.ends_with('0') { "1" } else { "0" };
    tampered.replace_range(tampered.len() - 1.., last);
    assert_eq!(api.authenticate(&Secret::new(tampered)).await.unwrap_err(), AuthError::Unauthenticated);

    // A key acts for its organization only, and without `admin` manages nothing.
    assert_eq!(
        api.list_members(&key_principal, ada.organization.id, first_page()).await.unwrap_err(),
        AuthError::OrganizationNotFound
    );
    assert_eq!(
        api.create_api_key(&key_principal, acme.id, key_request.clone()).await.unwrap_err(),
        AuthError::InsufficientScope("admin".into())
    );
    assert_eq!(
        api.create_organization(&key_principal, CreateOrganizationRequest { name: "Evil".into() }).await.unwrap_err(),
        AuthError::SessionRequired
    );
    assert_eq!(api.logout(&key_principal).await.unwrap_err(), AuthError::SessionRequired);

    let listed = api.list_api_keys(&session, acme.id, first_page()).await.unwrap();
    assert_eq!(listed.data.len(), 1);
    let listed_key = &listed.data[0];
    assert_eq!(
        (listed_key.id, listed_key.name.as_str(), listed_key.prefix.as_str(), listed_key.scopes.clone()),
        (key.id, "ci", key.prefix.as_str(), Vec::<String>::new())
    );
    assert_eq!(
        (listed_key.created_by, listed_key.created_at, listed_key.expires_at),
        (Some(ada.user.id), key.created_at, None)
    );
    // The last use is recorded in the background, at most once a minute: soon, not at once.
    let mut last_used = listed_key.last_used_at;
    for _ in 0..200 {
        if last_used.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        last_used = api.list_api_keys(&session, acme.id, first_page()).await.unwrap().data[0].last_used_at;
    }
    assert!(last_used.is_some(), "the key was used above");
    let secret_part = key.key.expose().rsplit('_').next().unwrap();
    let listing = serde_json::to_string(&listed).unwrap();
    assert!(!listing.contains(secret_part), "a listing never shows a key's secret");
    assert!(api.list_api_keys(&session, ada.organization.id, first_page()).await.unwrap().data.is_empty());

    // Revoking through another organization finds no such key, and the key keeps working.
    assert_eq!(api.revoke_api_key(&session, ada.organization.id, key.id).await.unwrap_err(), AuthError::ApiKeyNotFound);
    api.authenticate(&key.key).await.unwrap();
    api.revoke_api_key(&session, acme.id, key.id).await.unwrap();
    assert_eq!(api.authenticate(&key.key).await.unwrap_err(), AuthError::Unauthenticated, "a revoked key is refused");
    assert_eq!(api.revoke_api_key(&session, acme.id, key.id).await.unwrap_err(), AuthError::ApiKeyNotFound);
    assert!(api.list_api_keys(&session, acme.id, first_page()).await.unwrap().data.is_empty());

    // --- An admin key acts on its creator's authority: it stops granting admin rights when the
    // creator is no longer an owner or admin, while the organization's other scopes keep working.
    let admin_request =
        CreateApiKeyRequest { name: "bob's admin key".into(), scopes: Some(vec!["admin".into()]), expires_at: None };
    let bob_key = api.create_api_key(&bob_session, acme.id, admin_request).await.unwrap();
    let bob_key_principal = api.authenticate(&bob_key.key).await.unwrap();
    assert_eq!(bob_key_principal.scopes, vec!["admin".to_owned()]);
    let add_carol = AddMemberRequest { email: "carol@example.com".into(), role: Role::Member };
    api.add_member(&bob_key_principal, acme.id, add_carol.clone()).await.unwrap();
    api.remove_member(&session, acme.id, carol.user.id).await.unwrap();
    api.remove_member(&session, acme.id, bob.user.id).await.unwrap();
    let orphaned = api.authenticate(&bob_key.key).await.expect("the key still identifies its organization");
    assert_eq!(orphaned.scopes, Vec::<String>::new(), "admin is no longer granted");
    assert_eq!(
        api.add_member(&orphaned, acme.id, add_carol.clone()).await.unwrap_err(),
        AuthError::InsufficientScope("admin".into())
    );
    let readd_bob = AddMemberRequest { email: "bob@example.com".into(), role: Role::Admin };
    assert_eq!(
        api.add_member(&orphaned, acme.id, readd_bob.clone()).await.unwrap_err(),
        AuthError::InsufficientScope("admin".into()),
        "the key cannot bring its creator back"
    );
    let listed = api.list_api_keys(&session, acme.id, first_page()).await.unwrap();
    assert_eq!(listed.data[0].created_by, Some(bob.user.id), "keys remember who created them");
    assert_eq!(listed.data[0].scopes, vec!["admin".to_owned()], "the listing shows the scopes as created");
    // Back as an admin, the creator's key is an admin key again.
    api.add_member(&session, acme.id, readd_bob).await.unwrap();
    assert_eq!(api.authenticate(&bob_key.key).await.unwrap().scopes, vec!["admin".to_owned()]);
    api.revoke_api_key(&session, acme.id, bob_key.id).await.unwrap();

    // --- Logout revokes the session used, and only it.
    api.logout(&session).await.unwrap();
    assert_eq!(api.authenticate(&login.token).await.unwrap_err(), AuthError::Unauthenticated);
    let signup_session = api.authenticate(&ada.token).await.unwrap();

    // --- Changing the password revokes every other session of the user.
    let other = api.login(login_request("ada@example.com", ADA_PASSWORD), no_context()).await.unwrap();
    api.authenticate(&other.token).await.unwrap();
    let change =
        |current: &str, new: &str| ChangePasswordRequest { current_password: current.into(), new_password: new.into() };
    assert_eq!(
        api.change_password(&signup_session, change("wrong password", NEW_PASSWORD), no_context()).await.unwrap_err(),
        AuthError::IncorrectPassword
    );
    assert_validation(
        api.change_password(&signup_session, change(ADA_PASSWORD, "short"), no_context()).await,
        "new_password",
    );
    api.authenticate(&other.token).await.expect("failed changes revoke nothing");

    api.change_password(&signup_session, change(ADA_PASSWORD, NEW_PASSWORD), no_context()).await.unwrap();
    assert_eq!(api.authenticate(&other.token).await.unwrap_err(), AuthError::Unauthenticated);
    api.authenticate(&ada.token).await.expect("the session that changed the password stays");
    assert_eq!(
        api.login(login_request("ada@example.com", ADA_PASSWORD), no_context()).await.unwrap_err(),
        AuthError::InvalidCredentials
    );
    api.login(login_request("ada@example.com", NEW_PASSWORD), no_context()).await.unwrap();
    // Other users' sessions are untouched.
    api.authenticate(&bob.token).await.unwrap();
}
