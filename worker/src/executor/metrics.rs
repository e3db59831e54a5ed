//! A step's own metrics: reading the JSON-lines file its `FERRY_METRICS`
//! variable names, within bounds (bytes read, values kept, name length), and
//! saying what was skipped or dropped and why.

use std::path::Path;

use ferry_common::proto;
use tokio::io::AsyncReadExt;

/// Most bytes of a metrics file read, most values kept per attempt and the
/// longest name: the bounds the coordinator checks, defined once with the spec.
use ferry_common::spec::{
    MAX_METRIC_NAME_LEN as MAX_METRIC_NAME, MAX_METRICS_FILE_BYTES as MAX_METRICS_BYTES,
    MAX_METRICS_PER_ATTEMPT as MAX_METRICS,
};

/// One line of a `FERRY_METRICS` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricLine {
    name: String,
    value: f64,
    #[serde(default)]
    step: Option<i64>,
}

/// Reads what a step wrote to its `FERRY_METRICS` file (JSON lines: `name`,
/// `value`, optional `step`). Lines that are not such an object are skipped, and
/// the second value says how many and why the first was refused.
pub async fn read_metrics(path: &Path) -> (Vec<proto::Metric>, Option<String>) {
    let Ok(file) = tokio::fs::File::open(path).await else {
        return (Vec::new(), None);
    };
    let mut text = String::new();
    let mut limited = file.take(MAX_METRICS_BYTES);
    if let Err(error) = limited.read_to_string(&mut text).await {
        return (
            Vec::new(),
            Some(format!("the metrics file could not be read: {error}")),
        );
    }
    parse_metrics(&text)
}

/// The metrics in `text` (see [`read_metrics`]). Past [`MAX_METRICS`] values,
/// the first ones and the last value of each name are kept (a training loop
/// that logs every iteration keeps its final numbers).
pub fn parse_metrics(text: &str) -> (Vec<proto::Metric>, Option<String>) {
    let (metrics, skipped) = parse_metric_lines(text);
    let (metrics, dropped) = keep_first_and_last(metrics);
    let notes: Vec<String> = skipped
        .into_iter()
        .chain((dropped > 0).then(|| {
            format!(
                "{dropped} value{} dropped: more than {MAX_METRICS}, so the first ones and \
                 the last of each name are kept",
                if dropped == 1 { "" } else { "s" }
            )
        }))
        .collect();
    (metrics, (!notes.is_empty()).then(|| notes.join("; ")))
}

/// At most [`MAX_METRICS`] of `metrics`, in order: the last value of each name,
/// and as many of the first values as leave room for those; how many went.
fn keep_first_and_last(metrics: Vec<proto::Metric>) -> (Vec<proto::Metric>, usize) {
    if metrics.len() <= MAX_METRICS {
        return (metrics, 0);
    }
    let mut last_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, metric) in metrics.iter().enumerate() {
        last_of.insert(&metric.name, i);
    }
    let mut lasts: Vec<usize> = last_of.into_values().collect();
    lasts.sort_unstable();
    lasts.truncate(MAX_METRICS);
    let lasts: std::collections::HashSet<usize> = lasts.into_iter().collect();
    let mut room = MAX_METRICS - lasts.len();
    let total = metrics.len();
    let kept: Vec<proto::Metric> = metrics
        .into_iter()
        .enumerate()
        .filter(|(i, _)| {
            if lasts.contains(i) {
                true
            } else if room > 0 {
                room -= 1;
                true
            } else {
                false
            }
        })
        .map(|(_, metric)| metric)
        .collect();
    let dropped = total - kept.len();
    (kept, dropped)
}

/// Every well-formed line of `text`, and what was said of the others.
fn parse_metric_lines(text: &str) -> (Vec<proto::Metric>, Option<String>) {
    let mut metrics = Vec::new();
    let mut skipped = 0usize;
    let mut first_problem: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let problem = match serde_json::from_str::<MetricLine>(line) {
            Ok(metric) if metric.name.is_empty() || metric.name.len() > MAX_METRIC_NAME => {
                Some(format!("a name must have 1 to {MAX_METRIC_NAME} bytes"))
            }
            Ok(metric) => {
                metrics.push(proto::Metric {
                    name: metric.name,
                    value: metric.value,
                    has_step: metric.step.is_some(),
                    step: metric.step.unwrap_or(0),
                    count: 0,
                });
                None
            }
            Err(_) if line.contains("NaN") || line.contains("Infinity") => {
                Some("a value must be a finite number, not NaN or Infinity".to_string())
            }
            Err(error) => Some(format!(
                "{error}; write {{\"name\": \"accuracy\", \"value\": 0.93, \"step\": 3}}"
            )),
        };
        if let Some(problem) = problem {
            skipped += 1;
            first_problem.get_or_insert_with(|| format!("line {}: {problem}", number + 1));
        }
    }
    let note = first_problem.map(|first| {
        format!(
            "{skipped} line{} of FERRY_METRICS ignored ({first})",
            if skipped == 1 { "" } else { "s" }
        )
    });
    (metrics, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_are_read_and_bad_ones_skipped_with_the_first_reason() {
        let text = "{\"name\": \"loss\", \"value\": 0.5, \"step\": 1}\n\
                    {\"name\": \"loss\", \"value\": 0.25, \"step\": 2}\n\
                    \n\
                    accuracy=0.9\n\
                    {\"name\": \"accuracy\", \"value\": 0.93}\n\
                    {\"name\": \"\", \"value\": 1}\n";
        let (metrics, note) = parse_metrics(text);
        assert_eq!(metrics.len(), 3);
        assert_eq!(
            (
                metrics[1].name.as_str(),
                metrics[1].value,
                metrics[1].has_step,
                metrics[1].step
            ),
            ("loss", 0.25, true, 2)
        );
        assert!(!metrics[2].has_step);
        let note = note.unwrap();
        assert!(
            note.starts_with("2 lines of FERRY_METRICS ignored (line 4: ")
                && note.contains("\"value\": 0.93"),
            "{note}"
        );
        assert_eq!(parse_metrics(""), (Vec::new(), None));
        // What Python's json.dumps writes for a diverged loss.
        let (metrics, note) = parse_metrics("{\"name\": \"loss\", \"value\": NaN}\n");
        assert!(metrics.is_empty());
        assert!(
            note.unwrap()
                .contains("line 1: a value must be a finite number, not NaN")
        );
    }

    #[test]
    fn past_the_limit_the_first_values_and_the_last_of_each_name_are_kept() {
        let mut text = String::new();
        for i in 0..MAX_METRICS + 50 {
            text.push_str(&format!(
                "{{\"name\": \"loss\", \"value\": {i}, \"step\": {i}}}\n"
            ));
        }
        text.push_str("{\"name\": \"accuracy\", \"value\": 0.97}\n");
        let (metrics, note) = parse_metrics(&text);
        assert_eq!(metrics.len(), MAX_METRICS);
        let last = |name: &str| {
            metrics
                .iter()
                .rev()
                .find(|m| m.name == name)
                .map(|m| m.value)
        };
        assert_eq!(last("loss"), Some((MAX_METRICS + 49) as f64));
        assert_eq!(last("accuracy"), Some(0.97));
        assert_eq!(metrics[0].value, 0.0);
        // The first 9,998 values of loss, its last, and accuracy; in order.
        assert_eq!(metrics[MAX_METRICS - 3].value, (MAX_METRICS - 3) as f64);
        assert!(
            metrics
                .windows(2)
                .all(|w| w[0].name != "loss" || w[1].name != "loss" || w[0].step < w[1].step)
        );
        assert_eq!(
            note.as_deref(),
            Some(
                "51 values dropped: more than 10000, so the first ones and the last of each name are kept"
            )
        );
    }
}
