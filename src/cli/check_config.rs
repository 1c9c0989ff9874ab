//! `check-config`: the file's problems, and the models' and TLS files' that `serve` would stop on.

use std::process::ExitCode;

use pneumotriage::config::Config;
use pneumotriage::inference::manifest::ManifestError;
use pneumotriage::inference::Manifest;

pub fn check_config(config: &Config) -> ExitCode {
    let mut problems = Vec::new();
    if config.inference.enabled {
        if let Err(e) = check_models(config) {
            problems.push(format!("{}: inference.models: {e}", config.source));
        }
    }
    problems.extend(
        (0..config.destinations.len())
            .filter_map(|i| pneumotriage::delivery::target(config, i).err())
            .map(|e| e.to_string()),
    );
    problems.extend(pneumotriage::dicom::tls::listener_acceptor(config).err().map(|e| e.to_string()));
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("{problem}");
        }
        eprintln!("configuration has {} problem(s)", problems.len());
        return ExitCode::from(2);
    }
    println!("{}: OK", config.source);
    println!("{}", config.summary());
    ExitCode::SUCCESS
}

/// Reads the manifest and checks every model file against its sha256 (without ONNX Runtime).
fn check_models(config: &Config) -> Result<(), ManifestError> {
    let manifest = Manifest::load(&config.resolve(&config.inference.models))?;
    for model in &manifest.models {
        manifest.read_verified(model)?;
    }
    Ok(())
}
