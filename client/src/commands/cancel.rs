//! `ferry cancel`: stops a run (its running steps are killed, nothing new
//! starts).

use ferry_common::proto;

use super::shared::{Client, Rpc};

/// `ferry cancel RUN`.
pub(crate) async fn cancel(client: &mut Client, run: u64) -> anyhow::Result<()> {
    let request = proto::CancelRunRequest { run_id: run };
    let view = client
        .rpc(request, |mut client, request| async move {
            client.cancel_run(request).await
        })
        .await?;
    let killed = view.steps.iter().filter(|s| s.state == "cancelled").count();
    println!("run {run} cancelled ({killed} steps stopped or never started)");
    Ok(())
}
