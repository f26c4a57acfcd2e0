//! Helpers for the HTTP clients of domain services: reading the error envelope back.

use crate::error::{ErrorBody, ErrorKind};

/// An error answer from a remote domain service, as far as it could be read.
#[derive(Debug, Clone)]
pub struct RemoteError {
    pub status: u16,
    /// The envelope, when the body was one.
    pub body: Option<ErrorBody>,
    pub retry_after_secs: Option<u64>,
}

impl RemoteError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::from_status(self.status)
    }

    pub fn code(&self) -> &str {
        self.body.as_ref().map_or("", |b| b.code.as_str())
    }

    pub fn message(&self) -> String {
        self.body.as_ref().map_or_else(|| format!("remote service answered {}", self.status), |b| b.message.clone())
    }

    pub fn param(&self) -> Option<String> {
        self.body.as_ref().and_then(|b| b.param.clone())
    }

    /// Reads a non-success response.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let retry_after_secs = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = response.json::<crate::error::ErrorEnvelope>().await.ok().map(|envelope| envelope.error);
        Self { status, body, retry_after_secs }
    }
}
