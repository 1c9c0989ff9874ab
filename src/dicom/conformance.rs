//! What the SCP accepts: SOP classes, transfer syntaxes, and the choice made for each proposed
//! presentation context. docs/conformance.md states the same in prose; keep them in step.

use dicom_dictionary_std::uids;
use dicom_ul::pdu::{PresentationContextProposed, PresentationContextResult, PresentationContextResultReason};

use crate::config::DicomConfig;

/// The classes pneumotriage analyses.
pub const ANALYSED_STORAGE: &[&str] = &[
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
];

/// The prefix of the storage SOP classes (PS3.4 B.5), for store-only acceptance.
const STORAGE_CLASS_PREFIX: &str = "1.2.840.10008.5.1.4.1.1.";

/// Transfer syntaxes accepted for storage, most preferred first: uncompressed before compressed,
/// lossless before lossy. Only syntaxes whose pixel data the pipeline can decode are listed:
/// not 12-bit JPEG Extended (.4.51), which dicom-pixeldata's JPEG decoder cannot read.
pub const STORAGE_TRANSFER_SYNTAXES: &[&str] = &[
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEG_LOSSLESS,
    uids::RLE_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEGLS_LOSSLESS,
    uids::JPEG2000,
    uids::JPEGLS_NEAR_LOSSLESS,
    uids::JPEG_BASELINE8_BIT,
];

/// Transfer syntaxes for Verification, which carries no data set.
const VERIFICATION_TRANSFER_SYNTAXES: &[&str] = &[uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN];

/// How the node treats instances of an accepted abstract syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Verification,
    /// Stored and queued for analysis.
    Analysed,
    /// Stored and recorded, never analysed (`dicom.accept_all_storage`).
    StoreOnly,
}

/// A presentation context we accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
    pub service: Service,
}

/// The service for an abstract syntax under this configuration, or `None` when refused.
pub fn service_for(abstract_syntax: &str, config: &DicomConfig) -> Option<Service> {
    if abstract_syntax == uids::VERIFICATION {
        Some(Service::Verification)
    } else if ANALYSED_STORAGE.contains(&abstract_syntax)
        || (config.accept_secondary_capture && abstract_syntax == uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
    {
        Some(Service::Analysed)
    } else if config.accept_all_storage && abstract_syntax.starts_with(STORAGE_CLASS_PREFIX) {
        Some(Service::StoreOnly)
    } else {
        None
    }
}

/// Decides every proposed context: the result to send, and the contexts accepted.
pub fn negotiate(
    proposed: &[PresentationContextProposed],
    config: &DicomConfig,
) -> (Vec<PresentationContextResult>, Vec<AcceptedContext>) {
    let mut results = Vec::with_capacity(proposed.len());
    let mut accepted = Vec::new();
    for pc in proposed {
        let abstract_syntax = trim_uid(&pc.abstract_syntax);
        let outcome = match service_for(abstract_syntax, config) {
            None => Err(PresentationContextResultReason::AbstractSyntaxNotSupported),
            Some(service) => {
                let ours = if service == Service::Verification {
                    VERIFICATION_TRANSFER_SYNTAXES
                } else {
                    STORAGE_TRANSFER_SYNTAXES
                };
                choose_transfer_syntax(&pc.transfer_syntaxes, ours)
                    .map(|ts| (service, ts))
                    .ok_or(PresentationContextResultReason::TransferSyntaxesNotSupported)
            }
        };
        match outcome {
            Ok((service, ts)) => {
                results.push(PresentationContextResult {
                    id: pc.id,
                    reason: PresentationContextResultReason::Acceptance,
                    transfer_syntax: ts.to_string(),
                });
                accepted.push(AcceptedContext {
                    id: pc.id,
                    abstract_syntax: abstract_syntax.to_string(),
                    transfer_syntax: ts.to_string(),
                    service,
                });
            }
            Err(reason) => results.push(PresentationContextResult {
                id: pc.id,
                reason,
                transfer_syntax: uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
            }),
        }
    }
    (results, accepted)
}

/// Our most preferred syntax among those proposed.
fn choose_transfer_syntax(proposed: &[String], ours: &'static [&'static str]) -> Option<&'static str> {
    ours.iter().copied().find(|ts| proposed.iter().any(|p| trim_uid(p) == *ts))
}

pub fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(id: u8, abstract_syntax: &str, ts: &[&str]) -> PresentationContextProposed {
        PresentationContextProposed {
            id,
            abstract_syntax: abstract_syntax.into(),
            transfer_syntaxes: ts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn uncompressed_is_preferred_whatever_the_peer_order() {
        let config = DicomConfig::default();
        let (_, accepted) = negotiate(
            &[pc(
                1,
                uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
                &[uids::JPEG2000_LOSSLESS, uids::IMPLICIT_VR_LITTLE_ENDIAN, uids::EXPLICIT_VR_LITTLE_ENDIAN],
            )],
            &config,
        );
        assert_eq!(accepted[0].transfer_syntax, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    }

    #[test]
    fn mr_and_jpeg_extended_are_refused_by_default() {
        let config = DicomConfig::default();
        let (results, accepted) = negotiate(
            &[
                pc(1, "1.2.840.10008.5.1.4.1.1.4", &[uids::EXPLICIT_VR_LITTLE_ENDIAN]),
                pc(3, uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION, &["1.2.840.10008.1.2.4.51"]),
            ],
            &config,
        );
        assert!(accepted.is_empty());
        assert_eq!(results[0].reason, PresentationContextResultReason::AbstractSyntaxNotSupported);
        assert_eq!(results[1].reason, PresentationContextResultReason::TransferSyntaxesNotSupported);
    }

    #[test]
    fn store_only_classes_when_configured() {
        let config = DicomConfig { accept_all_storage: true, ..DicomConfig::default() };
        assert_eq!(service_for("1.2.840.10008.5.1.4.1.1.4", &config), Some(Service::StoreOnly));
        assert_eq!(service_for("1.2.840.10008.5.1.4.1.2.2.1", &config), None, "C-FIND is not storage");
    }
}
