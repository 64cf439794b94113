//! Reads Ultralytics `.pt` checkpoints (torch zip archives holding a pickled
//! `DetectionModel`) without Python: the module tree is walked to recover the
//! state-dict names, and the model YAML and class names are taken from it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::pickle::{unpickle, DType, TensorRef, Value};
use super::HostTensor;

/// What a checkpoint holds that we use.
pub struct PtCheckpoint {
    /// The model YAML dict stored on the pickled model (`model.yaml`).
    pub yaml: serde_yaml::Value,
    /// Class names by index.
    pub names: Vec<String>,
    /// Floating-point parameters and buffers in state-dict order, cast to f32.
    pub tensors: Vec<(String, HostTensor)>,
}

pub fn read_pt(path: &Path) -> Result<PtCheckpoint> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        anyhow!("{} is not a PyTorch checkpoint (not a zip archive: {e})", path.display())
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or_else(|| anyhow!("{} is not a PyTorch checkpoint (no data.pkl)", path.display()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)
        .and_then(|mut f| f.read_to_end(&mut pkl).map_err(Into::into))
        .with_context(|| format!("{}: cannot read {pkl_name}", path.display()))?;
    let root = unpickle(&pkl).with_context(|| format!("{}: corrupt pickle", path.display()))?;

    let model = pick_model(&root)
        .with_context(|| format!("{} is not an Ultralytics checkpoint", path.display()))?;
    let yaml = model
        .attr("yaml")
        .map(|y| to_yaml(&y))
        .ok_or_else(|| anyhow!("{}: the model has no `yaml` description", path.display()))?;
    let names = model.attr("names").map(|n| names_of(&n)).unwrap_or_default();

    let mut refs = Vec::new();
    walk_module(&model, "", &mut refs);
    if refs.is_empty() {
        bail!("{}: the checkpoint's model holds no tensors", path.display());
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        if !t.dtype.is_float() {
            continue; // num_batches_tracked and other integer buffers
        }
        if !storages.contains_key(&t.storage) {
            let entry = format!("{prefix}data/{}", t.storage);
            let mut bytes = Vec::new();
            zip.by_name(&entry)
                .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
                .with_context(|| format!("{}: missing or truncated {entry}", path.display()))?;
            storages.insert(t.storage.clone(), bytes);
        }
        let data = gather_f32(&storages[&t.storage], &t)
            .with_context(|| format!("{}: tensor {name}", path.display()))?;
        tensors.push((name, HostTensor { shape: t.shape.clone(), data }));
    }
    Ok(PtCheckpoint { yaml, names, tensors })
}

/// `ckpt["model"]`, or `ckpt["ema"]` when the model entry is None (as in `last.pt`).
fn pick_model(root: &Value) -> Result<Value> {
    if root.attr("_modules").is_some() {
        return Ok(root.clone()); // a bare pickled module
    }
    if !matches!(root, Value::Dict(_)) {
        bail!("the archive does not hold a dictionary");
    }
    for key in ["model", "ema"] {
        if let Some(m) = root.get(key) {
            if !m.is_none() {
                if m.attr("_modules").is_none() {
                    bail!("`{key}` is not a pickled model (only whole pickled modules are supported)");
                }
                return Ok(m);
            }
        }
    }
    bail!("neither `model` nor `ema` holds a model")
}

fn walk_module(m: &Value, prefix: &str, out: &mut Vec<(String, std::rc::Rc<TensorRef>)>) {
    let non_persistent: Vec<String> = m
        .attr("_non_persistent_buffers_set")
        .map(|s| s.items().iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    for (field, skip) in [("_parameters", &Vec::new()), ("_buffers", &non_persistent)] {
        if let Some(d) = m.attr(field) {
            for (k, v) in d.dict_items() {
                let (Some(k), Value::Tensor(t)) = (k.as_str(), v) else { continue };
                if !skip.iter().any(|s| s == k) {
                    out.push((format!("{prefix}{k}"), t));
                }
            }
        }
    }
    if let Some(children) = m.attr("_modules") {
        for (k, v) in children.dict_items() {
            if let Some(k) = k.as_str() {
                if !v.is_none() {
                    walk_module(&v, &format!("{prefix}{k}."), out);
                }
            }
        }
    }
}

fn gather_f32(bytes: &[u8], t: &TensorRef) -> Result<Vec<f32>> {
    let numel: usize = t.shape.iter().product();
    let es = t.dtype.size();
    let read = |idx: usize| -> Result<f32> {
        let b = bytes
            .get(idx * es..idx * es + es)
            .ok_or_else(|| anyhow!("storage too short (truncated file?)"))?;
        Ok(match t.dtype {
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::F32 => f32::from_le_bytes(b.try_into()?),
            DType::F64 => f64::from_le_bytes(b.try_into()?) as f32,
            _ => bail!("not a float tensor"),
        })
    };
    let mut out = Vec::with_capacity(numel);
    let rank = t.shape.len();
    let mut idx = vec![0usize; rank];
    for _ in 0..numel {
        let off = t.offset + idx.iter().zip(&t.strides).map(|(i, s)| i * s).sum::<usize>();
        out.push(read(off)?);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// Converts the pickled YAML dict into a YAML value.
fn to_yaml(v: &Value) -> serde_yaml::Value {
    use serde_yaml::Value as Y;
    match v {
        Value::None => Y::Null,
        Value::Bool(b) => Y::Bool(*b),
        Value::Int(i) => Y::Number((*i).into()),
        Value::Float(f) => Y::Number((*f).into()),
        Value::Str(s) => Y::String(s.clone()),
        Value::Tuple(_) | Value::List(_) => Y::Sequence(v.items().iter().map(to_yaml).collect()),
        Value::Dict(_) => {
            let mut m = serde_yaml::Mapping::new();
            for (k, val) in v.dict_items() {
                m.insert(to_yaml(&k), to_yaml(&val));
            }
            Y::Mapping(m)
        }
        Value::Object(o) => Y::String(format!("<{}>", o.borrow().class)),
        _ => Y::Null,
    }
}

fn names_of(v: &Value) -> Vec<String> {
    let mut pairs: Vec<(i64, String)> = match v {
        Value::Dict(_) => v
            .dict_items()
            .into_iter()
            .filter_map(|(k, n)| match (k, n) {
                (Value::Int(i), Value::Str(s)) => Some((i, s)),
                _ => None,
            })
            .collect(),
        _ => v
            .items()
            .into_iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_str().map(|s| (i as i64, s.to_string())))
            .collect(),
    };
    pairs.sort_by_key(|p| p.0);
    pairs.into_iter().map(|p| p.1).collect()
}
