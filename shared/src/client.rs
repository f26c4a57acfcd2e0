//! The remote client every domain's HTTP client is built on. It owns what all of them share:
//! the base URL, timeouts, the request id (and trace context) of the request being served,
//! bearer credentials, the caller's client IP, JSON bodies and answers, server-sent-event
//! streams, and the mapping of error envelopes and transport failures back to the domain's own
//! error type. A domain's `Http…Client` is left with its paths and types.

pub use crate::config::RemoteConfig;
use crate::error::{DomainError, ErrorEnvelope, WireError};
use crate::secret::Secret;
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::time::Duration;

/// A client of one remote domain service.
#[derive(Debug, Clone)]
pub struct RemoteClient {
    /// The domain's name, for messages.
    service: &'static str,
    /// Without a trailing slash. Not logged: it may carry credentials.
    base_url: Secret,
    http: reqwest::Client,
}

impl RemoteClient {
    /// A client of the `service` domain at `base_url` (`http(s)://host:port`).
    pub fn new(service: &'static str, base_url: &Secret, config: &RemoteConfig) -> Result<Self, String> {
        let base = base_url.expose().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("the {service} service url must start with http:// or https://"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .read_timeout(Duration::from_millis(config.request_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(config.pool_idle_timeout_secs))
            .build()
            .map_err(|e| format!("{service} http client: {}", e.without_url()))?;
        Ok(Self { service, base_url: Secret::new(base), http })
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// A call of `method` on `path` (which starts with `/`).
    pub fn call(&self, method: Method, path: &str) -> Call<'_> {
        Call { client: self, builder: self.http.request(method, format!("{}{path}", self.base_url.expose())) }
    }

    pub fn get(&self, path: &str) -> Call<'_> {
        self.call(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Call<'_> {
        self.call(Method::POST, path)
    }

    pub fn put(&self, path: &str) -> Call<'_> {
        self.call(Method::PUT, path)
    }

    pub fn patch(&self, path: &str) -> Call<'_> {
        self.call(Method::PATCH, path)
    }

    pub fn delete(&self, path: &str) -> Call<'_> {
        self.call(Method::DELETE, path)
    }
}

/// One request being built.
#[derive(Debug)]
#[must_use = "a call does nothing until it is sent"]
pub struct Call<'a> {
    client: &'a RemoteClient,
    builder: RequestBuilder,
}

impl Call<'_> {
    /// Acts with the caller's credential.
    pub fn bearer(mut self, token: &Secret) -> Self {
        self.builder = self.builder.bearer_auth(token.expose());
        self
    }

    /// Forwards the caller's address, so a remote service that trusts this process as a proxy
    /// (its `http.trusted_proxies`) sees the real client, e.g. for throttling.
    pub fn client_ip(mut self, ip: Option<IpAddr>) -> Self {
        if let Some(ip) = ip {
            self.builder = self.builder.header("x-forwarded-for", ip.to_string());
        }
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.builder = self.builder.header(name, value);
        self
    }

    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Self {
        self.builder = self.builder.json(body);
        self
    }

    /// Sends `form` as `multipart/form-data` (an upload).
    pub fn multipart(mut self, form: reqwest::multipart::Form) -> Self {
        self.builder = self.builder.multipart(form);
        self
    }

    pub fn query<Q: Serialize + ?Sized>(mut self, query: &Q) -> Self {
        self.builder = self.builder.query(query);
        self
    }

    /// Sends the request; a non-success answer becomes the domain's error, and a failure to
    /// reach the service its `Unavailable` variant.
    pub async fn send<E: DomainError>(self) -> Result<Response, E> {
        let service = self.client.service;
        // The trace context of the request being served, so both processes log one trace.
        let mut builder = crate::trace::with_trace_context(self.builder);
        // Read when the request leaves, inside the task serving the caller's request.
        if let Some(id) = crate::request_id::current() {
            builder = builder.header(crate::request_id::HEADER, id);
        }
        let response =
            builder.send().await.map_err(|e| E::from_wire(WireError::unreachable(service, e.without_url())))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(E::from_wire(read_error(response).await))
    }

    /// Sends the request and reads a JSON answer.
    pub async fn fetch<T: DeserializeOwned, E: DomainError>(self) -> Result<T, E> {
        let service = self.client.service;
        self.send::<E>()
            .await?
            .json()
            .await
            .map_err(|e| E::internal(format!("the {service} service sent an unreadable answer: {}", e.without_url())))
    }

    /// Sends the request and ignores the body of a successful answer.
    pub async fn execute<E: DomainError>(self) -> Result<(), E> {
        self.send::<E>().await.map(drop)
    }

    /// Sends the request and reads the answer as server-sent events, as they arrive.
    pub async fn events<E: DomainError>(self) -> Result<impl Stream<Item = Result<Event, E>> + use<E>, E> {
        let service = self.client.service;
        let response = self.send::<E>().await?;
        Ok(response.bytes_stream().eventsource().map(move |item| match item {
            Ok(event) => Ok(Event { event: event.event, data: event.data, id: event.id }),
            Err(e) => Err(E::from_wire(WireError::unreachable(service, format!("event stream broken: {e}")))),
        }))
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event type (`message` when the server named none).
    pub event: String,
    pub data: String,
    pub id: String,
}

impl Event {
    /// The event's data as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}

/// Reads a non-success answer: its envelope, or what can be said of it without one.
async fn read_error(response: Response) -> WireError {
    let status = response.status().as_u16();
    let retry_after_secs = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    match response.json::<ErrorEnvelope>().await {
        Ok(ErrorEnvelope { error }) => {
            WireError { status, code: error.code, message: error.message, param: error.param, retry_after_secs }
        }
        Err(_) => WireError {
            status,
            code: String::new(),
            message: format!("remote service answered {status} without an error envelope"),
            param: None,
            retry_after_secs,
        },
    }
}
