//! What a page answers when it cannot be shown: the cluster's refusal with its
//! message (written for users) under the matching HTTP status, or a request of
//! ours that makes no sense. Always HTML-escaped plain text inside the page.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub(crate) enum UiError {
    /// The cluster refused or failed the call.
    #[error("{}", .0.message())]
    Cluster(#[from] tonic::Status),
    /// Nothing here by that name.
    #[error("{0}")]
    NotFound(String),
    /// A request we cannot act on (a bad parameter), naming the problem.
    #[error("{0}")]
    BadRequest(String),
    /// Refused by the UI itself (a missing CSRF token, a foreign origin or host).
    #[error("{0}")]
    Forbidden(String),
    /// Something that should not happen did (a bug of ours, or an answer
    /// from the cluster that contradicts itself).
    #[error("{0}")]
    Internal(String),
    /// A template failed to render (a bug of ours).
    #[error("rendering the page failed: {0}")]
    Render(#[from] minijinja::Error),
}

impl UiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            UiError::Cluster(status) => http_status(status.code()),
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::Render(_) | UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The HTTP status that says what a gRPC code says.
pub(crate) fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::BAD_GATEWAY,
    }
}

/// Escapes text for HTML (the error page is built without the templates, so
/// that it shows even when they fail).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "page failed");
        }
        let code = match &self {
            UiError::Cluster(status) => format!(" ({:?})", status.code()),
            _ => String::new(),
        };
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Ferry: {}</title>\
             <link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body>\
             <nav><a href=\"/runs\">Runs</a> <a href=\"/workers\">Workers</a> \
             <a href=\"/schedules\">Schedules</a> <a href=\"/cluster\">Cluster</a></nav>\
             <main><h1>{}</h1><p class=\"error\" id=\"error\">{}{}</p></main></body></html>",
            status.as_u16(),
            escape(status.canonical_reason().unwrap_or("Error")),
            escape(&self.to_string()),
            escape(&code),
        );
        (status, Html(body)).into_response()
    }
}

pub(crate) type PageResult = Result<Response, UiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x' & \"y\")</script>"),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
    }

    #[test]
    fn cluster_codes_map_to_http() {
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(tonic::Code::PermissionDenied),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            http_status(tonic::Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
