//! Token counts when the provider reports none, and the cheap prompt estimate for budget holds.
//!
//! - OpenAI models (`gpt-*`, `o1`/`o3`/`o4*`, `chatgpt-*`, `text-embedding-*`): tiktoken-rs with
//!   the model's encoding, loaded on first use.
//! - Other models: one token per 4 bytes of text, rounded up (the usual rule of thumb for English
//!   with BPE vocabularies), plus 3 tokens per message for the chat format.
//!
//! The hold estimate is always the cheap rule (no tokenizer on the hot path).

use crate::api::ChatMessage;

/// Tokens added per chat message for its role and separators (OpenAI's documented overhead).
const PER_MESSAGE: u64 = 3;
/// Tokens that prime every reply.
const PER_REPLY: u64 = 3;

/// The cheap estimate of a text's tokens: bytes / 4, rounded up.
pub fn estimate(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// The cheap estimate of one chat message of `text`: its text and its role's overhead.
pub fn estimate_message(text: &str) -> u64 {
    PER_MESSAGE + estimate(text)
}

/// The cheap estimate of a conversation's prompt tokens: a message added to it adds exactly
/// its [`estimate_message`].
pub fn estimate_messages(messages: &[ChatMessage]) -> u64 {
    messages.iter().map(|m| estimate_message(&m.text())).sum::<u64>() + PER_REPLY
}

fn is_openai(model: &str) -> bool {
    ["gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-"].iter().any(|p| model.starts_with(p))
}

/// The tokens of `text` for `model`: tiktoken for OpenAI models, else the estimate.
pub fn count(model: &str, text: &str) -> u64 {
    if is_openai(model)
        && let Ok(bpe) = tiktoken_rs::bpe_for_model(model)
    {
        return bpe.encode_ordinary(text).len() as u64;
    }
    estimate(text)
}

/// The prompt tokens of a conversation for `model`.
pub fn count_messages(model: &str, messages: &[ChatMessage]) -> u64 {
    messages.iter().map(|m| PER_MESSAGE + count(model, &m.text())).sum::<u64>() + PER_REPLY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_round_up_and_openai_models_use_tiktoken() {
        assert_eq!(estimate(""), 0);
        assert_eq!(estimate("abcde"), 2);
        assert_eq!(count("llama-3", "hello hello"), 3);
        assert_eq!(count("gpt-4o-mini", " hello hello hello"), 3);
    }
}
