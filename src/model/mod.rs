//! YOLO detection models: YAML parsing, layers, the graph, and loading from
//! built-in names, YAML files, Ultralytics `.pt` checkpoints and our safetensors.

pub mod flops;
pub mod graph;
pub mod named;
pub mod layers;
pub mod spec;
pub mod validate;
pub mod walk;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::Device;

pub use graph::{DetectionModel, Forward};
pub use spec::{LayerKind, ModelSpec};
use named::Fit;

use crate::weights::{pt, st};

/// Built-in model families (file name → YAML text).
const BUILTIN: &[(&str, &str)] = &[
    ("yolov8.yaml", include_str!("cfg/yolov8.yaml")),
    ("yolov5.yaml", include_str!("cfg/yolov5.yaml")),
    ("yolo11.yaml", include_str!("cfg/yolo11.yaml")),
    ("yolo12.yaml", include_str!("cfg/yolo12.yaml")),
    ("yolo26.yaml", include_str!("cfg/yolo26.yaml")),
    ("yolov10n.yaml", include_str!("cfg/yolov10n.yaml")),
    ("yolov10s.yaml", include_str!("cfg/yolov10s.yaml")),
    ("yolov10m.yaml", include_str!("cfg/yolov10m.yaml")),
    ("yolov10b.yaml", include_str!("cfg/yolov10b.yaml")),
    ("yolov10l.yaml", include_str!("cfg/yolov10l.yaml")),
    ("yolov10x.yaml", include_str!("cfg/yolov10x.yaml")),
];

/// Names accepted for built-in models, for help texts.
pub fn builtin_names() -> Vec<String> {
    let mut v = Vec::new();
    for fam in ["yolov8", "yolov5", "yolo11", "yolo12", "yolo26"] {
        for s in ["n", "s", "m", "l", "x"] {
            let u = if fam == "yolov5" { "u" } else { "" };
            v.push(format!("{fam}{s}{u}.yaml"));
        }
    }
    for s in ["n", "s", "m", "b", "l", "x"] {
        v.push(format!("yolov10{s}.yaml"));
    }
    v
}

/// Finds the built-in YAML for a name such as `yolov8n.yaml` or `yolov5nu`.
/// The scale letter comes from the name; the family file drops it.
/// A `-seg` name (`yolo11n-seg.yaml`) gives the family's segmentation model: its detection
/// YAML with the head row made `Segment` (`Segment26` for YOLO26), as Ultralytics' `-seg` YAMLs are.
pub fn builtin_yaml(name: &str) -> Option<(Cow<'static, str>, Option<char>)> {
    let stem = Path::new(name).file_stem()?.to_str()?.to_ascii_lowercase();
    let Some(detect) = stem.strip_suffix("-seg") else { return builtin_detection(&stem).map(|(t, s)| (Cow::Borrowed(t), s)) };
    let (text, scale) = builtin_detection(detect)?;
    let family = ["yolov8", "yolo11", "yolo12", "yolo26"].into_iter().find(|f| detect.starts_with(f))?;
    let head = if family == "yolo26" { "Segment26" } else { "Segment" };
    const ROW_END: &str = ", Detect, [nc]]";
    (text.matches(ROW_END).count() == 1).then(|| (Cow::Owned(text.replace(ROW_END, &format!(", {head}, [nc, 32, 256]]"))), scale))
}

/// The built-in detection YAML of a name such as `yolov8n.yaml` or `yolov5nu`.
fn builtin_detection(stem: &str) -> Option<(&'static str, Option<char>)> {
    let scale = spec::guess_scale(stem);
    if let Some((_, text)) = BUILTIN.iter().find(|(f, _)| f.trim_end_matches(".yaml") == stem) {
        return Some((text, scale));
    }
    // drop the scale letter after the version digits (and v5's 'u' suffix)
    let b = stem.as_bytes();
    let mut i = stem.find("yolo")? + 4;
    if b.get(i) == Some(&b'v') {
        i += 1;
    }
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    // only a scale letter may be dropped: `yolov8q` is no model, not yolov8 at its first scale
    if !matches!(b.get(i), Some(b'n' | b's' | b'm' | b'l' | b'x')) {
        return None;
    }
    let rest = stem.get(i + 1..).unwrap_or("");
    let rest = if rest == "u" { "" } else { rest };
    let family = format!("{}{}", &stem[..i], rest);
    BUILTIN.iter().find(|(f, _)| f.trim_end_matches(".yaml") == family).map(|(_, t)| (*t, scale))
}

/// Metadata key marking a file whose BatchNorms are folded into the convolutions.
const FUSED_KEY: &str = "fused";
/// Metadata key of the image size the weights were trained at.
pub const IMGSZ_KEY: &str = "imgsz";

/// A loaded model, ready to run.
pub struct Loaded {
    pub model: DetectionModel,
}

/// Loads `M`: a built-in YAML name, a YAML path, a `.pt` or a `.safetensors` file.
/// `nc` overrides the class count (only for YAML builds).
pub fn load(m: &str, nc: Option<usize>, device: &Device) -> Result<Loaded> {
    let path = Path::new(m);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "pt" | "pth" => {
            let ck = pt::read_pt(path)?;
            let scale = ck.yaml.get("scale").and_then(|s| s.as_str()).and_then(|s| s.chars().next()).or_else(|| {
                ck.yaml.get("yaml_file").and_then(|f| f.as_str()).and_then(|f| spec::guess_scale(f))
            });
            let mut spec = spec::parse(&ck.yaml, scale, None).with_context(|| format!("{}: unsupported architecture", m))?;
            spec.fit_head_width(&ck.tensors);
            check_nc(nc, spec.nc, m)?;
            let mut model = DetectionModel::new(spec, ck.names, device).with_context(|| format!("{m}: bad class names"))?;
            named::write(&mut model, ck.tensors, device, Fit::Strict).with_context(|| format!("{m}: weights do not fit the architecture"))?;
            model.train_imgsz = ck.imgsz;
            Ok(Loaded { model })
        }
        "safetensors" => {
            let f = st::load(path)?;
            let scale = f.yaml.get("scale").and_then(|s| s.as_str()).and_then(|s| s.chars().next());
            let mut spec = spec::parse(&f.yaml, scale, None).with_context(|| format!("{m}: bad model description"))?;
            spec.fit_head_width(&f.tensors);
            check_nc(nc, spec.nc, m)?;
            let mut model = DetectionModel::new(spec, f.names, device).with_context(|| format!("{m}: bad class names"))?;
            if f.extra.get(FUSED_KEY).map(String::as_str) == Some("true") {
                model.fuse();
            }
            named::write(&mut model, f.tensors, device, Fit::Strict).with_context(|| format!("{m}: weights do not fit the architecture"))?;
            model.train_imgsz = f.extra.get(IMGSZ_KEY).and_then(|s| s.parse().ok()).filter(|s| (32..=8192).contains(s));
            Ok(Loaded { model })
        }
        "yaml" | "yml" | "" => {
            let (text, scale) = if path.is_file() {
                let t = std::fs::read_to_string(path).with_context(|| format!("cannot read {m}"))?;
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                (t, spec::guess_scale(stem))
            } else if let Some((t, s)) = builtin_yaml(m) {
                (t.to_string(), s)
            } else if path.components().count() > 1 || ext.is_empty() {
                bail!("model '{m}' not found (no such file, and not a built-in name such as yolov8n.yaml)");
            } else {
                bail!("model '{m}' not found: no such file and no built-in model of that name (try one of: {})", builtin_names().join(", "));
            };
            let yaml: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
                let loc = e.location().map(|l| format!(" line {} column {}", l.line(), l.column())).unwrap_or_default();
                anyhow!("{m}:{loc}: invalid YAML: {e}")
            })?;
            let spec = spec::parse(&yaml, scale, nc).with_context(|| format!("{m}: invalid model YAML"))?;
            let model = DetectionModel::new(spec, Vec::new(), device).with_context(|| format!("{m}: cannot build"))?;
            Ok(Loaded { model })
        }
        other => bail!("{m}: unsupported model file type '.{other}' (expected .yaml, .pt or .safetensors)"),
    }
}

/// Class names must be one per class and distinct: results are keyed by name.
pub fn check_class_names(names: &[String], nc: usize) -> Result<()> {
    if names.len() != nc {
        bail!("{} class names for {nc} classes; accepted: exactly one name per class", names.len());
    }
    for (j, n) in names.iter().enumerate() {
        if let Some(i) = names[..j].iter().position(|m| m == n) {
            bail!("class name '{n}' is given twice (classes {i} and {j}); accepted: distinct names");
        }
    }
    Ok(())
}

fn check_nc(want: Option<usize>, have: usize, m: &str) -> Result<()> {
    match want {
        Some(n) if n != have => bail!("{m} has {have} classes; --nc {n} only applies when building from a YAML"),
        _ => Ok(()),
    }
}

/// Whether every weight and BatchNorm statistic of the model is finite.
pub fn all_finite(model: &mut DetectionModel) -> bool {
    named::read(model).iter().all(|(_, t)| t.data.iter().all(|v| v.is_finite()))
}

/// Saves the model as one safetensors file (weights, YAML, class names).
pub fn save_safetensors(model: &DetectionModel, path: &Path, mut extra: HashMap<String, String>) -> Result<()> {
    if model.fused {
        extra.insert(FUSED_KEY.into(), "true".into());
    }
    if let Some(s) = model.train_imgsz {
        extra.insert(IMGSZ_KEY.into(), s.to_string());
    }
    let tensors = named::read(&mut model.clone());
    st::save(path, &st::StModel { yaml: model.spec.yaml.clone(), names: model.names.clone(), tensors, extra, state: Vec::new() })
}
