use anyhow::Result;
use clap::Args;

use crate::distill::args::DistillArgs;
use crate::distill::distiller::Distiller;
use crate::model;

#[derive(Args)]
pub struct DistillPlanArgs {
    /// The student: built-in YAML, YAML path, .pt or .safetensors.
    #[arg(long)]
    pub model: String,
    /// Image size the shapes are reported at (rounded up to a multiple of 32).
    #[arg(long, default_value_t = 640, value_parser = crate::options::image_size)]
    pub imgsz: usize,
    /// Class count of a YAML student (default: the teacher's).
    #[arg(long, value_parser = crate::options::at_least_one)]
    pub nc: Option<usize>,
    /// Training epochs (for the schedule and stop epoch shown).
    #[arg(long, default_value_t = 100, value_parser = crate::options::at_least_one)]
    pub epochs: usize,
    /// Epochs without mosaic at the end (distillation stops there by default).
    #[arg(long = "close-mosaic", default_value_t = 10)]
    pub close_mosaic: usize,
    #[command(flatten)]
    pub distill: DistillArgs,
}

/// Prints the pairing report (levels, shapes, adapters, resizing, distiller size,
/// teacher cost) without training.
pub fn run(a: DistillPlanArgs) -> Result<()> {
    let a = DistillPlanArgs { imgsz: crate::options::stride_multiple(a.imgsz), ..a };
    let device = crate::default_device();
    let teacher_path = a.distill.teacher.clone().ok_or_else(|| anyhow::anyhow!("--teacher is required"))?;
    let nc = match a.nc {
        Some(n) => n,
        None if teacher_path.ends_with(".yaml") => 80,
        None => model::load(&teacher_path, None, &device)?.model.nc(),
    };
    let student = model::load(&a.model, Some(nc).filter(|_| a.model.ends_with(".yaml")), &device)?.model;
    let mut d = Distiller::new(&a.distill, &student, a.imgsz, a.epochs, a.close_mosaic, &device)?;
    println!("student {} ({} parameters) ← teacher {}", a.model, student.param_count(), teacher_path);
    print!("{}", d.report(a.imgsz));
    Ok(())
}
