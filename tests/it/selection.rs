//! The selection rules against the tags real modalities write: real radiographs (pydicom-data's
//! RG1, a chest CR, and RG3, a tibia; deid-data's cat) and synthetic films, re-tagged with
//! dcmodify as a hospital's modalities tag them, each analysed or skipped as the table says.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{deid_cat, pydicom_data, run, synthetic_images, text};

/// The image a variant starts from.
#[derive(Clone, Copy)]
enum Base {
    /// pydicom-data's RG1_UNCR: a Philips CR chest PA (Body Part CHEST, View PA).
    Rg1,
    /// pydicom-data's RG3_UNCR: a CR of a tibia (Body Part EXTREMITY, View AP).
    Rg3,
    /// deid-data's cat: a DX tagged CHEST and AP whose series says "Thorax LAT".
    Cat,
    /// models/training's synthetic frontal film (Body Part CHEST, View PA).
    Synthetic,
}

impl Base {
    fn name(self) -> &'static str {
        match self {
            Base::Rg1 => "RG1",
            Base::Rg3 => "RG3",
            Base::Cat => "cat",
            Base::Synthetic => "synthetic",
        }
    }
}

/// One variant: its base, the dcmodify edits, whether it is analysed, and where the spelling
/// comes from.
struct Variant {
    base: Base,
    edits: &'static [&'static str],
    analysed: bool,
    source: &'static str,
}

const BODY_PART: &str = "(0018,0015)";
const VIEW: &str = "(0018,5101)";

/// The table the closing note of issue 30 quotes: 40 variants.
const VARIANTS: &[Variant] = &[
    // a chest film, spelt as modalities spell it: analysed
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=CHEST"],
        analysed: true,
        source: "DICOM PS3.16 Annex L defined term",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=chest"],
        analysed: true,
        source: "lower case, typed at the console",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=THORAX"],
        analysed: true,
        source: "issue 30's trial; German, French, Dutch",
    },
    Variant { base: Base::Rg1, edits: &["(0018,0015)=Thorax"], analysed: true, source: "mixed case" },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=PORT CHEST"],
        analysed: true,
        source: "issue 30's trial (a portable film)",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=CHEST PA"],
        analysed: true,
        source: "issue 30's trial (view in the body part)",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=CHEST_PA"],
        analysed: true,
        source: "the same, as a CS value with an underscore",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=CHEST AP PORT"],
        analysed: true,
        source: "portable AP, a bedside protocol's name",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=TORAX"],
        analysed: true,
        source: "issue 30's trial; Spanish, Portuguese, Swedish",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0008,0005)=ISO_IR 192", "(0018,0015)=TÓRAX"],
        analysed: true,
        source: "Spanish, Portuguese, with the accent (UTF-8)",
    },
    Variant { base: Base::Rg1, edits: &["(0018,0015)=TORACE"], analysed: true, source: "Italian" },
    Variant { base: Base::Rg1, edits: &["(0018,0015)=BRUSTKORB"], analysed: true, source: "German (ribcage)" },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=LUNG"],
        analysed: true,
        source: "issue 30's trial; PS3.16 Annex L defined term",
    },
    Variant { base: Base::Rg1, edits: &["(0018,0015)=LUNGS"], analysed: true, source: "plural" },
    Variant { base: Base::Rg1, edits: &["(0018,0015)=CXR"], analysed: true, source: "the abbreviation" },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=CHESTABDOMEN"],
        analysed: true,
        source: "PS3.16 Annex L compound defined term",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)="],
        analysed: true,
        source: "empty body part, Study Description THORAX (RG1's own)",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=UNKNOWN", "(0008,1030)=", "(0008,103E)=XR CHEST 1 VIEW"],
        analysed: true,
        source: "issue 30's trial; the series names the chest",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=UNKNOWN", "(0008,1030)="],
        analysed: true,
        source: "issue 30's trial; nothing else to go on: the content checks decide",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=OTHER", "(0008,1030)="],
        analysed: true,
        source: "a generic value: the content checks decide",
    },
    Variant { base: Base::Rg1, edits: &["(0018,5101)=AP"], analysed: true, source: "an AP film (PS3.3 defined term)" },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,5101)=AP SUPINE"],
        analysed: true,
        source: "a bedside AP, the position spelt out",
    },
    Variant { base: Base::Rg1, edits: &["(0018,5101)="], analysed: true, source: "no view position" },
    Variant {
        base: Base::Synthetic,
        edits: &["(0018,0015)=THORAX"],
        analysed: true,
        source: "a synthetic film tagged THORAX",
    },
    Variant {
        base: Base::Synthetic,
        edits: &["(0018,0015)=PORT CHEST", "(0018,5101)=AP"],
        analysed: true,
        source: "a synthetic portable AP",
    },
    // not a frontal chest film: skipped
    Variant { base: Base::Rg1, edits: &["(0018,0015)=ABDOMEN"], analysed: false, source: "another body part (PS3.16)" },
    Variant { base: Base::Rg1, edits: &["(0018,0015)=KNEE"], analysed: false, source: "another body part (PS3.16)" },
    Variant { base: Base::Rg1, edits: &["(0018,0015)=SKULL"], analysed: false, source: "another body part (PS3.16)" },
    Variant { base: Base::Rg1, edits: &["(0018,0015)=TSPINE"], analysed: false, source: "the thoracic spine (PS3.16)" },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,0015)=THORACIC SPINE"],
        analysed: false,
        source: "the thoracic spine, spelt out",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,5101)=LL"],
        analysed: false,
        source: "a left lateral (PS3.3 View Position)",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,5101)=RL"],
        analysed: false,
        source: "a right lateral (PS3.3 View Position)",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,5101)=LLD"],
        analysed: false,
        source: "a left lateral decubitus (PS3.3 View Position)",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,5101)=RLO"],
        analysed: false,
        source: "an oblique (PS3.3 View Position)",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0008,103E)=CHEST LAT"],
        analysed: false,
        source: "a lateral named in its series",
    },
    Variant {
        base: Base::Rg1,
        edits: &["(0018,5101)=", "(0018,1030)=THORAX LATERAL"],
        analysed: false,
        source: "a lateral named in its protocol",
    },
    Variant {
        base: Base::Rg1,
        edits: &[
            "(0054,0220)[0].(0008,0100)=399173006",
            "(0054,0220)[0].(0008,0102)=SCT",
            "(0054,0220)[0].(0008,0104)=left lateral projection",
        ],
        analysed: false,
        source: "a lateral by its View Code Sequence (SNOMED CT)",
    },
    Variant { base: Base::Rg1, edits: &["(0008,0060)=CT"], analysed: false, source: "not a radiograph" },
    Variant { base: Base::Rg3, edits: &[], analysed: false, source: "a real tibia CR (EXTREMITY, AP)" },
    Variant {
        base: Base::Cat,
        edits: &[],
        analysed: false,
        source: "a real cat DX tagged CHEST and AP, series Thorax LAT",
    },
];

/// Every variant written under `dir`, with a new SOP Instance UID each.
fn variants(dir: &Path) -> Vec<PathBuf> {
    let synthetic = synthetic_images(&dir.join("synthetic"), 1, 77).remove(0);
    VARIANTS
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let base = match v.base {
                Base::Rg1 => pydicom_data("RG1_UNCR.dcm"),
                Base::Rg3 => pydicom_data("RG3_UNCR.dcm"),
                Base::Cat => deid_cat(),
                Base::Synthetic => synthetic.clone(),
            };
            let file = dir.join(format!("variant-{i:02}.dcm"));
            std::fs::copy(&base, &file).unwrap();
            let mut args = vec!["-nb".to_string(), "-gin".to_string()];
            for edit in v.edits {
                args.extend(["-i".to_string(), edit.to_string()]);
            }
            args.push(file.display().to_string());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("dcmodify", &args);
            file
        })
        .collect()
}

/// Every variant through `infer` (the node's own path from a file to its analysis, selection
/// rules first): each chest-film spelling analysed, each lateral, other view, other body part
/// and other modality skipped by a selection rule, as the table says.
#[test]
fn forty_real_world_taggings_are_analysed_or_skipped_as_the_table_says() {
    assert_eq!(VARIANTS.len(), 40);
    let work = tempfile::tempdir().unwrap();
    let files = variants(work.path());
    let infer = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .arg("infer")
        .args(&files)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let report = text(&infer);
    assert!(infer.status.success(), "{report}");
    let mut wrong = Vec::new();
    for (file, variant) in files.iter().zip(VARIANTS) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let line = report.lines().find(|l| l.contains(&format!("{name}: "))).unwrap_or("(no line)");
        let analysed = [": Positive", ": Negative"].iter().any(|s| line.contains(s));
        let excluded = line.contains(": skipped: not selected: ");
        let as_expected = if variant.analysed { analysed } else { excluded };
        let outcome = if analysed { "analysed" } else { "skipped" };
        println!("{outcome:<8} {:<9} {:<58} {}", variant.base.name(), variant.edits.join(" "), variant.source);
        if !as_expected {
            wrong.push(format!("{} ({}): {line}", variant.edits.join(" "), variant.source));
        }
    }
    assert!(wrong.is_empty(), "not as the table says:\n{}\n\n{report}", wrong.join("\n"));
}

/// `explain` says, for a file, which rule decided and what the node would do.
#[test]
fn explain_names_the_rule_that_decided() {
    let work = tempfile::tempdir().unwrap();
    let lateral = work.path().join("lateral.dcm");
    std::fs::copy(pydicom_data("RG1_UNCR.dcm"), &lateral).unwrap();
    run("dcmodify", &["-nb", "-i", &format!("{VIEW}=LL"), lateral.to_str().unwrap()]);
    let thorax = work.path().join("thorax.dcm");
    std::fs::copy(pydicom_data("RG1_UNCR.dcm"), &thorax).unwrap();
    run("dcmodify", &["-nb", "-i", &format!("{BODY_PART}=THORAX"), thorax.to_str().unwrap()]);
    let out = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .arg("explain")
        .args([&thorax, &lateral, &deid_cat()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    println!("{said}");
    assert!(said.contains(r#"selection: selected by selection rule "chest" (Body Part Examined THORAX)"#), "{said}");
    assert!(said.contains("=> analysed by the models"), "{said}");
    assert!(said.contains(r#"excluded by selection rule "lateral or oblique view" (View Position LL)"#), "{said}");
    assert!(said.contains(r#"excluded by selection rule "lateral series" (Series Description Thorax LAT)"#), "{said}");
    assert_eq!(said.matches("=> not analysed: not a frontal chest film by its tags").count(), 2, "{said}");
}
