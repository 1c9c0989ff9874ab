//! `shadow-report` and `verdict-report`: a shadow version against production, and what the
//! radiologists' verdicts say of each classifier version, over a period.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use pneumotriage::reports::{ShadowComparison, VerdictSummary};
use pneumotriage::store::{format_ms, now_ms, Store};

use super::print_table;

/// A point in time on the command line: `2026-11-01`, `2026-11-01T08:00:00Z`, or a time ago
/// (`30days`, `12h`); milliseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(since_epoch(t));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s}T00:00:00")) {
        return Ok(since_epoch(t));
    }
    match humantime::parse_duration(s) {
        Ok(ago) => Ok(now_ms() - ago.as_millis().min(i64::MAX as u128) as i64),
        Err(_) => {
            Err(format!("`{s}` is neither a date (2026-11-01), a time (2026-11-01T08:00:00Z) nor a time ago (30days)"))
        }
    }
}

/// The period's bounds as given, or from the first result to now.
pub struct Period {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Period {
    fn bounds(&self) -> (i64, i64) {
        (self.since.unwrap_or(0), self.until.unwrap_or_else(|| now_ms() + 1))
    }

    fn describe(&self) -> String {
        let since = self.since.map_or_else(|| "the first result".to_string(), format_ms);
        let until = self.until.map_or_else(|| "now".to_string(), format_ms);
        format!("from {since} to {until}")
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1} %", v * 100.0))
}

pub async fn shadow_report(
    store: &Store,
    shadow: Option<&str>,
    period: Period,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (since, until) = period.bounds();
    let comparisons = ShadowComparison::of(&store.shadow_pairs(shadow, since, until).await?);
    if json {
        println!("{}", serde_json::to_string_pretty(&comparisons)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Shadow versions against production, images analysed {}", period.describe());
    if comparisons.is_empty() {
        println!("(no image analysed by a shadow version in this period; see [[inference.shadow]])");
    }
    for c in &comparisons {
        println!();
        println!("shadow {}: {} against production {}", c.shadow, c.shadow_model, c.production_model);
        println!(
            "  images compared        {} (besides: {} skipped and {} failed by the shadow)",
            c.compared, c.shadow_skipped, c.shadow_failed
        );
        println!("  same decision          {} of {} ({})", c.agreed, c.compared, percent(c.agreement()));
        println!("  negative -> positive   {}", c.flips_to_positive);
        println!("  positive -> negative   {}", c.flips_to_negative);
        println!("  priority raised        {}, lowered {}", c.priority_raised, c.priority_lowered);
        println!(
            "  probability shift      {:+.3} on average (shadow - production), {:.3} in size, at most {:.3}",
            c.mean_probability_shift, c.mean_absolute_shift, c.largest_absolute_shift
        );
        println!(
            "  inference per image    production {:.1} ms, shadow {:.1} ms",
            c.production_inference_ms, c.shadow_inference_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn verdict_report(store: &Store, period: Period, json: bool) -> anyhow::Result<ExitCode> {
    let (since, until) = period.bounds();
    let summaries = VerdictSummary::of(&store.reviewed_results(since, until).await?);
    if json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Radiologists' verdicts on the results analysed {}", period.describe());
    print_table(
        &["CLASSIFIER", "RESULTS", "REVIEWED", "TP", "FP", "TN", "FN", "PPV", "POS->NEG", "NEG->POS", "SENSITIVITY"],
        summaries.iter().map(|s| {
            vec![
                s.model.clone(),
                s.results.to_string(),
                s.reviewed.to_string(),
                s.positives_agreed.to_string(),
                s.positives_disagreed.to_string(),
                s.negatives_agreed.to_string(),
                s.negatives_disagreed.to_string(),
                percent(s.ppv),
                percent(s.flip_rate_positive_to_negative),
                percent(s.flip_rate_negative_to_positive),
                percent(s.sensitivity),
            ]
        }),
    );
    println!(
        "TP/FP: positives the radiologist agreed/disagreed with; TN/FN: negatives likewise. Sensitivity is \
         shown only where negatives were reviewed, and holds for those reviewed."
    );
    Ok(ExitCode::SUCCESS)
}
