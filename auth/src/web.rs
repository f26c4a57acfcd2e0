//! Authentication for every domain's routes, through the auth contract alone: a domain that
//! depends on `auth` with only the `web` feature gets the `Caller` extractor without auth's
//! database or service.

use crate::api::{AuthApi, Principal};
use crate::error::AuthError;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use shared::http::bearer_token;

shared::impl_response_error!(AuthError);

/// The authenticated caller of a request, from its `Authorization: Bearer` header, resolved by
/// the `web::Data<dyn AuthApi>` of the app (in-process service or remote client alike).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    pub fn principal(&self) -> &Principal {
        &self.0
    }

    /// The principal, if it is a session or an API key with `scope`; `InsufficientScope`
    /// otherwise.
    pub fn require_scope(&self, scope: &str) -> Result<&Principal, AuthError> {
        match self.0.kind {
            crate::api::PrincipalKind::ApiKey if !self.0.has_scope(scope) => {
                Err(AuthError::InsufficientScope(scope.to_owned()))
            }
            _ => Ok(&self.0),
        }
    }
}

impl FromRequest for Caller {
    type Error = AuthError;
    type Future = LocalBoxFuture<'static, Result<Self, AuthError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Authenticated already (by the gateway's rate limiter): once per request is enough.
        if let Some(principal) = req.extensions().get::<Principal>().cloned() {
            return Box::pin(async move { Ok(Caller(principal)) });
        }
        let api = req.app_data::<web::Data<dyn AuthApi>>().cloned();
        let token = bearer_token(req);
        Box::pin(async move {
            let api = api.ok_or_else(|| AuthError::Internal("AuthApi is not registered as app data".into()))?;
            let token = token.ok_or(AuthError::Unauthenticated)?;
            api.authenticate(&token).await.map(Caller)
        })
    }
}
