//! The id of the request being served, carried along the async task that serves it, so that a
//! call to a remote domain service sends the same `x-request-id` and both logs share it.

use std::future::Future;

/// The header that carries request ids, in and out and between services.
pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `f` with `id` as the current request id.
pub async fn scope<F: Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The current request id, inside [`scope`].
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_id_is_visible_inside_the_scope_only() {
        assert_eq!(current(), None);
        let seen = scope("req-1".into(), async { current() }).await;
        assert_eq!(seen.as_deref(), Some("req-1"));
        assert_eq!(current(), None);
    }
}
