//! Our model files: safetensors with Ultralytics' state-dict names, and the
//! model YAML and class names in the metadata, so one file is a complete model.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::HostTensor;
use crate::files::write_atomic;

pub const FORMAT_KEY: &str = "format";
pub const FORMAT: &str = "yolodistill";

/// A complete model file in memory.
pub struct StModel {
    pub yaml: serde_yaml::Value,
    pub names: Vec<String>,
    pub tensors: Vec<(String, HostTensor)>,
    /// Other metadata entries (e.g. training state), kept as strings.
    pub extra: HashMap<String, String>,
    /// Tensors under the `state.` prefix: training state for resuming (not model weights).
    pub state: Vec<(String, HostTensor)>,
}

/// Prefix of tensors that hold training state rather than model weights.
pub const STATE_PREFIX: &str = "state.";

pub fn serialize(model: &StModel) -> Result<Vec<u8>> {
    let mut meta = model.extra.clone();
    meta.insert(FORMAT_KEY.into(), FORMAT.into());
    meta.insert("yaml".into(), serde_yaml::to_string(&model.yaml)?);
    meta.insert("names".into(), serde_json::to_string(&model.names)?);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .tensors
        .iter()
        .chain(&model.state)
        .map(|(n, t)| (n.clone(), t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, &Some(meta))?)
}

pub fn save(path: &Path, model: &StModel) -> Result<()> {
    write_atomic(path, &serialize(model)?)
}

/// Reads every tensor of a safetensors file as f32 (in file order), plus its metadata.
pub fn read_tensors(path: &Path) -> Result<(Vec<(String, HostTensor)>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_tensors(&bytes, path)
}

/// Parses the bytes of a safetensors file; `path` names it in errors.
pub fn parse_tensors(bytes: &[u8], path: &Path) -> Result<(Vec<(String, HostTensor)>, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("{} is not a safetensors file: {e}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut names: Vec<_> = st.tensors();
    names.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    for (name, view) in names {
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => decode(raw, f32::from_le_bytes),
            Dtype::F16 => decode(raw, |b: [u8; 2]| half::f16::from_le_bytes(b).to_f32()),
            Dtype::BF16 => decode(raw, |b: [u8; 2]| half::bf16::from_le_bytes(b).to_f32()),
            Dtype::F64 => decode(raw, |b: [u8; 8]| f64::from_le_bytes(b) as f32),
            Dtype::I64 => decode(raw, |b: [u8; 8]| i64::from_le_bytes(b) as f32),
            d => bail!("{}: tensor {name} has unsupported dtype {d:?}", path.display()),
        };
        out.push((name, HostTensor::new(view.shape().to_vec(), data)));
    }
    Ok((out, meta))
}

/// Decodes little-endian elements of `N` bytes each to f32.
fn decode<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    raw.chunks_exact(N).map(|c| f(c.try_into().unwrap())).collect()
}

pub fn load(path: &Path) -> Result<StModel> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes, path)
}

/// Parses the bytes of one of our model files; `path` names it in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<StModel> {
    let (all, mut meta) = parse_tensors(bytes, path)?;
    let (state, tensors): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| n.starts_with(STATE_PREFIX));
    if meta.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT) {
        bail!("{} is a safetensors file but not a yolodistill model (no model description in its metadata)", path.display());
    }
    let yaml: serde_yaml::Value = serde_yaml::from_str(meta.get("yaml").map(String::as_str).unwrap_or(""))
        .with_context(|| format!("{}: bad model YAML in metadata", path.display()))?;
    let names: Vec<String> = serde_json::from_str(meta.get("names").map(String::as_str).unwrap_or("[]"))
        .with_context(|| format!("{}: bad class names in metadata", path.display()))?;
    for k in [FORMAT_KEY, "yaml", "names"] {
        meta.remove(k);
    }
    Ok(StModel { yaml, names, tensors, extra: meta, state })
}
