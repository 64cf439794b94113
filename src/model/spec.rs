//! Turns an Ultralytics-format model YAML into a typed list of layers
//! (the rules of Ultralytics' `parse_model`: width/depth scaling,
//! `make_divisible`, `max_channels`, the per-module special cases, the `save` set).

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::Value;

use super::validate::{self, MAX_CHANNELS};

/// One built layer with everything needed to construct it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub index: usize,
    /// Input layer indices as written (-1 = previous layer; other negatives count back).
    pub from: Vec<i64>,
    /// Copies of the module (Sequential) after depth scaling; 1 for repeat modules.
    pub repeats: usize,
    pub kind: LayerKind,
    /// The module name as written in the YAML (for tables).
    pub module: String,
    /// The constructor arguments after scaling, for the `info` table.
    pub args_text: String,
    pub c2: usize,
}

/// Typed constructor arguments for every supported module.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    Conv { c1: usize, c2: usize, k: usize, s: usize, p: Option<usize>, g: usize, d: usize, act: bool },
    DWConv { c1: usize, c2: usize, k: usize, s: usize, act: bool },
    C2f { c1: usize, c2: usize, n: usize, shortcut: bool, e: f64 },
    C3 { c1: usize, c2: usize, n: usize, shortcut: bool, e: f64 },
    C3k2 { c1: usize, c2: usize, n: usize, c3k: bool, e: f64, attn: bool, shortcut: bool },
    Sppf { c1: usize, c2: usize, k: usize, n: usize, shortcut: bool, act: bool },
    C2Psa { c1: usize, c2: usize, n: usize, e: f64 },
    Psa { c1: usize, c2: usize, e: f64 },
    A2C2f { c1: usize, c2: usize, n: usize, a2: bool, area: usize, residual: bool, mlp_ratio: f64, e: f64 },
    SCDown { c1: usize, c2: usize, k: usize, s: usize },
    C2fCib { c1: usize, c2: usize, n: usize, shortcut: bool, lk: bool, e: f64 },
    Concat { dim: usize },
    Upsample { scale: usize },
    Detect(DetectSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectSpec {
    pub nc: usize,
    pub ch: Vec<usize>,
    pub reg_max: usize,
    /// Has one-to-one branches (`one2one_cv2/cv3`): v10 and end-to-end heads.
    pub end2end: bool,
    /// Legacy class branch (two 3×3 Convs) of v5u/v8; otherwise depthwise.
    pub legacy: bool,
    /// The segmentation head's mask parts (`Segment`, `Segment26`); None for `Detect`.
    pub seg: Option<SegSpec>,
    /// The class branches' width where a checkpoint's differs from Ultralytics' rule
    /// (max(ch₀, min(nc, 100))): Ultralytics 8.4.190 keeps the 80-class width when it trains a
    /// YAML model of 80 classes on fewer. None: the rule.
    pub cls_width: Option<usize>,
}

/// What a segmentation head adds to Detect: mask coefficients per anchor and prototypes.
#[derive(Debug, Clone, PartialEq)]
pub struct SegSpec {
    /// Mask coefficients per anchor (= prototypes), 32 in Ultralytics' models.
    pub nm: usize,
    /// Channels inside the Proto module (256 written, scaled by the width).
    pub npr: usize,
    /// YOLO26's Proto26: the three levels fused before the prototypes, and a semantic branch
    /// used only in training.
    pub proto26: bool,
}

/// A parsed model: layers plus the metadata needed elsewhere.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub layers: Vec<LayerSpec>,
    /// Indices whose outputs later layers read (Ultralytics' `save`).
    pub save: Vec<usize>,
    pub nc: usize,
    pub scale: Option<String>,
    /// The YAML this was built from, with `scale` and `nc` filled in.
    pub yaml: Value,
}

impl ModelSpec {
    /// Takes the class branches' width from a checkpoint's tensors (the input channels of the
    /// first level's last class convolution) where it differs from Ultralytics' rule.
    pub fn fit_head_width(&mut self, tensors: &[(String, crate::weights::HostTensor)]) {
        let head = self.layers.len() - 1;
        let key = format!("model.{head}.cv3.0.2.weight");
        let Some(width) = tensors.iter().find(|(n, _)| *n == key).and_then(|(_, t)| t.shape.get(1).copied()) else { return };
        if let Some(LayerSpec { kind: LayerKind::Detect(d), .. }) = self.layers.last_mut() {
            if width != d.ch[0].max(d.nc.min(100)) {
                d.cls_width = Some(width);
            }
        }
    }

    pub fn detect_from(&self) -> Vec<usize> {
        let last = self.layers.last().expect("model has layers");
        last.from.iter().map(|&f| resolve(f, last.index)).collect()
    }
}

/// Where entry `f` of layer `i`'s `from` points: `Some(j)` for layer `j`'s output, `None` for
/// the input image (the first layer's `-1`). Every reader of `from` resolves it here; `parse`
/// checks that each entry points to the image or an earlier layer.
pub fn source(f: i64, i: usize) -> Option<usize> {
    let j = if f < 0 { i as i64 + f } else { f };
    usize::try_from(j).ok()
}

fn resolve(f: i64, i: usize) -> usize {
    source(f, i).expect("parse checks every input index")
}

/// `ceil(x / 8) * 8`.
pub fn make_divisible(x: f64, divisor: usize) -> usize {
    ((x / divisor as f64).ceil() as usize) * divisor
}

/// The scale letter in a model file stem (Ultralytics' `yolo(e-)?v?\d+([nslmx])`).
pub fn guess_scale(stem: &str) -> Option<char> {
    let s = stem.to_ascii_lowercase();
    let b = s.as_bytes();
    let mut start = 0;
    while let Some(pos) = s[start..].find("yolo") {
        let mut i = start + pos + 4;
        if s[i..].starts_with("e-") {
            i += 2;
        }
        if b.get(i) == Some(&b'v') {
            i += 1;
        }
        let digits = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i > digits {
            if let Some(&c) = b.get(i) {
                if b"nslmx".contains(&c) {
                    return Some(c as char);
                }
            }
        }
        start += pos + 4;
    }
    None
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(*b as u8 as f64),
        _ => None,
    }
}

fn is_none(v: &Value) -> bool {
    matches!(v, Value::Null) || v.as_str() == Some("None")
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True".into() } else { "False".into() },
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{s}'"),
        Value::Sequence(s) => format!("[{}]", s.iter().map(text).collect::<Vec<_>>().join(", ")),
        _ => "?".into(),
    }
}

/// Positional argument reader with defaults and named errors.
struct Args<'a> {
    v: &'a [Value],
    row: usize,
    module: &'a str,
}

impl Args<'_> {
    fn usize_or(&self, i: usize, d: usize) -> Result<usize> {
        match self.v.get(i) {
            None => Ok(d),
            Some(v) if is_none(v) => Ok(d),
            Some(v) => num(v)
                .filter(|x| *x >= 0.0 && x.fract() == 0.0)
                .map(|x| x as usize)
                .ok_or_else(|| self.err(i, "a non-negative integer")),
        }
    }
    fn opt_usize(&self, i: usize) -> Result<Option<usize>> {
        match self.v.get(i) {
            None => Ok(None),
            Some(v) if is_none(v) => Ok(None),
            Some(_) => self.usize_or(i, 0).map(Some),
        }
    }
    fn f64_or(&self, i: usize, d: f64) -> Result<f64> {
        match self.v.get(i) {
            None => Ok(d),
            Some(v) => num(v).ok_or_else(|| self.err(i, "a number")),
        }
    }
    fn bool_or(&self, i: usize, d: bool) -> Result<bool> {
        match self.v.get(i) {
            None => Ok(d),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) if v.as_str() == Some("True") => Ok(true),
            Some(v) if v.as_str() == Some("False") => Ok(false),
            Some(v) => num(v).map(|x| x != 0.0).ok_or_else(|| self.err(i, "a boolean")),
        }
    }
    fn err(&self, i: usize, what: &str) -> anyhow::Error {
        anyhow!("layer {} ({}): argument {} should be {what}", self.row, self.module, i + 1)
    }
}

const REPEAT_MODULES: &[&str] = &["C2f", "C3", "C3k2", "C2PSA", "C2fCIB", "A2C2f"];

/// Parses a model YAML. `scale` overrides the YAML's own `scale` key; `nc` overrides `nc`.
pub fn parse(yaml: &Value, scale: Option<char>, nc: Option<usize>) -> Result<ModelSpec> {
    let map = yaml.as_mapping().ok_or_else(|| anyhow!("model YAML is not a mapping"))?;
    let get = |k: &str| map.get(Value::String(k.into()));
    let nc = match nc {
        Some(n) => n as f64,
        None => get("nc").and_then(num).context("model YAML has no `nc`")?,
    };
    let nc = whole(nc, 1, MAX_CHANNELS).with_context(|| format!("model YAML: `nc` is {nc}"))?;
    let mut depth = get("depth_multiple").and_then(num).unwrap_or(1.0);
    let mut width = get("width_multiple").and_then(num).unwrap_or(1.0);
    let mut max_channels = f64::INFINITY;
    let mut scale_key: Option<String> = scale
        .map(|c| c.to_string())
        .or_else(|| get("scale").and_then(|s| s.as_str().map(str::to_string)));
    if let Some(scales) = get("scales").and_then(Value::as_mapping) {
        if scale_key.is_none() {
            scale_key = scales.keys().next().and_then(|k| k.as_str().map(str::to_string));
        }
        let key = scale_key.clone().unwrap_or_default();
        let row = scales
            .get(Value::String(key.clone()))
            .and_then(Value::as_sequence)
            .ok_or_else(|| anyhow!("scale '{key}' is not in the YAML's `scales`"))?;
        let f = |i: usize| row.get(i).and_then(num).ok_or_else(|| anyhow!("bad `scales` row for '{key}'"));
        depth = f(0)?;
        width = f(1)?;
        max_channels = f(2)?;
    }
    for (what, v) in [("depth multiple", depth), ("width multiple", width), ("max channels", max_channels)] {
        if !(v > 0.0) || v.is_nan() || v == f64::NEG_INFINITY {
            bail!("model YAML: the {what} is {v}; accepted: a number above 0");
        }
    }
    let reg_max = get("reg_max").and_then(num).unwrap_or(16.0);
    let reg_max = whole(reg_max, 1, 64).with_context(|| format!("model YAML: `reg_max` is {reg_max}"))?;
    let end2end_yaml = get("end2end").and_then(|v| v.as_bool()).unwrap_or(false);
    let mut legacy = true;

    let rows: Vec<&Value> = ["backbone", "head"]
        .iter()
        .map(|k| get(k).and_then(Value::as_sequence).ok_or_else(|| anyhow!("model YAML has no `{k}` list")))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();

    let mut ch: Vec<usize> = Vec::new();
    let mut layers = Vec::new();
    let mut save = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let r = row.as_sequence().filter(|r| r.len() == 4).ok_or_else(|| {
            anyhow!("layer {i}: expected [from, repeats, module, args], got {}", text(row))
        })?;
        let from: Vec<i64> = match &r[0] {
            Value::Sequence(s) => s.iter().map(|v| num(v).map(|x| x as i64)).collect::<Option<_>>(),
            v => num(v).map(|x| vec![x as i64]),
        }
        .filter(|f: &Vec<i64>| !f.is_empty())
        .ok_or_else(|| anyhow!("layer {i}: bad `from` {}; accepted: a layer index or a list of them", text(&r[0])))?;
        let n0 = num(&r[1]).ok_or_else(|| anyhow!("layer {i}: repeats are not a number"))?;
        let n0 = whole(n0, 1, MAX_REPEATS).with_context(|| format!("layer {i}: repeats are {n0}"))?;
        let module = r[2].as_str().ok_or_else(|| anyhow!("layer {i}: module name is not a string"))?;
        let module = module.strip_prefix("nn.").unwrap_or(module).to_string();
        let mut args: Vec<Value> = r[3].as_sequence().cloned().unwrap_or_default();
        for a in args.iter_mut() {
            if a.as_str() == Some("nc") {
                *a = Value::Number(nc.into());
            }
        }
        let n = if n0 > 1 { ((n0 as f64 * depth).round_ties_even() as usize).max(1) } else { n0 };
        let input = |f: i64| -> Result<usize> {
            match source(f, i) {
                None if f == -1 => Ok(3), // the image
                Some(j) if j < i => Ok(ch[j]),
                _ => bail!("layer {i}: input index {f} does not refer to an earlier layer"),
            }
        };
        let c1 = input(from[0])?;
        let scale_c2 = |v: &Value| -> Result<usize> {
            let c = num(v).ok_or_else(|| anyhow!("layer {i} ({module}): output channels must be a number"))?;
            let scaled = c.min(max_channels) * width;
            if !(scaled > 0.0 && scaled <= MAX_CHANNELS as f64) {
                bail!("layer {i} ({module}): {c} output channels scale to {scaled}; accepted: above 0 to {MAX_CHANNELS}");
            }
            Ok(make_divisible(scaled, 8))
        };
        let is_repeat = REPEAT_MODULES.contains(&module.as_str());
        // After scaling, a repeat module gets n as its 3rd argument.
        let mut a = args.clone();
        let c2;
        let mut l = "".to_string();
        let kind = match module.as_str() {
            "Conv" | "DWConv" | "C2f" | "C3" | "C3k2" | "SPPF" | "C2PSA" | "PSA" | "A2C2f" | "SCDown"
            | "C2fCIB" => {
                c2 = scale_c2(a.first().ok_or_else(|| anyhow!("layer {i} ({module}): no arguments"))?)?;
                a[0] = Value::Number(c2.into());
                // Scale-dependent arguments parse_model adds.
                let big = |letters: &[&str]| scale_key.as_deref().is_some_and(|k| letters.contains(&k));
                if module == "C3k2" && big(&["m", "l", "x"]) {
                    // c3k forced on at the larger scales
                    if a.len() < 2 {
                        a.push(Value::Bool(true));
                    } else {
                        a[1] = Value::Bool(true);
                    }
                }
                if module == "A2C2f" && big(&["l", "x"]) {
                    // residual layer scale and a smaller MLP at l/x
                    a.truncate(3);
                    while a.len() < 3 {
                        a.push(Value::Null);
                    }
                    a.push(Value::Bool(true));
                    a.push(Value::Number(serde_yaml::Number::from(1.2)));
                }
                let rest = Args { v: &a[1..], row: i, module: &module };
                let mut shown = vec![Value::Number(c1.into()), Value::Number(c2.into())];
                if is_repeat {
                    shown.push(Value::Number(n.into()));
                }
                legacy &= !matches!(module.as_str(), "C3k2" | "A2C2f" | "C2fCIB");
                let kind = match module.as_str() {
                    "Conv" => LayerKind::Conv {
                        c1,
                        c2,
                        k: rest.usize_or(0, 1)?,
                        s: rest.usize_or(1, 1)?,
                        p: rest.opt_usize(2)?,
                        g: rest.usize_or(3, 1)?,
                        d: rest.usize_or(4, 1)?,
                        act: rest.bool_or(5, true)?,
                    },
                    "DWConv" => LayerKind::DWConv {
                        c1,
                        c2,
                        k: rest.usize_or(0, 1)?,
                        s: rest.usize_or(1, 1)?,
                        act: rest.bool_or(3, true)?,
                    },
                    "C2f" => LayerKind::C2f { c1, c2, n, shortcut: rest.bool_or(0, false)?, e: rest.f64_or(2, 0.5)? },
                    "C3" => LayerKind::C3 { c1, c2, n, shortcut: rest.bool_or(0, true)?, e: rest.f64_or(2, 0.5)? },
                    "C3k2" => LayerKind::C3k2 {
                        c1,
                        c2,
                        n,
                        c3k: rest.bool_or(0, false)?,
                        e: rest.f64_or(1, 0.5)?,
                        attn: rest.bool_or(2, false)?,
                        shortcut: rest.bool_or(4, true)?,
                    },
                    "SPPF" => LayerKind::Sppf {
                        c1,
                        c2,
                        k: rest.usize_or(0, 5)?,
                        n: rest.usize_or(1, 3)?,
                        shortcut: rest.bool_or(2, false)?,
                        // Rows with the classic 2 arguments keep SiLU on cv1.
                        act: a.len() <= 2,
                    },
                    "C2PSA" => LayerKind::C2Psa { c1, c2, n, e: rest.f64_or(0, 0.5)? },
                    "PSA" => LayerKind::Psa { c1, c2, e: rest.f64_or(0, 0.5)? },
                    "A2C2f" => LayerKind::A2C2f {
                        c1,
                        c2,
                        n,
                        a2: rest.bool_or(0, true)?,
                        // head rows write -1 (unused without attention)
                        area: rest.f64_or(1, 1.0)?.max(1.0) as usize,
                        residual: rest.bool_or(2, false)?,
                        mlp_ratio: rest.f64_or(3, 2.0)?,
                        e: rest.f64_or(4, 0.5)?,
                    },
                    "SCDown" => LayerKind::SCDown { c1, c2, k: rest.usize_or(0, 1)?, s: rest.usize_or(1, 1)? },
                    "C2fCIB" => LayerKind::C2fCib {
                        c1,
                        c2,
                        n,
                        shortcut: rest.bool_or(0, false)?,
                        lk: rest.bool_or(1, false)?,
                        e: rest.f64_or(2, 0.5)?,
                    },
                    _ => unreachable!(),
                };
                shown.extend(a[1..].iter().cloned());
                l = shown.iter().map(text).collect::<Vec<_>>().join(", ");
                kind
            }
            "Concat" => {
                let cs = from.iter().map(|&f| input(f)).collect::<Result<Vec<_>>>()?;
                c2 = cs.iter().sum();
                LayerKind::Concat { dim: Args { v: &a, row: i, module: &module }.usize_or(0, 1)? }
            }
            "Upsample" => {
                c2 = c1;
                let s = Args { v: &a, row: i, module: &module }.f64_or(1, 2.0)?;
                let s = whole(s, 1, 32).with_context(|| format!("layer {i} (Upsample): the scale factor is {s}"))?;
                if let Some(m) = a.get(2).and_then(Value::as_str) {
                    if m != "nearest" {
                        bail!("layer {i}: only nearest upsampling is supported, got '{m}'");
                    }
                }
                LayerKind::Upsample { scale: s }
            }
            "Detect" | "v10Detect" | "Segment" | "Segment26" => {
                let chs = from.iter().map(|&f| input(f)).collect::<Result<Vec<_>>>()?;
                c2 = 0;
                let v10 = module == "v10Detect";
                let seg = if module.starts_with("Segment") {
                    let rest = Args { v: &a, row: i, module: &module };
                    let nm = rest.usize_or(1, 32)?;
                    // the Proto's width scales as a layer's channels do (parse_model's args[2])
                    let npr = scale_c2(&Value::Number(rest.usize_or(2, 256)?.into()))?;
                    if nm == 0 {
                        bail!("layer {i} ({module}): argument 2 (mask coefficients) must be at least 1");
                    }
                    l = format!("{nc}, {nm}, {npr}");
                    Some(SegSpec { nm, npr, proto26: module == "Segment26" })
                } else {
                    None
                };
                LayerKind::Detect(DetectSpec {
                    nc,
                    ch: chs,
                    reg_max,
                    end2end: v10 || end2end_yaml,
                    legacy: legacy && !v10,
                    seg,
                    cls_width: None,
                })
            }
            other => bail!("layer {i}: unknown module '{other}'"),
        };
        if l.is_empty() {
            l = args.iter().map(text).collect::<Vec<_>>().join(", ");
        }
        let repeats = if is_repeat { 1 } else { n };
        if repeats != 1 && !matches!(kind, LayerKind::Conv { .. }) {
            bail!("layer {i}: repeats > 1 are only supported for repeat modules and Conv");
        }
        for &f in &from {
            if f != -1 {
                save.push(resolve(f, i));
            }
        }
        if i == 0 {
            ch.clear();
        }
        ch.push(c2);
        layers.push(LayerSpec { index: i, from, repeats, kind, module, args_text: l, c2 });
    }
    if !matches!(layers.last().map(|l| &l.kind), Some(LayerKind::Detect(_))) {
        bail!("the last layer of the model must be a Detect or Segment head");
    }
    save.sort_unstable();
    save.dedup();
    let mut yaml = yaml.clone();
    if let Some(m) = yaml.as_mapping_mut() {
        m.insert("nc".into(), Value::Number(nc.into()));
        if let Some(s) = &scale_key {
            m.insert("scale".into(), Value::String(s.clone()));
        }
    }
    let spec = ModelSpec { layers, save, nc, scale: scale_key, yaml };
    validate::check(&spec)?;
    Ok(spec)
}

/// Most copies of a module a row may ask for (Ultralytics' YAMLs use up to 9).
const MAX_REPEATS: usize = 64;

/// `v` as a whole number in `lo..=hi`, or an error that gives the accepted range.
fn whole(v: f64, lo: usize, hi: usize) -> Result<usize> {
    if v.fract() != 0.0 || !(v >= lo as f64 && v <= hi as f64) {
        bail!("accepted: a whole number from {lo} to {hi}");
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_letter_from_names() {
        assert_eq!(guess_scale("yolov8n"), Some('n'));
        assert_eq!(guess_scale("yolo11x"), Some('x'));
        assert_eq!(guess_scale("yolov5nu"), Some('n'));
        assert_eq!(guess_scale("yolov10s"), Some('s'));
        assert_eq!(guess_scale("yolo26m"), Some('m'));
        assert_eq!(guess_scale("yolov8"), None);
    }

    #[test]
    fn divisible_rounds_up() {
        assert_eq!(make_divisible(64.0 * 0.25, 8), 16);
        assert_eq!(make_divisible(1024.0 * 1.25, 8), 1280);
        assert_eq!(make_divisible(307.2, 8), 312);
    }
}
