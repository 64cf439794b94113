//! The command line: thin wrappers that parse flags and call the library.

mod bench_conv;
mod bench_train;
mod benchmark;
mod compare;
mod demo;
mod distill_plan;
mod export;
mod info;
pub mod key_value;
mod predict;
mod train;
mod val;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "yolodistill", version, about = "Train, distill, validate and deploy YOLO detectors in Rust")]
pub struct Cli {
    /// Compute device: cpu (default), or wgpu / vulkan / cuda[:N] in a build with that cargo
    /// feature. The environment variable YOLODISTILL_DEVICE does the same.
    #[arg(long, global = true)]
    pub device: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Teacher → student distillation end to end on a synthetic dataset it makes itself.
    Demo(demo::DemoArgs),
    /// A/B harness: plain vs distilled students over several seeds, mean gain ± 95% CI.
    Compare(compare::CompareArgs),
    /// Layer table, parameter count and GFLOPs of a model.
    Info(info::InfoArgs),
    /// Detect objects in an image or a folder of images.
    Predict(predict::PredictArgs),
    /// Time training iterations and the data pipeline on this machine.
    BenchTrain(bench_train::BenchTrainArgs),
    /// GFLOP/s of each convolution of a model (forward and both backwards), ours vs burn-flex.
    BenchConv(bench_conv::BenchConvArgs),
    /// Show how a student would be paired with a teacher for distillation, without training.
    DistillPlan(distill_plan::DistillPlanArgs),
    /// Train a detector on a YOLO-format dataset (with `--teacher`: distil it).
    Train(train::TrainCommand),
    /// Validate a model on a dataset split (mAP50, mAP50-95, COCO AP).
    Val(val::ValArgs),
    /// Time the model's forward pass on this machine.
    Benchmark(benchmark::BenchmarkArgs),
    /// Export a model (fused) to ONNX or safetensors.
    Export(export::ExportArgs),
}

/// `--half`: the model's layers cast to the half type. On the CPU that is slower than f32
/// (flex has no native half arithmetic; Ultralytics ignores `half` there), so it says so.
fn apply_half(m: &mut crate::model::DetectionModel, half: Option<crate::options::Half>) -> anyhow::Result<()> {
    let Some(h) = half else { return Ok(()) };
    let device = crate::default_device();
    if !device.supports_dtype(h.dtype()) {
        let supported: Vec<String> = <crate::options::Half as clap::ValueEnum>::value_variants()
            .iter()
            .filter(|o| device.supports_dtype(o.dtype()))
            .map(|o| o.name())
            .collect();
        anyhow::bail!(
            "--half {}: this device ({device:?}) has no {:?} arithmetic; it supports: {}",
            h.name(),
            h.dtype(),
            if supported.is_empty() { "f32 only (leave --half out)".to_string() } else { supported.join(", ") }
        );
    }
    if crate::device::is_cpu(&device) {
        eprintln!("note: --half on the CPU checks half-precision numbers but runs slower than f32; it pays on a GPU");
    }
    m.cast(h.dtype());
    Ok(())
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(name) = &cli.device {
        crate::select_device(name)?;
    }
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Info(a) => info::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Benchmark(a) => benchmark::run(a),
        Command::Export(a) => export::run(a),
        Command::Train(a) => train::run(a),
        Command::DistillPlan(a) => distill_plan::run(a),
        Command::BenchTrain(a) => bench_train::run(a),
        Command::BenchConv(a) => bench_conv::run(a),
        Command::Val(a) => val::run(a),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `--help` documents every flag of every command (hidden test flags aside).
    #[test]
    fn every_flag_has_help() {
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        for cmd in cli.get_subcommands() {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !arg.is_hide_set() && !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} --{}", cmd.get_name(), arg.get_long().unwrap_or(arg.get_id().as_str())));
                }
            }
        }
        assert!(missing.is_empty(), "{} flags without help:\n{}", missing.len(), missing.join("\n"));
    }
}
