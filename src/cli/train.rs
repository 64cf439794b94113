use anyhow::Result;
use clap::Args;

use crate::run::{train, RunArgs};
use crate::train::TrainSummary;

#[derive(Args)]
pub struct TrainCommand {
    #[command(flatten)]
    pub run: RunArgs,
    /// Print a JSON summary on stdout at the end (the run folder, the weights, the final
    /// validation's figures), as the Python package reads it.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TrainCommand) -> Result<()> {
    let s = train(a.run)?;
    if s.rank != 0 {
        return Ok(());
    }
    let span = if s.first_epoch > 1 { format!("epochs {}-{} (resumed)", s.first_epoch, s.epochs_done) } else { format!("{} epochs", s.epochs_done) };
    eprintln!(
        "{span} in {:.0}s. Results in {}; best weights {}",
        s.seconds,
        s.run_dir.display(),
        s.best.display()
    );
    if let Some(v) = &s.final_val {
        eprintln!("final val: mAP50 {:.4}  mAP50-95 {:.4}", v.metrics.map50, v.metrics.map);
    }
    if a.json {
        println!("{}", summary_json(&s));
    }
    Ok(())
}

/// The run as `--json` prints it; `metrics` is null when the run did not validate.
fn summary_json(s: &TrainSummary) -> serde_json::Value {
    serde_json::json!({
        "save_dir": s.run_dir, "best": s.best, "last": s.last,
        "epochs": s.epochs_done, "first_epoch": s.first_epoch, "seconds": s.seconds,
        "metrics": s.final_val.as_ref().map(|v| super::val::metrics_json(v, &s.names)),
    })
}
