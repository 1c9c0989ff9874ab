//! `studies`, `instances`, `deliveries` and `status`: what the database holds, as a table or JSON.

use std::process::ExitCode;

use pneumotriage::audit::{AuditEvent, User};
use pneumotriage::domain::{DeliveryState, JobState, Priority};
use pneumotriage::store::{format_ms, Store};

use super::print_table;

pub async fn studies(store: &Store, json: bool, limit: i64) -> anyhow::Result<ExitCode> {
    let rows = store.list_studies(limit).await?;
    // the list names patients: whoever ran it is on the audit trail before it is shown
    let user = operating_system_user();
    let by = User { id: &user, address: None };
    store
        .audit(&AuditEvent::Queried { by, endpoint: "pneumotriage studies", query: &format!("limit={limit}") })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(
            &["STUDY INSTANCE UID", "PATIENT ID", "ACCESSION", "DATE", "PRIORITY", "IMAGES", "LAST RECEIVED"],
            rows.iter().map(|r| {
                vec![
                    r.study_instance_uid.clone(),
                    r.patient_id.clone().unwrap_or_default(),
                    r.accession_number.clone().unwrap_or_default(),
                    r.study_date.clone().unwrap_or_default(),
                    r.priority.map_or_else(|| "-".into(), |p| p.to_string()),
                    r.instance_count.to_string(),
                    format_ms(r.last_received_at),
                ]
            }),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn instances(store: &Store, study: Option<&str>, json: bool, limit: i64) -> anyhow::Result<ExitCode> {
    let rows = store.list_instances(study, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(
            &["ID", "SOP INSTANCE UID", "V", "MODALITY", "FROM", "BYTES", "RECEIVED", "JOB"],
            rows.iter().map(|r| {
                vec![
                    r.id.to_string(),
                    r.sop_instance_uid.clone(),
                    r.version.to_string(),
                    r.modality.clone().unwrap_or_default(),
                    r.calling_ae.clone(),
                    r.size_bytes.to_string(),
                    format_ms(r.received_at),
                    r.job_state.map(|s| s.to_string()).unwrap_or_default(),
                ]
            }),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn deliveries(store: &Store, failed: bool, json: bool, limit: i64) -> anyhow::Result<ExitCode> {
    let rows = store.list_deliveries(failed, limit).await?;
    let messages = store.list_messages(failed, None, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "objects": rows, "messages": messages }))?);
    } else {
        print_table(
            &["ID", "DESTINATION", "OBJECT", "SOP INSTANCE UID", "STATE", "ATTEMPTS", "LAST ERROR"],
            rows.iter().map(|r| {
                vec![
                    r.id.to_string(),
                    r.destination.clone(),
                    r.kind.to_string(),
                    r.sop_instance_uid.clone(),
                    r.state.to_string(),
                    r.attempts.to_string(),
                    r.last_error.clone().unwrap_or_default(),
                ]
            }),
        );
        if !messages.is_empty() {
            println!();
            print_table(
                &["ID", "DESTINATION", "MESSAGE", "STUDY INSTANCE UID", "PRIORITY", "STATE", "ATTEMPTS", "LAST ERROR"],
                messages.iter().map(|m| {
                    vec![
                        format!("m{}", m.id),
                        m.destination.clone(),
                        format!("{} {}", m.kind, m.control_id),
                        m.study_instance_uid.clone(),
                        m.priority.map_or_else(|| "not analysed".to_string(), |p| p.to_string()),
                        m.state.to_string(),
                        m.attempts.to_string(),
                        m.last_error.clone().unwrap_or_default(),
                    ]
                }),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(store: &Store, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(&pneumotriage::http::status_json(store).await?)?);
    } else {
        let counts = store.counts().await?;
        println!(
            "analysis queue: {} queued, {} running; {} done, {} skipped, {} failed",
            counts.jobs(JobState::Queued),
            counts.jobs(JobState::Running),
            counts.jobs(JobState::Done),
            counts.jobs(JobState::Skipped),
            counts.jobs(JobState::Failed)
        );
        println!(
            "results: {} urgent, {} review, {} routine",
            counts.results(Priority::Urgent),
            counts.results(Priority::Review),
            counts.results(Priority::Routine)
        );
        for (what, count) in [
            ("deliveries", &(|s| counts.deliveries(s)) as &dyn Fn(DeliveryState) -> i64),
            ("messages", &|s| counts.messages(s)),
        ] {
            let failed = count(DeliveryState::Failed);
            println!(
                "{what}: {} pending, {} sending, {} delivered, {failed} failed{}",
                count(DeliveryState::Pending),
                count(DeliveryState::Sending),
                count(DeliveryState::Delivered),
                if failed > 0 { " (pneumotriage deliveries --failed)" } else { "" }
            );
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Who runs a command, as the audit trail names them: the login name and the user id.
fn operating_system_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    match std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")) {
        Ok(name) if !name.is_empty() => format!("{name} (uid {uid})"),
        _ => format!("uid {uid}"),
    }
}
