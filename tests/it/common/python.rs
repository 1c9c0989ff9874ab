//! Which Python runs the test tools: one rule for the tests and the benchmarks (the benchmarks
//! include this file with `#[path]`, as they cannot use the tests' modules).

/// The Python interpreter with pydicom, pynetdicom, onnxruntime and the data packages:
/// `PNEUMOTRIAGE_PYTHON` when it is set, else the repository's `.venv/bin/python` (the virtual
/// environment scripts/test makes) when it exists, else `python3` from `PATH`.
pub fn python() -> String {
    if let Some(python) = std::env::var("PNEUMOTRIAGE_PYTHON").ok().filter(|p| !p.is_empty()) {
        return python;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    if std::path::Path::new(venv).exists() {
        venv.into()
    } else {
        "python3".into()
    }
}
