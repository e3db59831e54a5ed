//! What keeps another web site from acting through `ferry ui` with the user's
//! identity.
//!
//! - Every request must name this server in `Host` (`127.0.0.1:PORT`,
//!   `localhost:PORT`, the bound address, or a name given with
//!   `--allow-host`): a page served from another name that resolves to this
//!   server (DNS rebinding) is refused before anything is read. There is no
//!   "any host" mode, exposed or not.
//! - A state-changing request (POST) must carry this server's token twice, in
//!   a form field and in a cookie (`SameSite=Strict`, `HttpOnly`), and, when
//!   the browser says where the form came from (`Origin`), come from this
//!   server. The token is 256 random bits made at start; a page of another
//!   site can neither read it nor send the cookie.
//!
//! Pure: no IO, tested below.

use std::net::SocketAddr;

use axum::http::{HeaderMap, header};

use super::error::UiError;

pub(crate) struct Guard {
    token: String,
    cookie_name: String,
    /// The `Host` values this server answers to.
    hosts: Vec<String>,
}

/// The form field that carries the token.
pub(crate) const TOKEN_FIELD: &str = "csrf";

impl Guard {
    /// A guard for a server on `address` that also answers to `names`
    /// (`--allow-host`: host names, with or without the port).
    pub(crate) fn new(address: SocketAddr, names: &[String]) -> Guard {
        Guard::with_token(address, names, ferry_client::new_request_id())
    }

    fn with_token(address: SocketAddr, names: &[String], token: String) -> Guard {
        let port = address.port();
        let mut hosts = Vec::new();
        if !address.ip().is_unspecified() {
            hosts.push(address.to_string());
        }
        if address.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
        }
        for name in names {
            // A name without a port is reached on this server's port.
            let with_port = match name.rsplit_once(':') {
                Some((_, p)) if p.parse::<u16>().is_ok() && !name.ends_with(']') => name.clone(),
                _ => format!("{name}:{port}"),
            };
            hosts.push(with_port);
        }
        Guard {
            token,
            // Cookies are per host, not per port: two UIs on one machine each
            // keep their own.
            cookie_name: format!("ferry_ui_csrf_{port}"),
            hosts,
        }
    }

    /// Whether any `Host` would be accepted (no address or name to answer to).
    pub(crate) fn answers_nobody(&self) -> bool {
        self.hosts.is_empty()
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The `Set-Cookie` value every page sends.
    pub(crate) fn cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie_name, self.token
        )
    }

    pub(crate) fn check_host(&self, headers: &HeaderMap) -> Result<(), UiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            Ok(())
        } else {
            Err(UiError::Forbidden(format!(
                "this server answers to {} only, not to host {host:?}",
                self.hosts.join(" or ")
            )))
        }
    }

    /// Checks a POST: the token in its form (`field`) and its cookie, and its
    /// origin.
    pub(crate) fn check_post(
        &self,
        headers: &HeaderMap,
        field: Option<&str>,
    ) -> Result<(), UiError> {
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !origin.eq_ignore_ascii_case(&format!("http://{host}")) {
                return Err(UiError::Forbidden(format!(
                    "refused: the form came from {origin}, not from this server"
                )));
            }
        }
        let Some(field) = field.filter(|f| !f.is_empty()) else {
            return Err(UiError::Forbidden(
                "refused: the request carries no CSRF token (reload the page and try again)".into(),
            ));
        };
        if !same(field, &self.token) {
            return Err(UiError::Forbidden(
                "refused: the CSRF token is not this server's (the page is from an earlier \
                 'ferry ui'; reload it)"
                    .into(),
            ));
        }
        let cookie = cookie_value(headers, &self.cookie_name);
        if !cookie.is_some_and(|c| same(c, &self.token)) {
            return Err(UiError::Forbidden(
                "refused: the CSRF cookie is missing or wrong (reload the page and try again)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Compares in time independent of where the texts differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard() -> Guard {
        Guard::with_token("127.0.0.1:8080".parse().unwrap(), &[], "t0ken".into())
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn host_must_be_this_server() {
        let g = guard();
        assert!(
            g.check_host(&headers(&[(header::HOST, "127.0.0.1:8080")]))
                .is_ok()
        );
        assert!(
            g.check_host(&headers(&[(header::HOST, "localhost:8080")]))
                .is_ok()
        );
        assert!(
            g.check_host(&headers(&[(header::HOST, "evil.example:8080")]))
                .is_err()
        );
        assert!(
            g.check_host(&headers(&[(header::HOST, "127.0.0.1:9999")]))
                .is_err()
        );
        assert!(g.check_host(&HeaderMap::new()).is_err());
        // Exposed: only the names given, never any host at all.
        let names = ["ui.example".to_string(), "10.0.0.5:8080".to_string()];
        let exposed = Guard::with_token("0.0.0.0:8080".parse().unwrap(), &names, "t".into());
        let host = |g: &Guard, h: &str| g.check_host(&headers(&[(header::HOST, h)])).is_ok();
        assert!(host(&exposed, "ui.example:8080"));
        assert!(host(&exposed, "10.0.0.5:8080"));
        assert!(!host(&exposed, "evil.example:8080"));
        assert!(!host(&exposed, "0.0.0.0:8080"));
        let unnamed = Guard::with_token("0.0.0.0:8080".parse().unwrap(), &[], "t".into());
        assert!(unnamed.answers_nobody());
        let bound = Guard::with_token("10.0.0.5:8080".parse().unwrap(), &[], "t".into());
        assert!(host(&bound, "10.0.0.5:8080"));
        assert!(!host(&bound, "localhost:8080"));
    }

    #[test]
    fn post_needs_token_cookie_and_origin() {
        let g = guard();
        let good = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://127.0.0.1:8080"),
            (header::COOKIE, "other=1; ferry_ui_csrf_8080=t0ken"),
        ]);
        assert!(g.check_post(&good, Some("t0ken")).is_ok());
        assert!(g.check_post(&good, None).is_err());
        assert!(g.check_post(&good, Some("")).is_err());
        assert!(g.check_post(&good, Some("t0kem")).is_err());
        let foreign = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://evil.example"),
            (header::COOKIE, "ferry_ui_csrf_8080=t0ken"),
        ]);
        assert!(g.check_post(&foreign, Some("t0ken")).is_err());
        let no_cookie = headers(&[(header::HOST, "127.0.0.1:8080")]);
        assert!(g.check_post(&no_cookie, Some("t0ken")).is_err());
        let other_port = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::COOKIE, "ferry_ui_csrf_9090=t0ken"),
        ]);
        assert!(g.check_post(&other_port, Some("t0ken")).is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
