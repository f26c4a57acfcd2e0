//! Embedders: the [`Embedder`] trait, and (feature `local-embedder`) [`LocalEmbedder`], a
//! sentence-transformer (BERT family, e.g. all-MiniLM-L6-v2) run in process on the CPU with candle.
//!
//! The local embedder loads a directory holding `config.json`, `tokenizer.json` and
//! `model.safetensors` (and, when present, `sentence_bert_config.json` for the maximum sequence
//! length), tokenises with the model's own tokenizer, runs BERT in batches (texts sorted by length
//! so a batch pads little), mean-pools over the attention mask and L2-normalises, exactly as
//! sentence-transformers does for this model family.

use crate::error::Result;

/// Turns texts into vectors. Implementations are synchronous and CPU- or I/O-bound: call them
/// from a blocking context.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// The model's name, for metering and logs.
    fn model(&self) -> &str;
    /// The length of every vector.
    fn dimensions(&self) -> usize;
    /// One vector per text, in order. Errors: `Embedder`.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

#[cfg(feature = "local-embedder")]
pub use local::LocalEmbedder;

#[cfg(feature = "local-embedder")]
mod local {
    use std::path::Path;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config};
    use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

    use super::Embedder;
    use crate::error::{Result, SearchError};

    fn err(context: &str) -> impl Fn(&dyn std::fmt::Display) -> SearchError + '_ {
        move |e| SearchError::Embedder(format!("{context}: {e}"))
    }

    /// A sentence-transformer run in process on the CPU.
    pub struct LocalEmbedder {
        name: String,
        model: BertModel,
        tokenizer: Tokenizer,
        dimensions: usize,
        batch_size: usize,
        device: Device,
    }

    impl std::fmt::Debug for LocalEmbedder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LocalEmbedder")
                .field("model", &self.name)
                .field("dimensions", &self.dimensions)
                .field("batch_size", &self.batch_size)
                .finish()
        }
    }

    #[derive(serde::Deserialize)]
    struct SentenceBertConfig {
        max_seq_length: usize,
    }

    impl LocalEmbedder {
        /// Loads the model in `dir`; `batch_size` texts run through the model at once.
        /// Errors: `Embedder` (a missing or malformed file).
        pub fn load(dir: &Path, batch_size: usize) -> Result<Self> {
            let read = |name: &str| {
                std::fs::read(dir.join(name))
                    .map_err(|e| SearchError::Embedder(format!("cannot read {}: {e}", dir.join(name).display())))
            };
            let config: Config = serde_json::from_slice(&read("config.json")?).map_err(|e| err("config.json")(&e))?;
            let max_len = match read("sentence_bert_config.json") {
                Ok(raw) => {
                    serde_json::from_slice::<SentenceBertConfig>(&raw)
                        .map_err(|e| err("sentence_bert_config.json")(&e))?
                        .max_seq_length
                }
                Err(_) => 512,
            };
            let mut tokenizer =
                Tokenizer::from_bytes(read("tokenizer.json")?).map_err(|e| err("tokenizer.json")(&e))?;
            tokenizer
                .with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
            tokenizer
                .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
                .map_err(|e| err("tokenizer truncation")(&e))?;
            let device = Device::Cpu;
            let vb = VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)
                .map_err(|e| err("model.safetensors")(&e))?;
            let model = BertModel::load(vb, &config).map_err(|e| err("model")(&e))?;
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "local".into());
            Ok(Self { name, model, tokenizer, dimensions: config.hidden_size, batch_size: batch_size.max(1), device })
        }

        fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| err("tokenize")(&e))?;
            let rows = encodings.len();
            let len = encodings.first().map_or(0, |e| e.get_ids().len());
            let mut ids = Vec::with_capacity(rows * len);
            let mut mask = Vec::with_capacity(rows * len);
            for e in &encodings {
                ids.extend_from_slice(e.get_ids());
                mask.extend_from_slice(e.get_attention_mask());
            }
            let run = || -> candle_core::Result<Vec<Vec<f32>>> {
                let ids = Tensor::from_vec(ids, (rows, len), &self.device)?;
                let mask = Tensor::from_vec(mask, (rows, len), &self.device)?;
                let types = ids.zeros_like()?;
                let hidden = self.model.forward(&ids, &types, Some(&mask))?;
                // Mean over the real tokens, then L2 normalisation.
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&m)?.sum(1)?;
                let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
                let mean = summed.broadcast_div(&counts)?;
                let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
                mean.broadcast_div(&norms)?.to_vec2::<f32>()
            };
            run().map_err(|e| err("forward")(&e))
        }
    }

    impl Embedder for LocalEmbedder {
        fn model(&self) -> &str {
            &self.name
        }

        fn dimensions(&self) -> usize {
            self.dimensions
        }

        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            // Sort by length so that each batch pads to a similar length; restore the order.
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by_key(|&i| texts[i].len());
            let mut out = vec![Vec::new(); texts.len()];
            for batch in order.chunks(self.batch_size) {
                let part: Vec<&str> = batch.iter().map(|&i| texts[i]).collect();
                for (&i, v) in batch.iter().zip(self.embed_batch(&part)?) {
                    out[i] = v;
                }
            }
            Ok(out)
        }
    }
}
