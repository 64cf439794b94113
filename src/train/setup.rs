//! What a run settles before its first step: which run it is (new or resumed), whether its
//! inputs are usable, the model it starts from and the optimizer's settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::Device;

use super::checkpoint::{self, Restored};
use super::hook::Extension;
use super::optim::{Method, OptimizerKind};
use super::run_dir::run_dir;
use super::TrainArgs;
use crate::model::named::{self, Fit};
use crate::model::{self, DetectionModel};

/// Held from seeding the backend's generator until the model and the extension are initialised:
/// the generator is process-wide, so trainings started together in one process (threads,
/// tests) take turns.
pub static INIT_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The run `a` asks for: its arguments (a resumed run's come from its checkpoint), the
/// restored state when resuming, and its folder.
pub fn resolve(a: TrainArgs) -> Result<(TrainArgs, Option<Restored>, PathBuf)> {
    let Some(last) = a.resume_path() else {
        let dir = run_dir(&a.project, &a.name, a.exist_ok);
        return Ok((a, None, dir));
    };
    let r = checkpoint::load(&last)?;
    let mut saved: TrainArgs = serde_json::from_value(r.state.args.clone()).context("bad saved arguments")?;
    saved.resume = None;
    saved.quiet |= a.quiet;
    let ignored = ignored_on_resume(&a)?;
    if !ignored.is_empty() {
        eprintln!("warning: --resume continues {} with its own settings; ignored: {}", last.display(), ignored.join(", "));
    }
    let dir = last.parent().and_then(|p| p.parent()).map(Path::to_path_buf).context("bad checkpoint path")?;
    Ok((saved, Some(r), dir))
}

/// Options given next to `--resume` that the resumed run does not use (it keeps the
/// checkpoint's): every option whose value differs from its default, by argument name.
fn ignored_on_resume(a: &TrainArgs) -> Result<Vec<String>> {
    let defaults = serde_json::to_value(TrainArgs::from_flags(&["--resume"])?)?;
    // --project/--name find the run when --resume has no path; --quiet applies to this call.
    let by_run_name = a.resume.as_deref() == Some("");
    let used: &[&str] = if by_run_name { &["resume", "quiet", "project", "name", "exist_ok"] } else { &["resume", "quiet"] };
    let mut ignored = changed_options(&serde_json::to_value(a)?, &defaults);
    ignored.retain(|k| !used.contains(&k.as_str()));
    Ok(ignored)
}

/// Names of the options whose values differ between `value` and `defaults` (one level of
/// nesting flattened).
pub fn changed_options(value: &serde_json::Value, defaults: &serde_json::Value) -> Vec<String> {
    differences(value, defaults).into_iter().map(|(k, _, _)| k).collect()
}

/// The options whose values differ between two argument sets (one level of nesting
/// flattened), sorted by name, with both values (null where one set lacks the option).
pub fn differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    use std::collections::BTreeMap;
    let flat = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        for (k, v) in v.as_object().into_iter().flatten() {
            match v.as_object() {
                Some(inner) => out.extend(inner.iter().map(|(k, v)| (k.clone(), v.clone()))),
                None => _ = out.insert(k.clone(), v.clone()),
            }
        }
        out
    };
    let (a, b) = (flat(a), flat(b));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let null = serde_json::Value::Null;
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
            (x != y).then(|| (k.clone(), x.clone(), y.clone()))
        })
        .collect()
}

/// The model, the extension's inputs and the unlabeled images named by `a` exist and load, so
/// a missing or damaged file is named before the run folder exists.
pub fn check_inputs(a: &TrainArgs, ext: Option<&dyn Extension>, device: &Device) -> Result<()> {
    // Building a model draws from the backend's process-wide generator.
    let _turn = INIT_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let model = a.model_source()?;
    if !Path::new(model).exists() && model::builtin_yaml(model).is_none() {
        bail!("--model {model}: no such file, and not a built-in model name such as yolov8n.yaml");
    }
    let loaded = model::load(model, None, device).with_context(|| format!("--model {model}"))?.model;
    crate::task::of(loaded.head()).check_command("train", loaded.head(), model)?;
    if let Some(e) = ext {
        e.check(device)?;
    }
    if let Some(u) = &a.unlabeled {
        if !u.exists() {
            bail!("--unlabeled {}: no such file or folder", u.display());
        }
    }
    Ok(())
}

/// A reused run folder (--exist-ok) holds none of the run's inputs (model, teacher, data.yaml,
/// unlabeled images): the run would replace its weights, results and plots. The checkpoint a
/// run resumes from belongs there.
pub fn check_run_folder(a: &TrainArgs, ext: Option<&dyn Extension>, dir: &Path) -> Result<()> {
    let mut inputs = crate::files::Inputs::default();
    inputs.add("--model", a.model_source()?);
    if let Some(d) = &a.data {
        inputs.add("--data", d);
    }
    if let Some(u) = &a.unlabeled {
        inputs.add("--unlabeled", u);
    }
    for (option, path) in ext.map(|e| e.input_files()).unwrap_or_default() {
        inputs.add(&option, path);
    }
    inputs.check_folder("the run folder", dir, a.resume_path().as_deref())
}

/// Loads the model to train, adapting a checkpoint to the dataset's classes
/// (matching tensors are transferred, the class outputs start fresh).
pub fn initial_model(a: &TrainArgs, names: &[String], device: &Device) -> Result<DetectionModel> {
    let nc = names.len();
    let source = a.model_source()?;
    let ext = Path::new(source).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut m = if ext == "pt" || ext == "pth" || ext == "safetensors" {
        let loaded = model::load(source, None, device)?.model;
        if loaded.nc() == nc {
            loaded
        } else {
            let spec = crate::model::spec::parse(&loaded.spec.yaml, loaded.spec.scale.as_deref().and_then(|s| s.chars().next()), Some(nc))?;
            let mut fresh = DetectionModel::new(spec, names.to_vec(), device)?;
            let mut src = loaded;
            let n = named::write(&mut fresh, named::read(&mut src), device, Fit::Matching)?;
            eprintln!("Transferred {n} matching tensors from {source} ({} → {nc} classes)", src.nc());
            fresh
        }
    } else {
        model::load(source, Some(nc), device)?.model
    };
    m.names = names.to_vec();
    Ok(m)
}

/// The optimizer's settings after Ultralytics' rules: `auto` picks SGD for long runs and AdamW
/// (with a learning rate from the class count) for short ones; weight decay scales with the
/// nominal batch. (MuSGD of 8.4 is replaced by SGD.)
pub struct OptimPlan {
    pub kind: OptimizerKind,
    pub method: Method,
    pub lr0: f64,
    pub momentum: f64,
    pub warmup_bias_lr: f64,
    pub weight_decay: f64,
    /// Batches accumulated per optimizer step after warm-up.
    pub accumulate: usize,
}

pub fn plan_optimizer(a: &TrainArgs, n_train: usize, nc: usize) -> OptimPlan {
    let accumulate = ((a.nbs as f64 / a.batch as f64).round() as usize).max(1);
    let weight_decay = a.weight_decay * a.batch as f64 * accumulate as f64 / a.nbs as f64;
    let (kind, lr0, momentum, warmup_bias_lr) = match a.optimizer {
        OptimizerKind::Auto => {
            let iters = n_train.div_ceil(a.batch.max(a.nbs)) * a.epochs;
            if iters > 10_000 {
                (OptimizerKind::Sgd, 0.01, 0.9, 0.0)
            } else {
                let lr = (0.002 * 5.0 / (4.0 + nc as f64) * 1e6).round() / 1e6;
                (OptimizerKind::Adamw, lr, 0.9, 0.0)
            }
        }
        k => (k, a.lr0, a.momentum, a.warmup_bias_lr),
    };
    let method = match kind {
        OptimizerKind::Adamw => Method::AdamW { beta1: momentum, beta2: 0.999, eps: 1e-8 },
        _ => Method::Sgd { nesterov: true },
    };
    OptimPlan { kind, method, lr0, momentum, warmup_bias_lr, weight_decay, accumulate }
}

#[cfg(test)]
mod tests {
    use super::{ignored_on_resume, TrainArgs};

    #[test]
    fn options_next_to_resume_are_named_as_ignored() {
        let a = TrainArgs::from_flags(&["--resume", "r/w/last.safetensors", "--epochs", "50", "--model", "m.yaml", "--quiet"]).unwrap();
        assert_eq!(ignored_on_resume(&a).unwrap(), ["epochs", "model"]);
        // --project/--name locate the run when --resume has no path.
        let a = TrainArgs::from_flags(&["--resume", "--project", "p", "--name", "n"]).unwrap();
        assert!(ignored_on_resume(&a).unwrap().is_empty());
        let a = TrainArgs::from_flags(&["--resume", "r/w/last.safetensors", "--project", "p", "--name", "n"]).unwrap();
        assert_eq!(ignored_on_resume(&a).unwrap(), ["name", "project"]);
    }
}
