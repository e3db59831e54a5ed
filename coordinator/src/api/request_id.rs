//! The id a client gives a request (`ferry-request-id` metadata): the same on
//! every retry of one CLI call, whichever member it reaches, so that the audit
//! log records a command the client sent again as a repeat instead of a second
//! acceptance. [`RequestScope`] wraps the control service and runs each call
//! inside a task-local scope holding the id, which `Node::propose_as` reads
//! ([`current`]); the member that takes a request with no id makes one.

use tonic::codegen::http;
use tonic::codegen::{Context, Poll, Service};
use tonic::server::NamedService;

/// The metadata key of a request's id.
pub const REQUEST_ID_HEADER: &str = "ferry-request-id";

/// The most characters of an id taken from a client.
const MAX_ID_LEN: usize = 64;

tokio::task_local! {
    static REQUEST_ID: Option<String>;
}

/// The id of the request being served on this task, if its client gave one.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok().flatten()
}

/// An id as a client may give it: 1 to 64 of `A-Z a-z 0-9 - _`.
fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A service whose calls run with their request's id in scope.
#[derive(Clone)]
pub struct RequestScope<S>(pub S);

impl<S, B> Service<http::Request<B>> for RequestScope<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|id| valid(id))
            .map(str::to_string);
        Box::pin(REQUEST_ID.scope(id, self.0.call(request)))
    }
}

impl<S: NamedService> NamedService for RequestScope<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_taken() {
        assert!(valid("0f3a9c-1_b"));
        assert!(!valid(""));
        assert!(!valid("a b"));
        assert!(!valid("x/../y"));
        assert!(!valid(&"a".repeat(65)));
    }

    #[tokio::test]
    async fn the_id_is_there_only_inside_the_scope() {
        assert_eq!(current(), None);
        let seen = REQUEST_ID
            .scope(Some("abc".into()), async { current() })
            .await;
        assert_eq!(seen.as_deref(), Some("abc"));
    }
}
