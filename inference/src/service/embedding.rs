//! Embeddings for retrieval: the provider path of `/v1/embeddings` (deployments, retries,
//! circuit breakers, metering), for an organization rather than a request, billed under a key
//! the caller derives from its work (a chunk batch of an ingestion, a search request), so that
//! a job that runs again is not charged again.

use super::{Admission, InferenceService, Meter, billing_error};
use crate::api::{EmbeddingRequest, RateLimits, Usage};
use crate::config::ModelKind;
use crate::error::InferenceError;
use crate::tokens;
use billing::{Money, ReserveRequest};
use tokio::time::Instant;

/// Who pays for an embedding call, and the idempotency key of its charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payer {
    pub organization_id: auth::OrganizationId,
    pub api_key_id: Option<auth::ApiKeyId>,
    /// The hold's idempotency key and the usage's request id.
    pub key: String,
}

#[derive(serde::Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl InferenceService {
    /// Embeds `texts` with the embedding model `model`, one vector per text in order. The plan
    /// must allow the model and the budget cover it (`insufficient_quota`); the usage is settled
    /// under `payer.key` exactly once however often this runs with that key.
    pub(crate) async fn embed_for(
        &self,
        payer: &Payer,
        model: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let started = Instant::now();
        let model = self.model(model, ModelKind::Embedding)?;
        let billing = &self.inner.billing;
        let limits = billing.limits(payer.organization_id).await.map_err(billing_error)?;
        if !limits.allows_model(&model.name) {
            return Err(InferenceError::ModelNotAllowed(model.name.clone()));
        }
        let estimate: u64 = texts.iter().map(|t| tokens::estimate(t)).sum();
        let amount =
            model.deployments.iter().map(|d| billing::cost_of(&d.price(), estimate, 0)).max().unwrap_or(Money::ZERO);
        let mut admission = Admission {
            billing: billing.clone(),
            organization_id: payer.organization_id,
            api_key_id: payer.api_key_id,
            model: model.name.clone(),
            request_id: payer.key.clone(),
            hold: None,
            closed: false,
            _slot: None,
            tokens: None,
            limits: RateLimits::default(),
        };
        if amount > Money::ZERO {
            let hold = billing
                .reserve(ReserveRequest {
                    organization_id: payer.organization_id,
                    api_key_id: payer.api_key_id,
                    amount,
                    idempotency_key: payer.key.clone(),
                    ttl: self.inner.hold_ttl,
                })
                .await
                .map_err(billing_error)?;
            admission.hold = Some(hold.id);
        }
        let request = EmbeddingRequest {
            model: String::new(),
            input: serde_json::Value::Array(texts.iter().cloned().map(serde_json::Value::String).collect()),
            extra: Default::default(),
        };
        let (response, deployment, _permit, _waited) = self.embed_attempts(&model, started, &request).await?;
        let mut meter = Meter::new(deployment.clone(), Vec::new(), started, admission);
        let prompt = if response.usage.prompt_tokens > 0 {
            response.usage.prompt_tokens
        } else {
            texts.iter().map(|t| tokens::count(&deployment.upstream_model, t)).sum()
        };
        meter.usage = Some(Usage::new(prompt, 0));
        meter.finish(true);
        let mut items: Vec<Item> = serde_json::from_str(response.data.get())
            .map_err(|e| InferenceError::Upstream(format!("not an embedding answer: {e}")))?;
        items.sort_by_key(|i| i.index);
        if items.len() != texts.len() || items.iter().enumerate().any(|(n, i)| i.index != n) {
            return Err(InferenceError::Upstream(format!(
                "the provider answered {} embeddings for {} inputs",
                items.len(),
                texts.len()
            )));
        }
        Ok(items.into_iter().map(|i| i.embedding).collect())
    }
}
