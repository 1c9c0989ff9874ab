//! `[retention]`: how long received images and the objects made of them are kept, when patient
//! attributes leave the database, and how much free space the node keeps by deleting the oldest
//! finished items first.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Number, Report, DAY};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// A received image is deleted this many days after its analysis and every delivery and
    /// message made from it ended (0: at the next pruning round).
    pub images_days: u64,
    /// An object the node made (SEG, SR, secondary capture) is deleted this many days after its
    /// last delivery ended.
    pub outputs_days: u64,
    /// An image that was skipped, failed or quarantined is kept this long after its job ended,
    /// for an admin to look into (and `requeue` while it is kept).
    pub investigation_days: u64,
    /// A study's patient attributes (name, ID, issuer, birth date, sex) are removed from the
    /// database this many days after its last image arrived; its UIDs, accession number, results
    /// and deliveries stay as the record of what the node said.
    pub patient_data_days: u64,
    /// When the spool's free space falls below this, the oldest finished images and objects are
    /// deleted before their time, until it is back above; above `node.min_free_disk_mb`, so that
    /// this happens before any C-STORE is refused. Unset: twice the floor, and at least 1 GiB
    /// above it.
    pub free_target_mb: Option<u64>,
    /// How often pruning, the free-space check and the sweeps of leftover files run.
    pub interval_secs: u64,
    /// Rows decided in one transaction: pruning runs in small steps beside the node's work.
    pub batch: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            images_days: 7,
            outputs_days: 2,
            investigation_days: 30,
            patient_data_days: 365,
            free_target_mb: None,
            interval_secs: 60,
            batch: 200,
        }
    }
}

/// A hundred years: a longer retention is a mistake, not a policy.
const MAX_DAYS: u64 = 36_500;

impl RetentionConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        let mut numbers = vec![
            Number::new("retention.images_days", self.images_days, 0..=MAX_DAYS, "days"),
            Number::new("retention.outputs_days", self.outputs_days, 0..=MAX_DAYS, "days"),
            Number::new("retention.investigation_days", self.investigation_days, 0..=MAX_DAYS, "days"),
            Number::new("retention.patient_data_days", self.patient_data_days, 1..=MAX_DAYS, "days"),
            Number::new("retention.interval_secs", self.interval_secs, 1..=DAY, "seconds"),
            Number::new("retention.batch", self.batch, 1..=10_000, "rows"),
        ];
        if let Some(target) = self.free_target_mb {
            numbers.push(Number::new("retention.free_target_mb", target, 0..=1 << 30, "MiB"));
        }
        numbers
    }

    pub(super) fn check(&self, min_free_disk_mb: u64, report: &mut Report) {
        if let Some(target) = self.free_target_mb.filter(|t| *t <= min_free_disk_mb) {
            report(
                "retention.free_target_mb",
                format!(
                    "{target} MiB must be above node.min_free_disk_mb ({min_free_disk_mb} MiB): finished items are deleted before images are refused"
                ),
            );
        }
        let longest = self.images_days.max(self.investigation_days);
        if self.patient_data_days < longest {
            report(
                "retention.patient_data_days",
                format!(
                    "{} days is shorter than the images are kept ({longest} days): the records would lose the patient while the images still name them",
                    self.patient_data_days
                ),
            );
        }
    }

    pub fn images(&self) -> Duration {
        days(self.images_days)
    }

    pub fn outputs(&self) -> Duration {
        days(self.outputs_days)
    }

    pub fn investigation(&self) -> Duration {
        days(self.investigation_days)
    }

    pub fn patient_data(&self) -> Duration {
        days(self.patient_data_days)
    }

    /// The free space to keep, given the refusal floor `node.min_free_disk_mb`, in MiB.
    pub fn free_target_mb(&self, min_free_disk_mb: u64) -> u64 {
        self.free_target_mb.unwrap_or(min_free_disk_mb.saturating_mul(2).max(min_free_disk_mb.saturating_add(1024)))
    }
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * DAY)
}
