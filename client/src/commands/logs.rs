//! `ferry logs`: a run's log lines as they are streamed, and a note pointing to
//! the log of each step that took an earlier run's result.

use std::io::Write;

use ferry_common::proto;

use super::shared::{Client, OrStatus, Read, Rpc, get_run};

/// `ferry logs RUN [STEP] [-f]`: every line of a run's (or one step's) logs,
/// following live output with `follow`.
pub(crate) async fn logs(
    client: &mut Client,
    run: u64,
    step: Option<String>,
    follow: bool,
) -> anyhow::Result<()> {
    let request = proto::StreamLogsRequest {
        run_id: run,
        step: step.unwrap_or_default(),
        follow,
    };
    let mut stream = client
        .rpc(request.clone(), |mut client, request| async move {
            client.stream_logs(request).await
        })
        .await?;
    // Steps that did not run in this run have their log where they ran.
    if let Ok(view) = get_run(client, run, Read { stale: true }).await {
        for step in view
            .steps
            .iter()
            .filter(|s| !s.reused.is_empty())
            .filter(|s| request.step.is_empty() || s.name == request.step)
        {
            eprintln!(
                "note: step {} is {} from run {} step {}; its log: ferry logs {} {}",
                step.name,
                step.reused,
                step.reused_run,
                step.reused_step,
                step.reused_run,
                step.reused_step
            );
        }
    }
    let mut out = std::io::stdout().lock();
    while let Some(line) = stream.message().await.or_status()? {
        writeln!(
            out,
            "[{}#{} {}] {}",
            line.step, line.attempt, line.stream, line.text
        )?;
        if follow {
            out.flush()?;
        }
    }
    Ok(())
}
