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
        env.add_filter("encode", |text: String| super::query::encode(&text));
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
    fn every_template_escapes_what_it_is_given() {
        const EVIL: &str = "<script>alert('x')</script>\"&";
        let views = Views::new(EVIL.into());
        let row = context! {
            id => 1, name => EVIL, state => EVIL, pipeline => EVIL, text => EVIL,
            stream => EVIL, digest => EVIL, label => EVIL, reason => EVIL, key => EVIL,
            detail => EVIL, note => EVIL, worker => EVIL, matrix => EVIL, params => vec![EVIL],
            metrics => vec![EVIL], where_values => vec![EVIL], rows => Vec::<Value>::new(),
            submitted_ms => 1, started_ms => 1, next_tick_ms => 1, last_tick_ms => 1,
            last_run => 1, attempt => 1, reused_run => 1, gpus => EVIL, size => EVIL,
        };
        let everything = context! {
            title => EVIL, run => 1, step => row.clone(), summary => row.clone(),
            runs => vec![row.clone()], sections => vec![row.clone()], lines => vec![row.clone()],
            steps => vec![row.clone()], charts => Vec::<Value>::new(), table => vec![row.clone()],
            workers => vec![row.clone()], schedules => vec![row.clone()], members => vec![row.clone()],
            attempts => vec![row.clone()], inputs => vec![row.clone()], outputs => vec![row.clone()],
            params => vec![vec![EVIL, EVIL]], matrix => vec![vec![EVIL, EVIL]],
            filters => row.clone(), problem => EVIL, digest => EVIL, reason => EVIL,
            pipelines => vec![EVIL], projects => vec![EVIL], where_names => vec![EVIL],
            from_choices => vec![EVIL], metric => EVIL, goal => EVIL, log => EVIL,
            bundle => EVIL, trimmed => EVIL, csrf => EVIL, request_id => EVIL,
            reused => EVIL, reused_step => EVIL, events => EVIL, text => EVIL,
        };
        for (name, _) in TEMPLATES {
            let html = views
                .env
                .get_template(name)
                .unwrap()
                .render(&everything)
                .unwrap();
            assert!(
                !html.contains("<script>alert"),
                "{name} printed markup:\n{html}"
            );
            assert!(
                html.contains("&lt;script&gt;"),
                "{name} printed nothing given"
            );
        }
    }
}
