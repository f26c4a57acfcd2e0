//! Starting and stopping the HTTP server.

use crate::app::{AppState, app};
use crate::compose;
use crate::config::GatewayConfig;
use crate::domain::Domain;
use crate::error::GatewayError;
use actix_web::HttpServer;
use actix_web::dev::ServerHandle;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::task::Poll;
use tokio::task::JoinHandle;

/// A gateway serving in the background. Dropping it stops the server at once (without waiting
/// for in-flight requests); [`RunningGateway::stop`] stops it gracefully.
#[derive(Debug)]
pub struct RunningGateway {
    /// The address actually bound: with port 0 in the config, the port the OS picked.
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningGateway {
    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the server stops: on SIGTERM or SIGINT (after in-flight requests finish, up
    /// to `http.shutdown_timeout_secs`), or when stopped through [`RunningGateway::handle`].
    pub async fn wait(mut self) -> Result<(), GatewayError> {
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result.map_err(GatewayError::Server),
                Err(e) => Err(GatewayError::Task(e.to_string())),
            },
            None => Ok(()),
        }
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
        if self.task.is_some() {
            // The command is sent when `stop` is called; the returned future only waits for it.
            drop(self.handle.stop(false));
        }
    }
}

/// Builds every domain (see [`compose::build`]), binds `config.http.addr`, and serves the
/// routes of `only` (every domain when `None` or empty) in the background. Returns once the
/// workers run: the address can be used at once.
///
/// Must run inside a Tokio runtime (`#[tokio::main]`, `#[actix_web::main]`, `#[tokio::test]`).
/// Logging is not set up here: that belongs to the binary.
pub async fn start(config: GatewayConfig, only: Option<Vec<Domain>>) -> Result<RunningGateway, GatewayError> {
    let domains = Domain::select(only);
    let metrics = crate::metrics::registry();
    let services = compose::build(&config, &metrics).await?;
    let state = AppState::new(services, domains, &config.http)?.with_metrics(metrics);

    let bind_error = |source| GatewayError::Bind { addr: config.http.addr.clone(), source };
    let listener = TcpListener::bind(&config.http.addr).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;

    let names: Vec<&str> = state.domains().iter().map(|d| d.as_str()).collect();
    let mut server = HttpServer::new(move || app(state.clone())).shutdown_timeout(config.http.shutdown_timeout_secs);
    if config.http.workers > 0 {
        server = server.workers(config.http.workers);
    }
    let mut server = server.listen(listener).map_err(bind_error)?.run();
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
    tracing::info!(http.addr = %addr, domains = ?names, "gateway listening");
    Ok(RunningGateway { addr, handle, task: Some(task) })
}
