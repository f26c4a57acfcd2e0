//! Error kinds shared by every domain, and the JSON error envelope every HTTP response uses.
//!
//! The envelope is OpenAI's shape, so any OpenAI SDK parses Keel's errors:
//! `{"error": {"message": "...", "type": "invalid_request_error", "code": "email_taken", "param": null}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What went wrong, independent of the domain: decides the HTTP status and the envelope `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed (bad JSON, bad query string).
    InvalidRequest,
    /// The request is well-formed but its content fails validation.
    Unprocessable,
    /// Missing, invalid or expired credentials.
    Unauthenticated,
    /// The caller is known but may not do this.
    PermissionDenied,
    /// The resource does not exist, or belongs to someone else.
    NotFound,
    /// The request conflicts with the current state (duplicate, last owner, ...).
    Conflict,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The body has a content type the route does not accept.
    UnsupportedMediaType,
    /// Too many requests or attempts; retry later.
    RateLimited,
    /// A dependency (database, remote service) is unavailable; retry later.
    Unavailable,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorKind {
    /// The HTTP status code for this kind.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unprocessable => 422,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// The envelope's `type` field, with OpenAI's names where they exist.
    pub fn error_type(self) -> &'static str {
        match self {
            Self::InvalidRequest | Self::Unprocessable | Self::PayloadTooLarge | Self::UnsupportedMediaType => {
                "invalid_request_error"
            }
            Self::Unauthenticated => "authentication_error",
            Self::PermissionDenied => "permission_error",
            Self::NotFound => "not_found_error",
            Self::Conflict => "conflict_error",
            Self::RateLimited => "rate_limit_error",
            Self::Unavailable => "service_unavailable_error",
            Self::Internal => "api_error",
        }
    }

    /// The kind for an HTTP status, used by clients to classify an answer they do not know.
    pub fn from_status(status: u16) -> Self {
        match status {
            400 => Self::InvalidRequest,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            422 => Self::Unprocessable,
            429 => Self::RateLimited,
            502..=504 => Self::Unavailable,
            _ => Self::Internal,
        }
    }

    /// Whether the cause is on the server side; such bodies stay generic.
    pub fn is_server_error(self) -> bool {
        self.status() >= 500
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// The inside of the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A human-readable message. For 5xx errors it is generic; the cause is in the server log.
    pub message: String,
    /// The broad class of error, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// A stable, machine-readable code such as `email_taken`.
    pub code: String,
    /// The request field the error is about, if any.
    pub param: Option<String>,
}

impl ErrorEnvelope {
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>, param: Option<String>) -> Self {
        Self {
            error: ErrorBody {
                message: message.into(),
                error_type: kind.error_type().to_owned(),
                code: code.to_owned(),
                param,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_openai_shape() {
        let envelope = ErrorEnvelope::new(ErrorKind::Conflict, "email_taken", "taken", Some("email".into()));
        assert_eq!(
            serde_json::to_value(&envelope).unwrap(),
            serde_json::json!({"error": {"message": "taken", "type": "conflict_error", "code": "email_taken", "param": "email"}})
        );
    }

    #[test]
    fn status_round_trips_through_kind() {
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::Unprocessable,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::PayloadTooLarge,
            ErrorKind::UnsupportedMediaType,
            ErrorKind::RateLimited,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_status(kind.status()), kind);
        }
    }
}
