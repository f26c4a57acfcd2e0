//! `HttpAuthClient`: `AuthApi` over HTTP, for a gateway whose auth domain runs elsewhere.
//! Error envelopes are mapped back to the same `AuthError` variants the service returns.

use crate::api::*;
use crate::error::AuthError;
use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use shared::client::RemoteError;
use shared::{Page, PageRequest, Secret};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct HttpAuthClient {
    base_url: String,
    http: reqwest::Client,
}

impl HttpAuthClient {
    /// A client of the auth service at `base_url` (`http://host:port`).
    pub fn new(base_url: &str) -> Result<Self, AuthError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(AuthError::Internal(format!("auth service url must be http(s)://…, got {base_url:?}")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| AuthError::Internal(format!("http client: {e}")))?;
        Ok(Self { base_url, http })
    }

    fn request(&self, method: Method, path: &str, principal: Option<&Principal>) -> RequestBuilder {
        let mut builder =
            shared::trace::with_trace_context(self.http.request(method, format!("{}{path}", self.base_url)));
        if let Some(id) = shared::request_id::current() {
            builder = builder.header(shared::request_id::HEADER, id);
        }
        match principal {
            Some(p) => builder.bearer_auth(p.credential.expose()),
            None => builder,
        }
    }

    /// Forwards the client's address, so the auth service (trusting this gateway as a proxy)
    /// throttles by the real client, not by the gateway.
    fn forwarded(builder: RequestBuilder, context: &RequestContext) -> RequestBuilder {
        match context.client_ip {
            Some(ip) => builder.header("x-forwarded-for", ip.to_string()),
            None => builder,
        }
    }

    async fn send(builder: RequestBuilder) -> Result<Response, AuthError> {
        let response = builder.send().await.map_err(|e| AuthError::Unavailable(format!("auth service: {e}")))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let error = RemoteError::read(response).await;
        Err(AuthError::from_remote(error.status, error.code(), error.message(), error.param(), error.retry_after_secs))
    }

    async fn json<T: DeserializeOwned>(builder: RequestBuilder) -> Result<T, AuthError> {
        Self::send(builder)
            .await?
            .json()
            .await
            .map_err(|e| AuthError::Internal(format!("auth service sent an unreadable answer: {e}")))
    }
}

#[async_trait]
impl AuthApi for HttpAuthClient {
    async fn signup(&self, request: SignupRequest, context: RequestContext) -> Result<SignupResponse, AuthError> {
        let builder = Self::forwarded(self.request(Method::POST, "/v1/auth/signup", None), &context);
        Self::json(builder.json(&request)).await
    }

    async fn login(&self, request: LoginRequest, context: RequestContext) -> Result<LoginResponse, AuthError> {
        let builder = Self::forwarded(self.request(Method::POST, "/v1/auth/login", None), &context);
        Self::json(builder.json(&request)).await
    }

    async fn authenticate(&self, token: &Secret) -> Result<Principal, AuthError> {
        let builder = self.request(Method::GET, "/v1/auth/principal", None).bearer_auth(token.expose());
        let mut principal: Principal = Self::json(builder).await?;
        principal.credential = token.clone();
        Ok(principal)
    }

    async fn logout(&self, principal: &Principal) -> Result<(), AuthError> {
        Self::send(self.request(Method::POST, "/v1/auth/logout", Some(principal))).await.map(drop)
    }

    async fn change_password(
        &self,
        principal: &Principal,
        request: ChangePasswordRequest,
        context: RequestContext,
    ) -> Result<(), AuthError> {
        let builder = Self::forwarded(self.request(Method::POST, "/v1/auth/password", Some(principal)), &context);
        Self::send(builder.json(&request)).await.map(drop)
    }

    async fn me(&self, principal: &Principal) -> Result<MeResponse, AuthError> {
        Self::json(self.request(Method::GET, "/v1/auth/me", Some(principal))).await
    }

    async fn create_organization(
        &self,
        principal: &Principal,
        request: CreateOrganizationRequest,
    ) -> Result<Organization, AuthError> {
        Self::json(self.request(Method::POST, "/v1/organizations", Some(principal)).json(&request)).await
    }

    async fn list_organizations(
        &self,
        principal: &Principal,
        page: PageRequest,
    ) -> Result<Page<Membership>, AuthError> {
        Self::json(self.request(Method::GET, "/v1/organizations", Some(principal)).query(&page)).await
    }

    async fn list_members(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Member>, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/members");
        Self::json(self.request(Method::GET, &path, Some(principal)).query(&page)).await
    }

    async fn add_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: AddMemberRequest,
    ) -> Result<Member, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/members");
        Self::json(self.request(Method::POST, &path, Some(principal)).json(&request)).await
    }

    async fn update_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        user_id: UserId,
        request: UpdateMemberRequest,
    ) -> Result<Member, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/members/{user_id}");
        Self::json(self.request(Method::PATCH, &path, Some(principal)).json(&request)).await
    }

    async fn remove_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        user_id: UserId,
    ) -> Result<(), AuthError> {
        let path = format!("/v1/organizations/{organization_id}/members/{user_id}");
        Self::send(self.request(Method::DELETE, &path, Some(principal))).await.map(drop)
    }

    async fn create_api_key(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: CreateApiKeyRequest,
    ) -> Result<CreatedApiKey, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/api-keys");
        Self::json(self.request(Method::POST, &path, Some(principal)).json(&request)).await
    }

    async fn list_api_keys(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<ApiKey>, AuthError> {
        let path = format!("/v1/organizations/{organization_id}/api-keys");
        Self::json(self.request(Method::GET, &path, Some(principal)).query(&page)).await
    }

    async fn revoke_api_key(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        key_id: ApiKeyId,
    ) -> Result<(), AuthError> {
        let path = format!("/v1/organizations/{organization_id}/api-keys/{key_id}");
        Self::send(self.request(Method::DELETE, &path, Some(principal))).await.map(drop)
    }

    async fn ready(&self) -> Result<(), AuthError> {
        Self::send(self.request(Method::GET, "/readyz", None)).await.map(drop)
    }
}
