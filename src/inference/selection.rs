//! Which images the models see: the selection rules of `[[selection.rules]]` applied to an
//! image's tags (`config::selection` holds the rules and their defaults). The first rule that
//! matches decides; an image no rule matches is excluded. What decided is kept with its reason,
//! so that `explain`, the logs, the metrics and a "not analysed" report can say it in words.

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::config::selection::{compile, SelectionAction, SelectionConfig, SelectionRule, TagMatch};
use crate::domain::storable_text;

/// The tags the rules look at, as an image has them (trimmed; multi-valued ones split).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub modality: Vec<String>,
    pub body_part: Vec<String>,
    pub view_position: Vec<String>,
    /// Each View Code Sequence item's code value and meaning.
    pub view_code: Vec<String>,
    pub study_description: Vec<String>,
    pub series_description: Vec<String>,
    pub protocol_name: Vec<String>,
    pub image_laterality: Vec<String>,
    pub calling_ae: Vec<String>,
}

impl Tags {
    /// The tags of a data set received from `calling_ae` (empty when not known, as offline).
    pub fn of(obj: &InMemDicomObject, calling_ae: &str) -> Tags {
        let values = |tag| -> Vec<String> {
            let text = obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).unwrap_or_default();
            // a NUL inside a value would reach the reason, which the database and the reports keep
            text.split('\\').map(|v| storable_text(v.trim_matches(|c: char| c == ' ' || c == '\0'))).collect()
        };
        let mut view_code = Vec::new();
        if let Some(items) = obj.element_opt(tags::VIEW_CODE_SEQUENCE).ok().flatten().and_then(|e| e.items()) {
            for item in items {
                for tag in [tags::CODE_VALUE, tags::CODE_MEANING] {
                    if let Some(v) = item.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()) {
                        view_code.push(storable_text(v.trim()));
                    }
                }
            }
        }
        Tags {
            modality: values(tags::MODALITY),
            body_part: values(tags::BODY_PART_EXAMINED),
            view_position: values(tags::VIEW_POSITION),
            view_code,
            study_description: values(tags::STUDY_DESCRIPTION),
            series_description: values(tags::SERIES_DESCRIPTION),
            protocol_name: values(tags::PROTOCOL_NAME),
            image_laterality: values(tags::IMAGE_LATERALITY),
            calling_ae: vec![calling_ae.trim().to_string()],
        }
    }

    /// The tags as an admin reads them: each that is present, with its values.
    pub fn describe(&self) -> String {
        let keys = [
            "modality",
            "body_part",
            "view_position",
            "view_code",
            "study_description",
            "series_description",
            "protocol_name",
            "image_laterality",
        ];
        let present: Vec<String> = keys
            .iter()
            .filter(|key| self.get(key).0.iter().any(|v| !v.is_empty()))
            .map(|key| seen(self, key))
            .collect();
        if present.is_empty() {
            "none of the tags the rules read".into()
        } else {
            present.join(", ")
        }
    }

    /// The values a rule's tag key stands for, and the tag's name for people.
    fn get(&self, key: &str) -> (Vec<&str>, &'static str) {
        fn all(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        match key {
            "modality" => (all(&self.modality), "Modality"),
            "body_part" => (all(&self.body_part), "Body Part Examined"),
            "view_position" => (all(&self.view_position), "View Position"),
            "view_code" => (all(&self.view_code), "View Code Sequence"),
            "study_description" => (all(&self.study_description), "Study Description"),
            "series_description" => (all(&self.series_description), "Series Description"),
            "protocol_name" => (all(&self.protocol_name), "Protocol Name"),
            "any_description" => {
                let mut v = all(&self.study_description);
                v.extend(all(&self.series_description));
                v.extend(all(&self.protocol_name));
                (v, "the descriptions")
            }
            "image_laterality" => (all(&self.image_laterality), "Image Laterality"),
            "calling_ae" => (all(&self.calling_ae), "the calling AE title"),
            other => unreachable!("a selection rule has no tag {other}"),
        }
    }
}

/// One test of a rule, compiled.
struct Test {
    key: &'static str,
    any_of: Option<Vec<String>>,
    none_of: Option<Vec<String>>,
    matches: Option<regex::Regex>,
    not_matches: Option<regex::Regex>,
}

impl Test {
    fn new(key: &'static str, test: &TagMatch) -> Result<Test, String> {
        let upper =
            |list: &Option<Vec<String>>| list.as_ref().map(|l| l.iter().map(|v| v.trim().to_uppercase()).collect());
        let regex = |p: &Option<String>| {
            p.as_deref().map(compile).transpose().map_err(|e| format!("{key}: not a regular expression: {e}"))
        };
        Ok(match test {
            TagMatch::AnyOf(values) => {
                Test { key, any_of: upper(&Some(values.clone())), none_of: None, matches: None, not_matches: None }
            }
            TagMatch::Test(t) => Test {
                key,
                any_of: upper(&t.any_of),
                none_of: upper(&t.none_of),
                matches: regex(&t.matches)?,
                not_matches: regex(&t.not_matches)?,
            },
        })
    }

    /// Whether the values pass (an absent or empty tag is the one value `""`).
    fn holds(&self, values: &[&str]) -> bool {
        let values: Vec<String> = {
            let present: Vec<String> = values.iter().filter(|v| !v.is_empty()).map(|v| v.to_uppercase()).collect();
            if present.is_empty() {
                vec![String::new()]
            } else {
                present
            }
        };
        let any = |pred: &dyn Fn(&str) -> bool| values.iter().any(|v| pred(v));
        self.any_of.as_ref().is_none_or(|list| any(&|v| list.iter().any(|l| l == v)))
            && self.none_of.as_ref().is_none_or(|list| !any(&|v| list.iter().any(|l| l == v)))
            && self.matches.as_ref().is_none_or(|r| any(&|v| r.is_match(v)))
            && self.not_matches.as_ref().is_none_or(|r| !any(&|v| r.is_match(v)))
    }
}

/// A rule, compiled.
struct Rule {
    name: String,
    action: SelectionAction,
    content_decides: bool,
    tests: Vec<Test>,
}

/// What the rules decided of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The rule that decided; `None` when none matched (the image is excluded).
    pub rule: Option<String>,
    pub selected: bool,
    /// The tags said too little: the content checks decide.
    pub content_decides: bool,
    /// In words an admin can act on, e.g. `excluded by selection rule "lateral or oblique view"
    /// (View Position LL)`.
    pub reason: String,
}

/// The selection rules, compiled once.
pub struct Selector {
    rules: Vec<Rule>,
}

impl Selector {
    /// Compiles the rules (check-config has checked them; an error here names the rule).
    pub fn new(config: &SelectionConfig) -> Result<Selector, String> {
        let rules = config
            .rules
            .iter()
            .map(|r: &SelectionRule| {
                let tests = r
                    .tests()
                    .map(|(key, test)| Test::new(key, test))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("selection rule {:?}: {e}", r.name))?;
                Ok(Rule { name: r.name.clone(), action: r.action, content_decides: r.content_decides, tests })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Selector { rules })
    }

    /// The first rule that matches `tags`, or the exclusion when none does.
    pub fn decide(&self, tags: &Tags) -> Selection {
        for rule in &self.rules {
            if rule.tests.iter().all(|t| t.holds(&tags.get(t.key).0)) {
                let what = match rule.action {
                    SelectionAction::Select => "selected",
                    SelectionAction::Exclude => "excluded",
                };
                let seen: Vec<String> = rule.tests.iter().map(|t| seen(tags, t.key)).collect();
                let seen = if seen.is_empty() { String::new() } else { format!(" ({})", seen.join(", ")) };
                return Selection {
                    rule: Some(rule.name.clone()),
                    selected: rule.action == SelectionAction::Select,
                    content_decides: rule.content_decides && rule.action == SelectionAction::Select,
                    reason: format!("{what} by selection rule {:?}{seen}", rule.name),
                };
            }
        }
        Selection {
            rule: None,
            selected: false,
            content_decides: false,
            reason: format!(
                "no selection rule selects it ({}, {}: not a chest film's)",
                seen(tags, "modality"),
                seen(tags, "body_part")
            ),
        }
    }
}

/// A tag as an admin reads it: its name and its values, or "absent".
fn seen(tags: &Tags, key: &str) -> String {
    let (values, name) = tags.get(key);
    let present: Vec<&str> = values.into_iter().filter(|v| !v.is_empty()).collect();
    if present.is_empty() {
        format!("{name} absent")
    } else {
        format!("{name} {}", present.join("\\"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(modality: &str, body_part: &str, view: &str) -> Tags {
        Tags {
            modality: vec![modality.into()],
            body_part: vec![body_part.into()],
            view_position: vec![view.into()],
            ..Tags::default()
        }
    }

    #[test]
    fn the_default_rules_take_the_chest_as_modalities_spell_it() {
        let selector = Selector::new(&SelectionConfig::default()).unwrap();
        for body_part in
            ["CHEST", "chest", "THORAX", "PORT CHEST", "CHEST PA", "TORAX", "LUNG", "Thorax pa", "CHESTABDOMEN"]
        {
            let s = selector.decide(&tags("CR", body_part, "PA"));
            assert!(s.selected && !s.content_decides, "{body_part}: {s:?}");
        }
        for (modality, body_part, view) in
            [("CT", "CHEST", ""), ("DX", "CHEST", "LL"), ("DX", "KNEE", "AP"), ("CR", "TSPINE", "AP")]
        {
            let s = selector.decide(&tags(modality, body_part, view));
            assert!(!s.selected, "{modality} {body_part} {view}: {s:?}");
        }
        let unknown = selector.decide(&tags("DX", "UNKNOWN", ""));
        assert!(unknown.selected && unknown.content_decides, "{unknown:?}");
        let knee = selector.decide(&tags("DX", "KNEE", "AP"));
        assert_eq!(knee.rule, None);
        assert!(knee.reason.contains("Body Part Examined KNEE"), "{}", knee.reason);
        let lateral = selector.decide(&tags("DX", "CHEST", "LL"));
        assert_eq!(lateral.reason, r#"excluded by selection rule "lateral or oblique view" (View Position LL)"#);
    }

    #[test]
    fn a_description_names_the_chest_when_the_body_part_says_nothing() {
        let selector = Selector::new(&SelectionConfig::default()).unwrap();
        let mut t = tags("DX", "", "AP");
        t.study_description = vec!["XR CHEST 1 VIEW".into()];
        let s = selector.decide(&t);
        assert_eq!(s.rule.as_deref(), Some("chest in the descriptions"), "{s:?}");
        t.series_description = vec!["CHEST LAT".into()];
        assert!(!selector.decide(&t).selected, "a lateral series is excluded first");
    }
}
