//! The embedder of chunks and queries: an embedding model of `[inference.models]` through the
//! providers (billed like `/v1/embeddings`), or (feature `local-embedder`) a sentence-transformer
//! run in process, whose usage is recorded at no cost. Both bill under the caller's key, so a
//! re-run ingestion is not charged twice.

use crate::error::InferenceError;
use crate::service::{InferenceService, Payer};
#[cfg(feature = "local-embedder")]
use billing::BillingApi;
#[cfg(feature = "local-embedder")]
use std::sync::Arc;

/// Where embeddings come from.
#[derive(Clone)]
pub(crate) enum Embedder {
    /// A public embedding model, through the inference service's providers.
    Provider { service: InferenceService, model: String },
    /// A model run in this process.
    #[cfg(feature = "local-embedder")]
    Local { model: Arc<search::LocalEmbedder>, billing: Arc<dyn BillingApi> },
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("model", &self.model()).finish()
    }
}

impl Embedder {
    /// The model's name: recorded with each ingestion, so that chunks embedded by another
    /// model are never reused.
    pub(crate) fn model(&self) -> &str {
        match self {
            Self::Provider { model, .. } => model,
            #[cfg(feature = "local-embedder")]
            Self::Local { model, .. } => search::Embedder::model(model.as_ref()),
        }
    }

    /// The vector length, when the model knows it before its first call.
    pub(crate) fn dimensions(&self) -> Option<usize> {
        match self {
            Self::Provider { .. } => None,
            #[cfg(feature = "local-embedder")]
            Self::Local { model, .. } => Some(search::Embedder::dimensions(model.as_ref())),
        }
    }

    /// One vector per text, in order, billed to `payer`.
    pub(crate) async fn embed(&self, payer: &Payer, texts: Vec<String>) -> Result<Vec<Vec<f32>>, InferenceError> {
        match self {
            Self::Provider { service, model } => service.embed_for(payer, model, texts).await,
            #[cfg(feature = "local-embedder")]
            Self::Local { model, billing } => {
                let embedder = model.clone();
                let input = texts.clone();
                let vectors = tokio::task::spawn_blocking(move || {
                    let refs: Vec<&str> = input.iter().map(String::as_str).collect();
                    search::Embedder::embed(embedder.as_ref(), &refs)
                })
                .await
                .map_err(|e| InferenceError::Internal(format!("embedder task: {e}")))?
                .map_err(|e| InferenceError::Internal(e.to_string()))?;
                let name = search::Embedder::model(model.as_ref()).to_owned();
                let input_tokens = texts.iter().map(|t| crate::tokens::estimate(t)).sum();
                let usage = billing::UsageRecord {
                    request_id: payer.key.clone(),
                    model: name,
                    api_key_id: payer.api_key_id,
                    input_tokens,
                    output_tokens: 0,
                    cost: billing::Money::ZERO,
                };
                billing
                    .record_usage(billing::RecordUsageRequest { organization_id: payer.organization_id, usage })
                    .await
                    .map_err(|e| match e {
                        billing::BillingError::Unavailable(cause) => {
                            InferenceError::Unavailable(format!("billing: {cause}"))
                        }
                        other => InferenceError::Internal(format!("billing: {other}")),
                    })?;
                Ok(vectors)
            }
        }
    }
}

/// A vector as stored: little-endian f32s.
pub(crate) fn to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A stored vector; None when the bytes are not a whole number of f32s.
pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_through_their_bytes() {
        let v = vec![0.25, -1.5, 3.0e-7, f32::MAX];
        assert_eq!(from_bytes(&to_bytes(&v)), Some(v));
        assert_eq!(from_bytes(&[1, 2, 3]), None);
    }
}
