//! Upstream providers: the OpenAI-compatible HTTP client, the built-in echo model, and the
//! reader of server-sent events.
//!
//! Every call runs under the provider's deadlines: connect, first token (the answer's head and,
//! for a stream, its first event), idle (between two reads) and total. A failure is classified
//! once ([`Failure`]): whether it may be retried, and what the caller is told.

use crate::config::{EchoConfig, ProviderConfig};
use crate::error::InferenceError;
use bytes::{Bytes, BytesMut};
use shared::Secret;
use std::time::Duration;
use tokio::time::Instant;

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection could not be opened (refused, reset, DNS, TLS).
    Connect(String),
    /// A deadline passed; the phase names which (`connect`, `first_token`, `idle`, `total`).
    Timeout(&'static str),
    /// The provider answered with an error status.
    Status { status: u16, retry_after: Option<Duration>, message: String },
    /// The answer could not be read (not JSON, not the expected shape).
    Malformed(String),
    /// The connection broke while the answer was being read.
    Broken(String),
}

impl Failure {
    /// Whether another attempt may succeed: connection errors, timeouts, 429, 5xx, malformed or
    /// broken answers. (Never used once a byte of the answer went to the client.)
    pub(crate) fn retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => true,
        }
    }

    /// The `kind` label of `keel_inference_upstream_errors_total` (each listed in
    /// `shared::metrics::inference::UPSTREAM_ERROR_KINDS`).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::Malformed(_) => "malformed",
            Self::Broken(_) => "broken",
        }
    }

    pub(crate) fn into_error(self) -> InferenceError {
        match self {
            Self::Timeout(phase) => InferenceError::UpstreamTimeout(format!("{phase} deadline passed")),
            Self::Status { status: 429, retry_after, .. } => InferenceError::RateLimited {
                limit: "the provider's rate limit".into(),
                retry_after_secs: retry_after.map_or(1, |d| d.as_secs().max(1)),
            },
            Self::Status { status, message, .. } if (400..500).contains(&status) => {
                InferenceError::UpstreamRejected(message)
            }
            Self::Status { status, message, .. } => InferenceError::Upstream(format!("status {status}: {message}")),
            Self::Connect(m) => InferenceError::Upstream(format!("connect: {m}")),
            Self::Malformed(m) => InferenceError::Upstream(format!("malformed answer: {m}")),
            Self::Broken(m) => InferenceError::Upstream(format!("broken answer: {m}")),
        }
    }
}

/// The deadlines of one provider.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// The provider routes Keel calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    ChatCompletions,
    Embeddings,
}

/// An OpenAI-compatible server.
#[derive(Debug)]
pub(crate) struct OpenAiProvider {
    http: reqwest::Client,
    /// Each endpoint's URL, parsed once: parsing it per call (host validation and IDNA
    /// included) cost about 1 % of a chat call's CPU. Not logged: it may carry credentials.
    chat_url: reqwest::Url,
    embeddings_url: reqwest::Url,
    api_key: Option<Secret>,
    pub timeouts: Timeouts,
}

impl OpenAiProvider {
    pub(crate) fn new(name: &str, config: &ProviderConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("inference.providers.{name}: http client: {}", e.without_url()))?;
        let base = config.base_url.trim_end_matches('/');
        let url = |path: &str| {
            reqwest::Url::parse(&format!("{base}{path}"))
                .map_err(|e| format!("inference.providers.{name}.base_url is not a URL: {e}"))
        };
        Ok(Self {
            http,
            chat_url: url("/chat/completions")?,
            embeddings_url: url("/embeddings")?,
            api_key: config.api_key.clone(),
            timeouts: Timeouts {
                first_token: Duration::from_millis(config.first_token_timeout_ms),
                idle: Duration::from_millis(config.idle_timeout_ms),
                total: Duration::from_millis(config.total_timeout_ms),
            },
        })
    }

    /// Posts `body` to `endpoint` and waits for a successful answer's head, within the
    /// first-token deadline and `deadline`. An error status is read (within the idle deadline)
    /// and returned as a failure.
    pub(crate) async fn post(
        &self,
        endpoint: Endpoint,
        body: Bytes,
        deadline: Instant,
    ) -> Result<reqwest::Response, Failure> {
        let url = match endpoint {
            Endpoint::ChatCompletions => &self.chat_url,
            Endpoint::Embeddings => &self.embeddings_url,
        };
        let mut request =
            self.http.post(url.clone()).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let head_by = deadline.min(Instant::now() + self.timeouts.first_token);
        let response = match tokio::time::timeout_at(head_by, request.send()).await {
            Err(_) => return Err(Failure::Timeout(if head_by < deadline { "first_token" } else { "total" })),
            Ok(Err(e)) if e.is_timeout() => return Err(Failure::Timeout("connect")),
            Ok(Err(e)) if e.is_connect() => return Err(Failure::Connect(error_chain(&e.without_url()))),
            Ok(Err(e)) => return Err(Failure::Broken(error_chain(&e.without_url()))),
            Ok(Ok(response)) => response,
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let mut body = BodyReader::new(response, self.timeouts.idle, deadline);
        let text = body.read_all(64 * 1024).await.unwrap_or_default();
        Err(Failure::Status { status, retry_after, message: upstream_message(&text, status) })
    }
}

/// The message of a provider's error answer: its OpenAI envelope's message, else a generic one.
fn upstream_message(body: &[u8], status: u16) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("the provider answered {status}"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Reads an answer's body under the idle and total deadlines.
#[derive(Debug)]
pub(crate) struct BodyReader {
    response: reqwest::Response,
    idle: Duration,
    deadline: Instant,
}

impl BodyReader {
    pub(crate) fn new(response: reqwest::Response, idle: Duration, deadline: Instant) -> Self {
        Self { response, idle, deadline }
    }

    /// Changes the longest wait for the next read (the first event of a stream waits up to the
    /// first-token deadline, the later ones up to the idle deadline).
    pub(crate) fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    /// The next piece of the body; `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        let by = self.deadline.min(Instant::now() + self.idle);
        match tokio::time::timeout_at(by, self.response.chunk()).await {
            Err(_) => Err(Failure::Timeout(if by < self.deadline { "idle" } else { "total" })),
            Ok(Err(e)) => Err(Failure::Broken(error_chain(&e.without_url()))),
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }

    /// The whole body, up to `limit` bytes.
    pub(crate) async fn read_all(&mut self, limit: usize) -> Result<Bytes, Failure> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.next().await? {
            if body.len() + chunk.len() > limit {
                return Err(Failure::Malformed(format!("the answer is larger than {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// Splits a body of server-sent events into the `data` of each event.
#[derive(Debug)]
pub(crate) struct SseReader {
    body: BodyReader,
    buffer: BytesMut,
    done: bool,
}

/// What the next event of a stream is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SseEvent {
    /// An event's data (several `data:` lines joined with `\n`).
    Data(String),
    /// `data: [DONE]`.
    Done,
    /// The body ended without `[DONE]`.
    End,
}

impl SseReader {
    pub(crate) fn new(body: BodyReader) -> Self {
        Self { body, buffer: BytesMut::new(), done: false }
    }

    pub(crate) fn body_mut(&mut self) -> &mut BodyReader {
        &mut self.body
    }

    pub(crate) async fn next(&mut self) -> Result<SseEvent, Failure> {
        loop {
            if let Some(event) = take_event(&mut self.buffer)? {
                if event.is_empty() {
                    continue; // a comment or a keep-alive
                }
                if event == "[DONE]" {
                    self.done = true;
                    return Ok(SseEvent::Done);
                }
                return Ok(SseEvent::Data(event));
            }
            if self.done {
                return Ok(SseEvent::Done);
            }
            match self.body.next().await? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None if self.buffer.iter().all(u8::is_ascii_whitespace) => return Ok(SseEvent::End),
                None => return Err(Failure::Broken("the stream ended in the middle of an event".into())),
            }
        }
    }
}

/// Takes one complete event off the front of `buffer`: its data, or `None` when the buffer holds
/// no complete event yet.
fn take_event(buffer: &mut BytesMut) -> Result<Option<String>, Failure> {
    let Some((end, separator)) = find_blank_line(buffer) else { return Ok(None) };
    let raw = buffer.split_to(end + separator);
    let text = std::str::from_utf8(&raw[..end]).map_err(|_| Failure::Malformed("an event is not UTF-8".into()))?;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(value) = line.trim_end_matches('\r').strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    Ok(Some(data))
}

/// The position of the first blank line (`\n\n` or `\r\n\r\n`) and its length.
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buffer.len() {
        if buffer[i] == b'\n' {
            if buffer.get(i + 1) == Some(&b'\n') {
                return Some((i, 2));
            }
            if buffer.get(i + 1) == Some(&b'\r') && buffer.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
    }
    None
}

/// The built-in echo model.
#[derive(Debug, Clone)]
pub(crate) struct Echo {
    pub config: EchoConfig,
}

impl Echo {
    /// The words of the answer, each with the space that precedes it: one chunk (and one
    /// output token) per word.
    pub(crate) fn words(text: &str) -> Vec<String> {
        text.split_whitespace().enumerate().map(|(i, w)| if i == 0 { w.to_owned() } else { format!(" {w}") }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_across_reads() {
        let mut buffer = BytesMut::from(&b"data: {\"a\":1}\n\n: keep-alive\n\ndata: x\r\ndata: y\r\n\r\ndata: [DO"[..]);
        assert_eq!(take_event(&mut buffer).unwrap().as_deref(), Some("{\"a\":1}"));
        assert_eq!(take_event(&mut buffer).unwrap().as_deref(), Some(""));
        assert_eq!(take_event(&mut buffer).unwrap().as_deref(), Some("x\ny"));
        assert_eq!(take_event(&mut buffer).unwrap(), None);
        buffer.extend_from_slice(b"NE]\n\n");
        assert_eq!(take_event(&mut buffer).unwrap().as_deref(), Some("[DONE]"));
    }

    #[test]
    fn failures_say_whether_to_retry() {
        let status = |status| Failure::Status { status, retry_after: None, message: String::new() };
        assert!(status(429).retryable());
        assert!(status(503).retryable());
        assert!(!status(400).retryable());
        assert!(Failure::Connect("refused".into()).retryable());
        assert_eq!(status(400).into_error().code(), "upstream_rejected");
        assert_eq!(status(502).into_error().code(), "upstream_error");
        assert_eq!(Failure::Timeout("idle").into_error().code(), "upstream_timeout");
    }

    #[test]
    fn echo_streams_word_by_word() {
        assert_eq!(Echo::words("  hello   big world "), ["hello", " big", " world"]);
    }

    use shared::DomainError;
}
