//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `../shared` next to the repository, or None (with a notice) when absent.
/// Under CI=true a missing folder is a failure, not a skip.
pub fn shared() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("fixtures").is_dir() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("../shared is missing under CI=true");
    }
    eprintln!("notice: ../shared not found; skipping this test");
    None
}

/// A fresh temporary folder for one test, removed when the test passes (kept for a look
/// when it fails).
pub fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("yolodistill-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Max |a − b| and max |b| over two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut d = 0f32;
    let mut m = 0f32;
    for (x, y) in a.iter().zip(b) {
        d = d.max((x - y).abs());
        m = m.max(y.abs());
    }
    (d, m)
}

/// A data.yaml in `dir` over the first `n` BCCD training images (sorted by name), used for
/// both train and val: small real-data runs.
pub fn bccd_subset(shared: &Path, dir: &Path, n: usize) -> PathBuf {
    let imgs = shared.join("data/bccd/images/train");
    let mut files: Vec<String> = std::fs::read_dir(&imgs).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    files.sort();
    std::fs::write(dir.join("subset.txt"), files[..n].join("\n")).unwrap();
    let yaml = dir.join("data.yaml");
    std::fs::write(&yaml, format!("path: {}\ntrain: subset.txt\nval: subset.txt\nnames: [RBC, WBC, Platelets]\n", dir.display())).unwrap();
    yaml
}

/// `b` images of `s`×`s` (a fixed pattern), one box on each; the first `labeled` count as labeled.
pub fn toy_batch(b: usize, s: usize, labeled: usize) -> yolodistill::data::loader::Batch {
    let images: Vec<f32> = (0..b * 3 * s * s).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
    yolodistill::data::loader::Batch {
        images,
        shape: [b, 3, s, s],
        batch_idx: (0..b).collect(),
        cls: (0..b).map(|i| i % 3).collect(),
        bboxes: (0..b).map(|i| [0.3 + 0.1 * i as f32, 0.5, 0.3, 0.4]).collect(),
        paths: Vec::new(),
        ori_sizes: Vec::new(),
        placements: Vec::new(),
        labeled,
        masks: None,
    }
}

/// Compares two end-to-end top-k outputs, rows of (x1, y1, x2, y2, score, class), and returns
/// the worst |Δ|/max(1, |v|). Scores tie across anchors in briefly trained models and top-k
/// orders ties its own way: scores must agree position by position; the rows of each group of
/// tied scores must agree as a set (same classes), except the last group, which the k-th place
/// may cut differently. Panics when the groups checked cover fewer than 100 rows.
#[allow(dead_code)]
pub fn same_top_k(what: &str, ours: &[[f32; 6]], want: &[f32]) -> f32 {
    let want: Vec<[f32; 6]> = want.chunks_exact(6).map(|r| r.try_into().unwrap()).collect();
    assert_eq!(ours.len(), want.len(), "{what}: row counts");
    let mut worst = 0f32;
    for (g, w) in ours.iter().zip(&want) {
        worst = worst.max((g[4] - w[4]).abs());
    }
    let sorted = |rows: &[[f32; 6]]| -> Vec<[f32; 6]> {
        let mut v = rows.to_vec();
        v.sort_by(|a, b| (a[5], a[0], a[1], a[2], a[3]).partial_cmp(&(b[5], b[0], b[1], b[2], b[3])).unwrap());
        v
    };
    let (mut start, mut groups) = (0, 0);
    while start < want.len() {
        let end = (start..want.len()).find(|&k| (want[k][4] - want[start][4]).abs() > 1e-6).unwrap_or(want.len());
        if end == want.len() {
            break; // the group the k-th place cuts
        }
        for (g, w) in sorted(&ours[start..end]).iter().zip(sorted(&want[start..end]).iter()) {
            assert_eq!(g[5], w[5], "{what}: classes differ in the tie group at {start}: {g:?} vs {w:?}");
            for (x, y) in g.iter().zip(w) {
                worst = worst.max((x - y).abs() / y.abs().max(1.0));
            }
        }
        groups += 1;
        start = end;
    }
    assert!(start >= 100, "{what}: the last tie group starts at {start}; the comparison checks too little");
    eprintln!("{what}: {groups} groups of tied scores, the first {start} of {} rows checked", want.len());
    worst
}

/// Asserts that each file exists in `dir` and decodes as the image format its suffix names
/// (PNG or JPEG) with a non-empty size.
pub fn assert_pictures(dir: &Path, files: &[&str]) {
    for f in files {
        let p = dir.join(f);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let want = if f.ends_with(".png") { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
        assert_eq!(image::guess_format(&bytes).ok(), Some(want), "{} is not a {want:?} file", p.display());
        let img = image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(img.width() > 0 && img.height() > 0, "{}", p.display());
    }
}

/// A small deterministic generator (the test must not depend on burn's random streams).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A 2-image batch of 64×64 noise with three boxes.
pub fn noise_batch() -> yolodistill::data::loader::Batch {
    let mut r = Lcg(7);
    yolodistill::data::loader::Batch {
        images: (0..2 * 3 * 64 * 64).map(|_| r.next()).collect(),
        shape: [2, 3, 64, 64],
        batch_idx: vec![0, 0, 1],
        cls: vec![0, 2, 1],
        bboxes: vec![[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.4, 0.5], [0.5, 0.5, 0.1, 0.1]],
        labeled: 2,
        ..Default::default()
    }
}
