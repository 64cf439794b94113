//! Training arguments, named after Ultralytics' (defaults of 8.4.190 unless noted).

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::optim::OptimizerKind;

/// A saved run's arguments that lack an option (written by an older version) read its default.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainArgs {
    /// Built-in YAML (from scratch), YAML path, .pt or .safetensors (fine-tune).
    /// Not needed with --resume (the checkpoint remembers it).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<String>,
    /// data.yaml of a YOLO-format dataset (not needed with --resume).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Training epochs (one pass over the labeled images each).
    #[arg(long, default_value_t = 100, value_parser = crate::options::at_least_one)]
    pub epochs: usize,
    /// Training and validation image size (rounded up to a multiple of 32).
    #[arg(long, default_value_t = 640, value_parser = crate::options::image_size)]
    pub imgsz: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 16, value_parser = crate::options::at_least_one)]
    pub batch: usize,
    /// Optimizer; `auto` follows Ultralytics (SGD for long runs, AdamW otherwise).
    #[arg(long, value_enum, ignore_case = true, default_value_t = OptimizerKind::Auto)]
    pub optimizer: OptimizerKind,
    /// Initial learning rate (SGD/AdamW; `auto` picks its own).
    #[arg(long, default_value_t = 0.01, value_parser = crate::options::non_negative)]
    pub lr0: f64,
    /// Final learning rate as a fraction of lr0.
    #[arg(long, default_value_t = 0.01, value_parser = crate::options::non_negative)]
    pub lrf: f64,
    /// SGD momentum / Adam beta1.
    #[arg(long, default_value_t = 0.937)]
    pub momentum: f64,
    /// Weight decay at the nominal batch size (scaled with --batch and --nbs).
    #[arg(long = "weight-decay", default_value_t = 0.0005)]
    pub weight_decay: f64,
    /// Warm-up epochs (may be fractional) over which learning rates, momentum and accumulation ramp up.
    #[arg(long = "warmup-epochs", default_value_t = 3.0)]
    pub warmup_epochs: f64,
    /// SGD momentum at the start of warm-up.
    #[arg(long = "warmup-momentum", default_value_t = 0.8)]
    pub warmup_momentum: f64,
    /// Learning rate of the biases at the start of warm-up.
    #[arg(long = "warmup-bias-lr", default_value_t = 0.1)]
    pub warmup_bias_lr: f64,
    /// Cosine learning-rate schedule (default linear).
    #[arg(long = "cos-lr")]
    pub cos_lr: bool,
    /// Turn mosaic off for the last N epochs.
    #[arg(long = "close-mosaic", default_value_t = 10)]
    pub close_mosaic: usize,
    /// Seed of the initial weights, the data order and the augmentation (and the split of --label-fraction).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder of the run folders.
    #[arg(long, default_value = "runs")]
    pub project: PathBuf,
    /// Run folder name under --project (name2, name3, … when taken, unless --exist-ok).
    #[arg(long, default_value = "train")]
    pub name: String,
    /// Reuse an existing run folder instead of making name2, name3, …
    #[arg(long = "exist-ok")]
    pub exist_ok: bool,
    /// Continue an interrupted run: its last.safetensors (or the run of --project/--name).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub resume: Option<String>,
    /// Data-loading threads, at most the CPUs per training process on this machine and the
    /// batches per epoch (as Ultralytics).
    #[arg(long, default_value_t = crate::data::loader::DEFAULT_WORKERS)]
    pub workers: usize,
    /// Splits every batch into this many shards trained one after another, their gradients
    /// summed: the update of as many devices (under mpirun, each rank's share is split again).
    #[arg(long, default_value_t = 1, value_parser = crate::options::at_least_one)]
    pub shards: usize,
    /// Where targets are assigned: `host` (the CPU's choice under `auto`), or `device`: tensor
    /// operations with no read-back inside a step, the loss read every few steps (a GPU's).
    #[arg(long = "assign-on", value_enum, default_value_t = crate::loss::AssignOn::Auto)]
    pub assign_on: crate::loss::AssignOn,
    /// Stop after this many epochs without a better fitness.
    #[arg(long, default_value_t = 100)]
    pub patience: usize,
    /// Nominal batch size for gradient accumulation and weight-decay scaling.
    #[arg(long, default_value_t = 64, value_parser = crate::options::at_least_one)]
    pub nbs: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub gains: crate::loss::Gains,
    #[command(flatten)]
    #[serde(flatten)]
    pub aug: crate::data::augment::AugConfig,
    /// Validate every epoch (the final epoch is always validated).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub val: bool,
    /// Use only this fraction of the training images (quick experiments).
    #[arg(long, default_value_t = 1.0, value_parser = crate::options::share)]
    pub fraction: f64,
    /// Images without labels (a folder, `.txt` list or image) that teach through the teacher
    /// only: distillation terms, never detection loss. Used with --teacher; adds to data.yaml's
    /// `unlabeled:` entry.
    #[arg(long)]
    pub unlabeled: Option<PathBuf>,
    /// Unlabeled images per labeled image: round(ratio × batch) of them join every batch.
    #[arg(long = "unlabeled-ratio", default_value_t = 1.0, value_parser = crate::options::non_negative)]
    pub unlabeled_ratio: f64,
    /// Keep the labels of only this seeded fraction of the training images (by --seed). With
    /// --teacher the others become unlabeled images; without, they are left out.
    #[arg(long = "label-fraction", default_value_t = 1.0, value_parser = crate::options::share)]
    pub label_fraction: f64,
    /// Mixed precision: true (bf16 where the CPU has AVX512-BF16), bf16 (on any CPU; emulated
    /// without AVX512-BF16, at about f32's cost), false or fp32 (default). The convolutions' products take bf16
    /// operands and f32 sums; weights, gradients and validation stay f32.
    #[arg(long, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = crate::options::amp)]
    pub amp: crate::options::Amp,
    /// No progress bar: one line per epoch prefixed with the run name (runs sharing a terminal).
    #[arg(long, hide = true)]
    pub quiet: bool,
    /// Stop after this many optimizer-batch iterations in total (tests and benchmarks).
    #[arg(long = "max-batches", hide = true)]
    pub max_batches: Option<usize>,
}

/// Every option at its default (no model or data, not resuming).
impl Default for TrainArgs {
    fn default() -> Self {
        let mut a = Self::from_flags(&["--resume"]).expect("the defaults parse");
        a.resume = None;
        a
    }
}

impl TrainArgs {
    /// The model to train (clap makes it present unless resuming, and a resumed
    /// run takes it from its checkpoint).
    pub fn model_source(&self) -> anyhow::Result<&str> {
        self.model.as_deref().ok_or_else(|| anyhow::anyhow!("train needs --model (or --resume)"))
    }

    /// The checkpoint to resume from: `--resume PATH`, or the run of `--project`/`--name`
    /// for `--resume` alone; None for a new run.
    pub fn resume_path(&self) -> Option<std::path::PathBuf> {
        match self.resume.as_deref()? {
            "" => Some(self.project.join(&self.name).join("weights/last.safetensors")),
            p => Some(p.into()),
        }
    }

    /// The dataset's data.yaml (same rule as [`Self::model_source`]).
    pub fn data_yaml(&self) -> anyhow::Result<&std::path::Path> {
        self.data.as_deref().ok_or_else(|| anyhow::anyhow!("train needs --data (or --resume)"))
    }

    /// Arguments from command-line flags (e.g. `["--model", "yolov8n.yaml", …]`),
    /// with every other option at its default.
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> anyhow::Result<Self> {
        crate::options::from_flags(flags)
    }

    /// The checks between options (each alone was checked when parsed), for a run of
    /// `processes` training processes: every shard needs an image of every full batch.
    pub fn check(&self, processes: usize) -> anyhow::Result<()> {
        let shards = self.shards * processes;
        if shards > self.batch {
            let across = if processes > 1 { format!(" × {processes} processes") } else { String::new() };
            anyhow::bail!(
                "--shards {}{across} makes {shards} shards of a batch of {} images (--batch): every shard needs at least one \
                 image; use at most {} shards",
                self.shards,
                self.batch,
                self.batch / processes
            );
        }
        Ok(())
    }

    /// Images of `n_train` that no step sees, in words (a warning at the start of the run): the
    /// last batch of an epoch when it has fewer images than the `shards` of all processes. Errs
    /// when that is every image.
    pub fn left_out_images(&self, n_train: usize, shards: usize) -> anyhow::Result<Option<String>> {
        let last = n_train % self.batch;
        if last == 0 || last >= shards {
            return Ok(None);
        }
        if n_train < shards {
            anyhow::bail!("{n_train} training images are fewer than the {shards} shards of a batch (--shards): no step could run");
        }
        Ok(Some(format!(
            "the last batch of every epoch has {last} images, fewer than the {shards} shards of a batch (--shards): \
             {last} of the {n_train} images are left out each epoch (other ones each epoch, as the order changes)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::TrainArgs;

    #[test]
    fn shards_need_an_image_each() {
        let a = TrainArgs::from_flags(&["--model", "m.yaml", "--data", "d.yaml", "--batch", "2", "--shards", "3"]).unwrap();
        let e = a.check(1).unwrap_err().to_string();
        assert!(e.contains("--shards 3") && e.contains("--batch") && e.contains("at most 2"), "{e}");
        let a = TrainArgs::from_flags(&["--model", "m.yaml", "--data", "d.yaml", "--batch", "4", "--shards", "2"]).unwrap();
        assert!(a.check(2).is_ok() && a.check(3).is_err());
        assert!(a.left_out_images(6, 3).unwrap().unwrap().contains("2 of the 6 images are left out"));
        assert!(a.left_out_images(8, 3).unwrap().is_none() && a.left_out_images(7, 3).unwrap().is_none());
        assert!(a.left_out_images(2, 3).unwrap_err().to_string().contains("no step"));
    }

    #[test]
    fn resume_needs_no_model_or_data() {
        let a = TrainArgs::from_flags(&["--resume", "runs/train/weights/last.safetensors"]).unwrap();
        assert_eq!(a.resume.as_deref(), Some("runs/train/weights/last.safetensors"));
        let a = TrainArgs::from_flags(&["--resume"]).unwrap();
        assert_eq!(a.resume.as_deref(), Some(""));
    }

    #[test]
    fn a_new_run_needs_model_and_data() {
        let e = TrainArgs::from_flags::<&str>(&[]).unwrap_err().to_string();
        assert!(e.contains("--model") && e.contains("--data"), "{e}");
        let e = TrainArgs::from_flags(&["--model", "yolov8n.yaml"]).unwrap_err().to_string();
        let missing = e.split("Usage:").next().unwrap();
        assert!(missing.contains("--data") && !missing.contains("--model"), "{e}");
        let a = TrainArgs::from_flags(&["--model", "yolov8n.yaml", "--data", "d.yaml"]).unwrap();
        assert_eq!((a.model_source().unwrap(), a.data_yaml().unwrap().to_str().unwrap()), ("yolov8n.yaml", "d.yaml"));
    }
}
