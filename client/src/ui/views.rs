//! The page templates (minijinja, embedded in the binary) and the filters they
//! format values with. Every template is an `.html` file, so minijinja escapes
//! every value it prints; only SVG made by [`super::dag`] and [`super::chart`]
//! (which escape their own text) is printed with `|safe`.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, Value};

use super::error::UiError;
use crate::render;

/// The templates, by name.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("runs.html", include_str!("templates/runs.html")),
    ("run.html", include_str!("templates/run.html")),
    ("step.html", include_str!("templates/step.html")),
    ("log.html", include_str!("templates/log.html")),
    ("metrics.html", include_str!("templates/metrics.html")),
    ("compare.html", include_str!("templates/compare.html")),
    ("lineage.html", include_str!("templates/lineage.html")),
    ("workers.html", include_str!("templates/workers.html")),
    ("schedules.html", include_str!("templates/schedules.html")),
    ("cluster.html", include_str!("templates/cluster.html")),
];

pub(crate) struct Views {
    env: Environment<'static>,
}

impl Views {
    pub(crate) fn new(identity: String) -> Views {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|error| panic!("template {name} does not parse: {error}"));
        }
        env.add_global("identity", identity);
        env.add_filter("duration", |ms: i64| render::duration_ms(ms));
        env.add_filter("time", |ms: i64| {
            if ms <= 0 {
                String::new()
            } else {
                render::utc_time(ms)
            }
        });
        env.add_filter("bytes", |size: u64| render::bytes(size));
        env.add_filter("cpus", |millis: u64| render::cpus(millis));
        env.add_filter("short", |digest: String| {
            ferry_common::digest::short(&digest).to_string()
        });
        env.add_filter("metric", |value: f64| render::metric(value));
        Views { env }
    }

    /// Renders `name` with `context` into a page that also sets the CSRF
    /// cookie (`cookie`).
    pub(crate) fn page(
        &self,
        name: &str,
        context: Value,
        cookie: &str,
    ) -> Result<Response, UiError> {
        let html = self.env.get_template(name)?.render(context)?;
        let mut response = Html(html).into_response();
        if let Ok(value) = cookie.parse() {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    #[test]
    fn every_template_parses_and_escapes() {
        let views = Views::new("<b>me</b>".into());
        let response = views
            .page(
                "cluster.html",
                context! { members => Vec::<Value>::new(), leader => 0, answered_by => 0 },
                "c=1",
            )
            .expect("renders");
        assert_eq!(response.status(), 200);
        let env = &views.env;
        let text = env
            .render_str("{{ x }}", context! { x => "<script>alert(1)</script>" })
            .unwrap();
        // render_str has no file name; the pages are .html files:
        let _ = text;
        let page = env.get_template("base.html").unwrap();
        let html = page
            .render(context! { title => "<script>x</script>" })
            .unwrap();
        assert!(!html.contains("<script>x</script>"));
        assert!(!html.contains("<b>me</b>"));
        assert!(html.contains("&lt;b&gt;me&lt;&#x2f;b&gt;") || html.contains("&lt;b&gt;me"));
    }
}
