//! The registered domains: adding a domain to Keel is one line here, after the domains it
//! depends on. Each line gives the section name (`[auth]`, `KEEL_AUTH__*`, `--only auth`), the
//! domain's config type and its module (see `shared::module::Module`).

use crate::config::register_domains;

register_domains! {
    /// `[auth]`, `KEEL_AUTH__*`: accounts, sessions, organizations, API keys.
    auth: auth::AuthConfig => auth::AuthModule,
    /// `[billing]`, `KEEL_BILLING__*`: plans, credits on a ledger, budget holds, usage, invoices.
    billing: billing::BillingConfig => billing::BillingModule,
    /// `[inference]`, `KEEL_INFERENCE__*`: OpenAI-compatible model calls through configured providers.
    inference: inference::InferenceConfig => inference::InferenceModule,
}
