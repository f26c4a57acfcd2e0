//! Upstream providers: the OpenAI-compatible HTTP client, the built-in echo model, and the
//! reader of server-sent events.
//!
//! Every call runs under the provider's deadlines: connect, first token (the answer's head and,
//! for a stream, its first event), idle (between two reads) and total. A failure is classified
//! once ([`Failure`]): whether it may be retried, and what the caller is told.

use crate::config::{EchoConfig, ProviderConfig};
use crate::error::InferenceError;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
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
pub(crate) struct OpenAiProvider {
    transport: Transport,
    /// Each endpoint's URI, parsed once. Not logged: it may carry credentials.
    chat_url: Uri,
    embeddings_url: Uri,
    /// `Bearer <key>`, marked sensitive (never printed by `Debug`).
    authorization: Option<HeaderValue>,
    pub timeouts: Timeouts,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider").field("timeouts", &self.timeouts).finish_non_exhaustive()
    }
}

type Body = Full<Bytes>;

/// The pooled client, straight to the provider or through an HTTP proxy's `CONNECT` tunnel.
/// Both answer with the same future, so the call path does not care which.
enum Transport {
    Direct(Client<HttpsConnector<HttpConnector>, Body>),
    Tunneled(Client<HttpsConnector<Tunnel<HttpConnector>>, Body>),
}

impl Transport {
    /// A keep-alive pool per provider; HTTP/2 when the provider offers it over TLS (ALPN).
    /// `proxy`: the proxy settings, `Matcher::from_env()` in production (`HTTPS_PROXY`,
    /// `ALL_PROXY`, `NO_PROXY`); only `https://` providers go through a proxy.
    fn new(config: &ProviderConfig, url: &Uri, proxy: &Matcher) -> Result<Self, String> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(Duration::from_secs(30)));
        tcp.enforce_http(false);
        let tls = || {
            HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
                .map_err(|e| format!("tls: {e}"))
                .map(|b| b.https_or_http().enable_http1().enable_http2())
        };
        let mut pool = Client::builder(TokioExecutor::new());
        pool.pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.pool_max_idle_per_host);
        let intercept = (url.scheme_str() == Some("https")).then(|| proxy.intercept(url)).flatten();
        Ok(match intercept {
            None => Self::Direct(pool.build(tls()?.wrap_connector(tcp))),
            // Tunnel speaks plain HTTP to the proxy: a TLS or SOCKS proxy would only fail at
            // each call, so it is refused at start (without its URL: it may carry a password).
            Some(intercept) if intercept.uri().scheme_str() != Some("http") => {
                return Err("the proxy from HTTPS_PROXY / ALL_PROXY must be an http:// proxy".into());
            }
            Some(intercept) => {
                let mut tunnel = Tunnel::new(intercept.uri().clone(), tcp);
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Self::Tunneled(pool.build(tls()?.wrap_connector(tunnel)))
            }
        })
    }

    fn request(&self, request: Request<Body>) -> ResponseFuture {
        match self {
            Self::Direct(client) => client.request(request),
            Self::Tunneled(client) => client.request(request),
        }
    }
}

impl OpenAiProvider {
    pub(crate) fn new(name: &str, config: &ProviderConfig) -> Result<Self, String> {
        Self::with_proxy(name, config, &Matcher::from_env())
    }

    pub(crate) fn with_proxy(name: &str, config: &ProviderConfig, proxy: &Matcher) -> Result<Self, String> {
        let base = config.base_url.trim_end_matches('/');
        let url = |path: &str| {
            let url = format!("{base}{path}")
                .parse::<Uri>()
                .map_err(|e| format!("inference.providers.{name}.base_url is not a URL: {e}"))?;
            match (url.scheme_str(), url.host()) {
                (Some("http" | "https"), Some(_)) => Ok(url),
                _ => Err(format!("inference.providers.{name}.base_url is not an http:// or https:// URL")),
            }
        };
        let chat_url = url("/chat/completions")?;
        let authorization = match &config.api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                    .map_err(|_| format!("inference.providers.{name}.api_key is not a valid header value"))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            transport: Transport::new(config, &chat_url, proxy)
                .map_err(|e| format!("inference.providers.{name}: http client: {e}"))?,
            chat_url,
            embeddings_url: url("/embeddings")?,
            authorization,
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
    ) -> Result<Response<Incoming>, Failure> {
        let url = match endpoint {
            Endpoint::ChatCompletions => &self.chat_url,
            Endpoint::Embeddings => &self.embeddings_url,
        };
        let mut request = Request::post(url.clone()).header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = request.body(Full::new(body)).map_err(|e| Failure::Connect(e.to_string()))?;
        let head_by = deadline.min(Instant::now() + self.timeouts.first_token);
        let response = match tokio::time::timeout_at(head_by, self.transport.request(request)).await {
            Err(_) => return Err(Failure::Timeout(if head_by < deadline { "first_token" } else { "total" })),
            Ok(Err(e)) if e.is_connect() && timed_out(&e) => return Err(Failure::Timeout("connect")),
            Ok(Err(e)) if e.is_connect() => return Err(Failure::Connect(error_chain(&e))),
            Ok(Err(e)) => return Err(Failure::Broken(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let mut body = BodyReader::new(response, self.timeouts.idle, deadline);
        let text = body.read_all(64 * 1024).await.unwrap_or_default();
        Err(Failure::Status { status, retry_after, message: upstream_message(&text, status) })
    }
}

/// Whether a connect error is the connect deadline passing (an `io::Error` of kind `TimedOut`
/// somewhere in its chain).
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        source = cause.source();
    }
    false
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
    body: Incoming,
    idle: Duration,
    deadline: Instant,
}

impl BodyReader {
    pub(crate) fn new(response: Response<Incoming>, idle: Duration, deadline: Instant) -> Self {
        Self { body: response.into_body(), idle, deadline }
    }

    /// Changes the longest wait for the next read (the first event of a stream waits up to the
    /// first-token deadline, the later ones up to the idle deadline).
    pub(crate) fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    /// The next piece of the body; `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        let by = self.deadline.min(Instant::now() + self.idle);
        loop {
            match tokio::time::timeout_at(by, self.body.frame()).await {
                Err(_) => return Err(Failure::Timeout(if by < self.deadline { "idle" } else { "total" })),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(Failure::Broken(error_chain(&e))),
                // Trailers carry nothing Keel reads.
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Ok(Some(data)),
                    Err(_) => continue,
                },
            }
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
    use shared::Secret;

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

    /// A listener that records the head of the first request it gets and answers `answer`.
    async fn one_shot(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.shutdown().await.ok();
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, task)
    }

    fn provider(base_url: String, proxy: &Matcher) -> OpenAiProvider {
        let config = ProviderConfig {
            base_url,
            api_key: Some(Secret::new("sk-upstream".to_owned())),
            connect_timeout_ms: 200,
            ..ProviderConfig::default()
        };
        OpenAiProvider::with_proxy("p", &config, proxy).unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn an_https_provider_goes_through_the_proxy_tunnel() {
        let (proxy_addr, proxy) = one_shot("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n").await;
        let matcher = Matcher::builder().all(format!("http://keel:s3cret@{proxy_addr}")).build();
        let provider = provider("https://api.example.test/v1".into(), &matcher);
        let failure = provider.post(Endpoint::ChatCompletions, Bytes::from_static(b"{}"), soon()).await.unwrap_err();
        assert!(matches!(failure, Failure::Connect(_)), "{failure:?}");
        let head = proxy.await.unwrap();
        assert!(head.starts_with("CONNECT api.example.test:443 HTTP/1.1\r\n"), "{head}");
        // The proxy's credentials from its URL; the provider's key never reaches the proxy.
        assert!(head.contains("Proxy-Authorization: Basic a2VlbDpzM2NyZXQ="), "{head}");
        assert!(!head.contains("sk-upstream"), "{head}");
    }

    #[test]
    fn a_proxy_that_is_not_plain_http_is_refused_at_start() {
        for proxy in ["socks5://127.0.0.1:1080", "https://user:pw@proxy.example.test:443"] {
            let config = ProviderConfig { base_url: "https://api.example.test/v1".into(), ..ProviderConfig::default() };
            let error = OpenAiProvider::with_proxy("p", &config, &Matcher::builder().all(proxy.to_owned()).build())
                .unwrap_err();
            assert!(error.contains("must be an http:// proxy"), "{error}");
            assert!(!error.contains("pw"), "{error}");
        }
    }

    #[tokio::test]
    async fn plain_http_and_no_proxy_hosts_are_reached_directly() {
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        for no_proxy in [false, true] {
            let (upstream_addr, upstream) = one_shot(answer).await;
            // A proxy nobody listens on: going through it would fail.
            let mut matcher = Matcher::builder().all("http://127.0.0.1:9".to_owned());
            if no_proxy {
                matcher = matcher.no("127.0.0.1".to_owned());
            }
            let provider = provider(format!("http://{upstream_addr}/v1"), &matcher.build());
            let response = provider.post(Endpoint::Embeddings, Bytes::from_static(b"{}"), soon()).await.unwrap();
            let body = BodyReader::new(response, Duration::from_secs(5), soon()).read_all(1024).await.unwrap();
            assert_eq!(&body[..], b"{}");
            let head = upstream.await.unwrap();
            assert!(head.starts_with("POST /v1/embeddings HTTP/1.1\r\n"), "{head}");
            assert!(head.to_ascii_lowercase().contains("authorization: bearer sk-upstream"), "{head}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let provider = provider(format!("http://{addr}/v1"), &Matcher::builder().build());
        let failure = provider.post(Endpoint::ChatCompletions, Bytes::from_static(b"{}"), soon()).await.unwrap_err();
        assert!(matches!(failure, Failure::Connect(_)), "{failure:?}");
    }

    #[test]
    fn only_a_timed_out_cause_makes_a_connect_failure_a_timeout() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tcp connect error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = |kind| Wrapper(std::io::Error::new(kind, "connect"));
        assert!(timed_out(&io(std::io::ErrorKind::TimedOut)));
        assert!(!timed_out(&io(std::io::ErrorKind::ConnectionRefused)));
    }

    #[test]
    fn base_urls_must_be_http() {
        for bad in ["ftp://example.test/v1", "example.test/v1", "not a url"] {
            let config = ProviderConfig { base_url: bad.into(), ..ProviderConfig::default() };
            assert!(OpenAiProvider::with_proxy("p", &config, &Matcher::builder().build()).is_err(), "{bad}");
        }
    }

    #[test]
    fn echo_streams_word_by_word() {
        assert_eq!(Echo::words("  hello   big world "), ["hello", " big", " world"]);
    }

    use shared::DomainError;
}
