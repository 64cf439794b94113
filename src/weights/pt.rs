//! Reads Ultralytics `.pt` checkpoints (torch zip archives holding a pickled
//! `DetectionModel`) without Python: the module tree is walked to recover the
//! state-dict names, and the model YAML and class names are taken from it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

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
    /// The image size it was trained at (`train_args`), when recorded.
    pub imgsz: Option<usize>,
}

/// Nesting deeper than this is refused: Ultralytics' module trees are a few levels deep,
/// and a cyclic or hostile pickle must not recurse without bound.
const MAX_DEPTH: usize = 64;
/// The largest `data.pkl` read (real ones are under a megabyte).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

pub fn read_pt(path: &Path) -> Result<PtCheckpoint> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    read_pt_from(file, path)
}

/// Reads a checkpoint archive from `reader`; `path` names it in errors.
pub fn read_pt_from<R: Read + Seek>(reader: R, path: &Path) -> Result<PtCheckpoint> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| {
        anyhow!("{} is not a PyTorch checkpoint (not a zip archive: {e})", path.display())
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or_else(|| anyhow!("{} is not a PyTorch checkpoint (no data.pkl)", path.display()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE_BYTES)
        .with_context(|| format!("{}: cannot read {pkl_name}", path.display()))?;
    let model = parse_model(&pkl).with_context(|| format!("{}", path.display()))?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(model.tensors.len());
    for (name, t) in model.tensors {
        if !t.dtype.is_float() {
            continue; // num_batches_tracked and other integer buffers
        }
        if !storages.contains_key(&t.storage) {
            let entry = format!("{prefix}data/{}", t.storage);
            let bytes = read_entry(&mut zip, &entry, u64::MAX)
                .with_context(|| format!("{}: missing or truncated {entry}", path.display()))?;
            storages.insert(t.storage.clone(), bytes);
        }
        let data = gather_f32(&storages[&t.storage], &t)
            .with_context(|| format!("{}: tensor {name}", path.display()))?;
        tensors.push((name, HostTensor { shape: t.shape.clone(), data }));
    }
    Ok(PtCheckpoint { yaml: model.yaml, names: model.names, tensors, imgsz: model.imgsz })
}

/// What the pickle of a checkpoint describes: the model and where its tensors live.
pub struct PickledModel {
    pub yaml: serde_yaml::Value,
    pub names: Vec<String>,
    pub tensors: Vec<(String, Rc<TensorRef>)>,
    pub imgsz: Option<usize>,
}

/// Interprets a checkpoint's `data.pkl` (public so that the fuzz tests reach it).
pub fn parse_model(pkl: &[u8]) -> Result<PickledModel> {
    let root = unpickle(pkl).context("corrupt pickle")?;
    let model = pick_model(&root).context("not an Ultralytics checkpoint")?;
    let yaml = model.attr("yaml").context("the model has no `yaml` description")?;
    let yaml = to_yaml(&yaml, 0)?;
    let names = model.attr("names").map(|n| names_of(&n)).unwrap_or_default();
    let imgsz = train_imgsz(&root, &model);
    let mut tensors = Vec::new();
    walk_module(&model, "", 0, &mut tensors)?;
    if tensors.is_empty() {
        bail!("the checkpoint's model holds no tensors");
    }
    Ok(PickledModel { yaml, names, tensors, imgsz })
}

/// The image size the checkpoint was trained at: `train_args["imgsz"]`, or the model's `args`
/// (an int, or the larger side of an [h, w] list); None when absent or out of range.
fn train_imgsz(root: &Value, model: &Value) -> Option<usize> {
    let args = root.get("train_args").filter(|v| !v.is_none()).or_else(|| model.attr("args"))?;
    let side = |v: &Value| match v {
        Value::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    };
    let imgsz = args.get("imgsz")?;
    side(&imgsz).or_else(|| imgsz.items().iter().filter_map(side).max()).filter(|s| (32..=8192).contains(s))
}

/// One archive entry, refused when it inflates beyond `limit` bytes.
fn read_entry<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, name: &str, limit: u64) -> Result<Vec<u8>> {
    let f = zip.by_name(name)?;
    if f.size() > limit {
        bail!("{name} is {} bytes, more than the {limit} accepted", f.size());
    }
    let mut bytes = Vec::new();
    f.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
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

fn walk_module(m: &Value, prefix: &str, depth: usize, out: &mut Vec<(String, Rc<TensorRef>)>) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("the module tree nests deeper than {MAX_DEPTH} levels (cyclic?)");
    }
    let non_persistent: Vec<String> = m
        .attr("_non_persistent_buffers_set")
        .map(|s| s.items().iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    for (field, skip) in [("_parameters", &Vec::new()), ("_buffers", &non_persistent)] {
        if let Some(d) = m.attr(field) {
            for (k, v) in d.dict_items() {
                let (Some(k), Value::Tensor(t)) = (k.as_str(), &v) else { continue };
                if !skip.iter().any(|s| s == k) {
                    out.push((format!("{prefix}{k}"), t.clone()));
                }
            }
        }
    }
    if let Some(children) = m.attr("_modules") {
        for (k, v) in children.dict_items() {
            if let Some(k) = k.as_str() {
                if !v.is_none() {
                    walk_module(&v, &format!("{prefix}{k}."), depth + 1, out)?;
                }
            }
        }
    }
    Ok(())
}

fn gather_f32(bytes: &[u8], t: &TensorRef) -> Result<Vec<f32>> {
    let es = t.dtype.size();
    let numel = check_extent(t, bytes.len() / es)?;
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

/// Element count of `t` after checking that its rank matches its strides and that every
/// element it addresses lies inside a storage of `available` elements.
fn check_extent(t: &TensorRef, available: usize) -> Result<usize> {
    if t.shape.len() != t.strides.len() {
        bail!("shape {:?} and strides {:?} differ in rank", t.shape, t.strides);
    }
    let too_big = || anyhow!("shape {:?} is larger than its storage of {available} elements", t.shape);
    let numel = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(too_big)?;
    if numel == 0 {
        return Ok(0);
    }
    let last = t.shape.iter().zip(&t.strides).try_fold(t.offset, |acc, (&d, &s)| {
        (d - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
    });
    match last {
        Some(last) if last < available && numel <= available => Ok(numel),
        _ => Err(too_big()),
    }
}

/// Converts the pickled YAML dict into a YAML value.
fn to_yaml(v: &Value, depth: usize) -> Result<serde_yaml::Value> {
    use serde_yaml::Value as Y;
    if depth > MAX_DEPTH {
        bail!("the model's `yaml` nests deeper than {MAX_DEPTH} levels");
    }
    Ok(match v {
        Value::None => Y::Null,
        Value::Bool(b) => Y::Bool(*b),
        Value::Int(i) => Y::Number((*i).into()),
        Value::Float(f) => Y::Number((*f).into()),
        Value::Str(s) => Y::String(s.clone()),
        Value::Tuple(_) | Value::List(_) => {
            Y::Sequence(v.items().iter().map(|x| to_yaml(x, depth + 1)).collect::<Result<_>>()?)
        }
        Value::Dict(_) => {
            let mut m = serde_yaml::Mapping::new();
            for (k, val) in v.dict_items() {
                m.insert(to_yaml(&k, depth + 1)?, to_yaml(&val, depth + 1)?);
            }
            Y::Mapping(m)
        }
        Value::Object(o) => Y::String(format!("<{}>", o.borrow().class)),
        _ => Y::Null,
    })
}

fn names_of(v: &Value) -> Vec<String> {
    let mut pairs: Vec<(i64, String)> = match v {
        Value::Dict(_) => v
            .dict_items()
            .into_iter()
            .filter_map(|(k, n)| match (&k, &n) {
                (Value::Int(i), Value::Str(s)) => Some((*i, s.clone())),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> TensorRef {
        TensorRef { storage: "0".into(), dtype: DType::F32, offset, shape, strides }
    }

    #[test]
    fn tensors_must_lie_inside_their_storage() {
        assert_eq!(check_extent(&tensor(vec![2, 3], vec![3, 1], 0), 6).unwrap(), 6);
        assert_eq!(check_extent(&tensor(vec![2, 3], vec![3, 1], 4), 10).unwrap(), 6);
        let err = |t: TensorRef, n| format!("{:#}", check_extent(&t, n).unwrap_err());
        assert!(err(tensor(vec![2, 3], vec![3, 1], 1), 6).contains("larger than its storage"));
        // an element count that overflows, and strides that overflow
        assert!(err(tensor(vec![1 << 40, 1 << 40], vec![1, 1], 0), 6).contains("larger than its storage"));
        assert!(err(tensor(vec![2], vec![usize::MAX], 0), 6).contains("larger than its storage"));
        assert!(err(tensor(vec![2, 3], vec![1], 0), 6).contains("differ in rank"));
    }

    /// A module dict whose `_modules` (or `yaml`) is itself, through the memo.
    fn cyclic(key: &str) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        for k in ["_modules", key] {
            p.extend([0x8c, k.len() as u8]);
            p.extend(k.as_bytes());
            p.extend([b'h', 0]);
        }
        p.extend([b'u', b'.']);
        p
    }

    #[test]
    fn cyclic_pickles_are_refused() {
        let e = format!("{:#}", parse_model(&cyclic("yaml")).err().expect("refused"));
        assert!(e.contains("nests deeper"), "{e}");
        let mut p = cyclic("_parameters");
        // give it a yaml string so that the walk of the module tree is reached
        p.truncate(p.len() - 2);
        p.extend([0x8c, 4]);
        p.extend(b"yaml");
        p.extend([0x8c, 1, b'x', b'u', b'.']);
        let e = format!("{:#}", parse_model(&p).err().expect("refused"));
        assert!(e.contains("nests deeper"), "{e}");
    }
}
