//! Checks a parsed model spec before anything is built: argument ranges that the
//! layers would otherwise meet as a division by zero or a shape error, and a dry
//! run of feature-map sizes so that a Concat of maps of different sizes is named here.

use anyhow::{bail, Result};

use super::spec::{LayerKind, LayerSpec, ModelSpec};

/// Largest channel count, kernel, stride and dilation accepted (Ultralytics' own models stay far below).
pub const MAX_CHANNELS: usize = 1 << 16;
const MAX_KERNEL: usize = 63;
const MAX_STRIDE: usize = 32;
const MAX_DILATION: usize = 16;
/// The image size of the dry run (Ultralytics' default).
const DRY_RUN_SIZE: usize = 640;

pub fn check(spec: &ModelSpec) -> Result<()> {
    for l in &spec.layers {
        check_layer(l)?;
    }
    dry_run(&spec.layers, DRY_RUN_SIZE).map(|_| ())
}

fn within(l: &LayerSpec, what: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
    if v < lo || v > hi {
        bail!("layer {} ({}): {what} is {v}; accepted: {lo} to {hi}", l.index, l.module);
    }
    Ok(())
}

/// `int(c * e)`, the hidden width of a block, which must leave at least one channel.
fn hidden(l: &LayerSpec, c: usize, e: f64) -> Result<usize> {
    let h = c as f64 * e;
    if !(h >= 1.0 && h <= MAX_CHANNELS as f64) {
        bail!(
            "layer {} ({}): expansion {e} leaves {} hidden channels of {c}; accepted: 1 to {MAX_CHANNELS}",
            l.index,
            l.module,
            h.max(0.0).floor()
        );
    }
    Ok(h as usize)
}

fn check_layer(l: &LayerSpec) -> Result<()> {
    let kernel = |k| within(l, "the kernel size", k, 1, MAX_KERNEL);
    let stride = |s| within(l, "the stride", s, 1, MAX_STRIDE);
    match &l.kind {
        LayerKind::Conv { c1, c2, k, s, g, d, .. } => {
            kernel(*k)?;
            stride(*s)?;
            within(l, "the dilation", *d, 1, MAX_DILATION)?;
            if *g == 0 || c1 % g != 0 || c2 % g != 0 {
                bail!("layer {} (Conv): groups {g} must divide both channel counts ({c1} in, {c2} out)", l.index);
            }
        }
        LayerKind::DWConv { k, s, .. } | LayerKind::SCDown { k, s, .. } => {
            kernel(*k)?;
            stride(*s)?;
        }
        LayerKind::C2f { c2, e, .. } | LayerKind::C3 { c2, e, .. } | LayerKind::C3k2 { c2, e, .. } | LayerKind::C2fCib { c2, e, .. } => {
            hidden(l, *c2, *e)?;
        }
        LayerKind::Sppf { k, n, .. } => {
            kernel(*k)?;
            if k % 2 == 0 {
                bail!("layer {} (SPPF): the pooling kernel {k} must be odd to keep the map size", l.index);
            }
            within(l, "the number of poolings", *n, 1, 8)?;
        }
        LayerKind::C2Psa { c1, c2, e, .. } | LayerKind::Psa { c1, c2, e } => {
            if c1 != c2 {
                bail!("layer {} ({}): input and output channels must be equal, got {c1} and {c2}", l.index, l.module);
            }
            hidden(l, *c1, *e)?;
        }
        LayerKind::A2C2f { c2, a2, mlp_ratio, e, .. } => {
            let c = hidden(l, *c2, *e)?;
            if *a2 && c % 32 != 0 {
                bail!("layer {} (A2C2f): area attention needs hidden channels in multiples of 32, got {c}", l.index);
            }
            if !(*mlp_ratio > 0.0 && *mlp_ratio <= 16.0) {
                bail!("layer {} (A2C2f): mlp_ratio is {mlp_ratio}; accepted: above 0 to 16", l.index);
            }
        }
        LayerKind::Concat { dim } => {
            if *dim != 1 {
                bail!("layer {} (Concat): dimension {dim} is not supported; accepted: 1 (channels)", l.index);
            }
        }
        LayerKind::Upsample { scale } => within(l, "the scale factor", *scale, 1, MAX_STRIDE)?,
        LayerKind::Detect(d) => {
            if d.ch.is_empty() {
                bail!("layer {} ({}): the head needs at least one input", l.index, l.module);
            }
        }
    }
    Ok(())
}

/// Output side length of a convolution, or None when the map is smaller than the kernel.
fn conv_out(size: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d * (k - 1) + 1;
    (size + 2 * p).checked_sub(span).map(|x| x / s + 1)
}

/// Feature-map side lengths of every layer for a square input of `size`.
pub fn dry_run(layers: &[LayerSpec], size: usize) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::with_capacity(layers.len());
    for l in layers {
        let at = |f: i64| -> usize { super::spec::source(f, l.index).map_or(size, |j| out[j]) };
        let x = at(l.from[0]);
        let same = |x: usize, k: usize, s: usize, p: Option<usize>, d: usize| {
            conv_out(x, k, s, p.unwrap_or((d * (k - 1) + 1) / 2), d)
        };
        let y = match &l.kind {
            LayerKind::Conv { k, s, p, d, .. } => (0..l.repeats).try_fold(x, |x, _| same(x, *k, *s, *p, *d)),
            LayerKind::DWConv { k, s, .. } | LayerKind::SCDown { k, s, .. } => same(x, *k, *s, None, 1),
            LayerKind::Upsample { scale } => Some(x * scale),
            LayerKind::Concat { .. } => {
                let sizes: Vec<usize> = l.from.iter().map(|&f| at(f)).collect();
                if sizes.iter().any(|&s| s != x) {
                    bail!(
                        "layer {} (Concat): its inputs {:?} have different sizes {:?} at a {size}-pixel image",
                        l.index,
                        l.from,
                        sizes
                    );
                }
                Some(x)
            }
            _ => Some(x),
        };
        match y {
            Some(y) if y >= 1 => out.push(y),
            _ => bail!("layer {} ({}): a {size}-pixel image leaves no feature map here", l.index, l.module),
        }
    }
    Ok(out)
}
