//! STUB
use super::StudyMessage;
pub const SIGNATURE_HEADER: &str = "X-Pneumotriage-Signature";
pub const MESSAGE_ID_HEADER: &str = "X-Pneumotriage-Message-Id";
pub fn body(_m: &StudyMessage) -> serde_json::Value {
    serde_json::Value::Null
}
pub fn signature(_s: &[u8], _b: &[u8]) -> String {
    String::new()
}
