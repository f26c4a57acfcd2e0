//! Reciprocal rank fusion of the keyword and vector result lists.
//!
//! `score(d) = Σ_lists weight / (rrf_k + rank(d))`, ranks from 1, divided by the best possible
//! score over the lists that took part, so a chunk ranked first by every list scores 1 and scores
//! stay in (0, 1] like OpenAI's. The weights are OpenAI's `ranking_options.hybrid_search`
//! (`embedding_weight`, `text_weight`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, SearchError};
use crate::keyword::KeywordHit;
use crate::vector::VectorHit;

/// Weights of the fusion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HybridWeights {
    /// Weight of the vector ranking.
    pub embedding_weight: f32,
    /// Weight of the keyword ranking.
    pub text_weight: f32,
    /// RRF's constant `k` (60 in the original paper).
    pub rrf_k: f32,
}

impl Default for HybridWeights {
    fn default() -> Self {
        Self { embedding_weight: 1.0, text_weight: 1.0, rrf_k: 60.0 }
    }
}

impl HybridWeights {
    /// Weights must be finite and non-negative, not both zero; `rrf_k` non-negative.
    pub fn validate(&self) -> Result<()> {
        let ok = |w: f32| w.is_finite() && w >= 0.0;
        if !ok(self.embedding_weight) || !ok(self.text_weight) || !ok(self.rrf_k) {
            return Err(SearchError::invalid(
                "ranking_options.hybrid_search",
                "weights and rrf_k must be finite and non-negative",
            ));
        }
        if self.embedding_weight + self.text_weight <= 0.0 {
            return Err(SearchError::invalid(
                "ranking_options.hybrid_search",
                "embedding_weight and text_weight cannot both be zero",
            ));
        }
        Ok(())
    }
}

/// A fused result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedHit {
    /// The chunk's id.
    pub id: Uuid,
    /// The normalised fused score, in (0, 1].
    pub score: f32,
    /// Rank in the keyword list (from 1), if there.
    pub text_rank: Option<u32>,
    /// BM25 score, if in the keyword list.
    pub text_score: Option<f32>,
    /// Rank in the vector list (from 1), if there.
    pub vector_rank: Option<u32>,
    /// Cosine similarity, if in the vector list.
    pub vector_score: Option<f32>,
}

/// Fuses the two lists (each best first) and keeps the `k` best. An empty list takes no part in
/// the normalisation, so keyword-only search still scores its first hit 1.
pub fn reciprocal_rank_fusion(
    text: &[KeywordHit],
    vector: &[VectorHit],
    weights: &HybridWeights,
    k: usize,
) -> Vec<FusedHit> {
    let mut fused: HashMap<Uuid, FusedHit> = HashMap::new();
    let blank =
        |id| FusedHit { id, score: 0.0, text_rank: None, text_score: None, vector_rank: None, vector_score: None };
    for (i, h) in text.iter().enumerate() {
        let e = fused.entry(h.id).or_insert_with(|| blank(h.id));
        if e.text_rank.is_none() {
            e.text_rank = Some(i as u32 + 1);
            e.text_score = Some(h.score);
            e.score += weights.text_weight / (weights.rrf_k + i as f32 + 1.0);
        }
    }
    for (i, h) in vector.iter().enumerate() {
        let e = fused.entry(h.id).or_insert_with(|| blank(h.id));
        if e.vector_rank.is_none() {
            e.vector_rank = Some(i as u32 + 1);
            e.vector_score = Some(h.score);
            e.score += weights.embedding_weight / (weights.rrf_k + i as f32 + 1.0);
        }
    }
    let mut best = 0.0;
    if !text.is_empty() {
        best += weights.text_weight;
    }
    if !vector.is_empty() {
        best += weights.embedding_weight;
    }
    let best = best / (weights.rrf_k + 1.0);
    let mut hits: Vec<FusedHit> = fused
        .into_values()
        .filter(|h| h.score > 0.0)
        .map(|mut h| {
            h.score = (h.score / best).min(1.0);
            h
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    hits.truncate(k);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn fuses_by_rank_and_weight() {
        let text = [KeywordHit { id: id(1), score: 9.0 }, KeywordHit { id: id(2), score: 5.0 }];
        let vector = [VectorHit { id: id(2), score: 0.9 }, VectorHit { id: id(3), score: 0.8 }];
        let w = HybridWeights::default();
        let hits = reciprocal_rank_fusion(&text, &vector, &w, 10);
        // id 2 is in both lists: first.
        assert_eq!(hits[0].id, id(2));
        assert_eq!(hits[0].text_rank, Some(2));
        assert_eq!(hits[0].vector_rank, Some(1));
        assert_eq!(hits.len(), 3);
        let expected = (1.0 / 62.0 + 1.0 / 61.0) / (2.0 / 61.0);
        assert!((hits[0].score - expected).abs() < 1e-6);

        // Weighting the vectors heavily puts the vector list's first hits ahead of id 1.
        let w = HybridWeights { embedding_weight: 5.0, text_weight: 0.1, rrf_k: 60.0 };
        let hits = reciprocal_rank_fusion(&text, &vector, &w, 2);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [id(2), id(3)]);
    }

    #[test]
    fn keyword_only_scores_the_first_hit_one() {
        let text = [KeywordHit { id: id(7), score: 3.0 }];
        let hits = reciprocal_rank_fusion(&text, &[], &HybridWeights::default(), 5);
        assert_eq!(hits.len(), 1);
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        assert!(reciprocal_rank_fusion(&[], &[], &HybridWeights::default(), 5).is_empty());
    }

    #[test]
    fn weights_are_validated() {
        assert!(HybridWeights::default().validate().is_ok());
        assert!(HybridWeights { embedding_weight: 0.0, text_weight: 0.0, rrf_k: 60.0 }.validate().is_err());
        assert!(HybridWeights { embedding_weight: -1.0, ..Default::default() }.validate().is_err());
        assert!(HybridWeights { rrf_k: f32::NAN, ..Default::default() }.validate().is_err());
    }
}
