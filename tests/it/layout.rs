//! The boundaries docs/architecture.md draws between modules, checked on the source: which
//! module may use which. A `use` that crosses one fails here with the file and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules a file reaches through `crate::`, with the line where each is first
/// named (comments left out).
fn crate_modules(file: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut used = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            used.entry(name).or_insert(n + 1);
        }
        // `crate::{a, b}` names several
        if let Some(group) = code.split("crate::{").nth(1) {
            for name in group.split('}').next().unwrap_or("").split(',') {
                let name = name.trim().split("::").next().unwrap_or("").to_string();
                if !name.is_empty() {
                    used.entry(name).or_insert(n + 1);
                }
            }
        }
    }
    used
}

/// Asserts that no file of `module` (a folder or a file under src/) uses any of `forbidden`.
fn never_uses(module: &str, forbidden: &[&str]) {
    let root = src();
    let files =
        if root.join(module).is_dir() { sources(&root.join(module)) } else { vec![root.join(format!("{module}.rs"))] };
    assert!(!files.is_empty(), "src/{module} has no sources");
    let mut crossings = Vec::new();
    for file in &files {
        for (used, line) in crate_modules(file) {
            if forbidden.contains(&used.as_str()) {
                crossings.push(format!("{}:{line} uses crate::{used}", file.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(crossings.is_empty(), "{module} must not use {forbidden:?}:\n{}", crossings.join("\n"));
}

/// The message formats are pure: they know no wire (DICOM, MLLP, HTTP), no database, no sender.
#[test]
fn messages_use_neither_dicom_nor_the_store_nor_the_outbox() {
    never_uses("messages", &["dicom", "store", "outbox", "http", "pipeline"]);
}

/// The objects are built from an analysis alone: no SQL, no sending.
#[test]
fn results_use_neither_the_store_nor_the_outbox() {
    never_uses("results", &["store", "outbox", "messages", "http", "pipeline"]);
}

/// The store speaks the domain: the message facts it reads are the domain's, not an encoder's.
#[test]
fn the_store_uses_no_encoder_and_no_wire() {
    never_uses("store", &["messages", "results", "outbox", "dicom", "http", "pipeline"]);
}

/// TLS, the code registry and the vocabulary serve everything and depend on none of it.
#[test]
fn shared_modules_depend_on_no_stage() {
    never_uses("tls", &["dicom", "messages", "outbox", "http", "store", "pipeline"]);
    never_uses("codes", &["dicom", "messages", "outbox", "results", "store", "pipeline"]);
    never_uses("domain", &["config", "dicom", "messages", "outbox", "results", "store", "pipeline", "http"]);
}

/// Inside messages/, a format may use the folder's shared helpers (mod.rs) but no other format,
/// so that no two import each other.
#[test]
fn no_cycle_inside_messages() {
    let dir = src().join("messages");
    let formats: BTreeSet<String> = sources(&dir)
        .iter()
        .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| s != "mod")
        .collect();
    for format in &formats {
        let text = std::fs::read_to_string(dir.join(format!("{format}.rs"))).unwrap();
        for other in formats.iter().filter(|o| *o != format) {
            for pattern in [format!("super::{other}"), format!("messages::{other}")] {
                assert!(
                    !text.contains(&pattern),
                    "messages/{format}.rs uses {other}: move what they share to messages/mod.rs"
                );
            }
        }
    }
}
