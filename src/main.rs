use clap::Parser;

fn main() {
    let _ = yolodistill::kernels::alloc::keep_freed_buffers();
    // A bad option is an error like any other: exit code 1 (clap's usage errors would give 2);
    // --help and --version exit 0.
    let cli = yolodistill::cli::Cli::try_parse().unwrap_or_else(|e| {
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
