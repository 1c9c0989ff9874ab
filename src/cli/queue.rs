//! `retry`, `requeue` and `handover`: an admin's second chance for a failed delivery or analysis,
//! and what becomes of the images another node kept when it is renamed or gone.

use std::process::ExitCode;

use pneumotriage::store::Store;

pub async fn retry(store: &Store, id: Option<i64>) -> anyhow::Result<ExitCode> {
    let n = store.requeue_failed_deliveries(id).await?;
    if let (0, Some(id)) = (n, id) {
        eprintln!("error: delivery {id} is not a failed delivery");
        return Ok(ExitCode::FAILURE);
    }
    println!("{n} deliver{} re-queued; a running node sends them within seconds", if n == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}

pub async fn requeue(store: &Store, instance: i64) -> anyhow::Result<ExitCode> {
    if store.requeue_failed_job(instance).await? {
        println!("instance {instance} re-queued; a running node analyses it within seconds");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: instance {instance} has no failed analysis job");
        Ok(ExitCode::FAILURE)
    }
}

/// `handover --from NODE`: the instances `from` kept become `to`'s, or with `fail` their
/// unfinished jobs fail (the spool is gone with the node).
pub async fn handover(store: &Store, from: &str, to: Option<&str>, fail: bool) -> anyhow::Result<ExitCode> {
    if fail {
        let n = store.fail_jobs_kept_by(from).await?;
        println!("{n} job(s) of node {from} failed: spool unavailable (`pneumotriage requeue ID` if it returns)");
    } else {
        let to = to.unwrap_or(store.node());
        let n = store.hand_over_instances(from, to).await?;
        println!("{n} instance(s) of node {from} handed over to node {to}; it analyses their waiting jobs");
    }
    Ok(ExitCode::SUCCESS)
}
