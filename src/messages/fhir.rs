//! STUB
use super::StudyMessage;
use crate::config::FhirSettings;
pub fn bundle(_m: &StudyMessage, _s: &FhirSettings) -> serde_json::Value {
    serde_json::Value::Null
}
