use anyhow::Result;

use crate::run::{train, RunArgs};

pub fn run(a: RunArgs) -> Result<()> {
    let s = train(a)?;
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
    if let Some(v) = s.final_val {
        eprintln!("final val: mAP50 {:.4}  mAP50-95 {:.4}", v.metrics.map50, v.metrics.map);
    }
    Ok(())
}
