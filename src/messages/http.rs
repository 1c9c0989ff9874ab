//! STUB
use super::transport::TransportError;
use super::MessageError;
use std::path::Path;
use std::time::Duration;
pub struct HttpTarget;
impl HttpTarget {
    pub fn new(
        _u: &str,
        _ca: Option<&Path>,
        _id: Option<(&Path, &Path)>,
        _b: Option<String>,
        _t: Duration,
    ) -> Result<HttpTarget, TransportError> {
        Ok(HttpTarget)
    }
    pub fn post_json(&self, _s: Option<&str>, _b: &[u8], _h: &[(&str, String)]) -> Result<(), MessageError> {
        Ok(())
    }
}
