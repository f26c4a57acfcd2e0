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
    /// The path exists but not with this method.
    MethodNotAllowed,
    /// The client took too long to send its request.
    RequestTimeout,
    /// The request conflicts with the current state (duplicate, last owner, ...).
    Conflict,
    /// The body is larger than the configured limit.
    PayloadTooLarge,
    /// The body has a content type the route does not accept.
    UnsupportedMediaType,
    /// The request's head (line and headers) is larger than the server accepts.
    HeadersTooLarge,
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
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unprocessable => 422,
            Self::RateLimited => 429,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// The envelope's `type` field, with OpenAI's names where they exist.
    pub fn error_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::Unprocessable
            | Self::PayloadTooLarge
            | Self::UnsupportedMediaType
            | Self::MethodNotAllowed
            | Self::RequestTimeout
            | Self::HeadersTooLarge => "invalid_request_error",
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
            405 => Self::MethodNotAllowed,
            408 => Self::RequestTimeout,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            422 => Self::Unprocessable,
            429 => Self::RateLimited,
            431 => Self::HeadersTooLarge,
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

/// One entry of a domain's error table: a stable code and its kind. Generated by
/// `#[derive(DomainError)]`; the OpenAPI document lists them per status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: &'static str,
    pub kind: ErrorKind,
    /// What the code means: the variant's doc summary, or its message template.
    pub description: &'static str,
}

/// An error answer as a remote client read it off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl WireError {
    /// A failure to reach the remote service at all (refused, reset, timed out): unavailable.
    pub fn unreachable(service: &str, cause: impl std::fmt::Display) -> Self {
        Self {
            status: 503,
            code: String::new(),
            message: format!("{service} service unreachable: {cause}"),
            param: None,
            retry_after_secs: None,
        }
    }
}

/// A domain's error type, as the HTTP layer and the remote clients see it. Implement it with
/// `#[derive(DomainError)]` (see the `macros` crate): the code, kind, `param` and `Retry-After`
/// of each variant, and the way back from an envelope, all come from one declaration.
pub trait DomainError: std::error::Error + Sized + Send + Sync + 'static {
    /// Every code this type can answer with.
    const CODES: &'static [ErrorCode];

    /// The stable, machine-readable code of the envelope.
    fn code(&self) -> &'static str;
    fn kind(&self) -> ErrorKind;
    /// The request field the error is about.
    fn param(&self) -> Option<String>;
    /// Seconds until a retry may succeed, sent as `Retry-After`.
    fn retry_after_secs(&self) -> Option<u64>;
    /// The variant a remote service meant by this answer.
    fn from_wire(wire: WireError) -> Self;
    /// The variant for "a dependency is down; retry later".
    fn unavailable(detail: String) -> Self;
    /// The variant for a bug or an unexpected failure.
    fn internal(detail: String) -> Self;

    /// The envelope sent to clients. A 5xx message says nothing of its cause.
    fn envelope(&self) -> ErrorEnvelope {
        let kind = self.kind();
        let message = match kind {
            ErrorKind::Unavailable => UNAVAILABLE_MESSAGE.to_owned(),
            _ if kind.is_server_error() => INTERNAL_MESSAGE.to_owned(),
            _ => self.to_string(),
        };
        ErrorEnvelope::new(kind, self.code(), message, self.param())
    }

    /// `Retry-After` for the answer: the variant's own value, else a default for the kinds
    /// that invite a retry.
    fn retry_after(&self) -> Option<u64> {
        self.retry_after_secs().or(match self.kind() {
            ErrorKind::Unavailable | ErrorKind::RateLimited => Some(DEFAULT_RETRY_AFTER_SECS),
            _ => None,
        })
    }
}

/// The message of every 503 answer.
pub const UNAVAILABLE_MESSAGE: &str = "The service is temporarily unavailable; retry later.";
/// The message of every other 5xx answer.
pub const INTERNAL_MESSAGE: &str = "The server failed to handle the request.";
/// `Retry-After` of an unavailable or rate-limited answer that carries no better value.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 1;

/// A piece of an error's message template: literal text or a field's place.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum TemplatePiece {
    Lit(&'static str),
    Field(&'static str),
}

/// Reads field values out of `message` by its template; `None` when it does not match.
/// A field takes the shortest text up to the literal that follows it.
#[doc(hidden)]
pub fn match_template<'m>(pieces: &[TemplatePiece], message: &'m str) -> Option<Vec<(&'static str, &'m str)>> {
    let mut rest = message;
    let mut found = Vec::new();
    let mut pieces = pieces.iter().peekable();
    while let Some(piece) = pieces.next() {
        match piece {
            TemplatePiece::Lit(text) => rest = rest.strip_prefix(text)?,
            TemplatePiece::Field(name) => {
                let end = match pieces.peek() {
                    Some(TemplatePiece::Lit(next)) => rest.find(next)?,
                    _ => rest.len(),
                };
                found.push((*name, &rest[..end]));
                rest = &rest[end..];
            }
        }
    }
    rest.is_empty().then_some(found)
}

/// The value found for `name`.
#[doc(hidden)]
pub fn field_value<'m>(found: &[(&'static str, &'m str)], name: &str) -> Option<&'m str> {
    found.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainError as Derive;

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Derive)]
    enum SampleError {
        /// A field fails validation.
        #[error("{message}")]
        #[api(kind = Unprocessable, code = "validation_failed")]
        Validation {
            #[api(param)]
            field: String,
            message: String,
        },
        #[error("Taken.")]
        #[api(kind = Conflict, code = "taken", param = "email")]
        Taken,
        #[error("Retry in {retry_after_secs} seconds.")]
        #[api(kind = RateLimited, code = "slow_down")]
        SlowDown {
            #[api(retry_after)]
            retry_after_secs: u64,
        },
        #[error("This key lacks the `{scope}` scope ({count} of them).")]
        #[api(kind = PermissionDenied, code = "insufficient_scope")]
        Scope { scope: String, count: u32 },
        #[error("unavailable: {0}")]
        #[api(kind = Unavailable, code = "service_unavailable", fallback)]
        Unavailable(String),
        #[error("internal: {0}")]
        #[api(kind = Internal, code = "internal_error", fallback)]
        Internal(String),
    }

    fn over_the_wire(error: &SampleError) -> SampleError {
        let envelope = error.envelope();
        SampleError::from_wire(WireError {
            status: error.kind().status(),
            code: envelope.error.code,
            message: envelope.error.message,
            param: envelope.error.param,
            retry_after_secs: error.retry_after(),
        })
    }

    #[test]
    fn derived_errors_survive_the_wire() {
        for error in [
            SampleError::Validation { field: "email".into(), message: "Bad email.".into() },
            SampleError::Taken,
            SampleError::SlowDown { retry_after_secs: 42 },
            SampleError::Scope { scope: "admin".into(), count: 3 },
        ] {
            assert_eq!(over_the_wire(&error), error);
        }
        assert_eq!(SampleError::Taken.param().as_deref(), Some("email"));
        assert_eq!(SampleError::SlowDown { retry_after_secs: 7 }.retry_after(), Some(7));
        assert_eq!(SampleError::CODES.len(), 6);
        assert_eq!(SampleError::CODES[0].description, "A field fails validation.");
        assert_eq!(SampleError::CODES[1].description, "Taken.");
    }

    #[test]
    fn server_errors_travel_generic_and_land_on_the_fallbacks() {
        let down = SampleError::Unavailable("pool timed out on 10.0.0.5".into());
        assert_eq!(down.envelope().error.message, UNAVAILABLE_MESSAGE);
        assert_eq!(down.retry_after(), Some(DEFAULT_RETRY_AFTER_SECS));
        assert_eq!(over_the_wire(&down), SampleError::Unavailable(UNAVAILABLE_MESSAGE.into()));
        let bug = SampleError::Internal("secret detail".into());
        assert_eq!(bug.envelope().error.message, INTERNAL_MESSAGE);
        assert!(matches!(over_the_wire(&bug), SampleError::Internal(m) if !m.contains("secret")));
        // An unknown code keeps its kind's meaning, and a gateway outage is unavailable.
        let unknown = WireError {
            status: 502,
            code: "bad_gateway".into(),
            message: "upstream".into(),
            param: None,
            retry_after_secs: None,
        };
        assert_eq!(SampleError::from_wire(unknown), SampleError::Unavailable("upstream".into()));
        let odd = WireError {
            status: 418,
            code: "teapot".into(),
            message: "short".into(),
            param: None,
            retry_after_secs: None,
        };
        assert!(matches!(SampleError::from_wire(odd), SampleError::Internal(m) if m.contains("418 teapot")));
        // A known code whose fields cannot be read back falls back by kind.
        let garbled = WireError {
            status: 403,
            code: "insufficient_scope".into(),
            message: "something else".into(),
            param: None,
            retry_after_secs: None,
        };
        assert!(matches!(SampleError::from_wire(garbled), SampleError::Internal(_)));
    }

    #[test]
    fn templates_match_shortest_fields() {
        let pieces = [TemplatePiece::Lit("a `"), TemplatePiece::Field("x"), TemplatePiece::Lit("` b")];
        assert_eq!(match_template(&pieces, "a `one` b"), Some(vec![("x", "one")]));
        assert_eq!(match_template(&pieces, "a `one` c"), None);
        assert_eq!(match_template(&[TemplatePiece::Field("m")], "all of it"), Some(vec![("m", "all of it")]));
    }

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
            ErrorKind::MethodNotAllowed,
            ErrorKind::RequestTimeout,
            ErrorKind::HeadersTooLarge,
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
