//! Training augmentations in Ultralytics' order (mosaic → random perspective → mixup →
//! HSV → flips) and the validation letterbox, on 8-bit RGB images with pixel boxes.

use std::borrow::Borrow;
use std::sync::Arc;

use image::RgbImage;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::dataset::Label;
use super::segments::{resample, transform, RESAMPLED_POINTS};
use crate::pixels::letterbox::{letterbox, resize_bilinear, Placement};

/// Gray used for padding and borders, as Ultralytics.
pub const FILL: u8 = 114;

/// Augmentation hyper-parameters (their command-line flags); defaults are Ultralytics' `default.yaml`.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugConfig {
    /// Hue gain (fraction of the full hue circle).
    #[arg(long = "hsv-h", default_value_t = 0.015)]
    pub hsv_h: f32,
    /// Saturation gain.
    #[arg(long = "hsv-s", default_value_t = 0.7)]
    pub hsv_s: f32,
    /// Value (brightness) gain.
    #[arg(long = "hsv-v", default_value_t = 0.4)]
    pub hsv_v: f32,
    /// Rotation range, ± degrees.
    #[arg(long, default_value_t = 0.0)]
    pub degrees: f32,
    /// Translation range, ± fraction of the output size.
    #[arg(long, default_value_t = 0.1)]
    pub translate: f32,
    /// Scale range, 1 ± scale.
    #[arg(long, default_value_t = 0.5)]
    pub scale: f32,
    /// Shear range, ± degrees.
    #[arg(long, default_value_t = 0.0)]
    pub shear: f32,
    /// Perspective range, ± (typically 0..0.001).
    #[arg(long, default_value_t = 0.0)]
    pub perspective: f32,
    /// Probability of an up-down flip.
    #[arg(long, default_value_t = 0.0, value_parser = crate::options::unit)]
    pub flipud: f32,
    /// Probability of a left-right flip.
    #[arg(long, default_value_t = 0.5, value_parser = crate::options::unit)]
    pub fliplr: f32,
    /// Probability of a 4-image mosaic.
    #[arg(long, default_value_t = 1.0, value_parser = crate::options::unit)]
    pub mosaic: f32,
    /// Probability of mixing with a second augmented image.
    #[arg(long, default_value_t = 0.0, value_parser = crate::options::unit)]
    pub mixup: f32,
}

impl Default for AugConfig {
    fn default() -> Self {
        crate::options::defaults()
    }
}

/// An image with its boxes in pixels (x1, y1, x2, y2), their classes, and (polygon labels) each
/// box's polygon in pixels. The image is the sample's own, or (`Sample<Arc<RgbImage>>`, as
/// loaded) shared with the loader's cache, so that mosaic and the warp read it without a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<I = RgbImage> {
    pub img: I,
    pub boxes: Vec<[f32; 4]>,
    pub cls: Vec<usize>,
    /// One polygon per box, or none at all: a polygon moves with the image, and the box of a
    /// moved polygon is the extent of its part inside the image (Ultralytics keeps polygons in
    /// detection training too).
    pub segments: Vec<Vec<[f32; 2]>>,
}

/// The image of a sample, owned or shared.
pub trait Pixels: Borrow<RgbImage> {
    /// The image itself, copied only when someone else still holds it.
    fn into_owned(self) -> RgbImage;
}

impl Pixels for RgbImage {
    fn into_owned(self) -> RgbImage {
        self
    }
}

impl Pixels for &RgbImage {
    fn into_owned(self) -> RgbImage {
        self.clone()
    }
}

impl Pixels for Arc<RgbImage> {
    fn into_owned(self) -> RgbImage {
        Arc::unwrap_or_clone(self)
    }
}

impl<I: Pixels> Sample<I> {
    /// Places normalised labels onto `img`.
    pub fn new(img: I, labels: &[Label]) -> Sample<I> {
        let (w, h) = img.borrow().dimensions();
        let (w, h) = (w as f32, h as f32);
        let boxes = labels
            .iter()
            .map(|l| {
                let [x, y, bw, bh] = l.xywhn;
                [(x - bw / 2.0) * w, (y - bh / 2.0) * h, (x + bw / 2.0) * w, (y + bh / 2.0) * h]
            })
            .collect();
        Sample { img, boxes, cls: labels.iter().map(|l| l.cls).collect(), segments: Vec::new() }
    }

    /// These labels' polygons (normalised points, one per box, or none), placed in pixels and
    /// resampled as Ultralytics loads them.
    pub fn with_segments(mut self, segments: &[Vec<[f32; 2]>]) -> Sample<I> {
        if segments.len() != self.boxes.len() {
            return self;
        }
        let (w, h) = self.img.borrow().dimensions();
        let (w, h) = (w as f32, h as f32);
        // more points than the default: one more than the longest polygon
        let longest = segments.iter().map(Vec::len).max().unwrap_or(0);
        let n = if longest > RESAMPLED_POINTS { longest + 1 } else { RESAMPLED_POINTS };
        self.segments = segments.iter().map(|p| resample(&p.iter().map(|q| [q[0] * w, q[1] * h]).collect::<Vec<_>>(), n)).collect();
        self
    }

    /// Boxes as normalised centre-x, centre-y, width, height (the Format step).
    pub fn xywhn(&self) -> Vec<[f32; 4]> {
        let (w, h) = self.img.borrow().dimensions();
        let (w, h) = (w as f32, h as f32);
        self.boxes
            .iter()
            .map(|b| [(b[0] + b[2]) / 2.0 / w, (b[1] + b[3]) / 2.0 / h, (b[2] - b[0]) / w, (b[3] - b[1]) / h])
            .collect()
    }
}

/// Where training samples come from: resized images with pixel boxes, by index.
/// `len` is the number of images and must be at least 1 (mosaic picks partners by index).
pub trait ImageSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Image `i` resized so its long side is the training size.
    fn load(&self, i: usize) -> Sample<Arc<RgbImage>>;
}

// ---------------------------------------------------------------- loading

/// Long side to `imgsz`, the short side `ceil`ed (capped at imgsz), bilinear.
pub fn resize_long_side(img: RgbImage, imgsz: u32) -> RgbImage {
    let (w0, h0) = img.dimensions();
    let r = imgsz as f64 / w0.max(h0) as f64;
    if r == 1.0 {
        return img;
    }
    let w = ((w0 as f64 * r).ceil() as u32).clamp(1, imgsz);
    let h = ((h0 as f64 * r).ceil() as u32).clamp(1, imgsz);
    // 8.4.190 resizes with INTER_LINEAR in every mode (classic used INTER_AREA to shrink for val).
    resize_bilinear(&img, w, h)
}

// ---------------------------------------------------------------- pipeline

/// One training sample of size `s`×`s`, Ultralytics' train order. `mosaic_on = false`
/// is the close_mosaic phase: no mosaic and no mixup.
pub fn train_sample(
    src: &dyn ImageSource,
    index: usize,
    s: u32,
    cfg: &AugConfig,
    mosaic_on: bool,
    rng: &mut StdRng,
) -> Sample {
    let mut out = geometric(src, index, s, cfg, mosaic_on, rng);
    if mosaic_on && cfg.mixup > 0.0 && rng.random::<f32>() < cfg.mixup {
        let other = rng.random_range(0..src.len());
        let second = geometric(src, other, s, cfg, mosaic_on, rng);
        out = mixup(out, second, rng);
    }
    random_hsv(&mut out.img, [cfg.hsv_h, cfg.hsv_s, cfg.hsv_v], rng);
    if cfg.flipud > 0.0 && rng.random::<f32>() < cfg.flipud {
        flip_ud(&mut out);
    }
    if cfg.fliplr > 0.0 && rng.random::<f32>() < cfg.fliplr {
        flip_lr(&mut out);
    }
    out
}

/// Mosaic (with probability `cfg.mosaic`) then random perspective into `s`×`s`.
fn geometric(
    src: &dyn ImageSource,
    index: usize,
    s: u32,
    cfg: &AugConfig,
    mosaic_on: bool,
    rng: &mut StdRng,
) -> Sample {
    if mosaic_on && cfg.mosaic > 0.0 && rng.random::<f32>() < cfg.mosaic {
        let others: [usize; 3] = std::array::from_fn(|_| rng.random_range(0..src.len()));
        let parts = [src.load(index), src.load(others[0]), src.load(others[1]), src.load(others[2])];
        let Sample { img, boxes, cls, segments } = mosaic4(parts, s, rng);
        let out = random_perspective(Sample { img: &img, boxes, cls, segments }, s, cfg, rng);
        keep_canvas(img);
        out
    } else {
        random_perspective(src.load(index), s, cfg, rng)
    }
}

/// 4-image mosaic on a 2s×2s gray canvas around a random centre in [s/2, 3s/2):
/// parts go top-left, top-right, bottom-left, bottom-right of the centre, cropped to fit.
/// Boxes are shifted, clipped to the canvas and zero-area ones dropped.
pub fn mosaic4<I: Pixels>(parts: [Sample<I>; 4], s: u32, rng: &mut StdRng) -> Sample {
    let s2 = 2 * s as i64;
    let half = s as f64 / 2.0;
    let xc = rng.random_range(half..3.0 * half) as i64;
    let yc = rng.random_range(half..3.0 * half) as i64;
    let mut canvas = gray_canvas(s2 as u32);
    let (mut boxes, mut cls, mut segments) = (Vec::new(), Vec::new(), Vec::new());
    // polygons only when every part has them for every box
    let with_segments = parts.iter().all(|p| p.segments.len() == p.boxes.len()) && parts.iter().any(|p| !p.segments.is_empty());
    // One axis: the canvas span [a1, a2) before (or after) the centre c, and its start in a part n long.
    let span = |c: i64, n: i64, before: bool| {
        let (a1, a2) = if before { ((c - n).max(0), c) } else { (c, (c + n).min(s2)) };
        (a1, a2, if before { n - (a2 - a1) } else { 0 })
    };
    for (i, part) in parts.into_iter().enumerate() {
        let img: &RgbImage = part.img.borrow();
        let (w, h) = (img.width() as i64, img.height() as i64);
        // Destination on the canvas (a), source in the part (b); parts 0, 2 left, 0, 1 on top.
        let (ax1, ax2, bx1) = span(xc, w, i.is_multiple_of(2));
        let (ay1, ay2, by1) = span(yc, h, i < 2);
        copy_rect(img, (bx1, by1), &mut canvas, (ax1, ay1), (ax2 - ax1, ay2 - ay1));
        let (dx, dy) = ((ax1 - bx1) as f32, (ay1 - by1) as f32);
        for (k, (b, c)) in part.boxes.iter().zip(&part.cls).enumerate() {
            let b = clip([b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy], s2 as f32);
            if b[2] > b[0] && b[3] > b[1] {
                boxes.push(b);
                cls.push(*c);
                if with_segments {
                    let limit = s2 as f32;
                    segments.push(part.segments[k].iter().map(|p| [(p[0] + dx).clamp(0.0, limit), (p[1] + dy).clamp(0.0, limit)]).collect());
                }
            }
        }
    }
    Sample { img: canvas, boxes, cls, segments }
}

thread_local! {
    /// The last mosaic canvas of this worker, reused: 12·s² bytes need no fresh pages per sample.
    static SPARE_CANVAS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A `side`×`side` canvas of the border gray.
fn gray_canvas(side: u32) -> RgbImage {
    let mut raw = SPARE_CANVAS.with(|c| c.take());
    raw.clear();
    raw.resize(side as usize * side as usize * 3, FILL);
    RgbImage::from_raw(side, side, raw).expect("the buffer has the canvas's size")
}

/// Gives a canvas back for the next mosaic.
fn keep_canvas(img: RgbImage) {
    SPARE_CANVAS.with(|c| *c.borrow_mut() = img.into_raw());
}

/// Copies a `size` (w, h) block from `src` at `from` to `dst` at `to`.
fn copy_rect(src: &RgbImage, from: (i64, i64), dst: &mut RgbImage, to: (i64, i64), size: (i64, i64)) {
    let (w, h) = size;
    if w <= 0 || h <= 0 {
        return;
    }
    let (sw, dw) = (src.width() as usize * 3, dst.width() as usize * 3);
    let (s, d) = (src.as_raw(), &mut **dst);
    for y in 0..h as usize {
        let so = (from.1 as usize + y) * sw + from.0 as usize * 3;
        let dof = (to.1 as usize + y) * dw + to.0 as usize * 3;
        d[dof..dof + w as usize * 3].copy_from_slice(&s[so..so + w as usize * 3]);
    }
}

/// A box clipped to an `s`×`s` image.
fn clip(b: [f32; 4], s: f32) -> [f32; 4] {
    b.map(|v| v.clamp(0.0, s))
}

/// A 3×3 transform of pixel coordinates (row-major).
pub type Mat3 = [[f64; 3]; 3];

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

const EYE: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// The random M = T·S·R·P·C for an input of `(w, h)` and an `s`×`s` output, with the
/// scale factor drawn for R (needed by the box filter).
pub(super) fn perspective_matrix(w: f64, h: f64, s: f64, cfg: &AugConfig, rng: &mut StdRng) -> (Mat3, f64) {
    let mut u = |r: f32| if r > 0.0 { rng.random_range(-r as f64..r as f64) } else { 0.0 };
    let mut c = EYE;
    c[0][2] = -w / 2.0;
    c[1][2] = -h / 2.0;
    let mut p = EYE;
    p[2][0] = u(cfg.perspective);
    p[2][1] = u(cfg.perspective);
    let angle = u(cfg.degrees).to_radians();
    let scale = 1.0 + u(cfg.scale);
    // OpenCV's getRotationMatrix2D: positive angles turn counter-clockwise on screen.
    let (a, b) = (scale * angle.cos(), scale * angle.sin());
    let r = [[a, b, 0.0], [-b, a, 0.0], [0.0, 0.0, 1.0]];
    let mut sh = EYE;
    sh[0][1] = u(cfg.shear).to_radians().tan();
    sh[1][0] = u(cfg.shear).to_radians().tan();
    let mut t = EYE;
    t[0][2] = (0.5 + u(cfg.translate)) * s;
    t[1][2] = (0.5 + u(cfg.translate)) * s;
    let m = matmul(&t, &matmul(&sh, &matmul(&r, &matmul(&p, &c))));
    (m, scale)
}

/// Rotation/scale/shear/translation/perspective into `s`×`s` (gray border). The input is
/// centred first, so a plain loaded image lands in the middle and a 2s mosaic is cropped
/// around its centre. Boxes are the hull of their transformed corners, clipped, then
/// filtered (w, h > 2 px, area kept > 10 %, aspect < 100).
pub fn random_perspective<I: Pixels>(sample: Sample<I>, s: u32, cfg: &AugConfig, rng: &mut StdRng) -> Sample {
    let (w, h) = sample.img.borrow().dimensions();
    let (m, scale) = perspective_matrix(w as f64, h as f64, s as f64, cfg, rng);
    let projective = cfg.perspective != 0.0;
    let img = if m == EYE && (w, h) == (s, s) { sample.img.into_owned() } else { warp(sample.img.borrow(), &m, s, s, projective) };
    let (mut boxes, mut cls, mut segments) = (Vec::new(), Vec::new(), Vec::new());
    let with_segments = !sample.segments.is_empty() && sample.segments.len() == sample.boxes.len();
    for (k, (b, c)) in sample.boxes.iter().zip(&sample.cls).enumerate() {
        // a polygon's box is the extent of the moved polygon inside the image, and it may keep
        // a smaller share of its area (Ultralytics' 0.01 against 0.1)
        let (nb, moved, area_share) = if with_segments {
            let (moved, nb) = transform(&sample.segments[k], &m, (s as f32, s as f32));
            (clip(nb, s as f32), Some(moved), 0.01)
        } else {
            (clip(transform_box(b, &m, projective), s as f32), None, 0.1)
        };
        if box_candidate(b, &nb, scale as f32, area_share) {
            boxes.push(nb);
            cls.push(*c);
            segments.extend(moved);
        }
    }
    Sample { img, boxes, cls, segments }
}

/// Hull of the 4 transformed corners.
fn transform_box(b: &[f32; 4], m: &Mat3, projective: bool) -> [f32; 4] {
    let corners = [(b[0], b[1]), (b[2], b[3]), (b[0], b[3]), (b[2], b[1])];
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for (x, y) in corners {
        let (x, y) = (x as f64, y as f64);
        let mut px = m[0][0] * x + m[0][1] * y + m[0][2];
        let mut py = m[1][0] * x + m[1][1] * y + m[1][2];
        if projective {
            let z = m[2][0] * x + m[2][1] * y + m[2][2];
            px /= z;
            py /= z;
        }
        x0 = x0.min(px);
        x1 = x1.max(px);
        y0 = y0.min(py);
        y1 = y1.max(py);
    }
    [x0 as f32, y0 as f32, x1 as f32, y1 as f32]
}

/// Ultralytics' box_candidates with its defaults (2 px, aspect 100) and the share of its area a
/// box must keep (`area_share`: 0.1, or 0.01 for a polygon's).
fn box_candidate(before: &[f32; 4], after: &[f32; 4], scale: f32, area_share: f32) -> bool {
    const EPS: f32 = 1e-16;
    let (w1, h1) = ((before[2] - before[0]) * scale, (before[3] - before[1]) * scale);
    let (w2, h2) = (after[2] - after[0], after[3] - after[1]);
    let ar = (w2 / (h2 + EPS)).max(h2 / (w2 + EPS));
    w2 > 2.0 && h2 > 2.0 && w2 * h2 / (w1 * h1 + EPS) > area_share && ar < 100.0
}

pub use super::warp::warp;

/// Blends two same-size samples with r ~ Beta(32, 32); labels of both are kept.
pub fn mixup(a: Sample, b: Sample, rng: &mut StdRng) -> Sample {
    let r = sample_beta(rng, 32.0, 32.0) as f32;
    let mut img = a.img;
    for (p, q) in img.iter_mut().zip(b.img.iter()) {
        // Truncation, as numpy's astype(uint8).
        *p = (*p as f32 * r + *q as f32 * (1.0 - r)) as u8;
    }
    // polygons only when both have them for every box
    let both = a.segments.len() == a.boxes.len() && b.segments.len() == b.boxes.len();
    let segments = if both { [a.segments, b.segments].concat() } else { Vec::new() };
    Sample { img, boxes: [a.boxes, b.boxes].concat(), cls: [a.cls, b.cls].concat(), segments }
}

/// Beta(a, b) from two Gamma draws (Marsaglia–Tsang), avoiding a dependency for one use.
fn sample_beta(rng: &mut StdRng, a: f64, b: f64) -> f64 {
    let x = sample_gamma(rng, a);
    let y = sample_gamma(rng, b);
    x / (x + y)
}

fn sample_gamma(rng: &mut StdRng, shape: f64) -> f64 {
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // Standard normal by Box–Muller.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let x = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.random::<f64>();
        if u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

// ---------------------------------------------------------------- colour

/// Random HSV gains r = U(-1, 1)·gains applied through OpenCV-style 8-bit HSV lookup
/// tables. All-zero gains leave the image untouched (and draw nothing).
pub fn random_hsv(img: &mut RgbImage, gains: [f32; 3], rng: &mut StdRng) {
    if gains.iter().all(|g| *g == 0.0) {
        return;
    }
    let r: [f64; 3] = std::array::from_fn(|i| rng.random_range(-1.0..1.0) * gains[i] as f64);
    super::hsv::apply_hsv(img, r);
}

// ---------------------------------------------------------------- flips

/// Up-down flip of image and boxes.
pub fn flip_ud(s: &mut Sample) {
    image::imageops::flip_vertical_in_place(&mut s.img);
    let h = s.img.height() as f32;
    for b in &mut s.boxes {
        *b = [b[0], h - b[3], b[2], h - b[1]];
    }
    for p in s.segments.iter_mut().flatten() {
        p[1] = h - p[1];
    }
}

/// Left-right flip of image and boxes.
pub fn flip_lr(s: &mut Sample) {
    image::imageops::flip_horizontal_in_place(&mut s.img);
    let w = s.img.width() as f32;
    for b in &mut s.boxes {
        *b = [w - b[2], b[1], w - b[0], b[3]];
    }
    for p in s.segments.iter_mut().flatten() {
        p[0] = w - p[0];
    }
}

// ---------------------------------------------------------------- validation

/// Validation transform: letterbox (no enlarging, centred, gray) into `shape` (h, w).
/// The placement is relative to the image given.
pub fn letterbox_sample(sample: Sample, shape: (u32, u32)) -> (Sample, Placement) {
    let (img, place) = letterbox(&sample.img, shape, false, false, 32);
    let (g, (px, py)) = (place.gain, place.pad);
    let boxes = sample.boxes.iter().map(|b| [b[0] * g + px, b[1] * g + py, b[2] * g + px, b[3] * g + py]).collect();
    let segments = sample.segments.iter().map(|p| p.iter().map(|q| [q[0] * g + px, q[1] * g + py]).collect()).collect();
    (Sample { img, boxes, cls: sample.cls, segments }, place)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 3 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8]))
    }

    /// A source of one-box images of different sizes, long side `s`.
    struct Synthetic {
        s: u32,
    }

    impl ImageSource for Synthetic {
        fn len(&self) -> usize {
            5
        }
        fn load(&self, i: usize) -> Sample<Arc<RgbImage>> {
            let (w, h) = if i.is_multiple_of(2) { (self.s, self.s * 3 / 4) } else { (self.s / 2, self.s) };
            let lbl = Label { cls: i, xywhn: [0.5, 0.5, 0.4, 0.3] };
            Sample::new(Arc::new(pattern(w, h)), &[lbl])
        }
    }

    fn assert_inside(s: &Sample) {
        let (w, h) = (s.img.width() as f32, s.img.height() as f32);
        for b in &s.boxes {
            assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w && b[3] <= h, "{b:?} outside {w}x{h}");
            assert!(b[2] - b[0] > 2.0 && b[3] - b[1] > 2.0, "{b:?} too small");
        }
        assert_eq!(s.boxes.len(), s.cls.len());
    }

    #[test]
    fn defaults_and_serde() {
        let c: AugConfig = serde_yaml::from_str("mixup: 0.2\nfliplr: 0.0\n").unwrap();
        assert_eq!(c.mixup, 0.2);
        assert_eq!(c.fliplr, 0.0);
        assert_eq!(c.hsv_s, 0.7);
        assert_eq!(c.scale, 0.5);
        assert_eq!(AugConfig::default().mosaic, 1.0);
    }

    #[test]
    fn resize_long_side_ceil_and_interp() {
        let img = pattern(640, 479);
        let r = resize_long_side(img.clone(), 320);
        assert_eq!(r.dimensions(), (320, 240)); // ceil(239.5)
        let small = resize_long_side(pattern(100, 50), 320);
        assert_eq!(small.dimensions(), (320, 160));
        let same = resize_long_side(pattern(320, 200), 320);
        assert_eq!(same, pattern(320, 200));
    }

    #[test]
    fn mosaic_keeps_boxes_inside_and_consistent() {
        let src = Synthetic { s: 64 };
        for seed in 0..20 {
            let mut r = rng(seed);
            let parts = [src.load(0), src.load(1), src.load(2), src.load(3)];
            let m = mosaic4(parts, 64, &mut r);
            assert_eq!(m.img.dimensions(), (128, 128));
            for b in &m.boxes {
                assert!(b[0] >= 0.0 && b[2] <= 128.0 && b[2] > b[0] && b[3] > b[1]);
            }
            // Each box still covers non-gray pattern pixels at its centre.
            for b in &m.boxes {
                let p = m.img.get_pixel(((b[0] + b[2]) / 2.0) as u32, ((b[1] + b[3]) / 2.0) as u32);
                assert_ne!(p.0, [FILL; 3]);
            }
        }
    }

    #[test]
    fn mosaic_centre_places_part_zero_top_left() {
        let mut r = rng(3);
        let one = |c: u8| Sample {
            img: RgbImage::from_pixel(32, 32, Rgb([c; 3])),
            boxes: vec![[0.0, 0.0, 32.0, 32.0]],
            cls: vec![c as usize],
            segments: Vec::new(),
        };
        let m = mosaic4([one(1), one(2), one(3), one(4)], 32, &mut r);
        // Part 0's box ends at the centre; part 3's starts there.
        let b0 = m.boxes[m.cls.iter().position(|c| *c == 1).unwrap()];
        let b3 = m.boxes[m.cls.iter().position(|c| *c == 4).unwrap()];
        assert_eq!((b0[2], b0[3]), (b3[0], b3[1]));
        assert_eq!(m.img.get_pixel(b0[2] as u32 - 1, b0[3] as u32 - 1).0, [1; 3]);
        assert_eq!(m.img.get_pixel(b3[0] as u32, b3[1] as u32).0, [4; 3]);
    }

    #[test]
    fn perspective_keeps_single_box_in_bounds() {
        let cfg = AugConfig { degrees: 30.0, shear: 10.0, perspective: 0.0005, ..Default::default() };
        let src = Synthetic { s: 96 };
        let mut kept = 0;
        for seed in 0..40 {
            let mut r = rng(seed);
            let out = random_perspective(src.load(seed as usize % 5), 96, &cfg, &mut r);
            assert_eq!(out.img.dimensions(), (96, 96));
            assert_inside(&out);
            kept += out.boxes.len();
        }
        assert!(kept > 20, "most boxes survive mild transforms ({kept})");
    }

    #[test]
    fn identity_transform_without_mosaic_centres_the_image() {
        let cfg = AugConfig { translate: 0.0, scale: 0.0, ..Default::default() };
        let lbl = Label { cls: 0, xywhn: [0.5, 0.5, 0.5, 0.5] };
        let out = random_perspective(Sample::new(pattern(64, 32), &[lbl]), 64, &cfg, &mut rng(0));
        assert_eq!(out.boxes, vec![[16.0, 24.0, 48.0, 40.0]]);
        assert_eq!(out.img.get_pixel(0, 0).0, [FILL; 3]);
        assert_eq!(out.img.get_pixel(5, 16 + 3).0, pattern(64, 32).get_pixel(5, 3).0);
    }

    #[test]
    fn box_filter_drops_thin_and_cut_boxes() {
        assert!(box_candidate(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0], 1.0, 0.1));
        assert!(!box_candidate(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 2.0, 10.0], 1.0, 0.1));
        assert!(!box_candidate(&[0.0, 0.0, 100.0, 100.0], &[0.0, 0.0, 30.0, 30.0], 1.0, 0.1));
        assert!(box_candidate(&[0.0, 0.0, 100.0, 100.0], &[0.0, 0.0, 30.0, 30.0], 0.5, 0.1));
        // a polygon's box may keep a tenth of that share
        assert!(box_candidate(&[0.0, 0.0, 100.0, 100.0], &[0.0, 0.0, 30.0, 30.0], 1.0, 0.01));
    }

    /// A diamond label inside its box: the polygon moves with the sample, and after a rotation
    /// its box is the moved diamond's extent, tighter than the hull of the moved box corners.
    #[test]
    fn polygons_move_with_the_sample_and_make_the_boxes() {
        let lbl = Label { cls: 0, xywhn: [0.5, 0.5, 0.5, 0.5] };
        let diamond = vec![vec![[0.5, 0.25], [0.75, 0.5], [0.5, 0.75], [0.25, 0.5]]];
        let with = |img| Sample::new(img, &[lbl]).with_segments(&diamond);
        let s = with(pattern(64, 64));
        assert_eq!(s.segments[0].len(), RESAMPLED_POINTS);
        assert_eq!(&s.segments[0][..2], &[[32.0, 16.0], [s.segments[0][1][0], s.segments[0][1][1]]]);
        let cfg = AugConfig { degrees: 30.0, translate: 0.0, scale: 0.0, ..Default::default() };
        for seed in 0..5 {
            let poly = random_perspective(with(pattern(64, 64)), 64, &cfg, &mut rng(seed));
            let plain = random_perspective(Sample::new(pattern(64, 64), &[lbl]), 64, &cfg, &mut rng(seed));
            assert_eq!(poly.img, plain.img, "same draws, same picture");
            let (p, q) = (poly.boxes[0], plain.boxes[0]);
            let extent = crate::data::segments::segment_box(&poly.segments[0], 64.0, 64.0);
            assert_eq!(p, extent, "seed {seed}: the box is the moved polygon's extent");
            assert!(p[0] >= q[0] && p[1] >= q[1] && p[2] <= q[2] && p[3] <= q[3], "seed {seed}: {p:?} inside {q:?}");
        }
        // flips and the letterbox move the polygon as they move the box
        let mut f = with(pattern(64, 64));
        f.segments[0] = vec![[10.0, 20.0], [30.0, 20.0], [30.0, 40.0]];
        flip_lr(&mut f);
        flip_ud(&mut f);
        assert_eq!(f.segments[0], vec![[54.0, 44.0], [34.0, 44.0], [34.0, 24.0]]);
        let (l, place) = letterbox_sample(with(pattern(64, 32)), (32, 64));
        assert_eq!(place.gain, 1.0);
        let b = l.boxes[0];
        let e = crate::data::segments::segment_box(&l.segments[0], 64.0, 32.0);
        assert!((e[0] - b[0]).abs() < 1e-4 && (e[3] - b[3]).abs() < 1e-4, "{e:?} vs {b:?}");
        // a label set without a polygon for every box carries none
        assert!(Sample::new(pattern(8, 8), &[lbl, lbl]).with_segments(&diamond).segments.is_empty());
        // mosaic shifts each part's polygon with its box (clipped to the canvas), mixup keeps both
        let parts = [0, 1, 2, 3].map(|_| with(pattern(32, 32)));
        let m = mosaic4(parts, 32, &mut rng(4));
        assert_eq!(m.segments.len(), m.boxes.len());
        for (p, b) in m.segments.iter().zip(&m.boxes) {
            let e = crate::data::segments::segment_box(p, 64.0, 64.0);
            assert!(e[0] >= b[0] - 1e-4 && e[1] >= b[1] - 1e-4 && e[2] <= b[2] + 1e-4 && e[3] <= b[3] + 1e-4, "{e:?} in {b:?}");
        }
        let mixed = mixup(with(pattern(16, 16)), with(pattern(16, 16)), &mut rng(5));
        assert_eq!((mixed.boxes.len(), mixed.segments.len()), (2, 2));
        assert_eq!(mixup(with(pattern(16, 16)), Sample::new(pattern(16, 16), &[lbl]), &mut rng(5)).segments.len(), 0);
    }

    #[test]
    fn train_sample_pipeline_in_bounds_and_reproducible() {
        let src = Synthetic { s: 64 };
        let cfg = AugConfig { mixup: 0.5, degrees: 10.0, flipud: 0.5, ..Default::default() };
        for seed in 0..10 {
            let a = train_sample(&src, seed as usize % 5, 64, &cfg, true, &mut rng(seed));
            let b = train_sample(&src, seed as usize % 5, 64, &cfg, true, &mut rng(seed));
            assert_eq!(a, b);
            assert_eq!(a.img.dimensions(), (64, 64));
            assert_inside(&a);
            let c = train_sample(&src, seed as usize % 5, 64, &cfg, false, &mut rng(seed));
            assert_inside(&c);
        }
    }

    #[test]
    fn hsv_zero_gain_is_identity() {
        let img = pattern(33, 17);
        let mut x = img.clone();
        random_hsv(&mut x, [0.0; 3], &mut rng(1));
        assert_eq!(x, img);
        let mut y = img.clone();
        random_hsv(&mut y, [0.015, 0.7, 0.4], &mut rng(1));
        assert_ne!(y, img);
    }

    #[test]
    fn flips_mirror_boxes() {
        let lbl = Label { cls: 1, xywhn: [0.25, 0.25, 0.1, 0.2] };
        let mut s = Sample::new(pattern(40, 20), &[lbl]);
        let before = s.img.clone();
        flip_lr(&mut s);
        let n = s.xywhn()[0];
        assert!((n[0] - 0.75).abs() < 1e-6 && (n[1] - 0.25).abs() < 1e-6 && (n[2] - 0.1).abs() < 1e-6);
        assert_eq!(s.img.get_pixel(39, 0), before.get_pixel(0, 0));
        flip_ud(&mut s);
        let n = s.xywhn()[0];
        assert!((n[0] - 0.75).abs() < 1e-6 && (n[1] - 0.75).abs() < 1e-6 && (n[3] - 0.2).abs() < 1e-6);
        assert_eq!(s.img.get_pixel(39, 19), before.get_pixel(0, 0));
    }

    #[test]
    fn mixup_blends_and_concatenates() {
        let a =
            Sample { img: RgbImage::from_pixel(4, 4, Rgb([200; 3])), boxes: vec![[0.0, 0.0, 2.0, 2.0]], cls: vec![0], segments: Vec::new() };
        let b =
            Sample { img: RgbImage::from_pixel(4, 4, Rgb([0; 3])), boxes: vec![[1.0, 1.0, 3.0, 3.0]], cls: vec![1], segments: Vec::new() };
        let m = mixup(a, b, &mut rng(5));
        assert_eq!(m.cls, vec![0, 1]);
        let v = m.img.get_pixel(0, 0).0[0];
        assert!((70..=130).contains(&v), "Beta(32,32) is near 0.5: {v}");
    }

    #[test]
    fn beta_mean_and_spread() {
        let mut r = rng(9);
        let xs: Vec<f64> = (0..4000).map(|_| sample_beta(&mut r, 32.0, 32.0)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        // Var of Beta(32,32) = 1/260.
        assert!((var - 1.0 / 260.0).abs() < 0.0008, "{var}");
    }

    #[test]
    fn letterbox_sample_moves_boxes() {
        let lbl = Label { cls: 0, xywhn: [0.5, 0.5, 1.0, 1.0] };
        let (s, p) = letterbox_sample(Sample::new(pattern(320, 240), &[lbl]), (256, 352));
        assert_eq!(s.img.dimensions(), (352, 256));
        assert_eq!(p.pad, (16.0, 8.0));
        assert_eq!(s.boxes, vec![[16.0, 8.0, 336.0, 248.0]]);
    }
}
