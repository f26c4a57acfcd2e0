//! The billing domain's HTTP routes, over `web::Data<dyn BillingApi>`: the same handlers serve
//! the in-process service and, in a gateway that forwards, the remote client.
//!
//! `/v1/…` act for a caller (`Authorization: Bearer` session or API key, resolved through
//! `AuthApi`). `/internal/billing/…` are the metering path other services call; they need the
//! service token (`billing.service_token`) and are refused with 401 when none is configured.

use crate::api::*;
use crate::error::BillingError;
use crate::module::ServiceToken;
use actix_web::{HttpRequest, HttpResponse, web};
use auth::web::Caller;
use sha2::{Digest, Sha256};
use shared::http::{Json, Query, Resource, bearer_token};
use shared::{Page, PageRequest};
use utoipa::OpenApi;

shared::impl_response_error!(BillingError);

type Api = web::Data<dyn BillingApi>;

/// The header that makes a credit grant idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Registers every billing route. Expects `web::Data<dyn BillingApi>` and
/// `web::Data<ServiceToken>` in the app data.
pub fn configure(cfg: &mut web::ServiceConfig) {
    Resource::new("/v1/plans").get(list_plans).register(cfg);
    Resource::new("/v1/organizations/{org_id}/subscription").get(get_subscription).put(put_subscription).register(cfg);
    Resource::new("/v1/organizations/{org_id}/billing/credits").post(grant_credit).register(cfg);
    Resource::new("/v1/organizations/{org_id}/billing/budgets")
        .get(get_budgets)
        .put(put_organization_budget)
        .register(cfg);
    Resource::new("/v1/organizations/{org_id}/billing/budgets/api-keys/{key_id}").put(put_key_budget).register(cfg);
    Resource::new("/v1/organizations/{org_id}/billing/balance").get(get_balance).register(cfg);
    Resource::new("/v1/organizations/{org_id}/billing/usage").get(get_usage).register(cfg);
    Resource::new("/v1/organizations/{org_id}/billing/ledger").get(get_ledger).register(cfg);
    Resource::new("/v1/organizations/{org_id}/billing/invoices").get(list_invoices).register(cfg);
    Resource::new("/v1/organizations/{org_id}/billing/invoices/{invoice_id}").get(get_invoice).register(cfg);
    Resource::new("/internal/billing/reserve").post(reserve).register(cfg);
    Resource::new("/internal/billing/settle").post(settle).register(cfg);
    Resource::new("/internal/billing/holds/{hold_id}/release").post(release).register(cfg);
    Resource::new("/internal/billing/usage").post(record_usage).register(cfg);
    Resource::new("/internal/billing/leases/extend").post(extend_lease).register(cfg);
    Resource::new("/internal/billing/leases/commit").post(commit_lease).register(cfg);
    Resource::new("/internal/billing/limits/{org_id}").get(limits).register(cfg);
}

/// The codes of `BillingError` each operation can answer with, beyond what the platform adds.
pub const ROUTE_ERRORS: &[(&str, &[&str])] = &[
    ("list_plans", &[]),
    ("get_subscription", &["organization_not_found", "permission_denied"]),
    ("put_subscription", &["organization_not_found", "permission_denied", "unknown_plan"]),
    ("grant_credit", &["validation_failed", "platform_admin_required", "idempotency_key_reused"]),
    ("get_budgets", &["organization_not_found", "permission_denied"]),
    ("put_organization_budget", &["validation_failed", "organization_not_found", "permission_denied"]),
    ("put_key_budget", &["validation_failed", "organization_not_found", "permission_denied"]),
    ("get_balance", &["organization_not_found", "permission_denied"]),
    ("get_usage", &["validation_failed", "organization_not_found", "permission_denied"]),
    ("get_ledger", &["validation_failed", "organization_not_found", "permission_denied"]),
    ("list_invoices", &["validation_failed", "organization_not_found", "permission_denied"]),
    ("get_invoice", &["organization_not_found", "permission_denied", "invoice_not_found"]),
    ("reserve", &["unauthenticated", "validation_failed", "budget_exceeded"]),
    ("settle", &["unauthenticated", "validation_failed", "hold_not_found"]),
    ("release", &["unauthenticated", "hold_not_found"]),
    ("record_usage", &["unauthenticated", "validation_failed"]),
    ("extend_lease", &["unauthenticated", "validation_failed", "hold_not_found", "budget_exceeded"]),
    ("commit_lease", &["unauthenticated", "validation_failed", "hold_not_found"]),
    ("limits", &["unauthenticated"]),
];

/// The OpenAPI description of the billing routes, with their error codes.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let unresolved = shared::openapi::domain_errors::<BillingError>(&mut doc, ROUTE_ERRORS);
    debug_assert!(unresolved.is_empty(), "{unresolved:?}");
    doc
}

#[derive(OpenApi)]
#[openapi(
    paths(
        list_plans, get_subscription, put_subscription, grant_credit, get_budgets, put_organization_budget,
        put_key_budget, get_balance, get_usage, get_ledger, list_invoices, get_invoice, reserve, settle, release,
        record_usage, extend_lease, commit_lease, limits
    ),
    components(schemas(
        Money, Plan, Subscription, PutSubscriptionRequest, GrantCreditRequest, CreditGrant, Budget, Budgets,
        PutBudgetRequest, Balance, UsageGroupBy, UsageRow, UsageReport, AccountKind, LedgerEntry, InvoiceLine,
        Invoice, ReserveRequest, Hold, UsageRecord, SettleRequest, Settlement, RecordUsageRequest, Recorded,
        PlanLimits, ExtendLeaseRequest, CommitLeaseRequest, LeaseCommitted, Page<LedgerEntry>, Page<Invoice>
    )),
    tags((name = "billing", description = "Plans, credits, budgets, usage and invoices"),
         (name = "metering", description = "The metering path other services call (service token)"))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Checks the service token of a metering route.
fn require_service(req: &HttpRequest) -> Result<(), BillingError> {
    let expected =
        req.app_data::<web::Data<ServiceToken>>().and_then(|t| t.0.clone()).ok_or(BillingError::Unauthenticated)?;
    let given = bearer_token(req).ok_or(BillingError::Unauthenticated)?;
    // Compare digests, so the time taken says nothing about the token.
    if Sha256::digest(given.expose().as_bytes()) == Sha256::digest(expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(BillingError::Unauthenticated)
    }
}

/// The configured plans.
#[utoipa::path(get, path = "/v1/plans", tag = "billing", responses(
    (status = 200, description = "Every plan.", body = [Plan]),
))]
async fn list_plans(api: Api) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.plans().await?))
}

/// The organization's subscription (owners and admins).
#[utoipa::path(get, path = "/v1/organizations/{org_id}/subscription", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), responses((status = 200, description = "The subscription.", body = Subscription)))]
async fn get_subscription(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.subscription(&caller.0, path.into_inner()).await?))
}

/// Subscribe to a plan (owners and admins).
#[utoipa::path(put, path = "/v1/organizations/{org_id}/subscription", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), request_body = PutSubscriptionRequest,
    responses((status = 200, description = "The subscription.", body = Subscription)))]
async fn put_subscription(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    body: Json<PutSubscriptionRequest>,
) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.put_subscription(&caller.0, path.into_inner(), body.into_inner()).await?))
}

/// Grant credit (platform administrators). `Idempotency-Key` is required.
#[utoipa::path(post, path = "/v1/organizations/{org_id}/billing/credits", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), ("Idempotency-Key" = String, Header)), request_body = GrantCreditRequest,
    responses((status = 201, description = "The grant (or the first answer for this key).", body = CreditGrant)))]
async fn grant_credit(
    api: Api,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<OrganizationId>,
    body: Json<GrantCreditRequest>,
) -> Result<HttpResponse, BillingError> {
    let key = req.headers().get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    Ok(HttpResponse::Created().json(api.grant_credit(&caller.0, path.into_inner(), &key, body.into_inner()).await?))
}

/// The organization's budgets (owners and admins).
#[utoipa::path(get, path = "/v1/organizations/{org_id}/billing/budgets", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), responses((status = 200, description = "The budgets.", body = Budgets)))]
async fn get_budgets(api: Api, caller: Caller, path: web::Path<OrganizationId>) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.budgets(&caller.0, path.into_inner()).await?))
}

/// Set or remove the organization's spend cap per period (owners and admins).
#[utoipa::path(put, path = "/v1/organizations/{org_id}/billing/budgets", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), request_body = PutBudgetRequest,
    responses((status = 200, description = "The budget.", body = Budget)))]
async fn put_organization_budget(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    body: Json<PutBudgetRequest>,
) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.put_budget(&caller.0, path.into_inner(), None, body.into_inner()).await?))
}

/// Set or remove an API key's spend cap per period (owners and admins).
#[utoipa::path(put, path = "/v1/organizations/{org_id}/billing/budgets/api-keys/{key_id}", tag = "billing",
    security(("bearer" = [])), params(("org_id" = OrganizationId, Path), ("key_id" = ApiKeyId, Path)),
    request_body = PutBudgetRequest, responses((status = 200, description = "The budget.", body = Budget)))]
async fn put_key_budget(
    api: Api,
    caller: Caller,
    path: web::Path<(OrganizationId, ApiKeyId)>,
    body: Json<PutBudgetRequest>,
) -> Result<HttpResponse, BillingError> {
    let (org, key) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.put_budget(&caller.0, org, Some(key), body.into_inner()).await?))
}

/// The organization's balances (owners and admins).
#[utoipa::path(get, path = "/v1/organizations/{org_id}/billing/balance", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), responses((status = 200, description = "The balances.", body = Balance)))]
async fn get_balance(api: Api, caller: Caller, path: web::Path<OrganizationId>) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.balance(&caller.0, path.into_inner()).await?))
}

/// Usage from the daily rollups, grouped by day, model or API key (owners and admins).
#[utoipa::path(get, path = "/v1/organizations/{org_id}/billing/usage", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), ("from" = String, Query, description = "First day, YYYY-MM-DD"),
        ("to" = String, Query, description = "Last day, included"), ("group_by" = Option<UsageGroupBy>, Query)),
    responses((status = 200, description = "The report.", body = UsageReport)))]
async fn get_usage(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    query: Query<UsageQuery>,
) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.usage(&caller.0, path.into_inner(), query.into_inner()).await?))
}

/// The organization's ledger entries, newest first (owners and admins).
#[utoipa::path(get, path = "/v1/organizations/{org_id}/billing/ledger", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), PageRequest),
    responses((status = 200, description = "A page of entries.", body = Page<LedgerEntry>)))]
async fn get_ledger(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    page: Query<PageRequest>,
) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.ledger(&caller.0, path.into_inner(), page.into_inner()).await?))
}

/// The organization's invoices, newest first (owners and admins).
#[utoipa::path(get, path = "/v1/organizations/{org_id}/billing/invoices", tag = "billing", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), PageRequest),
    responses((status = 200, description = "A page of invoices.", body = Page<Invoice>)))]
async fn list_invoices(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    page: Query<PageRequest>,
) -> Result<HttpResponse, BillingError> {
    Ok(HttpResponse::Ok().json(api.invoices(&caller.0, path.into_inner(), page.into_inner()).await?))
}

/// One invoice (owners and admins).
#[utoipa::path(get, path = "/v1/organizations/{org_id}/billing/invoices/{invoice_id}", tag = "billing",
    security(("bearer" = [])), params(("org_id" = OrganizationId, Path), ("invoice_id" = InvoiceId, Path)),
    responses((status = 200, description = "The invoice.", body = Invoice)))]
async fn get_invoice(
    api: Api,
    caller: Caller,
    path: web::Path<(OrganizationId, InvoiceId)>,
) -> Result<HttpResponse, BillingError> {
    let (org, invoice) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.invoice(&caller.0, org, invoice).await?))
}

/// Reserve credit for a request (service token).
#[utoipa::path(post, path = "/internal/billing/reserve", tag = "metering", request_body = ReserveRequest,
    responses((status = 200, description = "The hold.", body = Hold)))]
async fn reserve(api: Api, req: HttpRequest, body: Json<ReserveRequest>) -> Result<HttpResponse, BillingError> {
    require_service(&req)?;
    Ok(HttpResponse::Ok().json(api.reserve(body.into_inner()).await?))
}

/// Settle a hold with its usage, exactly once (service token).
#[utoipa::path(post, path = "/internal/billing/settle", tag = "metering", request_body = SettleRequest,
    responses((status = 200, description = "The settlement.", body = Settlement)))]
async fn settle(api: Api, req: HttpRequest, body: Json<SettleRequest>) -> Result<HttpResponse, BillingError> {
    require_service(&req)?;
    Ok(HttpResponse::Ok().json(api.settle(body.into_inner()).await?))
}

/// Release a hold (service token).
#[utoipa::path(post, path = "/internal/billing/holds/{hold_id}/release", tag = "metering",
    params(("hold_id" = HoldId, Path)), responses((status = 204, description = "Released (or closed already).")))]
async fn release(api: Api, req: HttpRequest, path: web::Path<HoldId>) -> Result<HttpResponse, BillingError> {
    require_service(&req)?;
    api.release(path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Record usage without a hold, idempotent by request id (service token).
#[utoipa::path(post, path = "/internal/billing/usage", tag = "metering", request_body = RecordUsageRequest,
    responses((status = 200, description = "Recorded now or before.", body = Recorded)))]
async fn record_usage(
    api: Api,
    req: HttpRequest,
    body: Json<RecordUsageRequest>,
) -> Result<HttpResponse, BillingError> {
    require_service(&req)?;
    Ok(HttpResponse::Ok().json(api.record_usage(body.into_inner()).await?))
}

/// Top up a lease and push its expiry (service token).
#[utoipa::path(post, path = "/internal/billing/leases/extend", tag = "metering", request_body = ExtendLeaseRequest,
    responses((status = 200, description = "The lease.", body = Hold)))]
async fn extend_lease(
    api: Api,
    req: HttpRequest,
    body: Json<ExtendLeaseRequest>,
) -> Result<HttpResponse, BillingError> {
    require_service(&req)?;
    Ok(HttpResponse::Ok().json(api.extend_lease(body.into_inner()).await?))
}

/// Charge a batch of usage to a lease, in one transaction (service token).
#[utoipa::path(post, path = "/internal/billing/leases/commit", tag = "metering", request_body = CommitLeaseRequest,
    responses((status = 200, description = "What was charged and what is left.", body = LeaseCommitted)))]
async fn commit_lease(
    api: Api,
    req: HttpRequest,
    body: Json<CommitLeaseRequest>,
) -> Result<HttpResponse, BillingError> {
    require_service(&req)?;
    Ok(HttpResponse::Ok().json(api.commit_lease(body.into_inner()).await?))
}

/// The organization's plan limits (service token).
#[utoipa::path(get, path = "/internal/billing/limits/{org_id}", tag = "metering",
    params(("org_id" = OrganizationId, Path)), responses((status = 200, description = "The limits.", body = PlanLimits)))]
async fn limits(api: Api, req: HttpRequest, path: web::Path<OrganizationId>) -> Result<HttpResponse, BillingError> {
    require_service(&req)?;
    Ok(HttpResponse::Ok().json(api.limits(path.into_inner()).await?))
}
