//! `AuthError`: every way an auth operation can fail. The table below is the one place that
//! gives each variant its code, its kind and how it travels (`#[derive(DomainError)]`).

use shared::DomainError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, DomainError)]
pub enum AuthError {
    /// A field fails validation; `param` names it.
    #[error("{message}")]
    #[api(kind = Unprocessable, code = "validation_failed")]
    Validation {
        #[api(param)]
        field: String,
        message: String,
    },
    /// An account with this email already exists.
    #[error("An account with this email already exists.")]
    #[api(kind = Conflict, code = "email_taken", param = "email")]
    EmailTaken,
    /// Unknown email or wrong password (the same answer for both).
    #[error("Invalid email or password.")]
    #[api(kind = Unauthenticated, code = "invalid_credentials")]
    InvalidCredentials,
    /// The current password given to change it is wrong.
    #[error("The current password is incorrect.")]
    #[api(kind = PermissionDenied, code = "incorrect_password", param = "current_password")]
    IncorrectPassword,
    /// Missing, invalid, expired or revoked credentials.
    #[error("Missing, invalid, expired or revoked credentials.")]
    #[api(kind = Unauthenticated, code = "unauthenticated")]
    Unauthenticated,
    /// The account or the client address is locked out after too many failures.
    #[error("Too many failed attempts; retry in {retry_after_secs} seconds.")]
    #[api(kind = RateLimited, code = "too_many_attempts")]
    TooManyAttempts {
        #[api(retry_after)]
        retry_after_secs: u64,
    },
    /// The operation needs a user session, not an API key.
    #[error("This operation needs a user session, not an API key.")]
    #[api(kind = PermissionDenied, code = "session_required")]
    SessionRequired,
    /// The caller's role in the organization does not allow this.
    #[error("Your role in this organization does not allow this.")]
    #[api(kind = PermissionDenied, code = "permission_denied")]
    PermissionDenied,
    /// The API key lacks the scope the route needs.
    #[error("This API key lacks the `{0}` scope.")]
    #[api(kind = PermissionDenied, code = "insufficient_scope")]
    InsufficientScope(String),
    /// No such organization, or the caller is not a member.
    #[error("No such organization.")]
    #[api(kind = NotFound, code = "organization_not_found")]
    OrganizationNotFound,
    /// No such member in this organization.
    #[error("No such member in this organization.")]
    #[api(kind = NotFound, code = "member_not_found")]
    MemberNotFound,
    /// No account with this email.
    #[error("No account with this email.")]
    #[api(kind = NotFound, code = "user_not_found", param = "email")]
    UserNotFound,
    /// No such API key in this organization.
    #[error("No such API key.")]
    #[api(kind = NotFound, code = "api_key_not_found")]
    ApiKeyNotFound,
    /// The user is already a member of the organization.
    #[error("This user is already a member of the organization.")]
    #[api(kind = Conflict, code = "already_member")]
    AlreadyMember,
    /// The organization would be left without an owner.
    #[error("An organization must keep at least one owner.")]
    #[api(kind = Conflict, code = "last_owner")]
    LastOwner,
    /// The database or the remote auth service is unavailable; retry later.
    #[error("auth service unavailable: {0}")]
    #[api(kind = Unavailable, code = "service_unavailable", fallback)]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    #[api(kind = Internal, code = "internal_error", fallback)]
    Internal(String),
}

impl AuthError {
    /// A validation error about `field`.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation { field: field.to_owned(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::error::WireError;

    #[test]
    fn every_variant_round_trips_through_its_envelope() {
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
        assert_eq!(all.len() + 2, AuthError::CODES.len(), "every variant but the fallbacks is listed here");
        for error in all {
            let envelope = error.envelope().error;
            let wire = WireError {
                status: error.kind().status(),
                code: envelope.code,
                message: envelope.message,
                param: envelope.param,
                retry_after_secs: error.retry_after(),
            };
            assert_eq!(AuthError::from_wire(wire), error);
        }
    }
}
