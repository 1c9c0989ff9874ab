//! `retry`, `requeue` and `handover`: an admin's second chance for a failed delivery or analysis,
//! and what becomes of the images another node kept when it is renamed or gone.

use std::process::ExitCode;

use pneumotriage::store::{Requeue, Store};

/// A delivery as `deliveries` lists it: an object's (`12`) or a message's (`m12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryId {
    Object(i64),
    Message(i64),
}

impl std::str::FromStr for DeliveryId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |n: &str| n.parse::<i64>().map_err(|_| format!("`{s}` is neither a number nor m and a number"));
        match s.strip_prefix('m') {
            Some(n) => Ok(DeliveryId::Message(number(n)?)),
            None => Ok(DeliveryId::Object(number(s)?)),
        }
    }
}

pub async fn retry(store: &Store, id: Option<DeliveryId>) -> anyhow::Result<ExitCode> {
    let (objects, messages) = match id {
        None => (store.requeue_failed_deliveries(None).await?, store.requeue_failed_messages(None).await?),
        Some(DeliveryId::Object(id)) => (store.requeue_failed_deliveries(Some(id)).await?, 0),
        Some(DeliveryId::Message(id)) => (0, store.requeue_failed_messages(Some(id)).await?),
    };
    if objects + messages == 0 {
        if let Some(id) = id {
            let id = match id {
                DeliveryId::Object(n) => n.to_string(),
                DeliveryId::Message(n) => format!("m{n}"),
            };
            eprintln!("error: delivery {id} is not a failed delivery, or retention released what it sends");
            return Ok(ExitCode::FAILURE);
        }
    }
    let n = objects + messages;
    println!("{n} deliver{} re-queued; a running node sends them within seconds", if n == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}

pub async fn requeue(store: &Store, instance: i64) -> anyhow::Result<ExitCode> {
    match store.requeue_failed_job(instance).await? {
        Requeue::Queued => {
            println!("instance {instance} re-queued; a running node analyses it within seconds");
            Ok(ExitCode::SUCCESS)
        }
        Requeue::NotFailed => {
            eprintln!("error: instance {instance} has no failed analysis job");
            Ok(ExitCode::FAILURE)
        }
        Requeue::Released => {
            eprintln!("error: instance {instance} was released by retention (retention.investigation_days): its image is no longer kept; send it again to analyse it");
            Ok(ExitCode::FAILURE)
        }
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
