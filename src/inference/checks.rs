//! Input checks: what an image must look like before a model sees it, beyond applicability
//! (modality, body part, view). A chest-tagged radiograph of a cat, a lateral film tagged PA, a
//! child's chest or a blank exposure is skipped with the check's reason, never analysed: a model
//! trained on adult frontal chest radiographs says nothing useful about them (`[inference.checks]`).

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::config::InputChecks;
use crate::domain::SkipCause;
use crate::imaging::DisplayImage;

/// SNOMED CT's Homo sapiens, in Patient Species Code Sequence.
const HOMO_SAPIENS: &str = "337915000";
/// The widest and the narrowest width/height of a chest film (35x43 cm either way is 0.81 and
/// 1.23; 43x43 is 1); outside this, a strip or a crop.
const ASPECT_RANGE: (f64, f64) = (0.5, 2.0);
/// Below this standard deviation of the displayed image (0 to 1) there is no anatomy to see.
const MIN_CONTRAST: f32 = 0.02;

impl InputChecks {
    /// Why the image's tags say it must not be analysed, or `None`.
    pub fn tags(&self, obj: &InMemDicomObject) -> Option<Skip> {
        let text =
            |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
        if self.species {
            if let Some(species) = text(tags::PATIENT_SPECIES_DESCRIPTION).filter(|s| !s.is_empty()) {
                let upper = species.to_uppercase();
                if !(upper.contains("HUMAN") || upper.contains("HOMO SAPIENS")) {
                    let reason = format!("input check: not a human patient (Patient Species Description {species:?})");
                    return Some(Skip::new(SkipCause::Species, reason));
                }
            }
            if let Some(code) = species_code(obj).filter(|c| c != HOMO_SAPIENS) {
                let reason = format!("input check: not a human patient (Patient Species Code {code})");
                return Some(Skip::new(SkipCause::Species, reason));
            }
        }
        if self.view_consistency {
            if let Some(view) = text(tags::VIEW_POSITION).filter(|v| v == "PA" || v == "AP") {
                // not the Study Description: a study of a PA and a lateral ("CHEST PA AND LAT")
                // names both views on each of its images
                for (name, tag) in [
                    ("Series Description", tags::SERIES_DESCRIPTION),
                    ("Protocol Name", tags::PROTOCOL_NAME),
                    ("Image Comments", tags::IMAGE_COMMENTS),
                ] {
                    if let Some(description) = text(tag).filter(|d| says_lateral(d)) {
                        let reason =
                            format!("input check: View Position {view} but {name} {description:?} says lateral");
                        return Some(Skip::new(SkipCause::ViewConsistency, reason));
                    }
                }
                if let Some(rows) = text(tags::PATIENT_ORIENTATION)
                    .and_then(|o| o.split('\\').next().map(str::to_uppercase))
                    .filter(|r| !r.is_empty() && r.chars().all(|c| c == 'A' || c == 'P'))
                {
                    let reason = format!(
                        "input check: View Position {view} but Patient Orientation rows run {rows} (a lateral)"
                    );
                    return Some(Skip::new(SkipCause::ViewConsistency, reason));
                }
            }
        }
        if self.min_age_years > 0 {
            if let Some(age) = age_years(obj).filter(|&a| a < f64::from(self.min_age_years)) {
                let reason = format!(
                    "input check: patient age {age:.1} years is below inference.checks.min_age_years ({})",
                    self.min_age_years
                );
                return Some(Skip::new(SkipCause::MinAge, reason));
            }
        }
        None
    }

    /// Why the decoded image (its size in pixels, its statistics) must not be analysed, or `None`.
    pub fn pixels(&self, (width, height): (u32, u32), statistics: InputStatistics) -> Option<Skip> {
        if !self.image_statistics {
            return None;
        }
        let aspect = f64::from(width) / f64::from(height.max(1));
        if !(ASPECT_RANGE.0..=ASPECT_RANGE.1).contains(&aspect) {
            let reason =
                format!("input check: {width}x{height} pixels is no chest film's shape (width/height {aspect:.2})");
            return Some(Skip::new(SkipCause::ImageStatistics, reason));
        }
        let deviation = statistics.deviation;
        (deviation < MIN_CONTRAST).then(|| {
            let reason =
                format!("input check: near-constant image (standard deviation {deviation:.4} of the displayed range)");
            Skip::new(SkipCause::ImageStatistics, reason)
        })
    }
}

/// Why an image is not analysed: the rule and its reason, as the job records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub cause: SkipCause,
    pub reason: String,
}

impl Skip {
    pub fn new(cause: SkipCause, reason: String) -> Skip {
        Skip { cause, reason }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The displayed image's mean and standard deviation (0 to 1): an input check, and what the
/// drift metrics watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct InputStatistics {
    pub mean: f32,
    pub deviation: f32,
}

impl InputStatistics {
    pub fn of(image: &DisplayImage) -> InputStatistics {
        let (mean, deviation) = crate::imaging::mean_and_deviation(&image.pixels);
        InputStatistics { mean, deviation }
    }
}

/// A description that names a lateral view: the word LAT or LATERAL (LAT., LATERAL, "Thorax
/// LAT"), not letters inside another word.
fn says_lateral(description: &str) -> bool {
    description
        .to_uppercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == "LAT" || word == "LATERAL" || word == "LL" || word == "RL")
}

/// The first Patient Species Code Sequence item's code value.
fn species_code(obj: &InMemDicomObject) -> Option<String> {
    let items = obj.element_opt(tags::PATIENT_SPECIES_CODE_SEQUENCE).ok().flatten()?.items()?;
    let value = items.first()?.element_opt(tags::CODE_VALUE).ok().flatten()?.to_str().ok()?;
    Some(value.trim().to_string())
}

/// The patient's age in years: Patient's Age (nnnD/W/M/Y), else Study Date - Patient's Birth Date.
fn age_years(obj: &InMemDicomObject) -> Option<f64> {
    let text = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
    if let Some(age) = text(tags::PATIENT_AGE).filter(|a| a.len() == 4 && a.is_ascii()) {
        let (number, unit) = age.split_at(3);
        if let Ok(n) = number.parse::<f64>() {
            let years = match unit {
                "D" => n / 365.25,
                "W" => n * 7.0 / 365.25,
                "M" => n / 12.0,
                "Y" => n,
                _ => return None,
            };
            return Some(years);
        }
    }
    let date = |tag| {
        let s = text(tag)?;
        let (y, m, d) =
            (s.get(0..4)?.parse::<i32>().ok()?, s.get(4..6)?.parse::<i32>().ok()?, s.get(6..8)?.parse::<i32>().ok()?);
        Some(f64::from(y) + f64::from(m - 1) / 12.0 + f64::from(d - 1) / 365.25)
    };
    let (birth, study) = (date(tags::PATIENT_BIRTH_DATE)?, date(tags::STUDY_DATE)?);
    (study >= birth).then_some(study - birth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, VR};

    fn object(elements: &[(dicom_core::Tag, VR, &str)]) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        for &(tag, vr, value) in elements {
            obj.put(DataElement::new(tag, vr, value));
        }
        obj
    }

    #[test]
    fn a_cat_is_not_analysed() {
        let cat = object(&[(tags::PATIENT_SPECIES_DESCRIPTION, VR::LO, "Feline"), (tags::VIEW_POSITION, VR::CS, "AP")]);
        let skip = InputChecks::default().tags(&cat).unwrap();
        assert!(skip.cause == SkipCause::Species && skip.reason.contains("Feline"), "{skip:?}");
        let human = object(&[(tags::PATIENT_SPECIES_DESCRIPTION, VR::LO, "Homo sapiens")]);
        assert_eq!(InputChecks::default().tags(&human), None);
        let off = InputChecks { species: false, ..InputChecks::default() };
        assert_eq!(off.tags(&cat), None);
    }

    #[test]
    fn a_lateral_tagged_frontal_is_not_analysed() {
        let lateral = object(&[(tags::VIEW_POSITION, VR::CS, "PA"), (tags::SERIES_DESCRIPTION, VR::LO, "Thorax LAT")]);
        assert!(InputChecks::default().tags(&lateral).unwrap().reason.contains("says lateral"));
        let oriented = object(&[(tags::VIEW_POSITION, VR::CS, "AP"), (tags::PATIENT_ORIENTATION, VR::CS, "P\\F")]);
        assert!(InputChecks::default().tags(&oriented).unwrap().reason.contains("Patient Orientation"));
        // "view: PA", "CHEST PA", a word that merely contains LAT: frontal
        for description in ["view: PA", "CHEST PA", "PLATE 2", "Translation"] {
            let frontal =
                object(&[(tags::VIEW_POSITION, VR::CS, "PA"), (tags::SERIES_DESCRIPTION, VR::LO, description)]);
            assert_eq!(InputChecks::default().tags(&frontal), None, "{description}");
        }
    }

    #[test]
    fn a_child_is_not_analysed_below_the_limit() {
        let child = object(&[(tags::PATIENT_AGE, VR::AS, "006Y")]);
        assert!(InputChecks::default().tags(&child).unwrap().reason.contains("6.0 years"));
        let infant = object(&[(tags::PATIENT_BIRTH_DATE, VR::DA, "20260101"), (tags::STUDY_DATE, VR::DA, "20261101")]);
        assert!(InputChecks::default().tags(&infant).is_some());
        let adult = object(&[(tags::PATIENT_AGE, VR::AS, "045Y")]);
        assert_eq!(InputChecks::default().tags(&adult), None);
        assert_eq!(InputChecks { min_age_years: 0, ..InputChecks::default() }.tags(&child), None);
        // a peer's bytes: four bytes that are not four characters are no age, not a panic
        let garbled = object(&[(tags::PATIENT_AGE, VR::AS, "00é")]);
        assert_eq!(InputChecks::default().tags(&garbled), None);
    }

    #[test]
    fn blank_and_strip_images_are_not_analysed() {
        let blank = DisplayImage { width: 100, height: 100, pixels: vec![0.5; 10_000] };
        let checked = |image: &DisplayImage| {
            InputChecks::default().pixels((image.width, image.height), InputStatistics::of(image))
        };
        assert!(checked(&blank).unwrap().reason.contains("near-constant"));
        let strip =
            DisplayImage { width: 300, height: 100, pixels: (0..30_000).map(|i| (i % 7) as f32 / 7.0).collect() };
        assert!(checked(&strip).unwrap().reason.contains("shape"));
        let film =
            DisplayImage { width: 100, height: 120, pixels: (0..12_000).map(|i| (i % 7) as f32 / 7.0).collect() };
        assert_eq!(checked(&film), None);
        let statistics = InputStatistics::of(&blank);
        assert_eq!((statistics.mean, statistics.deviation), (0.5, 0.0));
    }
}
