//! `AuthError`: every way an auth operation can fail, with a stable code each.

use shared::ErrorKind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A field fails validation; `field` names it.
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("An account with this email already exists.")]
    EmailTaken,
    #[error("Invalid email or password.")]
    InvalidCredentials,
    #[error("The current password is incorrect.")]
    IncorrectPassword,
    #[error("Missing, invalid, expired or revoked credentials.")]
    Unauthenticated,
    #[error("Too many failed attempts; retry in {retry_after_secs} seconds.")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("This operation needs a user session, not an API key.")]
    SessionRequired,
    #[error("Your role in this organization does not allow this.")]
    PermissionDenied,
    #[error("This API key lacks the `{0}` scope.")]
    InsufficientScope(String),
    #[error("No such organization.")]
    OrganizationNotFound,
    #[error("No such member in this organization.")]
    MemberNotFound,
    #[error("No account with this email.")]
    UserNotFound,
    #[error("No such API key.")]
    ApiKeyNotFound,
    #[error("This user is already a member of the organization.")]
    AlreadyMember,
    #[error("An organization must keep at least one owner.")]
    LastOwner,
    #[error("auth service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    /// A validation error about `field`.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation { field: field.to_owned(), message: message.into() }
    }

    /// The stable code in the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { .. } => "validation_failed",
            Self::EmailTaken => "email_taken",
            Self::InvalidCredentials => "invalid_credentials",
            Self::IncorrectPassword => "incorrect_password",
            Self::Unauthenticated => "unauthenticated",
            Self::TooManyAttempts { .. } => "too_many_attempts",
            Self::SessionRequired => "session_required",
            Self::PermissionDenied => "permission_denied",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::OrganizationNotFound => "organization_not_found",
            Self::MemberNotFound => "member_not_found",
            Self::UserNotFound => "user_not_found",
            Self::ApiKeyNotFound => "api_key_not_found",
            Self::AlreadyMember => "already_member",
            Self::LastOwner => "last_owner",
            Self::Unavailable(_) => "service_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Validation { .. } => ErrorKind::Unprocessable,
            Self::EmailTaken | Self::AlreadyMember | Self::LastOwner => ErrorKind::Conflict,
            Self::InvalidCredentials | Self::Unauthenticated => ErrorKind::Unauthenticated,
            Self::IncorrectPassword | Self::SessionRequired | Self::PermissionDenied | Self::InsufficientScope(_) => {
                ErrorKind::PermissionDenied
            }
            Self::TooManyAttempts { .. } => ErrorKind::RateLimited,
            Self::OrganizationNotFound | Self::MemberNotFound | Self::UserNotFound | Self::ApiKeyNotFound => {
                ErrorKind::NotFound
            }
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The request field the error is about.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::Validation { field, .. } => Some(field),
            Self::EmailTaken | Self::UserNotFound => Some("email"),
            Self::IncorrectPassword => Some("current_password"),
            _ => None,
        }
    }

    /// Rebuilds the error from an envelope's code, so that a remote caller gets the same variant
    /// as an in-process one. Unknown codes keep their kind's meaning.
    pub fn from_remote(
        status: u16,
        code: &str,
        message: String,
        param: Option<String>,
        retry_after_secs: Option<u64>,
    ) -> Self {
        match code {
            "validation_failed" => Self::Validation { field: param.unwrap_or_default(), message },
            "email_taken" => Self::EmailTaken,
            "invalid_credentials" => Self::InvalidCredentials,
            "incorrect_password" => Self::IncorrectPassword,
            "unauthenticated" => Self::Unauthenticated,
            "too_many_attempts" => Self::TooManyAttempts { retry_after_secs: retry_after_secs.unwrap_or(1) },
            "session_required" => Self::SessionRequired,
            "permission_denied" => Self::PermissionDenied,
            "insufficient_scope" => {
                let scope = message.split('`').nth(1).unwrap_or_default().to_owned();
                Self::InsufficientScope(scope)
            }
            "organization_not_found" => Self::OrganizationNotFound,
            "member_not_found" => Self::MemberNotFound,
            "user_not_found" => Self::UserNotFound,
            "api_key_not_found" => Self::ApiKeyNotFound,
            "already_member" => Self::AlreadyMember,
            "last_owner" => Self::LastOwner,
            _ => match ErrorKind::from_status(status) {
                ErrorKind::Unavailable => Self::Unavailable(message),
                ErrorKind::Unauthenticated => Self::Unauthenticated,
                ErrorKind::InvalidRequest | ErrorKind::Unprocessable | ErrorKind::PayloadTooLarge => {
                    Self::Validation { field: param.unwrap_or_default(), message }
                }
                _ => Self::Internal(format!("remote auth service answered {status} {code}: {message}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_through_its_code() {
        let all = [
            AuthError::validation("email", "bad"),
            AuthError::EmailTaken,
            AuthError::InvalidCredentials,
            AuthError::IncorrectPassword,
            AuthError::Unauthenticated,
            AuthError::TooManyAttempts { retry_after_secs: 42 },
            AuthError::SessionRequired,
            AuthError::PermissionDenied,
            AuthError::InsufficientScope("admin".into()),
            AuthError::OrganizationNotFound,
            AuthError::MemberNotFound,
            AuthError::UserNotFound,
            AuthError::ApiKeyNotFound,
            AuthError::AlreadyMember,
            AuthError::LastOwner,
        ];
        for error in all {
            let retry = match &error {
                AuthError::TooManyAttempts { retry_after_secs } => Some(*retry_after_secs),
                _ => None,
            };
            let back = AuthError::from_remote(
                error.kind().status(),
                error.code(),
                error.to_string(),
                error.param().map(str::to_owned),
                retry,
            );
            assert_eq!(back, error);
        }
    }
}
