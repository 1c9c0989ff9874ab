//! STUB
use super::{MessageError, StudyMessage};
use crate::config::Hl7Settings;
use std::sync::Arc;
use std::time::Duration;
pub struct Hl7Target {
    pub host: String,
    pub port: u16,
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
    pub timeout: Duration,
}
pub fn oru_r01(_m: &StudyMessage, _s: &Hl7Settings) -> String {
    String::new()
}
pub fn send(_t: &Hl7Target, _m: &str, _c: &str) -> Result<(), MessageError> {
    Ok(())
}
