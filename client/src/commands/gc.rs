//! `ferry gc`: deleting the logs and artifacts of old finished runs, and what
//! it says it did.

use ferry_common::proto;
use serde_json::json;

use super::shared::{Client, Output, Rpc};
use crate::render;

/// What `ferry gc` says it did (or, with `dry_run`, would do).
fn gc_summary(answer: &proto::CollectGarbageResponse, dry_run: bool) -> String {
    let runs = render::count(answer.runs.len() as u64, "run");
    let blobs = render::count(answer.blobs, "blob");
    let bytes = render::bytes(answer.bytes);
    let kept = render::count(runs_kept(answer, dry_run), "run");
    let mut text = if dry_run {
        format!("would collect {runs}: would delete {blobs}, reclaiming {bytes} ({kept} kept)")
    } else {
        format!("collected {runs}: deleted {blobs}, {bytes} reclaimed ({kept} kept)")
    };
    if answer.recent_blobs > 0 {
        let grace = ferry_common::spec::format_duration_ms(answer.grace_ms);
        text.push_str(&format!(
            "\n{} {} ({}) written in the last {grace}: the first collection \
             after that deletes them (run 'ferry gc' again then)",
            if dry_run { "would keep" } else { "kept" },
            render::count(answer.recent_blobs, "blob"),
            render::bytes(answer.recent_bytes),
        ));
    }
    if !answer.runs.is_empty() {
        const SHOWN: usize = 20;
        let mut ids: Vec<String> = answer.runs.iter().take(SHOWN).map(u64::to_string).collect();
        if answer.runs.len() > SHOWN {
            ids.push(format!("… {} more", answer.runs.len() - SHOWN));
        }
        text.push_str(&format!("\nruns: {}", ids.join(", ")));
    }
    text
}

/// Finished runs left uncollected (after the collection, for a dry run too:
/// nothing was collected then, so the coordinator's count still includes the
/// runs that would go).
fn runs_kept(answer: &proto::CollectGarbageResponse, dry_run: bool) -> u64 {
    if dry_run {
        answer.runs_kept.saturating_sub(answer.runs.len() as u64)
    } else {
        answer.runs_kept
    }
}

/// `ferry gc --keep-last N [--dry-run]`.
pub(crate) async fn collect_garbage(
    client: &mut Client,
    keep_last: u32,
    dry_run: bool,
    output: Output,
) -> anyhow::Result<()> {
    // Collecting twice deletes nothing more the second time, so a retry after a
    // lost answer is safe (it reports only what was left to collect).
    let request = proto::CollectGarbageRequest { keep_last, dry_run };
    let answer = client
        .rpc(request, |mut client, request| async move {
            client.collect_garbage(request).await
        })
        .await?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "dry_run": dry_run,
                "runs": answer.runs,
                "blobs": answer.blobs,
                "bytes": answer.bytes,
                "runs_kept": runs_kept(&answer, dry_run),
                "recent_blobs": answer.recent_blobs,
                "recent_bytes": answer.recent_bytes,
                "grace_ms": answer.grace_ms,
            }))?
        );
        return Ok(());
    }
    println!("{}", gc_summary(&answer, dry_run));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gc_summary_counts_what_went() {
        let answer = proto::CollectGarbageResponse {
            runs: (1..=12).collect(),
            blobs: 57,
            bytes: 1_288_490_189,
            runs_kept: 34,
            ..Default::default()
        };
        assert_eq!(
            gc_summary(&answer, false),
            "collected 12 runs: deleted 57 blobs, 1.2 GiB reclaimed (34 runs kept)\n\
             runs: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"
        );
        assert!(gc_summary(&answer, true).starts_with(
            "would collect 12 runs: would delete 57 blobs, reclaiming 1.2 GiB (22 runs kept)"
        ));
        let nothing = proto::CollectGarbageResponse {
            runs: vec![],
            blobs: 1,
            bytes: 0,
            runs_kept: 1,
            ..Default::default()
        };
        assert_eq!(
            gc_summary(&nothing, false),
            "collected 0 runs: deleted 1 blob, 0 B reclaimed (1 run kept)"
        );
        let recent = proto::CollectGarbageResponse {
            runs: vec![3],
            recent_blobs: 4,
            recent_bytes: 3 * 1024,
            grace_ms: 600_000,
            runs_kept: 0,
            ..Default::default()
        };
        assert_eq!(
            gc_summary(&recent, false),
            "collected 1 run: deleted 0 blobs, 0 B reclaimed (0 runs kept)\n\
             kept 4 blobs (3.0 KiB) written in the last 10m: the first collection after that \
             deletes them (run 'ferry gc' again then)\n\
             runs: 3"
        );
    }
}
