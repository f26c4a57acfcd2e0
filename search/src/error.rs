//! The one error type of the engine. Every variant is a value a caller can show or map: nothing in
//! this crate panics on bad input.

/// What went wrong in the retrieval engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// The file's format is not one the parsers read (by name, content type and content sniffing).
    #[error("unsupported file format: {0}")]
    UnsupportedFormat(String),
    /// The file claims a supported format but cannot be read as it.
    #[error("the {format} file could not be parsed: {reason}")]
    Corrupt {
        /// The format the parser tried.
        format: &'static str,
        /// What the parser reported.
        reason: String,
    },
    /// A request parameter is out of bounds; `param` names it as the API does.
    #[error("invalid {param}: {reason}")]
    InvalidParameter {
        /// The parameter's name, e.g. `chunking_strategy.static.max_chunk_size_tokens`.
        param: String,
        /// Why it was refused.
        reason: String,
    },
    /// A vector's length differs from the index's dimensions.
    #[error("vector has {got} dimensions, the index expects {expected}")]
    DimensionMismatch {
        /// The index's dimensions.
        expected: usize,
        /// The offending vector's length.
        got: usize,
    },
    /// The index backend failed (an I/O error, the ANN library, a lost connection for a remote
    /// backend). The message is for logs.
    #[error("index error: {0}")]
    Index(String),
    /// A snapshot could not be written or read.
    #[error("snapshot error: {0}")]
    Snapshot(String),
    /// The embedder failed to load or to run.
    #[error("embedder error: {0}")]
    Embedder(String),
}

impl SearchError {
    pub(crate) fn invalid(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidParameter { param: param.into(), reason: reason.into() }
    }

    pub(crate) fn index(err: impl std::fmt::Display) -> Self {
        Self::Index(err.to_string())
    }
}

/// The engine's result type.
pub type Result<T, E = SearchError> = std::result::Result<T, E>;
