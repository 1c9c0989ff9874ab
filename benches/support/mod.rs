//! What the benchmarks that run processes share.

use std::process::Child;

use anyhow::{Context, Result};

/// Child processes, killed and reaped when dropped (also on errors), so that none outlives the run.
pub struct Kids(pub Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A positive integer from the environment, or `default` when the variable is not set.
pub fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().ok().filter(|&n| n > 0).with_context(|| format!("{name}={v} is not a positive integer")),
        Err(_) => Ok(default),
    }
}
