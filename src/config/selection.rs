//! `[[selection.rules]]`: which images the models see, by their tags. The rules are tried in
//! order and the first that matches decides, selecting the image or excluding it; an image no
//! rule matches is excluded. Without rules in the file, the node's own apply
//! ([`DEFAULT_RULES`]): they take the spellings real modalities give a frontal chest film and
//! leave the decision to the content checks where the tags are missing or generic.

use serde::{Deserialize, Serialize};

use super::{check_label, Report};

/// The rules a node uses when the file gives none (docs/configuration.md shows them).
pub const DEFAULT_RULES: &str = r#"
# Only radiographs: computed (CR) and digital (DX) radiography.
[[rules]]
name = "not a radiograph"
action = "exclude"
modality = { none_of = ["CR", "DX"] }

# Laterals, decubitus and obliques, by View Position (DICOM's defined terms and common others).
[[rules]]
name = "lateral or oblique view"
action = "exclude"
view_position = ["LL", "RL", "LLD", "RLD", "LLO", "RLO", "LAT", "LATERAL", "LAO", "RAO", "LPO", "RPO"]

# ... or by the View Code Sequence (SNOMED CT's right and left lateral projections, or the word).
[[rules]]
name = "lateral or oblique view code"
action = "exclude"
view_code = { matches = '^(399198007|399173006)$|lateral|oblique|decubitus' }

# ... or named in the series or the protocol (a study's description may name both views).
[[rules]]
name = "lateral series"
action = "exclude"
series_description = { matches = '\b(LAT|LATERAL|LL|RL)\b' }

[[rules]]
name = "lateral protocol"
action = "exclude"
protocol_name = { matches = '\b(LAT|LATERAL|LL|RL)\b' }

# A view that is given and is not frontal (PA or AP, alone or followed by more, e.g. AP SUPINE).
[[rules]]
name = "not a frontal view"
action = "exclude"
view_position = { not_matches = '^(PA|AP|POSTERO.?ANTERIOR|ANTERO.?POSTERIOR)\b|^(P\.A\.|A\.P\.)|^$' }

# The spine is not the chest, whatever the body part says of the region.
[[rules]]
name = "spine"
action = "exclude"
body_part = { matches = 'SPINE|VERTEBR' }

# The chest, as modalities spell it: CHEST and THORAX in any case and compounds, other
# languages' words for it (T.{1,2}RAX also takes TÓRAX, whose accent a CS value cannot hold and
# readers see as two characters), the lung, and the abbreviations technologists use.
[[rules]]
name = "chest"
action = "select"
body_part = { matches = 'CHEST|THORA|T.{1,2}RAX|TORACE|TORAKS|BORST|BRUST|POITRINE|PECHO|LUNG|POUMON|PULM|CXR' }

# A body part that says nothing, with a description that names the chest.
[[rules]]
name = "chest in the descriptions"
action = "select"
body_part = ["", "UNKNOWN", "OTHER", "NONE", "BODY", "WHOLEBODY", "OTHERS", "NA", "N/A"]
any_description = { matches = 'CHEST|THORA|TORAX|TÓRAX|TORACE|BORST|BRUST|POITRINE|PECHO|LUNG|POUMON|CXR' }

# A body part that says nothing, and nothing else to go on: the content checks decide.
[[rules]]
name = "tags say too little"
action = "select"
content_decides = true
body_part = ["", "UNKNOWN", "OTHER", "NONE", "BODY", "WHOLEBODY", "OTHERS", "NA", "N/A"]
"#;

/// `[selection]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// In order; the first that matches decides. Unset: [`DEFAULT_RULES`].
    #[serde(default = "default_rules")]
    pub rules: Vec<SelectionRule>,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        SelectionConfig { rules: default_rules() }
    }
}

fn default_rules() -> Vec<SelectionRule> {
    static RULES: std::sync::OnceLock<Vec<SelectionRule>> = std::sync::OnceLock::new();
    RULES
        .get_or_init(|| {
            toml::from_str::<SelectionConfig>(DEFAULT_RULES).expect("the default selection rules parse").rules
        })
        .clone()
}

/// What a rule that matches does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectionAction {
    Select,
    Exclude,
}

/// One rule: a name, what it does, and the tags it looks at. Every test given must hold for the
/// rule to match (a rule without any matches every image).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionRule {
    /// How logs, metrics, `explain` and reasons name it.
    pub name: String,
    pub action: SelectionAction,
    /// The tags say too little to know: the content checks (near-constant image, a chest film's
    /// shape) decide, whatever `inference.checks.image_statistics` says, and a skip says so.
    #[serde(default)]
    pub content_decides: bool,
    /// Modality (0008,0060).
    pub modality: Option<TagMatch>,
    /// Body Part Examined (0018,0015).
    pub body_part: Option<TagMatch>,
    /// View Position (0018,5101).
    pub view_position: Option<TagMatch>,
    /// The View Code Sequence (0054,0220): each item's code value and code meaning.
    pub view_code: Option<TagMatch>,
    /// Study Description (0008,1030).
    pub study_description: Option<TagMatch>,
    /// Series Description (0008,103E).
    pub series_description: Option<TagMatch>,
    /// Protocol Name (0018,1030).
    pub protocol_name: Option<TagMatch>,
    /// Any of the study description, the series description and the protocol name.
    pub any_description: Option<TagMatch>,
    /// Image Laterality (0020,0062).
    pub image_laterality: Option<TagMatch>,
    /// The calling AE title the image came from.
    pub calling_ae: Option<TagMatch>,
}

/// A test of one tag's values, case-insensitive. A list is shorthand for `any_of`. An absent or
/// empty tag is the value `""`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TagMatch {
    AnyOf(Vec<String>),
    Test(TagTest),
}

/// Every condition given must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TagTest {
    /// One of the tag's values is one of these (trimmed).
    pub any_of: Option<Vec<String>>,
    /// None of the tag's values is one of these.
    pub none_of: Option<Vec<String>>,
    /// A regular expression (Rust's `regex` syntax) found in one of the tag's values.
    pub matches: Option<String>,
    /// A regular expression found in none of the tag's values.
    pub not_matches: Option<String>,
}

impl SelectionRule {
    /// Each tag the rule tests, with its key.
    pub fn tests(&self) -> impl Iterator<Item = (&'static str, &TagMatch)> {
        [
            ("modality", &self.modality),
            ("body_part", &self.body_part),
            ("view_position", &self.view_position),
            ("view_code", &self.view_code),
            ("study_description", &self.study_description),
            ("series_description", &self.series_description),
            ("protocol_name", &self.protocol_name),
            ("any_description", &self.any_description),
            ("image_laterality", &self.image_laterality),
            ("calling_ae", &self.calling_ae),
        ]
        .into_iter()
        .filter_map(|(key, test)| test.as_ref().map(|t| (key, t)))
    }
}

impl TagMatch {
    /// The regular expressions it holds, each with the field it is in.
    pub fn patterns(&self) -> Vec<(&'static str, &str)> {
        match self {
            TagMatch::AnyOf(_) => Vec::new(),
            TagMatch::Test(t) => [("matches", &t.matches), ("not_matches", &t.not_matches)]
                .into_iter()
                .filter_map(|(field, p)| p.as_deref().map(|p| (field, p)))
                .collect(),
        }
    }
}

/// A pattern as the node compiles it: case-insensitive.
pub fn compile(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern).case_insensitive(true).size_limit(1 << 20).build()
}

impl SelectionConfig {
    pub(super) fn check(&self, report: &mut Report) {
        if self.rules.is_empty() {
            report("selection.rules", "is empty: no image would ever be analysed".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |field: &str| format!("selection.rules[{i}].{field}");
            if let Err(m) = check_label(&rule.name.replace(' ', "-")) {
                report(&key("name"), m);
            } else if !seen.insert(rule.name.as_str()) {
                report(&key("name"), format!("`{}` is the name of another rule", rule.name));
            }
            for (tag, test) in rule.tests() {
                if let TagMatch::Test(t) = test {
                    if t.any_of.is_none() && t.none_of.is_none() && t.matches.is_none() && t.not_matches.is_none() {
                        report(&key(tag), "tests nothing: give any_of, none_of, matches or not_matches".into());
                    }
                }
                // the syntax only: compiling is the selector's (serve and check-config build it)
                for (field, pattern) in test.patterns() {
                    if let Err(e) = regex_syntax::ParserBuilder::new().case_insensitive(true).build().parse(pattern) {
                        report(&key(&format!("{tag}.{field}")), format!("is not a regular expression: {e}"));
                    }
                }
            }
        }
    }
}
