use clap::Parser;

fn main() {
    let _ = yolodistill::kernels::alloc::keep_freed_buffers();
    let cli = yolodistill::cli::Cli::parse();
    if let Err(e) = yolodistill::cli::run(cli) {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
