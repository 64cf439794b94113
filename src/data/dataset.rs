//! Dataset description (`data.yaml`) and the scan of images + YOLO label files,
//! with a JSON label cache so later runs skip the scan.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{anyhow, bail, Context, Result};
use image::metadata::Orientation;
use image::{ImageDecoder, ImageReader};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::loader::derive_seed;
use crate::pixels::load::{is_image, load_rgb, walk_images};

/// How many of `n` images keep their labels under `--label-fraction fraction` (at least one).
pub fn labeled_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).clamp(1, n.max(1))
}

/// Seed stream of `--label-fraction`'s choice (apart from the data order's).
const LABEL_SPLIT_KEY: u64 = 0x1abe1;

/// A parsed `data.yaml`: absolute image sources per split and the class names.
#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    /// The YAML file itself.
    pub yaml: PathBuf,
    /// Dataset root (`path`, or the YAML's folder).
    pub root: PathBuf,
    /// Image sources: folders, `.txt` list files or image files.
    pub train: Vec<PathBuf>,
    pub val: Vec<PathBuf>,
    /// Empty when the YAML has no `test` entry.
    pub test: Vec<PathBuf>,
    /// Images without labels for distillation (`unlabeled:`, our extension); may be empty.
    pub unlabeled: Vec<PathBuf>,
    pub names: Vec<String>,
    pub nc: usize,
}

impl DataConfig {
    /// Reads and checks a dataset YAML. Errors name the file and, where known, the line.
    pub fn load(path: &Path) -> Result<DataConfig> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read dataset YAML {}", path.display()))?;
        Self::parse(crate::files::without_bom(&text), path)
    }

    /// Parses YAML `text` as if read from `path` (relative entries resolve against its folder).
    pub fn parse(text: &str, path: &Path) -> Result<DataConfig> {
        let doc = YamlDoc { text, path };
        let value: Value = serde_yaml::from_str(text).map_err(|e| anyhow!("{}: invalid YAML: {e}", path.display()))?;
        let map = value
            .as_mapping()
            .ok_or_else(|| anyhow!("{}: expected a mapping of keys (train, val, names, ...)", path.display()))?;
        let get = |key: &str| map.get(key).filter(|v| !v.is_null());

        let yaml_dir = path.parent().unwrap_or(Path::new(""));
        // An absolute `path` replaces the folder when joined.
        let root = match get("path") {
            None => yaml_dir.to_path_buf(),
            Some(v) => yaml_dir.join(v.as_str().ok_or_else(|| doc.err("path", "must be a string"))?),
        };
        let sources = |key: &str| -> Result<Vec<PathBuf>> {
            let list: Vec<&str> = match get(key) {
                None => return Ok(Vec::new()),
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Sequence(items)) => items
                    .iter()
                    .map(|x| x.as_str().ok_or_else(|| doc.err(key, "entries must be strings")))
                    .collect::<Result<_>>()?,
                Some(_) => return Err(doc.err(key, "must be a path or a list of paths")),
            };
            list.into_iter()
                .map(|s| root.join(s))
                .map(|p| if p.exists() { Ok(p) } else { Err(doc.err(key, &format!("{} does not exist", p.display()))) })
                .collect()
        };
        let train = sources("train")?;
        // Ultralytics accepts `validation` as an alias of `val`.
        let val = sources(if get("val").is_some() { "val" } else { "validation" })?;
        let test = sources("test")?;
        let unlabeled = sources("unlabeled")?;
        if train.is_empty() {
            bail!("{}: missing required key 'train'", path.display());
        }
        if val.is_empty() {
            bail!("{}: missing required key 'val'", path.display());
        }
        let names = parse_names(&doc, get("names"), get("nc"))?;
        Ok(DataConfig { yaml: path.to_path_buf(), root, train, val, test, unlabeled, nc: names.len(), names })
    }
}

/// The YAML text and its file, to point errors at a line.
struct YamlDoc<'a> {
    text: &'a str,
    path: &'a Path,
}

impl YamlDoc<'_> {
    /// 1-based line of a top-level key, if it can be found.
    fn line_of(&self, key: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| {
                let l = l.trim_end();
                [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")]
                    .iter()
                    .any(|k| l.starts_with(k.as_str()))
            })
            .map(|i| i + 1)
    }

    fn err(&self, key: &str, msg: &str) -> anyhow::Error {
        let line = self.line_of(key).map(|n| format!(" line {n}")).unwrap_or_default();
        anyhow!("{}{line}: '{key}' {msg}", self.path.display())
    }
}

/// `names` as a list or an {index: name} map; `nc` must agree when both are given.
fn parse_names(doc: &YamlDoc, names: Option<&Value>, nc: Option<&Value>) -> Result<Vec<String>> {
    let nc = nc
        .map(|v| v.as_u64().map(|n| n as usize).ok_or_else(|| doc.err("nc", "must be a non-negative integer")))
        .transpose()?;
    let scalar = |v: &Value| -> Result<String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(doc.err("names", "entries must be strings")),
        }
    };
    let names: Vec<String> = match names {
        None => match nc {
            Some(n) => (0..n).map(|i| format!("class_{i}")).collect(),
            None => bail!("{}: missing 'names' (or 'nc')", doc.path.display()),
        },
        Some(Value::Sequence(items)) => items.iter().map(scalar).collect::<Result<_>>()?,
        Some(Value::Mapping(m)) => {
            let mut pairs = Vec::new();
            for (k, v) in m {
                let idx = match k {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| doc.err("names", &format!("key {k:?} is not a class index")))?;
                pairs.push((idx as usize, scalar(v)?));
            }
            pairs.sort_by_key(|p| p.0);
            // Class indices must be exactly 0..n-1, or labels could not address every class.
            for (i, (idx, _)) in pairs.iter().enumerate() {
                if *idx != i {
                    return Err(doc.err("names", &format!("class indices must be 0..{}, found {idx}", pairs.len() - 1)));
                }
            }
            pairs.into_iter().map(|p| p.1).collect()
        }
        Some(_) => return Err(doc.err("names", "must be a list or an {index: name} map")),
    };
    if let Some(n) = nc {
        if n != names.len() {
            return Err(doc.err("nc", &format!("is {n} but 'names' has {} entries", names.len())));
        }
    }
    if names.is_empty() {
        return Err(doc.err("names", "is empty"));
    }
    crate::model::check_class_names(&names, names.len()).map_err(|e| doc.err("names", &e.to_string()))?;
    Ok(names)
}

/// One box: class and normalised centre-x, centre-y, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub cls: usize,
    pub xywhn: [f32; 4],
}

/// One usable image and its labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub image: PathBuf,
    /// (w, h) after the EXIF orientation is applied.
    pub size: (u32, u32),
    pub labels: Vec<Label>,
    /// Each label's polygon (normalised points) when the label file gives every object as a
    /// polygon; empty otherwise.
    #[serde(default)]
    pub segments: Vec<Vec<[f32; 2]>>,
}

/// Counts from a scan, for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Label files found and valid.
    pub found: usize,
    /// Images without a label file (background images).
    pub missing: usize,
    /// Empty label files (background images).
    pub empty: usize,
    /// Images skipped for a bad image or label file.
    pub corrupt: usize,
}

/// The usable images of one split.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub items: Vec<Item>,
    pub nc: usize,
    /// Every warning of the scan (also printed to stderr).
    pub warnings: Vec<String>,
    pub stats: ScanStats,
    /// Where the label cache was read or written, if anywhere.
    pub cache_path: Option<PathBuf>,
}

/// What the cache file holds; `hash` covers the file list, sizes, mtimes and `nc`.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    hash: String,
    items: Vec<Item>,
    warnings: Vec<String>,
    stats: ScanStats,
}

const CACHE_VERSION: u32 = 3;

impl Dataset {
    /// Lists the images of `sources` (folders, `.txt` lists or image files), checks
    /// every image and label file, and skips bad ones with a warning. Reuses or writes
    /// a label cache next to the labels folder (or in `cache_dir` when that is read-only).
    pub fn scan(sources: &[PathBuf], nc: usize, cache_dir: Option<&Path>) -> Result<Dataset> {
        let images = list_images(sources)?;
        let hash = scan_hash(&images, nc);
        let locations = cache_locations(&images, cache_dir);
        if let Some(ds) = locations.iter().find_map(|loc| read_cache(loc, &hash, nc)) {
            ds.report(true);
            return Ok(ds);
        }
        let mut ds = Self::check(sources, &images, Some(nc))?;
        ds.cache_path = write_cache(&ds, &hash, &locations);
        Ok(ds)
    }

    /// Unlabeled images under `sources` (folders, `.txt` lists or image files): every image is
    /// checked as for training and bad ones are skipped with a warning; no label file is read,
    /// even where one exists.
    pub fn scan_unlabeled(sources: &[PathBuf]) -> Result<Dataset> {
        Self::check(sources, &list_images(sources)?, None)
    }

    /// Checks the `images` listed from `sources` (`nc = None`: unlabeled), reports them and
    /// fails when none is usable.
    fn check(sources: &[PathBuf], images: &[PathBuf], nc: Option<usize>) -> Result<Dataset> {
        let (items, warnings, stats) = scan_items(images, nc);
        let ds = Dataset { items, nc: nc.unwrap_or(0), warnings, stats, cache_path: None };
        ds.report(nc.is_some());
        if ds.is_empty() {
            let what = if nc.is_some() { "" } else { " unlabeled" };
            bail!("no usable{what} images in {} ({} listed, {} skipped)", show_sources(sources), images.len(), ds.stats.corrupt);
        }
        Ok(ds)
    }

    /// Prints the warnings and, with `labels`, the summary line (naming the cache read, if any).
    fn report(&self, labels: bool) {
        for w in &self.warnings {
            eprintln!("warning: {w}");
        }
        if labels {
            let (s, usable) = (&self.stats, self.items.len());
            let from = self.cache_path.as_ref().map(|c| format!(" (from cache {})", c.display())).unwrap_or_default();
            eprintln!(
                "scanned labels{from}: {usable} usable images, {} label files, {} missing, {} empty, {} skipped",
                s.found, s.missing, s.empty, s.corrupt
            );
        }
    }

    /// Keeps a seeded random `fraction` of the images (at least one) with their labels, in their
    /// listed order, and returns the others without labels: `--label-fraction`'s split.
    pub fn split_labels(&mut self, fraction: f64, seed: u64) -> Vec<Item> {
        let n = self.items.len();
        let keep = labeled_count(n, fraction);
        if keep >= n {
            return Vec::new();
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(derive_seed(&[seed, LABEL_SPLIT_KEY])));
        let mut kept = vec![false; n];
        for &i in &order[..keep] {
            kept[i] = true;
        }
        let (labeled, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.items).into_iter().zip(kept).partition(|(_, k)| *k);
        self.items = labeled.into_iter().map(|(it, _)| it).collect();
        rest.into_iter().map(|(it, _)| Item { labels: Vec::new(), segments: Vec::new(), ..it }).collect()
    }

    /// A dataset from items already in memory (tests, synthetic data).
    pub fn from_items(items: Vec<Item>, nc: usize) -> Dataset {
        Dataset { items, nc, warnings: Vec::new(), stats: ScanStats::default(), cache_path: None }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn show_sources(sources: &[PathBuf]) -> String {
    sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------- listing

/// Image files under the sources, sorted (Ultralytics sorts the whole list).
pub fn list_images(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for src in sources {
        if src.is_dir() {
            files.extend(walk_images(src)?);
        } else if src.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")) {
            files.extend(read_list(src)?);
        } else if src.is_file() {
            files.push(src.clone());
        } else {
            bail!("image source {} does not exist", src.display());
        }
    }
    let mut images: Vec<PathBuf> = files.into_iter().filter(|p| is_image(p)).collect();
    images.sort();
    if images.is_empty() {
        bail!("no images found in {}", show_sources(sources));
    }
    Ok(images)
}

/// A `.txt` image list: `./x` lines are relative to the list's folder, others kept as written.
fn read_list(txt: &Path) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string(txt).with_context(|| format!("cannot read image list {}", txt.display()))?;
    let text = crate::files::without_bom(&text);
    let dir = txt.parent().unwrap_or(Path::new(""));
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.strip_prefix("./") {
            Some(rest) => dir.join(rest),
            None => PathBuf::from(l),
        })
        .collect())
}

/// Label file of an image: the last `images` folder becomes `labels`, the suffix `.txt`.
pub fn label_path(image: &Path) -> PathBuf {
    let mut comps: Vec<&OsStr> = image.components().map(|c| c.as_os_str()).collect();
    // The file name itself never counts as the `images` folder.
    if let Some(i) = comps[..comps.len().saturating_sub(1)].iter().rposition(|c| *c == "images") {
        comps[i] = OsStr::new("labels");
    }
    comps.into_iter().collect::<PathBuf>().with_extension("txt")
}

// ---------------------------------------------------------------- checking

/// What checking one image + label pair gave: the item, its label file and any warning, or
/// why the image is skipped.
type Checked = std::result::Result<(Item, LabelState, Option<String>), String>;

enum LabelState {
    Found,
    Missing,
    Empty,
}

/// Checks every image on a few threads; the result keeps the sorted order.
/// `nc = None`: unlabeled images (no label file is read).
fn scan_items(images: &[PathBuf], nc: Option<usize>) -> (Vec<Item>, Vec<String>, ScanStats) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    let chunk = images.len().div_ceil(threads).max(1);
    let checked: Vec<Checked> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|p| check_guarded(p, nc)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("check_guarded catches panics")).collect()
    });
    let (mut items, mut warnings, mut stats) = (Vec::new(), Vec::new(), ScanStats::default());
    for c in checked {
        match c {
            Ok((item, label, warning)) => {
                match label {
                    LabelState::Found => stats.found += 1,
                    LabelState::Missing => stats.missing += 1,
                    LabelState::Empty => stats.empty += 1,
                }
                warnings.extend(warning);
                items.push(item);
            }
            Err(w) => {
                stats.corrupt += 1;
                warnings.push(w);
            }
        }
    }
    if stats.found == 0 && !items.is_empty() && nc.is_some() {
        warnings.push(format!(
            "no label files found next to {} (labels go in a 'labels' folder beside 'images')",
            images[0].display()
        ));
    }
    (items, warnings, stats)
}

/// A decoder that panics on a malformed file costs that file, not the scan.
fn check_guarded(image: &Path, nc: Option<usize>) -> Checked {
    std::panic::catch_unwind(|| check_pair(image, nc))
        .unwrap_or_else(|_| Err(format!("{}: the image decoder crashed on this file; skipped", image.display())))
}

fn check_pair(image: &Path, nc: Option<usize>) -> Checked {
    let (size, mut warning) =
        check_image(image).map_err(|e| format!("{}: skipping corrupt image: {e:#}", image.display()))?;
    let item = |labels: Vec<Label>, segments: Vec<Vec<[f32; 2]>>| Item { image: image.to_path_buf(), size, labels, segments };
    let Some(nc) = nc else { return Ok((item(Vec::new(), Vec::new()), LabelState::Missing, warning)) };
    let lpath = label_path(image);
    let skip = |why: String| format!("{}{why}; skipping image {}", lpath.display(), image.display());
    let bytes = match fs::read(&lpath) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((item(Vec::new(), Vec::new()), LabelState::Missing, warning)),
        read => read.map_err(|e| skip(format!(": cannot read ({e})")))?,
    };
    let (labels, segments, dups) = parse_labels(&bytes, nc).map_err(|(line, msg)| {
        let at = line.map(|n| format!(":{n}")).unwrap_or_default();
        skip(format!("{at}: {msg}"))
    })?;
    if dups > 0 {
        warning = Some(format!("{}: {dups} duplicate labels removed", lpath.display()));
    }
    let state = if labels.is_empty() { LabelState::Empty } else { LabelState::Found };
    Ok((item(labels, segments), state, warning))
}

/// Image size (w, h) after EXIF orientation, from the header. A file whose end marker is
/// missing is fully decoded: kept (with a warning) if that works, rejected otherwise.
fn check_image(path: &Path) -> Result<((u32, u32), Option<String>)> {
    let reader = ImageReader::open(path)?.with_guessed_format()?;
    let format = reader.format().ok_or_else(|| anyhow!("unknown image format"))?;
    let mut dec = reader.into_decoder()?;
    let (w, h) = dec.dimensions();
    let swap = matches!(
        dec.orientation().unwrap_or(Orientation::NoTransforms),
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    let size = if swap { (h, w) } else { (w, h) };
    // Ultralytics rejects images under 10 pixels on a side.
    if size.0 < 10 || size.1 < 10 {
        bail!("image size {}x{} is under 10 pixels", size.0, size.1);
    }
    if crate::pixels::load::tail_ok(path, format)? {
        return Ok((size, None));
    }
    load_rgb(path)?;
    Ok((size, Some(format!("{}: {format:?} file is truncated but decodes; kept", path.display()))))
}

/// Parses a label file (public for the fuzz tests). Err carries the 1-based line (if any) and the reason; the
/// whole image is then skipped, as Ultralytics does, because a partly read label
/// file would teach the model that the dropped objects are background.
/// Returns the labels, their polygons (empty unless every row is a polygon, as Ultralytics keeps
/// them only then) and the number of duplicate rows left out.
#[allow(clippy::type_complexity)]
pub fn parse_labels(bytes: &[u8], nc: usize) -> std::result::Result<(Vec<Label>, Vec<Vec<[f32; 2]>>, usize), (Option<usize>, String)> {
    let text = std::str::from_utf8(bytes).map_err(|_| (None, "label file is not UTF-8 text".to_string()))?;
    let text = crate::files::without_bom(text);
    let mut rows: Vec<(Label, Option<Vec<[f32; 2]>>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        rows.push(parse_row(line, nc).map_err(|m| (Some(i + 1), m))?);
    }
    // Duplicates: rows of the same class and box; when every row is a polygon, of the same class
    // and polygon (Ultralytics 8.4.190 keeps distinct polygons that share a box).
    let polygons = rows.iter().all(|(_, p)| p.is_some());
    let mut seen = HashSet::new();
    let (mut labels, mut segments, mut dups) = (Vec::new(), Vec::new(), 0);
    for (label, polygon) in rows {
        let shape: Vec<u32> = match (&polygon, polygons) {
            (Some(p), true) => p.iter().flat_map(|q| q.map(f32::to_bits)).collect(),
            _ => label.xywhn.map(f32::to_bits).to_vec(),
        };
        if seen.insert((label.cls, shape)) {
            labels.push(label);
            segments.extend(polygon);
        } else {
            dups += 1;
        }
    }
    if !polygons {
        segments.clear();
    }
    Ok((labels, segments, dups))
}

/// Ultralytics' tolerances: coordinates in [-0.01, 1.01].
const COORD_MIN: f32 = -0.01;
const COORD_MAX: f32 = 1.01;

/// One row: `cls xc yc w h`, or a polygon `cls x1 y1 x2 y2 ...` turned into its box (and
/// returned as points).
fn parse_row(line: &str, nc: usize) -> std::result::Result<(Label, Option<Vec<[f32; 2]>>), String> {
    let vals = line
        .split_whitespace()
        .map(|t| t.parse::<f32>().map_err(|_| format!("'{t}' is not a number")))
        .collect::<std::result::Result<Vec<f32>, String>>()?;
    let xywh = match vals.len() {
        5 => [vals[1], vals[2], vals[3], vals[4]],
        n if n >= 7 && n % 2 == 1 => polygon_box(&vals[1..]),
        n => return Err(format!("expected 5 values (cls x y w h) or a polygon, found {n}")),
    };
    let c = vals[0];
    if !c.is_finite() || c < 0.0 || c.fract() != 0.0 {
        return Err(format!("class {c} is not a non-negative integer"));
    }
    if c as usize >= nc {
        return Err(format!("class {c} exceeds the dataset's class count {nc} (classes 0-{})", nc.saturating_sub(1)));
    }
    if let Some(v) = xywh.iter().find(|v| !(COORD_MIN..=COORD_MAX).contains(*v)) {
        return Err(format!("coordinate {v} is outside [0, 1] (not normalised?)"));
    }
    let polygon = (vals.len() > 5).then(|| vals[1..].chunks_exact(2).map(|p| [p[0], p[1]]).collect());
    Ok((Label { cls: c as usize, xywhn: xywh }, polygon))
}

/// xywh of the box around polygon points (x, y, x, y, ...).
fn polygon_box(pts: &[f32]) -> [f32; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for p in pts.chunks_exact(2) {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0]
}

// ---------------------------------------------------------------- cache

/// FNV-1a: a stable hash (std's hasher may change between Rust releases).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Hash of everything the scan depends on: paths, sizes and mtimes of images and labels, nc.
fn scan_hash(images: &[PathBuf], nc: usize) -> String {
    let mut h = Fnv::new();
    h.u64(CACHE_VERSION as u64);
    h.u64(nc as u64);
    let mut stat = |p: &Path| {
        h.bytes(p.as_os_str().as_encoded_bytes());
        h.bytes(&[0]);
        match fs::metadata(p) {
            Ok(m) => {
                h.u64(m.len());
                let t = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                h.u64(t.map_or(0, |d| d.as_nanos() as u64));
            }
            Err(_) => h.u64(u64::MAX),
        }
    };
    for img in images {
        stat(img);
        stat(&label_path(img));
    }
    format!("{:016x}", h.0)
}

/// Preferred cache file `<labels dir>.cache.json`, then the fallback in `cache_dir`.
fn cache_locations(images: &[PathBuf], cache_dir: Option<&Path>) -> Vec<PathBuf> {
    let labels_dir = label_path(&images[0]).parent().map(Path::to_path_buf).unwrap_or_default();
    let mut primary = OsString::from(labels_dir.as_os_str());
    primary.push(".cache.json");
    let mut out = vec![PathBuf::from(primary)];
    if let Some(dir) = cache_dir {
        // Name it after the labels folder plus a hash of its path, so splits don't collide.
        let mut h = Fnv::new();
        h.bytes(labels_dir.as_os_str().as_encoded_bytes());
        let stem = labels_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "labels".into());
        out.push(dir.join(format!("{stem}-{:016x}.cache.json", h.0)));
    }
    out
}

fn read_cache(path: &Path, hash: &str, nc: usize) -> Option<Dataset> {
    let text = fs::read_to_string(path).ok()?;
    let c: CacheFile = serde_json::from_str(&text).ok()?;
    (c.version == CACHE_VERSION && c.hash == hash && !c.items.is_empty()).then(|| Dataset {
        items: c.items,
        nc,
        warnings: c.warnings,
        stats: c.stats,
        cache_path: Some(path.to_path_buf()),
    })
}

/// Writes the cache to the first location that works; prints one notice per failure.
fn write_cache(ds: &Dataset, hash: &str, locations: &[PathBuf]) -> Option<PathBuf> {
    let file = CacheFile {
        version: CACHE_VERSION,
        hash: hash.to_string(),
        items: ds.items.clone(),
        warnings: ds.warnings.clone(),
        stats: ds.stats,
    };
    let json = serde_json::to_string(&file).inspect_err(|e| eprintln!("note: label cache not written ({e})")).ok()?;
    for (i, loc) in locations.iter().enumerate() {
        let Err(e) = write_file(loc, &json) else { return Some(loc.clone()) };
        let next = locations.get(i + 1).map_or("not caching labels".into(), |n| format!("using {} instead", n.display()));
        eprintln!("note: cannot write label cache {} ({e}); {next}", loc.display());
    }
    None
}

/// Writes atomically (see [`crate::files::write_atomic`]). A folder without any write
/// permission bit counts as read-only even for root, who could write there anyway (data mounts
/// meant to stay untouched).
fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
        if fs::metadata(dir)?.permissions().readonly() {
            bail!("folder is read-only");
        }
    }
    crate::files::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// A fresh temporary folder, unique per test, removed when dropped.
    pub(crate) struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn temp_dir(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("yolodistill-data-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    /// Writes `root/images/<split>/<name>.png` (w x h) and its label text (if any).
    pub(crate) fn write_sample(
        root: &Path,
        split: &str,
        name: &str,
        (w, h): (u32, u32),
        labels: Option<&str>,
    ) -> PathBuf {
        let img_dir = root.join("images").join(split);
        let lbl_dir = root.join("labels").join(split);
        fs::create_dir_all(&img_dir).unwrap();
        fs::create_dir_all(&lbl_dir).unwrap();
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 90]));
        let p = img_dir.join(format!("{name}.png"));
        img.save(&p).unwrap();
        if let Some(l) = labels {
            fs::write(lbl_dir.join(format!("{name}.txt")), l).unwrap();
        }
        p
    }

    /// BCCD's data.yaml under `../shared`, or None (with a notice) when absent;
    /// under CI=true a missing folder is a failure, as in the integration tests.
    pub(crate) fn bccd_yaml() -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/bccd/data.yaml");
        if p.is_file() {
            return Some(p);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is missing under CI=true", p.display());
        }
        eprintln!("notice: {} not found; skipping this test", p.display());
        None
    }

    fn yaml(dir: &Path, text: &str) -> Result<DataConfig> {
        let p = dir.join("data.yaml");
        fs::write(&p, text).unwrap();
        DataConfig::load(&p)
    }

    #[test]
    fn yaml_names_list_and_missing_path() {
        let d = temp_dir("yaml-list");
        fs::create_dir_all(d.join("images/train")).unwrap();
        fs::create_dir_all(d.join("images/val")).unwrap();
        let c = yaml(&d, "train: images/train\nval: images/val\nnames: [a, b]\n").unwrap();
        assert_eq!(c.root, d.to_path_buf());
        assert_eq!(c.train, vec![d.join("images/train")]);
        assert_eq!(c.names, vec!["a", "b"]);
        assert_eq!(c.nc, 2);
        assert!(c.test.is_empty());
    }

    #[test]
    fn yaml_names_map_relative_path_validation_alias() {
        let d = temp_dir("yaml-map");
        fs::create_dir_all(d.join("ds/images/train")).unwrap();
        fs::create_dir_all(d.join("ds/images/val")).unwrap();
        let c = yaml(
            &d,
            "path: ds\ntrain: images/train\nvalidation: [images/val]\nnc: 3\nnames:\n  2: c\n  0: a\n  1: b\n",
        )
        .unwrap();
        assert_eq!(c.root, d.join("ds"));
        assert_eq!(c.val, vec![d.join("ds/images/val")]);
        assert_eq!(c.names, vec!["a", "b", "c"]);
    }

    #[test]
    fn yaml_errors_name_file_and_line() {
        let d = temp_dir("yaml-err");
        fs::create_dir_all(d.join("images")).unwrap();
        let e = yaml(&d, "train: images\nval: images\nnc: 3\nnames: [a, b]\n").unwrap_err().to_string();
        assert!(e.contains("data.yaml line 3") && e.contains("nc"), "{e}");
        let e = yaml(&d, "train: images\nval: nowhere\nnames: [a]\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("nowhere"), "{e}");
        let e = yaml(&d, "train: images\nval: images\nnames: {0: a, 2: b}\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        let e = yaml(&d, "train: [images\n").unwrap_err().to_string();
        assert!(e.contains("data.yaml") && e.contains("line"), "{e}");
        let e = yaml(&d, "val: images\nnames: [a]\n").unwrap_err().to_string();
        assert!(e.contains("train"), "{e}");
        let c = yaml(&d, "train: images\nval: images\nnc: 2\n").unwrap();
        assert_eq!(c.names, vec!["class_0", "class_1"]);
    }

    #[test]
    fn txt_list_sources() {
        let d = temp_dir("txt");
        let a = write_sample(&d, "train", "a", (20, 20), Some("0 0.5 0.5 0.2 0.2\n"));
        let b = write_sample(&d, "train", "b", (20, 20), None);
        fs::write(d.join("train.txt"), "./images/train/b.png\n./images/train/a.png\n\n").unwrap();
        let c = yaml(&d, "train: train.txt\nval: images/train\nnames: [x]\n").unwrap();
        assert_eq!(list_images(&c.train).unwrap(), vec![a.clone(), b.clone()]);
        let ds = Dataset::scan(&c.train, 1, None).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.stats, ScanStats { found: 1, missing: 1, empty: 0, corrupt: 0 });
    }

    #[test]
    fn label_path_rule() {
        assert_eq!(
            label_path(Path::new("/d/images/x/images/train/a.b.jpg")),
            PathBuf::from("/d/images/x/labels/train/a.b.txt")
        );
        assert_eq!(label_path(Path::new("/d/images/a.png")), PathBuf::from("/d/labels/a.txt"));
        assert_eq!(label_path(Path::new("/d/pics/images.png")), PathBuf::from("/d/pics/images.txt"));
    }

    #[test]
    fn bad_files_are_skipped_with_warnings() {
        let d = temp_dir("bad");
        write_sample(
            &d,
            "t",
            "good",
            (40, 30),
            Some("1 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.5 0.5\n0 0.2 0.2 0.1 0.1 0.3 0.3\n"),
        );
        write_sample(&d, "t", "cls", (40, 30), Some("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n"));
        write_sample(&d, "t", "coord", (40, 30), Some("\n0 1.2 0.5 0.1 0.1\n"));
        write_sample(&d, "t", "malformed", (40, 30), Some("0 0.5 0.5 0.1\n"));
        write_sample(&d, "t", "text", (40, 30), Some("0 0.5 abc 0.1 0.1\n"));
        write_sample(&d, "t", "float", (40, 30), Some("1.5 0.5 0.5 0.1 0.1\n"));
        write_sample(&d, "t", "empty", (40, 30), Some(""));
        write_sample(&d, "t", "tiny", (5, 30), None);
        fs::write(d.join("images/t/corrupt.jpg"), b"not an image at all").unwrap();
        let ds = Dataset::scan(&[d.join("images/t")], 2, None).unwrap();
        let names: Vec<_> =
            ds.items.iter().map(|i| i.image.file_stem().unwrap().to_str().unwrap().to_string()).collect();
        assert_eq!(names, vec!["empty", "good"]);
        let good = &ds.items[1];
        assert_eq!(good.size, (40, 30));
        assert_eq!(good.labels.len(), 2); // duplicate removed
        let poly = good.labels[1];
        assert_eq!(poly.cls, 0);
        assert!((poly.xywhn[0] - 0.2).abs() < 1e-6 && (poly.xywhn[2] - 0.2).abs() < 1e-6);
        // a box row next to the polygon: no polygons are kept (every row must be one)
        assert!(good.segments.is_empty());
        let (labels, segments, _) = parse_labels(b"0 0.2 0.2 0.1 0.1 0.3 0.3\n1 0.5 0.5 0.9 0.5 0.6 0.8\n", 2).unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(segments, vec![vec![[0.2, 0.2], [0.1, 0.1], [0.3, 0.3]], vec![[0.5, 0.5], [0.9, 0.5], [0.6, 0.8]]]);
        let has = |needle: &str| ds.warnings.iter().any(|w| w.contains(needle));
        assert!(has("cls.txt:2") && has("class 7 exceeds"), "{:?}", ds.warnings);
        assert!(has("coord.txt:2") && has("1.2"), "{:?}", ds.warnings);
        assert!(has("malformed.txt:1"));
        assert!(has("text.txt:1") && has("'abc'"));
        assert!(has("float.txt:1"));
        assert!(has("tiny.png") && has("under 10 pixels"));
        assert!(has("corrupt.jpg"));
        assert!(has("1 duplicate labels removed"));
        assert_eq!(ds.stats.corrupt, 7);
        assert_eq!(ds.stats.empty, 1);
    }

    #[test]
    fn polygons_sharing_a_box_are_distinct_labels() {
        // two different polygons with one extent, then a repeat of the first: one duplicate
        let text = "0 0.1 0.1 0.9 0.1 0.9 0.9\n0 0.1 0.1 0.9 0.9 0.1 0.9 0.9 0.1\n0 0.1 0.1 0.9 0.1 0.9 0.9\n";
        let (labels, segments, dups) = parse_labels(text.as_bytes(), 1).unwrap();
        assert_eq!((labels.len(), segments.len(), dups), (2, 2, 1));
        // box rows (or a mix) are duplicates by class and box
        let (labels, segments, dups) = parse_labels(b"0 0.5 0.5 0.5 0.5\n0 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n", 1).unwrap();
        assert_eq!((labels.len(), segments.len(), dups), (1, 0, 1));
    }

    /// A JPEG carrying an EXIF orientation tag (big-endian TIFF, one IFD entry).
    fn jpeg_with_orientation(img: &RgbImage, orientation: u8) -> Vec<u8> {
        let mut jpg = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg).unwrap();
        let mut app1 = vec![0xff, 0xe1, 0, 34];
        app1.extend(b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01");
        app1.extend([0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0, 0, 0, 0, 0]);
        [&jpg[..2], &app1[..], &jpg[2..]].concat()
    }

    #[test]
    fn exif_rotation_swaps_size_and_truncated_jpeg_is_reported() {
        let d = temp_dir("exif");
        let dir = d.join("images");
        fs::create_dir_all(&dir).unwrap();
        let img = RgbImage::from_pixel(40, 20, Rgb([10, 200, 30]));
        fs::write(dir.join("rot.jpg"), jpeg_with_orientation(&img, 6)).unwrap();
        let plain = jpeg_with_orientation(&img, 1);
        fs::write(dir.join("short.jpg"), &plain[..plain.len() - 2]).unwrap();
        let ds = Dataset::scan(std::slice::from_ref(&dir), 1, None).unwrap();
        let rot = ds.items.iter().find(|i| i.image.ends_with("rot.jpg")).unwrap();
        assert_eq!(rot.size, (20, 40));
        assert_eq!(load_rgb(&rot.image).unwrap().dimensions(), (20, 40));
        assert!(ds.warnings.iter().any(|w| w.contains("short.jpg")), "{:?}", ds.warnings);
    }

    #[test]
    fn truncated_png_is_rejected_and_empty_dataset_errors() {
        let d = temp_dir("trunc");
        let p = write_sample(&d, "t", "a", (64, 64), None);
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = Dataset::scan(&[d.join("images/t")], 1, None).unwrap_err().to_string();
        assert!(e.contains("no usable images"), "{e}");
    }

    #[test]
    fn cache_is_written_reused_and_invalidated() {
        let d = temp_dir("cache");
        write_sample(&d, "t", "a", (20, 20), Some("0 0.5 0.5 0.2 0.2\n"));
        write_sample(&d, "t", "b", (20, 20), Some("5 0.5 0.5 0.2 0.2\n"));
        let src = [d.join("images/t")];
        let first = Dataset::scan(&src, 2, None).unwrap();
        let cache = d.join("labels/t.cache.json");
        assert_eq!(first.cache_path.as_deref(), Some(cache.as_path()));
        let again = Dataset::scan(&src, 2, None).unwrap();
        assert_eq!(again.cache_path.as_deref(), Some(cache.as_path()));
        assert_eq!(again.items, first.items);
        assert_eq!(again.warnings, first.warnings);
        // A different nc changes the hash: rescan, now with both images.
        let wide = Dataset::scan(&src, 6, None).unwrap();
        assert_eq!(wide.len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn read_only_labels_fall_back_to_cache_dir() {
        use std::os::unix::fs::PermissionsExt;
        let d = temp_dir("ro");
        write_sample(&d, "t", "a", (20, 20), Some("0 0.5 0.5 0.2 0.2\n"));
        let labels = d.join("labels");
        fs::set_permissions(&labels, fs::Permissions::from_mode(0o555)).unwrap();
        let fallback = d.join("cache");
        let ds = Dataset::scan(&[d.join("images/t")], 1, Some(&fallback)).unwrap();
        let at = ds.cache_path.clone().unwrap();
        assert!(at.starts_with(&fallback), "{at:?}");
        assert!(!d.join("labels/t.cache.json").exists());
        let again = Dataset::scan(&[d.join("images/t")], 1, Some(&fallback)).unwrap();
        assert_eq!(again.cache_path, Some(at));
        let fresh = temp_dir("ro-none");
        write_sample(&fresh, "t", "a", (20, 20), None);
        fs::set_permissions(fresh.join("labels"), fs::Permissions::from_mode(0o555)).unwrap();
        let none = Dataset::scan(&[fresh.join("images/t")], 1, None).unwrap();
        assert_eq!((none.len(), none.cache_path), (1, None));
        fs::set_permissions(fresh.join("labels"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&labels, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn bccd_smoke() {
        let Some(yaml) = bccd_yaml() else { return };
        let c = DataConfig::load(&yaml).unwrap();
        assert_eq!(c.names, vec!["RBC", "WBC", "Platelets"]);
        let cache = temp_dir("bccd-cache");
        let ds = Dataset::scan(&c.val, c.nc, Some(&cache)).unwrap();
        assert!(ds.len() > 50);
        assert!(ds.items.iter().all(|i| i.size == (640, 480)));
        assert!(ds.items.iter().map(|i| i.labels.len()).sum::<usize>() > 500);
    }
}
