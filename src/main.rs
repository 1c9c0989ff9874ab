//! The `pneumotriage` command: parses the command line and hands it to `cli/`, one file per
//! command; `cli/serve.rs` holds the node's start-up and shutdown order.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    pneumotriage::keep_freed_memory();
    let args = cli::Cli::parse();
    pneumotriage::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
