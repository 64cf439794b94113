use std::ffi::OsString;

use clap::{CommandFactory, Parser};

fn main() {
    let _ = yolodistill::kernels::alloc::keep_freed_buffers();
    // A bad option is an error like any other: exit code 1 (clap's usage errors would give 2);
    // --help and --version exit 0.
    let cli = yolodistill::cli::Cli::try_parse_from(command_line()).unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 });
    });
    if let Err(e) = yolodistill::cli::run(cli) {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

/// The command line in our flag form: Ultralytics' `key=value` arguments rewritten
/// (`cli::key_value`); a line with an argument that is not UTF-8 is taken as it is.
fn command_line() -> Vec<OsString> {
    let raw: Vec<OsString> = std::env::args_os().collect();
    let Some(text) = raw.iter().map(|a| a.to_str().map(String::from)).collect::<Option<Vec<String>>>() else { return raw };
    match yolodistill::cli::key_value::to_flags(text, &yolodistill::cli::Cli::command()) {
        Ok(flags) => flags.into_iter().map(OsString::from).collect(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
