//! `BillingError`: every way a billing operation can fail, declared once
//! (`#[derive(DomainError)]`): code, kind and how each variant travels.

use shared::DomainError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, DomainError)]
pub enum BillingError {
    /// A field fails validation; `param` names it.
    #[error("{message}")]
    #[api(kind = Unprocessable, code = "validation_failed")]
    Validation {
        #[api(param)]
        field: String,
        message: String,
    },
    /// A reservation needs more than is spendable. `param` says what was short: `credit`
    /// (available credit), `organization_budget` or `api_key_budget`; `short_by` is in nano-units.
    #[error("Insufficient credit or budget: short by {short_by} nano-units.")]
    #[api(kind = PermissionDenied, code = "budget_exceeded")]
    BudgetExceeded {
        #[api(param)]
        limit: String,
        short_by: i64,
    },
    /// No such hold.
    #[error("No such hold.")]
    #[api(kind = NotFound, code = "hold_not_found")]
    HoldNotFound,
    /// No such organization, or the caller is not a member.
    #[error("No such organization.")]
    #[api(kind = NotFound, code = "organization_not_found")]
    OrganizationNotFound,
    /// Only owners and admins see and manage billing.
    #[error("Only the organization's owners and admins manage billing.")]
    #[api(kind = PermissionDenied, code = "permission_denied")]
    PermissionDenied,
    /// Only platform administrators grant credit.
    #[error("Only platform administrators grant credit.")]
    #[api(kind = PermissionDenied, code = "platform_admin_required")]
    PlatformAdminRequired,
    /// The metering routes need the billing service token.
    #[error("Missing or invalid billing service token.")]
    #[api(kind = Unauthenticated, code = "unauthenticated")]
    Unauthenticated,
    /// No plan with this id.
    #[error("No such plan.")]
    #[api(kind = Unprocessable, code = "unknown_plan", param = "plan")]
    UnknownPlan,
    /// No such invoice in this organization.
    #[error("No such invoice.")]
    #[api(kind = NotFound, code = "invoice_not_found")]
    InvoiceNotFound,
    /// The idempotency key was used before with a different request body.
    #[error("This Idempotency-Key was used with a different request.")]
    #[api(kind = Unprocessable, code = "idempotency_key_reused", param = "Idempotency-Key")]
    IdempotencyKeyReused,
    /// The database or the remote billing service is unavailable; retry later.
    #[error("billing service unavailable: {0}")]
    #[api(kind = Unavailable, code = "service_unavailable", fallback)]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    #[api(kind = Internal, code = "internal_error", fallback)]
    Internal(String),
}

impl BillingError {
    /// A validation error about `field`.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation { field: field.to_owned(), message: message.into() }
    }
}

impl From<auth::AuthError> for BillingError {
    /// Auth's answers as billing's: what a caller may see of an organization is auth's to say.
    fn from(error: auth::AuthError) -> Self {
        use auth::AuthError as A;
        match error {
            A::OrganizationNotFound => Self::OrganizationNotFound,
            A::PermissionDenied | A::InsufficientScope(_) | A::SessionRequired => Self::PermissionDenied,
            A::Unauthenticated | A::InvalidCredentials => Self::Unauthenticated,
            A::Unavailable(m) => Self::Unavailable(m),
            other => Self::Internal(format!("auth: {other}")),
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
            BillingError::validation("amount", "must be positive"),
            BillingError::BudgetExceeded { limit: "credit".into(), short_by: 42 },
            BillingError::HoldNotFound,
            BillingError::OrganizationNotFound,
            BillingError::PermissionDenied,
            BillingError::PlatformAdminRequired,
            BillingError::Unauthenticated,
            BillingError::UnknownPlan,
            BillingError::InvoiceNotFound,
            BillingError::IdempotencyKeyReused,
        ];
        assert_eq!(all.len() + 2, BillingError::CODES.len(), "every variant but the fallbacks is listed here");
        for error in all {
            let envelope = error.envelope().error;
            let wire = WireError {
                status: error.kind().status(),
                code: envelope.code,
                message: envelope.message,
                param: envelope.param,
                retry_after_secs: error.retry_after(),
            };
            assert_eq!(BillingError::from_wire(wire), error);
        }
    }
}
