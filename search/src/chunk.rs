//! Token-aware chunking with OpenAI's `static` strategy: windows of at most
//! `max_chunk_size_tokens` tokens (cl100k_base, the tokenizer of OpenAI's embedding models), each
//! sharing up to `chunk_overlap_tokens` tokens with the previous one. Within the second half of a
//! window the cut goes before a heading if there is one, else between paragraphs, else after a
//! sentence, else at the token limit; the next window starts at the earliest paragraph boundary
//! inside the allowed overlap. Each chunk carries the SHA-256 of its text, and [`ContentHash`] of a
//! whole file (with its chunking parameters) lets a caller skip re-ingesting identical content.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tiktoken_rs::CoreBPE;

use crate::error::{Result, SearchError};
use crate::parse::{BlockKind, Document};

/// OpenAI's bounds for `max_chunk_size_tokens`.
pub const MAX_CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u32> = 100..=4096;
/// OpenAI's default chunk size.
pub const DEFAULT_MAX_CHUNK_SIZE_TOKENS: u32 = 800;
/// OpenAI's default overlap.
pub const DEFAULT_CHUNK_OVERLAP_TOKENS: u32 = 400;

/// The parameters of the `static` strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StaticChunking {
    /// At most this many tokens per chunk, 100 to 4096.
    pub max_chunk_size_tokens: u32,
    /// Tokens shared with the previous chunk, at most half of `max_chunk_size_tokens`.
    pub chunk_overlap_tokens: u32,
}

impl Default for StaticChunking {
    fn default() -> Self {
        Self {
            max_chunk_size_tokens: DEFAULT_MAX_CHUNK_SIZE_TOKENS,
            chunk_overlap_tokens: DEFAULT_CHUNK_OVERLAP_TOKENS,
        }
    }
}

impl StaticChunking {
    /// Checks OpenAI's bounds; the error names the parameter as the API does.
    pub fn validate(&self) -> Result<()> {
        if !MAX_CHUNK_SIZE_RANGE.contains(&self.max_chunk_size_tokens) {
            return Err(SearchError::invalid(
                "chunking_strategy.static.max_chunk_size_tokens",
                format!("must be between 100 and 4096, got {}", self.max_chunk_size_tokens),
            ));
        }
        if self.chunk_overlap_tokens > self.max_chunk_size_tokens / 2 {
            return Err(SearchError::invalid(
                "chunking_strategy.static.chunk_overlap_tokens",
                format!(
                    "must not exceed half of max_chunk_size_tokens ({}), got {}",
                    self.max_chunk_size_tokens / 2,
                    self.chunk_overlap_tokens
                ),
            ));
        }
        Ok(())
    }
}

/// The `chunking_strategy` object of OpenAI's API: `{"type": "auto"}` or
/// `{"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChunkingStrategy {
    /// The defaults, 800/400.
    #[default]
    Auto,
    /// Explicit parameters.
    Static {
        /// The parameters.
        #[serde(rename = "static")]
        params: StaticChunking,
    },
}

impl ChunkingStrategy {
    /// The parameters this strategy means, validated.
    pub fn resolve(&self) -> Result<StaticChunking> {
        let params = match self {
            Self::Auto => StaticChunking::default(),
            Self::Static { params } => *params,
        };
        params.validate()?;
        Ok(params)
    }
}

/// A SHA-256 digest, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The digest of some bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The digest that identifies an ingestion's result: the file's bytes and the chunking
    /// parameters. Two ingestions with the same hash produce the same chunks.
    pub fn of_file(bytes: &[u8], params: &StaticChunking) -> Self {
        let mut h = Sha256::new();
        h.update(bytes);
        h.update(params.max_chunk_size_tokens.to_le_bytes());
        h.update(params.chunk_overlap_tokens.to_le_bytes());
        Self(h.finalize().into())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the document, from 0.
    pub index: u32,
    /// The text, trimmed.
    pub text: String,
    /// Its length in cl100k_base tokens.
    pub tokens: u32,
    /// SHA-256 of `text`.
    pub hash: ContentHash,
}

/// Splits documents into chunks, counting cl100k_base tokens.
///
/// The tokenizer's tables (about 20 MiB once built, 0.1 s to build) are tiktoken's process-wide
/// singleton, built on the first chunking or count rather than here: a process that never
/// ingests (a gateway that only serves chat, or searches) never pays for them.
#[derive(Clone, Copy, Default)]
pub struct Chunker;

impl fmt::Debug for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunker").field("tokenizer", &"cl100k_base").finish()
    }
}

/// How good a place to cut a token boundary is.
const SENTENCE: u8 = 1;
const PARAGRAPH: u8 = 2;
const HEADING: u8 = 3;

impl Chunker {
    /// A chunker; the tokenizer is loaded on first use.
    pub fn new() -> Self {
        Self
    }

    fn bpe(&self) -> &'static CoreBPE {
        tiktoken_rs::cl100k_base_singleton()
    }

    /// The number of tokens in a text.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.bpe().encode_ordinary(text).len()
    }

    /// Chunks a document. Returns no chunk for a document without text.
    pub fn chunk(&self, doc: &Document, params: &StaticChunking) -> Result<Vec<Chunk>> {
        params.validate()?;
        let text = doc.text();
        let tokens = self.bpe().encode_ordinary(&text);
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        // offsets[i] = byte offset where token i starts; offsets[n] = text.len().
        let mut offsets = Vec::with_capacity(n + 1);
        let mut at = 0usize;
        for &t in &tokens {
            offsets.push(at);
            let bytes = self.bpe().decode_bytes(&[t]).map_err(|e| SearchError::Index(format!("tokenizer: {e}")))?;
            at += bytes.len();
        }
        offsets.push(at);
        if at != text.len() {
            return Err(SearchError::Index(format!("tokenizer offsets cover {at} of {} bytes", text.len())));
        }

        let strength = boundary_strengths(doc, &text, &offsets);
        let max = params.max_chunk_size_tokens as usize;
        let overlap = params.chunk_overlap_tokens as usize;
        let mut chunks = Vec::new();
        let mut start = 0usize;
        loop {
            let hard_end = (start + max).min(n);
            let cut = if hard_end == n {
                n
            } else {
                // Cut in the second half of the window (so the next start, at most `overlap` ≤ max/2
                // tokens back, still moves forward) at the strongest boundary, the latest on ties.
                let lo = start + max / 2 + 1;
                let mut best = (0u8, hard_end);
                for (i, &s) in strength.iter().enumerate().take(hard_end + 1).skip(lo) {
                    if s >= best.0 && s > 0 {
                        best = (s, i);
                    }
                }
                best.1
            };
            let piece = slice(&text, offsets[start], offsets[cut]).trim();
            if !piece.is_empty() {
                chunks.push(Chunk {
                    index: chunks.len() as u32,
                    text: piece.to_owned(),
                    tokens: (cut - start) as u32,
                    hash: ContentHash::of(piece.as_bytes()),
                });
            }
            if cut >= n {
                break;
            }
            let next = if overlap == 0 {
                cut
            } else {
                let want = cut.saturating_sub(overlap);
                (want..cut)
                    .find(|&i| strength[i] >= PARAGRAPH)
                    .or_else(|| (want..cut).find(|&i| strength[i] >= SENTENCE))
                    .unwrap_or(want)
            };
            start = next.max(start + 1);
        }
        Ok(chunks)
    }
}

/// For each token index, how good a cut before that token is (0 = none).
fn boundary_strengths(doc: &Document, text: &str, offsets: &[usize]) -> Vec<u8> {
    let n = offsets.len() - 1;
    let bytes = text.as_bytes();
    let mut strength: Vec<u8> = (0..=n)
        .map(|i| {
            let off = offsets[i];
            if i == 0 || i == n {
                return 0;
            }
            match bytes.get(off.wrapping_sub(1)) {
                Some(b'\n') => SENTENCE,
                Some(b'.' | b'!' | b'?') => SENTENCE,
                _ => 0,
            }
        })
        .collect();
    let mut at = 0usize;
    for (i, block) in doc.blocks.iter().enumerate() {
        if i > 0 {
            at += 2;
        }
        // The first token that starts at or after the block's first byte.
        let t = offsets.partition_point(|&o| o < at);
        if t > 0 && t < n {
            let s = match block.kind {
                BlockKind::Heading(_) => HEADING,
                BlockKind::Paragraph => PARAGRAPH,
            };
            strength[t] = strength[t].max(s);
        }
        at += block.text.len();
    }
    strength
}

/// `text[start..end]` widened to character boundaries (a token may end inside a multi-byte
/// character).
fn slice(text: &str, mut start: usize, mut end: usize) -> &str {
    while start < text.len() && !text.is_char_boundary(start) {
        start += 1;
    }
    while end < text.len() && !text.is_char_boundary(end) {
        end += 1;
    }
    text.get(start..end.max(start)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Format, parse};

    fn chunker() -> Chunker {
        Chunker::new()
    }

    fn params(max: u32, overlap: u32) -> StaticChunking {
        StaticChunking { max_chunk_size_tokens: max, chunk_overlap_tokens: overlap }
    }

    #[test]
    fn strategy_json_is_openais_shape_and_bounds_are_checked() {
        let s: ChunkingStrategy = serde_json::from_str(
            r#"{"type":"static","static":{"max_chunk_size_tokens":300,"chunk_overlap_tokens":100}}"#,
        )
        .unwrap();
        assert_eq!(s.resolve().unwrap(), params(300, 100));
        let auto: ChunkingStrategy = serde_json::from_str(r#"{"type":"auto"}"#).unwrap();
        assert_eq!(auto.resolve().unwrap(), params(800, 400));
        assert_eq!(serde_json::to_value(auto).unwrap(), serde_json::json!({"type": "auto"}));

        let err = params(99, 0).validate().unwrap_err();
        assert!(
            matches!(err, SearchError::InvalidParameter { ref param, .. } if param == "chunking_strategy.static.max_chunk_size_tokens")
        );
        assert!(params(4097, 0).validate().is_err());
        assert!(params(4096, 2048).validate().is_ok());
        let err = params(800, 401).validate().unwrap_err();
        assert!(
            matches!(err, SearchError::InvalidParameter { ref param, .. } if param == "chunking_strategy.static.chunk_overlap_tokens")
        );
    }

    #[test]
    fn empty_and_tiny_documents() {
        let c = chunker();
        assert!(c.chunk(&Document::default(), &params(100, 0)).unwrap().is_empty());
        let doc = parse(Format::Text, b"Hello world.").unwrap();
        let chunks = c.chunk(&doc, &StaticChunking::default()).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, "Hello world.");
        assert_eq!(chunks[0].tokens, 3);
        assert_eq!(chunks[0].hash, ContentHash::of(b"Hello world."));
    }

    #[test]
    fn chunks_respect_the_limit_and_overlap() {
        let c = chunker();
        let para = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        let text = (0..30).map(|i| format!("Paragraph {i}. {para}")).collect::<Vec<_>>().join("\n\n");
        let doc = parse(Format::Text, text.as_bytes()).unwrap();
        let p = params(400, 100);
        let chunks = c.chunk(&doc, &p).unwrap();
        assert!(chunks.len() > 5);
        for (i, ch) in chunks.iter().enumerate() {
            assert_eq!(ch.index as usize, i);
            assert!(c.count_tokens(&ch.text) <= 400 + 1, "chunk {i} has {} tokens", c.count_tokens(&ch.text));
        }
        // Consecutive chunks overlap (the next starts before the previous ends) by at most ~100 tokens.
        for w in chunks.windows(2) {
            let tail: String = w[0].text.chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            assert!(w[1].text.contains(tail.trim()) || w[1].text.starts_with("Paragraph"), "no overlap");
        }
        // Without overlap, the chunks tile the text exactly.
        let tiles = c.chunk(&doc, &params(400, 0)).unwrap();
        let joined: String = tiles.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(" ");
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(squash(&joined), squash(&doc.text()));
    }

    #[test]
    fn cuts_prefer_headings_then_paragraphs() {
        let c = chunker();
        let body = "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod. ".repeat(12);
        let md = format!("# One\n\n{body}\n\n{body}\n\n# Two\n\n{body}\n\n# Three\n\n{body}");
        let doc = parse(Format::Markdown, md.as_bytes()).unwrap();
        let chunks = c.chunk(&doc, &params(300, 0)).unwrap();
        assert!(chunks.len() >= 2);
        // Every chunk but the first starts with a heading or at a paragraph start.
        for ch in &chunks[1..] {
            assert!(
                ch.text.starts_with('T') || ch.text.starts_with("Lorem"),
                "cut mid-paragraph: {:?}",
                &ch.text[..30]
            );
        }
        assert!(chunks.iter().skip(1).any(|c| c.text.starts_with("Two") || c.text.starts_with("Three")));
    }

    #[test]
    fn one_huge_paragraph_and_multibyte_text() {
        let c = chunker();
        let text = "日本語のテキストと絵文字🦀。".repeat(500);
        let doc = parse(Format::Text, text.as_bytes()).unwrap();
        let chunks = c.chunk(&doc, &params(100, 50)).unwrap();
        assert!(chunks.len() > 10);
        for ch in &chunks {
            assert!(c.count_tokens(&ch.text) <= 102);
        }
        let no_space = "x".repeat(100_000);
        let doc = parse(Format::Text, no_space.as_bytes()).unwrap();
        let chunks = c.chunk(&doc, &params(4096, 2048)).unwrap();
        assert!(!chunks.is_empty());
    }

    #[test]
    fn file_hash_depends_on_content_and_parameters() {
        let a = ContentHash::of_file(b"abc", &params(800, 400));
        assert_eq!(a, ContentHash::of_file(b"abc", &params(800, 400)));
        assert_ne!(a, ContentHash::of_file(b"abd", &params(800, 400)));
        assert_ne!(a, ContentHash::of_file(b"abc", &params(800, 300)));
        assert_eq!(a.to_hex().len(), 64);
    }
}
