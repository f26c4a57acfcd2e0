//! `HttpAuthClient`: `AuthApi` over HTTP, for a gateway whose auth domain runs elsewhere. The
//! shared remote client does the rest: request ids, credentials, timeouts, and the mapping of
//! envelopes back to the same `AuthError` variants the service returns.

use crate::api::*;
use crate::error::AuthError;
use async_trait::async_trait;
use shared::client::{RemoteClient, RemoteConfig};
use shared::{Page, PageRequest, Secret};

#[derive(Debug, Clone)]
pub struct HttpAuthClient {
    remote: RemoteClient,
}

impl HttpAuthClient {
    /// A client of the auth service at `base_url` (`http://host:port`).
    pub fn new(base_url: &Secret, config: &RemoteConfig) -> Result<Self, AuthError> {
        Ok(Self { remote: RemoteClient::new(crate::DOMAIN, base_url, config).map_err(AuthError::Internal)? })
    }
}

#[async_trait]
impl AuthApi for HttpAuthClient {
    async fn signup(&self, request: SignupRequest, context: RequestContext) -> Result<SignupResponse, AuthError> {
        self.remote.post("/v1/auth/signup").client_ip(context.client_ip).json(&request).fetch().await
    }

    async fn login(&self, request: LoginRequest, context: RequestContext) -> Result<LoginResponse, AuthError> {
        self.remote.post("/v1/auth/login").client_ip(context.client_ip).json(&request).fetch().await
    }

    async fn authenticate(&self, token: &Secret) -> Result<Principal, AuthError> {
        let mut principal: Principal =
            self.remote.get("/v1/auth/principal").bearer(token).fetch::<_, AuthError>().await?;
        principal.credential = token.clone();
        Ok(principal)
    }

    async fn logout(&self, principal: &Principal) -> Result<(), AuthError> {
        self.remote.post("/v1/auth/logout").bearer(&principal.credential).execute().await
    }

    async fn change_password(
        &self,
        principal: &Principal,
        request: ChangePasswordRequest,
        context: RequestContext,
    ) -> Result<(), AuthError> {
        let call = self.remote.post("/v1/auth/password").bearer(&principal.credential);
        call.client_ip(context.client_ip).json(&request).execute().await
    }

    async fn me(&self, principal: &Principal) -> Result<MeResponse, AuthError> {
        self.remote.get("/v1/auth/me").bearer(&principal.credential).fetch().await
    }

    async fn create_organization(
        &self,
        principal: &Principal,
        request: CreateOrganizationRequest,
    ) -> Result<Organization, AuthError> {
        self.remote.post("/v1/organizations").bearer(&principal.credential).json(&request).fetch().await
    }

    async fn list_organizations(
        &self,
        principal: &Principal,
        page: PageRequest,
    ) -> Result<Page<Membership>, AuthError> {
        self.remote.get("/v1/organizations").bearer(&principal.credential).query(&page).fetch().await
    }

    async fn organization_role(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
    ) -> Result<Role, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/role");
        let answer: OrganizationRole =
            self.remote.get(&path).bearer(&principal.credential).fetch::<_, AuthError>().await?;
        Ok(answer.role)
    }

    async fn list_members(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Member>, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/members");
        self.remote.get(&path).bearer(&principal.credential).query(&page).fetch().await
    }

    async fn add_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: AddMemberRequest,
    ) -> Result<Member, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/members");
        self.remote.post(&path).bearer(&principal.credential).json(&request).fetch().await
    }

    async fn update_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        user_id: UserId,
        request: UpdateMemberRequest,
    ) -> Result<Member, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/members/{user_id}");
        self.remote.patch(&path).bearer(&principal.credential).json(&request).fetch().await
    }

    async fn remove_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        user_id: UserId,
    ) -> Result<(), AuthError> {
        let path = format!("/v1/organizations/{organization_id}/members/{user_id}");
        self.remote.delete(&path).bearer(&principal.credential).execute().await
    }

    async fn create_api_key(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: CreateApiKeyRequest,
    ) -> Result<CreatedApiKey, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/api-keys");
        self.remote.post(&path).bearer(&principal.credential).json(&request).fetch().await
    }

    async fn list_api_keys(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<ApiKey>, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/api-keys");
        self.remote.get(&path).bearer(&principal.credential).query(&page).fetch().await
    }

    async fn revoke_api_key(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        key_id: ApiKeyId,
    ) -> Result<(), AuthError> {
        let path = format!("/v1/organizations/{organization_id}/api-keys/{key_id}");
        self.remote.delete(&path).bearer(&principal.credential).execute().await
    }

    async fn ready(&self) -> Result<(), AuthError> {
        self.remote.get("/readyz").execute().await
    }
}
