use std::ffi::OsString;

use clap::{CommandFactory, Parser};

/// A file that also receives the error message of a failed command: the Python package reads it
/// there and raises it, while the command's stderr (progress bars included) stays the terminal's.
const ERROR_FILE: &str = "YOLODISTILL_ERROR_FILE";

fn main() {
    let _ = yolodistill::kernels::alloc::keep_freed_buffers();
    // A bad option is an error like any other: exit code 1 (clap's usage errors would give 2);
    // --help and --version exit 0.
    let cli = yolodistill::cli::Cli::try_parse_from(command_line()).unwrap_or_else(|e| {
        if !e.use_stderr() {
            let _ = e.print();
            std::process::exit(0);
        }
        fail(e.to_string().trim_end().trim_start_matches("error: "));
    });
    if let Err(e) = yolodistill::cli::run(cli) {
        let causes: Vec<String> = e.chain().skip(1).map(|c| format!("\n  caused by: {c}")).collect();
        fail(&format!("{e}{}", causes.concat()));
    }
}

/// Prints `error: {message}` (and writes it to $YOLODISTILL_ERROR_FILE when set), exit code 1.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    if let Some(path) = std::env::var_os(ERROR_FILE) {
        if let Err(e) = std::fs::write(&path, message) {
            eprintln!("warning: cannot write the error to {} ({ERROR_FILE}): {e}", std::path::Path::new(&path).display());
        }
    }
    std::process::exit(1);
}

/// The command line in our flag form: Ultralytics' `key=value` arguments rewritten
/// (`cli::key_value`); a line with an argument that is not UTF-8 is taken as it is.
fn command_line() -> Vec<OsString> {
    let raw: Vec<OsString> = std::env::args_os().collect();
    let Some(text) = raw.iter().map(|a| a.to_str().map(String::from)).collect::<Option<Vec<String>>>() else { return raw };
    match yolodistill::cli::key_value::to_flags(text, &yolodistill::cli::Cli::command()) {
        Ok(flags) => flags.into_iter().map(OsString::from).collect(),
        Err(e) => fail(&e),
    }
}
