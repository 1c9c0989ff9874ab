//! `retry` and `requeue`: an admin's second chance for a failed delivery or analysis.

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
