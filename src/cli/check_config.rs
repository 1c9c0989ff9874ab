//! `check-config`: the file's problems, and everything else `serve` would stop on before it
//! listens ([`super::preflight`]).

use std::process::ExitCode;

use pneumotriage::config::Config;

pub fn check_config(config: &Config) -> ExitCode {
    if let Err(problems) = super::preflight::check(config) {
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
