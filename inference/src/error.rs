//! `InferenceError`: every way an inference call can fail, declared once
//! (`#[derive(DomainError)]`). The routes answer in OpenAI's error shape; the one type OpenAI
//! has that the platform's kinds do not, `insufficient_quota`, is set by the routes for that code.

use shared::DomainError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, DomainError)]
pub enum InferenceError {
    /// A field Keel checks is missing or wrong; `param` names it. No provider was called.
    #[error("{message}")]
    #[api(kind = InvalidRequest, code = "invalid_request")]
    Validation {
        #[api(param)]
        field: String,
        message: String,
    },
    /// The body is not JSON, or not the shape of the request.
    #[error("We could not parse the JSON body of your request: {0}")]
    #[api(kind = InvalidRequest, code = "invalid_json")]
    InvalidBody(String),
    /// The body of an upload is not `multipart/form-data`, or its parts do not parse.
    #[error("We could not parse the multipart body of your request: {0}")]
    #[api(kind = InvalidRequest, code = "invalid_multipart")]
    InvalidMultipart(String),
    /// The body is larger than `inference.max_body_bytes`.
    #[error("The request body is too large.")]
    #[api(kind = PayloadTooLarge, code = "payload_too_large")]
    BodyTooLarge,
    /// No model of this name is configured (or the plan does not list it).
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    #[api(kind = NotFound, code = "model_not_found", param = "model")]
    ModelNotFound(String),
    /// The caller's plan does not allow this model.
    #[error("Your plan does not allow the model `{0}`.")]
    #[api(kind = PermissionDenied, code = "model_not_allowed", param = "model")]
    ModelNotAllowed(String),
    /// The caller may not do this: a session where an API key is needed, or a role that does not allow it.
    ///
    /// This variant is the first case: model and retrieval calls need an organization's API key,
    /// not a user session. [`PermissionDenied`](Self::PermissionDenied) is the second, under the
    /// same code; the line above, the first variant's, describes the code in the OpenAPI document.
    #[error("Model calls need an API key (Authorization: Bearer keel_sk_…), not a session.")]
    #[api(kind = PermissionDenied, code = "permission_denied")]
    ApiKeyRequired,
    /// The caller is a member of the organization, not an owner or admin (a session's role, or
    /// an API key without the `admin` scope, which acts as a member).
    #[error("Only the organization's owners and admins manage its response cache.")]
    #[api(kind = PermissionDenied, code = "permission_denied")]
    PermissionDenied,
    /// No such organization, or the caller is not a member of it (another organization's id
    /// answers exactly as one that does not exist).
    #[error("No such organization.")]
    #[api(kind = NotFound, code = "organization_not_found")]
    OrganizationNotFound,
    /// The plan's requests or tokens per minute are used up.
    #[error("Rate limit reached for {limit}; retry in {retry_after_secs} seconds.")]
    #[api(kind = RateLimited, code = "rate_limit_exceeded")]
    RateLimited {
        limit: String,
        #[api(retry_after)]
        retry_after_secs: u64,
    },
    /// The organization's budget cannot cover the request's estimated cost.
    #[error("You exceeded your current quota; check your plan and billing details.")]
    #[api(kind = RateLimited, code = "insufficient_quota")]
    InsufficientQuota,
    /// Every deployment of the model is at its concurrency limit or its circuit is open.
    #[error("The model is overloaded; retry after the time in Retry-After.")]
    #[api(kind = Unavailable, code = "overloaded")]
    Overloaded {
        #[api(retry_after)]
        retry_after_secs: u64,
    },
    /// The provider failed (connection, 5xx, a broken or malformed answer) after the retries.
    #[error("upstream error: {0}")]
    #[api(kind = Unavailable, code = "upstream_error")]
    Upstream(String),
    /// The provider did not answer in time (connect, first token, idle or total deadline).
    #[error("upstream timeout: {0}")]
    #[api(kind = Unavailable, code = "upstream_timeout")]
    UpstreamTimeout(String),
    /// The provider refused the request itself (a 4xx other than 429): its message is passed on.
    #[error("{0}")]
    #[api(kind = InvalidRequest, code = "upstream_rejected")]
    UpstreamRejected(String),
    /// No file of this id in the caller's organization (or, for a store's file, not attached
    /// to that store).
    #[error("No file found with id `{0}`.")]
    #[api(kind = NotFound, code = "file_not_found")]
    FileNotFound(String),
    /// No vector store of this id in the caller's organization.
    #[error("No vector store found with id `{0}`.")]
    #[api(kind = NotFound, code = "vector_store_not_found")]
    VectorStoreNotFound(String),
    /// The vector store passed its `expires_at` (`expires_after` days without activity): it
    /// can still be read and deleted, not searched, attached to or modified. OpenAI's
    /// `invalid_request_error`; a purge deletes it soon after.
    #[error("The vector store `{0}` has expired; it can no longer be used.")]
    #[api(kind = InvalidRequest, code = "vector_store_expired")]
    VectorStoreExpired(String),
    /// No file batch of this id in that vector store of the caller's organization.
    #[error("No vector store file batch found with id `{0}`.")]
    #[api(kind = NotFound, code = "file_batch_not_found")]
    FileBatchNotFound(String),
    /// The uploaded file is larger than `inference.rag.max_file_bytes`.
    #[error("The file is larger than the limit of {limit_bytes} bytes.")]
    #[api(kind = PayloadTooLarge, code = "file_too_large", param = "file")]
    FileTooLarge { limit_bytes: u64 },
    /// A dependency (billing, the remote inference service) is unavailable; retry later.
    #[error("inference service unavailable: {0}")]
    #[api(kind = Unavailable, code = "service_unavailable", fallback)]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    #[api(kind = Internal, code = "internal_error", fallback)]
    Internal(String),
}

impl InferenceError {
    /// A validation error about `field`.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation { field: field.to_owned(), message: message.into() }
    }

    /// The envelope's `type`: the platform's for the kind, except OpenAI's own
    /// `insufficient_quota`, which SDKs do not retry.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InsufficientQuota => "insufficient_quota",
            _ => shared::DomainError::kind(self).error_type(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::error::WireError;

    #[test]
    fn every_variant_round_trips_through_its_envelope() {
        let all = [
            InferenceError::validation("messages", "bad"),
            InferenceError::InvalidBody("expected value at line 1 column 1".into()),
            InferenceError::InvalidMultipart("Multipart stream is incomplete".into()),
            InferenceError::BodyTooLarge,
            InferenceError::ModelNotFound("gpt-9".into()),
            InferenceError::ModelNotAllowed("gpt-9".into()),
            InferenceError::ApiKeyRequired,
            InferenceError::PermissionDenied,
            InferenceError::OrganizationNotFound,
            InferenceError::RateLimited { limit: "requests per minute".into(), retry_after_secs: 7 },
            InferenceError::InsufficientQuota,
            InferenceError::UpstreamRejected("bad tools".into()),
            InferenceError::FileNotFound("file_1".into()),
            InferenceError::VectorStoreNotFound("vs_1".into()),
            InferenceError::VectorStoreExpired("vs_1".into()),
            InferenceError::FileBatchNotFound("vsfb_1".into()),
            InferenceError::FileTooLarge { limit_bytes: 1024 },
        ];
        for error in all {
            let envelope = error.envelope().error;
            let wire = WireError {
                status: error.kind().status(),
                code: envelope.code,
                message: envelope.message,
                param: envelope.param,
                retry_after_secs: error.retry_after(),
            };
            assert_eq!(InferenceError::from_wire(wire), error);
        }
        // 5xx messages are generic on the wire: a remote 503 becomes the Unavailable fallback.
        let wire = WireError {
            status: 503,
            code: "overloaded".into(),
            message: shared::error::UNAVAILABLE_MESSAGE.into(),
            param: None,
            retry_after_secs: Some(2),
        };
        assert_eq!(InferenceError::from_wire(wire).kind(), shared::ErrorKind::Unavailable);
    }
}
