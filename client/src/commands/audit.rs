//! `ferry audit`: who asked for what, when, and what came of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Rpc};
use crate::render;

/// What `ferry audit` was asked for.
pub(crate) struct AuditQuery {
    pub since: Option<String>,
    pub user: Option<String>,
    pub project: Option<String>,
    pub limit: u32,
}

/// `--since`: a time (`2026-12-06T14:00:00Z`, `2026-12-06 14:00`) or how long
/// ago (`1h`, `30m`, `7d`), as milliseconds since the epoch.
pub(crate) fn parse_since(text: &str, now: SystemTime) -> Result<i64, String> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!(
                "--since {text:?} is neither a time (2026-12-06T14:00:00Z) nor how long ago \
                 (1h, 30m, 7d)"
            )
        })?,
    };
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

pub(crate) async fn list(
    client: &mut Client,
    query: AuditQuery,
    output: Output,
) -> anyhow::Result<()> {
    let since_ms = match &query.since {
        Some(text) => parse_since(text, SystemTime::now()).map_err(anyhow::Error::msg)?,
        None => 0,
    };
    let request = proto::ListAuditRequest {
        since_ms,
        user: query.user.unwrap_or_default(),
        project: query.project.unwrap_or_default(),
        limit: query.limit,
        stale: false,
    };
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.list_audit(request).await
        })
        .await?;
    if output == Output::Json {
        let records: Vec<_> = answer.records.iter().map(record_json).collect();
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if answer.records.is_empty() {
        println!("no audit record matches");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer
        .records
        .iter()
        .map(|record| {
            let outcome = if record.detail.is_empty() {
                record.outcome.clone()
            } else {
                format!("{}: {}", record.outcome, record.detail)
            };
            vec![
                render::utc_time(record.time_ms),
                format!("{} ({})", record.caller, record.role),
                if record.project.is_empty() {
                    "-".to_string()
                } else {
                    record.project.clone()
                },
                record.summary.clone(),
                outcome,
            ]
        })
        .collect();
    println!(
        "{}",
        render::table(&["TIME", "CALLER", "PROJECT", "REQUEST", "OUTCOME"], &rows)
    );
    let shown = answer.records.len() as u64;
    if answer.matched > shown {
        println!(
            "(the newest {shown} of {} matching records; --limit or --since for others)",
            answer.matched
        );
    }
    if answer.dropped > 0 {
        println!(
            "({} older records were dropped by the cluster's retention, [audit] in \
             coordinator.toml)",
            answer.dropped
        );
    }
    Ok(())
}

fn record_json(record: &proto::AuditRecordView) -> serde_json::Value {
    json!({
        "seq": record.seq,
        "time_ms": record.time_ms,
        "caller": record.caller,
        "role": record.role,
        "project": (!record.project.is_empty()).then_some(&record.project),
        "action": record.action,
        "summary": record.summary,
        "outcome": record.outcome,
        "detail": record.detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_how_long_ago() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("1h", now), Ok(6_400_000));
        assert_eq!(parse_since("30m", now), Ok(8_200_000));
        assert_eq!(parse_since("1970-01-01T00:00:05Z", now), Ok(5_000));
        assert_eq!(parse_since("1970-01-01 00:01:00", now), Ok(60_000));
        let error = parse_since("yesterday", now).unwrap_err();
        assert!(error.contains("--since \"yesterday\""), "{error}");
    }
}
