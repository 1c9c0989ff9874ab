//! UIDs for the objects the node creates, derived from what they describe.
//!
//! A result's UIDs are a hash of the source instance, the models and the object's role, so the
//! same analysis always yields the same SEG or SR UID: a retried delivery re-sends an object,
//! never a duplicate under a new UID.

use sha2::{Digest, Sha256};

/// The longest UID (PS3.5 9.1).
const MAX_UID: usize = 64;

/// A UID under `root` derived from `parts`. Under `2.25` it is a UUID (PS3.5 B.2, version 8,
/// name-based); under an organisation's root, the hash as a decimal component that fits in 64
/// characters.
pub fn derive(root: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    if root == "2.25" {
        bytes[6] = (bytes[6] & 0x0F) | 0x80; // version 8
        bytes[8] = (bytes[8] & 0x3F) | 0x80; // RFC 9562 variant
        return format!("2.25.{}", u128::from_be_bytes(bytes));
    }
    let digits = MAX_UID - root.len() - 1;
    let value = u128::from_be_bytes(bytes);
    let component = if digits >= 39 { value } else { value % 10u128.pow(digits as u32) };
    format!("{root}.{component}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uids_are_valid_stable_and_distinct() {
        let a = derive("2.25", &["1.2.3", "seg"]);
        assert_eq!(a, derive("2.25", &["1.2.3", "seg"]));
        assert_ne!(a, derive("2.25", &["1.2.3", "sr"]));
        assert_ne!(derive("2.25", &["1.2", "3seg"]), derive("2.25", &["1.2.3", "seg"]), "parts are delimited");
        let long_root = "1.2.826.0.1.3680043.10.99";
        for uid in [a, derive(long_root, &["x"])] {
            assert!(uid.len() <= 64, "{uid}");
            assert!(uid.split('.').all(|c| !c.is_empty() && (c == "0" || !c.starts_with('0'))), "{uid}");
        }
    }
}
