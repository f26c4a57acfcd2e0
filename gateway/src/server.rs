//! Starting and stopping the HTTP server.

use crate::app::{AppState, app, select};
use crate::compose;
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::guard::{Guarded, Limits};
use crate::limits::RateLimits;
use crate::monitor;
use actix_http::HttpService;
use actix_rt::net::TcpStream;
use actix_server::Server;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::{AppConfig, ServerHandle};
use shared::config::HttpConfig;
use shared::jobs::{Worker, WorkerHandle};
use std::collections::HashMap;
use std::future::{Future, ready};
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A gateway serving in the background. Dropping it stops the server at once (without waiting
/// for in-flight requests); [`RunningGateway::stop`] stops it gracefully.
#[derive(Debug)]
pub struct RunningGateway {
    /// The address actually bound: with port 0 in the config, the port the OS picked.
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// The background workers of the in-process domains, when this process runs them.
    workers: Vec<(&'static str, WorkerHandle)>,
    /// Every built domain, told when the server has stopped (`Component::shutdown`).
    components: Vec<compose::Built>,
    /// How long each domain's shutdown may take (`jobs.shutdown_timeout_secs`).
    shutdown_timeout: Duration,
    /// Samples the platform's states into the metrics.
    sampler: JoinHandle<()>,
}

impl RunningGateway {
    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the server stops: on SIGTERM or SIGINT (after in-flight requests finish, up
    /// to `http.shutdown_timeout_secs`), or when stopped through [`RunningGateway::handle`].
    ///
    /// Then each domain writes what it buffers (billing's leased settlements), and the workers
    /// stop: they claim nothing more, and finish or release what they hold (each step within
    /// `jobs.shutdown_timeout_secs`).
    pub async fn wait(mut self) -> Result<(), GatewayError> {
        let served = match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result.map_err(GatewayError::Server),
                Err(e) => Err(GatewayError::Task(e.to_string())),
            },
            None => Ok(()),
        };
        for built in std::mem::take(&mut self.components) {
            if tokio::time::timeout(self.shutdown_timeout, built.component.shutdown()).await.is_err() {
                tracing::warn!(
                    domain = built.module.name(),
                    timeout_secs = self.shutdown_timeout.as_secs(),
                    "domain shutdown timed out"
                );
            }
        }
        for (domain, worker) in std::mem::take(&mut self.workers) {
            let report = worker.shutdown().await;
            tracing::info!(
                domain,
                jobs.released = report.released,
                jobs.unwritten = report.unwritten,
                "workers stopped"
            );
        }
        served
    }

    /// Stops accepting connections and waits for the server to stop; `graceful` lets in-flight
    /// requests finish first.
    pub async fn stop(self, graceful: bool) -> Result<(), GatewayError> {
        self.handle.stop(graceful).await;
        self.wait().await
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.sampler.abort();
        for (_, worker) in &self.workers {
            worker.begin_shutdown();
        }
        if self.task.is_some() {
            // The command is sent when `stop` is called; the returned future only waits for it.
            drop(self.handle.stop(false));
        }
    }
}

/// Binds `config.http.addr` (first, so that a busy port is reported before any other work),
/// builds every domain (see [`compose::build`]) and serves the routes of `only` (every domain
/// when `None` or empty) in the background. Returns once the workers run: the address can be
/// used at once.
///
/// Must run inside a Tokio runtime (`#[tokio::main]`, `#[actix_web::main]`, `#[tokio::test]`).
/// Logging is not set up here: that belongs to the binary.
/// Runs the background workers too when `jobs.enabled` is set (the default).
pub async fn start(config: GatewayConfig, only: Option<Vec<String>>) -> Result<RunningGateway, GatewayError> {
    let served = select(only)?;
    let workers = config.jobs.enabled;
    launch(config, served, workers).await
}

/// `gateway worker`: the background workers of every in-process domain, with no domain route
/// (the process still serves `/healthz`, `/readyz` for its domains, and the platform routes).
pub async fn start_worker(config: GatewayConfig) -> Result<RunningGateway, GatewayError> {
    launch(config, Vec::new(), true).await
}

async fn launch(
    config: GatewayConfig,
    served: Vec<&'static str>,
    workers: bool,
) -> Result<RunningGateway, GatewayError> {
    let bind_error = |source| GatewayError::Bind { addr: config.http.addr.clone(), source };
    let listener = TcpListener::bind(&config.http.addr).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;

    let metrics = crate::metrics::registry();
    let compose::Composition { built, platform } = compose::build(&config, &metrics, !served.is_empty()).await?;
    let workers = if workers { start_workers(&config, &built, &metrics)? } else { Vec::new() };
    let queues = built.iter().filter_map(|b| b.component.jobs()).map(|(jobs, _)| jobs).collect();
    let components = built.clone();
    let sampler =
        monitor::spawn_sampler(metrics.clone(), platform.redis.clone(), platform.rate_limit_fallback.clone(), queues);
    let state = if served.is_empty() {
        AppState::for_workers(built, &config.http)?
    } else {
        AppState::new(built, served, &config.http)?
    };
    let state = state.with_metrics(metrics.clone()).with_rate_limits(Arc::new(RateLimits {
        limiter: platform.rate_limiter.clone(),
        config: config.rate_limits.clone(),
        classes: HashMap::new(),
        metrics,
    }));
    let names = state.served().to_vec();
    let mut server = server(listener, state, &config.http).map_err(bind_error)?;
    let handle = server.handle();
    // The first poll starts the workers (building each one's app) and the accept thread, and
    // returns once they run: after it, connections are served even if the caller then blocks
    // its thread, and a failed start is reported here rather than by `wait`.
    match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut server).poll(cx))).await {
        Poll::Pending => {}
        Poll::Ready(Err(e)) => return Err(GatewayError::Server(e)),
        Poll::Ready(Ok(())) => {
            return Err(GatewayError::Server(std::io::Error::other("the server stopped as soon as it started")));
        }
    }
    let task = tokio::spawn(server);
    tracing::info!(http.addr = %addr, domains = ?names, workers = workers.len(), "gateway listening");
    let shutdown_timeout = Duration::from_secs(config.jobs.shutdown_timeout_secs);
    Ok(RunningGateway { addr, handle, task: Some(task), workers, components, shutdown_timeout, sampler })
}

/// Starts the workers of every in-process domain that has jobs.
fn start_workers(
    config: &GatewayConfig,
    built: &[compose::Built],
    metrics: &shared::metrics::Metrics,
) -> Result<Vec<(&'static str, WorkerHandle)>, GatewayError> {
    let mut workers = Vec::new();
    for b in built {
        let Some((jobs, registry)) = b.component.jobs() else { continue };
        let domain = b.module.name();
        let worker = Worker::start(&jobs, registry, &config.jobs, Arc::new(monitor::JobsMetrics(metrics.clone())))
            .map_err(|e| GatewayError::Domain { domain, source: Box::new(e) })?;
        // Every queue's series exist from the start, at 0, so dashboards and autoscalers see an
        // empty queue rather than nothing.
        for queue in worker.queues() {
            metrics.jobs().queue(domain, queue);
        }
        workers.push((domain, worker));
    }
    Ok(workers)
}

/// The HTTP/1.1 server: what `actix_web::HttpServer::listen` builds, with the guard of
/// [`crate::guard`] between each connection and actix's codec.
fn server(listener: TcpListener, state: AppState, http: &HttpConfig) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let limits = Limits {
        max_head_bytes: http.max_head_bytes,
        head_timeout: Duration::from_millis(http.request_head_timeout_ms),
    };
    let mut builder = Server::build().shutdown_timeout(http.shutdown_timeout_secs);
    if http.workers > 0 {
        builder = builder.workers(http.workers);
    }
    let shutdown = builder.graceful_shutdown_signal();
    let builder = builder.listen("keel-http", listener, move || {
        let shutdown = shutdown.clone();
        let application = app(state.clone()).into_factory().map_err(|error: actix_web::Error| error.error_response());
        let http = HttpService::build()
            .client_request_timeout(Duration::ZERO) // the guard times request heads
            .client_disconnect_timeout(Duration::from_secs(1))
            // A client that closes its side has gone: actix then drops the response at once
            // (a stream stops, its provider call is cancelled) instead of writing on until a
            // write fails. HTTP/1.1 clients do not half-close and wait for an answer.
            .h1_allow_half_closed(false)
            // Streamed answers count what was actually written (`shared::http::WriteProgress`).
            .on_connect_ext(|io: &Guarded<TcpStream>, data: &mut actix_web::dev::Extensions| {
                data.insert(io.progress());
            })
            .local_addr(addr)
            .graceful_shutdown_signal(move || {
                let signal = shutdown.clone();
                async move { signal.notified().await }
            })
            // The app's config (host and address for URL generation) is not used by Keel's routes;
            // actix keeps its constructor private, so the default stands in.
            .h1(map_config(application, |_| AppConfig::default()));
        fn_service(move |io: TcpStream| {
            // No Nagle: a streamed answer writes each event as it comes, and a small write
            // must not wait for the client's delayed ACK of the previous one (about 40 ms).
            if let Err(error) = io.set_nodelay(true) {
                tracing::debug!(error = %error, "cannot set TCP_NODELAY");
            }
            let peer = io.peer_addr().ok();
            ready(Ok((Guarded::new(io, peer, limits), peer)))
        })
        .and_then(http)
    })?;
    Ok(builder.run())
}
