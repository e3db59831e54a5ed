//! A step's log: the whole history once the step has ended; while it runs,
//! the page follows it over server-sent events fed by `StreamLogs` with
//! `follow`, each line with its stream (stdout or stderr) and attempt.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use ferry_common::proto;
use futures::{Stream, StreamExt};
use minijinja::context;
use serde::Serialize;

use super::whole_run;
use crate::ui::Shared;
use crate::ui::error::{PageResult, UiError};

/// Lines a log page shows of an ended step: the newest (a log of millions
/// of lines would not fit a page); `log.txt` has them all.
const SHOWN: usize = 10_000;

/// States in which a step may still write to its log.
const LIVE_STATES: &[&str] = &["waiting", "queued", "assigned", "running"];

#[derive(Serialize)]
pub(crate) struct Line {
    stream: String,
    attempt: u32,
    text: String,
}

fn line(l: proto::LogLine) -> Line {
    Line {
        stream: l.stream,
        attempt: l.attempt,
        text: l.text,
    }
}

/// `GET /runs/{run}/steps/{step}/log`.
pub(crate) async fn page(
    State(ui): State<Shared>,
    Path((run, step)): Path<(u64, String)>,
) -> PageResult {
    let view = whole_run(&ui, run, false).await?;
    let Some(found) = view.steps.iter().find(|s| s.name == step) else {
        return Err(UiError::NotFound(format!("run {run} has no step {step:?}")));
    };
    let follow = LIVE_STATES.contains(&found.state.as_str());
    // The newest SHOWN lines; the whole log is at log.txt.
    let mut lines = std::collections::VecDeque::new();
    let mut total = 0usize;
    if !follow {
        let request = proto::StreamLogsRequest {
            run_id: run,
            step: step.clone(),
            follow: false,
        };
        let mut stream = ui
            .gateway
            .call(|mut client| {
                let request = request.clone();
                async move { client.stream_logs(request).await }
            })
            .await?;
        while let Some(l) = stream.message().await? {
            total += 1;
            if lines.len() == SHOWN {
                lines.pop_front();
            }
            lines.push_back(line(l));
        }
    }
    let encoded = crate::ui::query::encode(&step);
    ui.views.page(
        "log.html",
        context! {
            title => format!("Log of {step} · run {run}"),
            run => run,
            step => step,
            state => found.state,
            reused => found.reused,
            reused_run => found.reused_run,
            reused_step => found.reused_step,
            follow => follow,
            events => format!("/runs/{run}/steps/{encoded}/log/events"),
            text => format!("/runs/{run}/steps/{encoded}/log.txt"),
            total => total,
            cut => total > lines.len(),
            lines => lines,
        },
        &ui.guard.cookie(),
    )
}

/// `GET /runs/{run}/steps/{step}/log.txt`: the whole log as plain text,
/// streamed, one `[attempt stream] text` line per line.
pub(crate) async fn text(
    State(ui): State<Shared>,
    Path((run, step)): Path<(u64, String)>,
) -> PageResult {
    let request = proto::StreamLogsRequest {
        run_id: run,
        step,
        follow: false,
    };
    let mut stream = ui
        .gateway
        .call(|mut client| {
            let request = request.clone();
            async move { client.stream_logs(request).await }
        })
        .await?;
    let body = async_stream::stream! {
        loop {
            match stream.message().await {
                Ok(Some(l)) => {
                    yield Ok::<_, std::io::Error>(format!("[{} {}] {}\n", l.attempt, l.stream, l.text));
                }
                Ok(None) => break,
                Err(status) => {
                    yield Err(std::io::Error::other(status.message().to_string()));
                    break;
                }
            }
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `GET /runs/{run}/steps/{step}/log/events`: every line so far, then each as
/// it arrives (`line` events, numbered), then `end`. A browser that reconnects
/// says the last number it holds (`Last-Event-ID`) and gets only what follows.
pub(crate) async fn events(
    State(ui): State<Shared>,
    Path((run, step)): Path<(u64, String)>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let skip: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |last| last + 1);
    let stop = ui.clone();
    let stream = async_stream::stream! {
        let request = proto::StreamLogsRequest { run_id: run, step, follow: true };
        let mut lines = match ui
            .gateway
            .call(|mut client| {
                let request = request.clone();
                async move { client.stream_logs(request).await }
            })
            .await
        {
            Ok(lines) => lines,
            Err(status) => {
                yield Ok(Event::default().event("problem").data(status.message()));
                yield Ok(Event::default().event("end").data("ended"));
                return;
            }
        };
        let mut number = 0u64;
        loop {
            match lines.message().await {
                Ok(Some(l)) => {
                    if number >= skip
                        && let Ok(data) = serde_json::to_string(&line(l))
                    {
                        yield Ok(Event::default().event("line").id(number.to_string()).data(data));
                    }
                    number += 1;
                }
                Ok(None) => break,
                Err(status) => {
                    yield Ok(Event::default().event("problem").data(status.message()));
                    break;
                }
            }
        }
        // The step's state now, for the page's heading.
        let state = match whole_run(&ui, run, false).await {
            Ok(view) => view
                .steps
                .iter()
                .find(|s| s.name == request.step)
                .map(|s| s.state.clone())
                .unwrap_or_else(|| "ended".into()),
            Err(_) => "ended".into(),
        };
        yield Ok(Event::default().event("end").data(state));
    };
    let stream = stream.take_until(async move { stop.stopped().await });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
