//! Batching: the shuffled, augmented train loader and the (rectangular) val loader,
//! both building batches on worker threads a few batches ahead of the consumer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use anyhow::{bail, Result};
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::augment::{letterbox_sample, resize_long_side, train_sample, AugConfig, ImageSource, Sample, FILL};
use super::dataset::Dataset;
use super::masks::overlap_masks;
use crate::loss::segment::InstanceMasks;
use crate::pixels::letterbox::{extend_chw, Placement};
use crate::pixels::load::load_rgb;

/// One collated batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// [B, 3, H, W] RGB in 0..1.
    pub images: Vec<f32>,
    pub shape: [usize; 4],
    /// Image index (within the batch) of each box.
    pub batch_idx: Vec<usize>,
    pub cls: Vec<usize>,
    /// Normalised (to H, W) centre-x, centre-y, width, height.
    pub bboxes: Vec<[f32; 4]>,
    pub paths: Vec<PathBuf>,
    /// Original (w, h) of each image.
    pub ori_sizes: Vec<(u32, u32)>,
    /// Val only (empty for train): maps input pixels back to the original image.
    pub placements: Vec<Placement>,
    /// The first `labeled` images carry labels; the rest are unlabeled images (see
    /// [`Batch::append_unlabeled`]), which contribute distillation terms only.
    pub labeled: usize,
    /// A segmentation task's instance masks of the labeled images, whose labels are then in the
    /// masks' object order (see [`crate::data::masks::overlap_masks`]).
    pub masks: Option<InstanceMasks>,
}

impl Batch {
    /// The labels of image `j` as (x1, y1, x2, y2) in input pixels, with their classes.
    pub fn labels_xyxy(&self, j: usize) -> Vec<([f32; 4], usize)> {
        let [_, _, h, w] = self.shape;
        self.batch_idx
            .iter()
            .zip(&self.cls)
            .zip(&self.bboxes)
            .filter(|((&i, _), _)| i == j)
            .map(|((_, &c), b)| {
                let (cx, cy, bw, bh) = (b[0] * w as f32, b[1] * h as f32, b[2] * w as f32, b[3] * h as f32);
                ([cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0], c)
            })
            .collect()
    }

    /// Shard `k` of `n` of this batch: its labeled and its unlabeled images each split by
    /// [`shard_range`], with their labels (what one of `n` devices trains on).
    pub fn shard(&self, k: usize, n: usize) -> Batch {
        let labeled = shard_range(self.labeled, k, n);
        let keep: Vec<usize> = labeled.clone().chain(shard_range(self.shape[0] - self.labeled, k, n).map(|i| i + self.labeled)).collect();
        let per_image: usize = self.shape[1..].iter().product();
        let mut b = Batch {
            images: keep.iter().flat_map(|&i| &self.images[i * per_image..(i + 1) * per_image]).copied().collect(),
            shape: [keep.len(), self.shape[1], self.shape[2], self.shape[3]],
            batch_idx: Vec::new(),
            cls: Vec::new(),
            bboxes: Vec::new(),
            paths: keep.iter().filter_map(|&i| self.paths.get(i).cloned()).collect(),
            ori_sizes: keep.iter().filter_map(|&i| self.ori_sizes.get(i).copied()).collect(),
            placements: keep.iter().filter_map(|&i| self.placements.get(i).copied()).collect(),
            labeled: labeled.len(),
            masks: self.masks.as_ref().map(|m| m.images(labeled.clone())),
        };
        for ((&i, &c), &xywh) in self.batch_idx.iter().zip(&self.cls).zip(&self.bboxes) {
            if labeled.contains(&i) {
                b.batch_idx.push(i - labeled.start);
                b.cls.push(c);
                b.bboxes.push(xywh);
            }
        }
        b
    }

    /// Adds `u`'s images after this batch's as unlabeled images (their labels, if any, are
    /// dropped). Both must have the same image size.
    pub fn append_unlabeled(&mut self, u: Batch) {
        assert_eq!(self.shape[1..], u.shape[1..], "unlabeled images must have the training image size");
        self.images.extend(u.images);
        self.shape[0] += u.shape[0];
        self.paths.extend(u.paths);
        self.ori_sizes.extend(u.ori_sizes);
    }
}

/// Ultralytics' default number of data-loading threads.
pub const DEFAULT_WORKERS: usize = 8;

/// The data-loading threads to use: `requested`, at most the CPUs of this machine shared by
/// the `processes` training on it, and at most the `batches` to build.
pub fn worker_count(requested: usize, batches: usize, processes: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    requested.min(cpus / processes.max(1)).min(batches)
}

/// The images `shard` of `shards` takes of a batch of `len` images: contiguous, sizes
/// differing by at most one.
pub fn shard_range(len: usize, shard: usize, shards: usize) -> std::ops::Range<usize> {
    len * shard / shards..len * (shard + 1) / shards
}

/// One image ready for collation.
struct Part {
    sample: Sample,
    path: PathBuf,
    ori: (u32, u32),
    place: Option<Placement>,
}

/// Stacks same-size images and concatenates their labels; with `mask_ratio`, also draws each
/// image's instance masks from its polygons and puts its labels in the masks' object order.
fn collate(parts: Vec<Part>, mask_ratio: Option<usize>) -> Batch {
    let (w, h) = parts.first().map_or((0, 0), |p| p.sample.img.dimensions());
    let n = parts.len();
    let mut b = Batch { images: Vec::with_capacity(n * 3 * (w * h) as usize), shape: [n, 3, h as usize, w as usize], labeled: n, ..Default::default() };
    if let Some(r) = mask_ratio {
        b.masks = Some(InstanceMasks { size: (h as usize / r, w as usize / r), ids: Vec::new() });
    }
    for (i, p) in parts.into_iter().enumerate() {
        debug_assert_eq!(p.sample.img.dimensions(), (w, h));
        extend_chw(&mut b.images, &p.sample.img);
        let xywh = p.sample.xywhn();
        let order: Vec<usize> = match (&mut b.masks, mask_ratio) {
            (Some(masks), Some(r)) => {
                // the dataset check keeps a polygon for every label (Task::check_labels)
                debug_assert_eq!(p.sample.segments.len(), p.sample.cls.len());
                let (ids, order) = overlap_masks(&p.sample.segments, (h as usize, w as usize), r);
                masks.ids.extend(ids);
                order
            }
            _ => (0..xywh.len()).collect(),
        };
        for k in order {
            b.batch_idx.push(i);
            b.cls.push(p.sample.cls[k]);
            b.bboxes.push(xywh[k]);
        }
        b.paths.push(p.path);
        b.ori_sizes.push(p.ori);
        b.placements.extend(p.place);
    }
    b
}

// ---------------------------------------------------------------- image cache

/// RAM the training loader's image cache may use (resized images, at most imgsz²·3 bytes each).
const CACHE_BYTES: usize = 512 << 20;

/// Resized images kept in RAM (FIFO eviction), shared by the workers. It only saves
/// decoding: what is loaded never depends on it, so output stays deterministic.
struct ImageCache {
    capacity: usize,
    inner: Mutex<CacheSlots>,
}

/// Images by dataset index, and their insertion order for eviction.
type CacheSlots = (HashMap<usize, Arc<RgbImage>>, VecDeque<usize>);

impl ImageCache {
    fn new(capacity: usize) -> ImageCache {
        ImageCache { capacity, inner: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    fn get_or_load(&self, i: usize, load: impl FnOnce() -> Option<RgbImage>) -> Option<Arc<RgbImage>> {
        if let Some(img) = lock(&self.inner).0.get(&i) {
            return Some(img.clone());
        }
        let img = Arc::new(load()?);
        if self.capacity > 0 {
            let (map, order) = &mut *lock(&self.inner);
            if map.insert(i, img.clone()).is_none() {
                order.push_back(i);
            }
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        Some(img)
    }
}

/// A poisoned lock only means another worker panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- seeds

/// SplitMix64 finaliser: decorrelates nearby seeds.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One seed from several numbers (seed, epoch, position, stream); also keys the MGD masks.
pub(crate) fn derive_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5eed_u64, |h, p| splitmix(h ^ splitmix(*p)))
}

// ---------------------------------------------------------------- train

/// Shuffled, augmented training batches of `imgsz`×`imgsz`.
pub struct TrainLoader {
    dataset: Arc<Dataset>,
    imgsz: u32,
    batch: usize,
    aug: AugConfig,
    workers: usize,
    seed: u64,
    cache: Arc<ImageCache>,
    /// (rank, ranks): this process builds only its rank's shard of every batch.
    part: (usize, usize),
    /// The task's instance masks, at 1/ratio of the image size (None: boxes only).
    mask_ratio: Option<usize>,
}

impl TrainLoader {
    /// `workers = 0` builds batches on the calling thread. Recently decoded images are
    /// kept (up to min(N, 8·batch, 1000), as Ultralytics' mosaic buffer).
    pub fn new(
        dataset: Arc<Dataset>,
        imgsz: usize,
        batch: usize,
        aug: AugConfig,
        workers: usize,
        seed: u64,
    ) -> Result<TrainLoader> {
        check_sizes(&dataset, imgsz, batch)?;
        // Ultralytics keeps min(N, 8·batch, 1000) images and draws mosaic partners from them; ours
        // are drawn from the whole dataset, so a cache of that size missed ~40% of loads on BCCD.
        // Keep as many resized images as fit in CACHE_BYTES (at least Ultralytics' count).
        let per_image = (imgsz as usize).pow(2) * 3;
        let capacity = dataset.len().min((8 * batch).min(1000).max(CACHE_BYTES / per_image));
        Ok(TrainLoader {
            imgsz: imgsz as u32,
            batch,
            aug,
            workers,
            seed,
            cache: Arc::new(ImageCache::new(capacity)),
            dataset,
            part: (0, 1),
            mask_ratio: None,
        })
    }

    /// Batches that also carry instance masks at 1/`ratio` of the image size (a segmentation
    /// task's, [`crate::task::Task::mask_ratio`]).
    pub fn with_masks(self, ratio: Option<usize>) -> TrainLoader {
        TrainLoader { mask_ratio: ratio, ..self }
    }

    /// Builds only the images of `rank`'s shard (of `ranks`) of each batch, augmented exactly as
    /// in the whole batch, with at most the workers that `processes` on this machine leave it.
    pub fn for_rank(self, rank: usize, ranks: usize, processes: usize) -> TrainLoader {
        let workers = worker_count(self.workers, self.len(), processes);
        TrainLoader { part: (rank, ranks), workers, ..self }
    }

    /// Images in batch `j` of an epoch, all ranks together.
    pub fn batch_len(&self, j: usize) -> usize {
        self.batch.min(self.dataset.len().saturating_sub(j * self.batch))
    }

    /// Batches per epoch (the last partial batch included).
    pub fn len(&self) -> usize {
        self.dataset.len().div_ceil(self.batch)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches of one epoch: order shuffled from (seed, epoch), each sample's
    /// augmentation seeded from (seed, epoch, position), so the result is the same for
    /// any number of workers. `mosaic_on = false` for the close_mosaic epochs.
    pub fn epoch(&self, epoch: usize, mosaic_on: bool) -> BatchIter {
        let order = self.shuffled(epoch, 0);
        self.batches_of(order, self.len(), epoch, mosaic_on)
    }

    /// Exactly `n` full batches for `epoch`, drawn in a fresh seeded order that starts over
    /// (reshuffled) when the images run out: the unlabeled images that go with an epoch's
    /// labeled batches. Depends only on (seed, epoch), so a resumed run draws the same ones.
    pub fn epoch_batches(&self, epoch: usize, mosaic_on: bool, n: usize) -> BatchIter {
        let order = (0..).flat_map(|pass| self.shuffled(epoch, pass)).take(n * self.batch).collect();
        self.batches_of(order, n, epoch, mosaic_on)
    }

    /// The dataset's indices in the order of (seed, epoch, pass).
    fn shuffled(&self, epoch: usize, pass: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        // pass 0 keeps the seed of the plain epoch order
        let key = if pass == 0 { derive_seed(&[self.seed, epoch as u64, 0]) } else { derive_seed(&[self.seed, epoch as u64, 2, pass]) };
        order.shuffle(&mut StdRng::seed_from_u64(key));
        order
    }

    fn batches_of(&self, order: Vec<usize>, n: usize, epoch: usize, mosaic_on: bool) -> BatchIter {
        let source = TrainSource { dataset: self.dataset.clone(), imgsz: self.imgsz, cache: self.cache.clone() };
        let (batch, aug, seed, (rank, ranks), mask_ratio) = (self.batch, self.aug, self.seed, self.part, self.mask_ratio);
        let make = move |j: usize| {
            let whole = j * batch..((j + 1) * batch).min(order.len());
            let parts = shard_range(whole.len(), rank, ranks)
                .map(|k| whole.start + k)
                .map(|pos| {
                    let idx = order[pos];
                    let mut rng = StdRng::seed_from_u64(derive_seed(&[seed, epoch as u64, pos as u64, 1]));
                    let sample = train_sample(&source, idx, source.imgsz, &aug, mosaic_on, &mut rng);
                    let item = &source.dataset.items[idx];
                    Part { sample, path: item.image.clone(), ori: item.size, place: None }
                })
                .collect();
            collate(parts, mask_ratio)
        };
        BatchIter::start(n, self.workers, Arc::new(make))
    }
}

fn check_sizes(dataset: &Dataset, imgsz: usize, batch: usize) -> Result<()> {
    if dataset.is_empty() {
        bail!("the dataset has no images");
    }
    if !(32..=8192).contains(&imgsz) {
        bail!("image size {imgsz} is outside 32..=8192");
    }
    if batch == 0 {
        bail!("batch size must be at least 1");
    }
    Ok(())
}

/// Training images by index, resized (bilinear), from the cache when possible.
struct TrainSource {
    dataset: Arc<Dataset>,
    imgsz: u32,
    cache: Arc<ImageCache>,
}

impl ImageSource for TrainSource {
    fn len(&self) -> usize {
        self.dataset.len()
    }

    /// An image that fails to decode now (it passed the scan) becomes a gray, label-free
    /// sample with a warning rather than stopping training.
    fn load(&self, i: usize) -> Sample<Arc<RgbImage>> {
        let item = &self.dataset.items[i];
        let img = self.cache.get_or_load(i, || load_or_warn(&item.image, self.imgsz));
        match img {
            Some(img) => Sample::new(img, &item.labels).with_segments(&item.segments),
            None => Sample::new(Arc::new(RgbImage::from_pixel(self.imgsz, self.imgsz, Rgb([FILL; 3]))), &[]),
        }
    }
}

/// Decodes and resizes; a failure (or a decoder panic) is a warning and `None`, so one
/// file that broke after the scan cannot stop a run.
fn load_or_warn(path: &Path, imgsz: u32) -> Option<RgbImage> {
    match std::panic::catch_unwind(|| load_rgb(path).map(|img| resize_long_side(img, imgsz))) {
        Ok(Ok(img)) => Some(img),
        Ok(Err(e)) => {
            eprintln!("warning: {e:#}; using a blank image");
            None
        }
        Err(_) => {
            eprintln!("warning: {}: the image decoder crashed; using a blank image", path.display());
            None
        }
    }
}

// ---------------------------------------------------------------- val

/// Validation batches: letterboxed (no enlarging), rectangular per batch by default.
pub struct ValLoader {
    dataset: Arc<Dataset>,
    imgsz: u32,
    batch: usize,
    workers: usize,
    /// Dataset indices in batch order.
    order: Vec<usize>,
    /// (h, w) of each batch.
    shapes: Vec<(u32, u32)>,
    /// The task's instance masks, at 1/ratio of the batch size (None: boxes only).
    mask_ratio: Option<usize>,
}

impl ValLoader {
    /// Rectangular batches as Ultralytics' val: images sorted by aspect ratio, each batch
    /// padded to its own stride-multiple shape (with half a stride of slack).
    pub fn new(dataset: Arc<Dataset>, imgsz: usize, batch: usize, stride: usize, workers: usize) -> Result<ValLoader> {
        check_sizes(&dataset, imgsz, batch)?;
        if stride == 0 {
            bail!("stride must be at least 1");
        }
        let sizes: Vec<(u32, u32)> = dataset.items.iter().map(|i| i.size).collect();
        let (order, shapes) = rect_shapes(&sizes, batch, imgsz, stride, 0.5);
        Ok(ValLoader {
            imgsz: imgsz as u32,
            batch,
            workers,
            order,
            shapes,
            dataset,
            mask_ratio: None,
        })
    }

    /// Batches that also carry instance masks at 1/`ratio` of their size (a segmentation task's).
    pub fn with_masks(self, ratio: Option<usize>) -> ValLoader {
        ValLoader { mask_ratio: ratio, ..self }
    }

    /// Square `imgsz`×`imgsz` batches in dataset order instead of rectangular ones.
    pub fn square(mut self) -> ValLoader {
        self.order = (0..self.dataset.len()).collect();
        self.shapes = vec![(self.imgsz, self.imgsz); self.dataset.len().div_ceil(self.batch)];
        self
    }

    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// (h, w) of every batch.
    pub fn batch_shapes(&self) -> &[(u32, u32)] {
        &self.shapes
    }

    /// All batches, in order.
    pub fn batches(&self) -> BatchIter {
        let (dataset, order, shapes) = (self.dataset.clone(), self.order.clone(), self.shapes.clone());
        let (imgsz, batch, mask_ratio) = (self.imgsz, self.batch, self.mask_ratio);
        let make = move |j: usize| {
            let parts = order[j * batch..((j + 1) * batch).min(order.len())]
                .iter()
                .map(|&idx| val_part(&dataset, idx, imgsz, shapes[j]))
                .collect();
            collate(parts, mask_ratio)
        };
        BatchIter::start(self.len(), self.workers, Arc::new(make))
    }
}

/// Loads (resized), letterboxes, and records the mapping back to the original.
fn val_part(dataset: &Dataset, idx: usize, imgsz: u32, shape: (u32, u32)) -> Part {
    let item = &dataset.items[idx];
    let loaded = load_or_warn(&item.image, imgsz);
    let (w0, h0) = item.size;
    let Some(img) = loaded else {
        let blank = Sample::new(RgbImage::from_pixel(shape.1, shape.0, Rgb([FILL; 3])), &[]);
        let place = Placement { gain: 1.0, pad: (0.0, 0.0), orig: item.size };
        return Part { sample: blank, path: item.image.clone(), ori: item.size, place: Some(place) };
    };
    let load_gain = img.width().max(img.height()) as f32 / w0.max(h0) as f32;
    let (sample, lb) = letterbox_sample(Sample::new(img, &item.labels).with_segments(&item.segments), shape);
    let place = Placement { gain: lb.gain * load_gain, pad: lb.pad, orig: item.size };
    Part { sample, path: item.image.clone(), ori: item.size, place: Some(place) }
}

/// Ultralytics' set_rectangle: sort by aspect ratio h/w, then per batch of `batch`
/// images a (h, w) shape of ceil(shape·imgsz/stride + pad)·stride, where shape is
/// [max ar, 1] for all-wide batches, [1, 1/min ar] for all-tall ones, else [1, 1].
/// Returns the index order and the shape of each batch.
pub fn rect_shapes(
    sizes: &[(u32, u32)],
    batch: usize,
    imgsz: usize,
    stride: usize,
    pad: f64,
) -> (Vec<usize>, Vec<(u32, u32)>) {
    let ar: Vec<f64> = sizes.iter().map(|&(w, h)| h as f64 / w.max(1) as f64).collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| ar[a].total_cmp(&ar[b]));
    let shapes = order
        .chunks(batch.max(1))
        .map(|idx| {
            let lo = idx.iter().map(|&i| ar[i]).fold(f64::MAX, f64::min);
            let hi = idx.iter().map(|&i| ar[i]).fold(f64::MIN, f64::max);
            let (sh, sw) = if hi < 1.0 {
                (hi, 1.0)
            } else if lo > 1.0 {
                (1.0, 1.0 / lo)
            } else {
                (1.0, 1.0)
            };
            let side = |x: f64| ((x * imgsz as f64 / stride as f64 + pad).ceil() as usize * stride) as u32;
            (side(sh), side(sw))
        })
        .collect();
    (order, shapes)
}

// ---------------------------------------------------------------- prefetching

type MakeBatch = Arc<dyn Fn(usize) -> Batch + Send + Sync>;

/// How far workers may run ahead of the consumer (claims, not just finished batches).
struct Gate {
    state: Mutex<GateState>,
    wake: Condvar,
}

struct GateState {
    claimed: usize,
    consumed: usize,
    stop: bool,
}

/// Batches in order. With workers, batch j is built by whichever thread claims it, at
/// most `ahead` batches past the consumer; results are reordered, so the sequence never
/// depends on thread timing. Dropping it stops and joins the workers.
pub struct BatchIter {
    n: usize,
    next: usize,
    make: MakeBatch,
    pool: Option<Pool>,
}

struct Pool {
    rx: Option<Receiver<(usize, Batch)>>,
    pending: BTreeMap<usize, Batch>,
    gate: Arc<Gate>,
    handles: Vec<JoinHandle<()>>,
}

impl BatchIter {
    fn start(n: usize, workers: usize, make: MakeBatch) -> BatchIter {
        if workers == 0 || n == 0 {
            return BatchIter { n, next: 0, make, pool: None };
        }
        let ahead = (2 * workers).max(2);
        let gate = Arc::new(Gate {
            state: Mutex::new(GateState { claimed: 0, consumed: 0, stop: false }),
            wake: Condvar::new(),
        });
        let (tx, rx) = channel();
        let handles = (0..workers.min(n))
            .map(|_| {
                let (gate, make, tx) = (gate.clone(), make.clone(), tx.clone());
                std::thread::spawn(move || {
                    while let Some(j) = claim(&gate, n, ahead) {
                        if tx.send((j, make(j))).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        let pool = Pool { rx: Some(rx), pending: BTreeMap::new(), gate, handles };
        BatchIter { n, next: 0, make, pool: Some(pool) }
    }
}

/// Next batch number for a worker, waiting while it would run too far ahead.
fn claim(gate: &Gate, n: usize, ahead: usize) -> Option<usize> {
    let mut st = lock(&gate.state);
    loop {
        if st.stop || st.claimed >= n {
            return None;
        }
        if st.claimed < st.consumed + ahead {
            st.claimed += 1;
            return Some(st.claimed - 1);
        }
        st = gate.wake.wait(st).unwrap_or_else(|e| e.into_inner());
    }
}

impl Iterator for BatchIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.n {
            return None;
        }
        let j = self.next;
        self.next += 1;
        let Some(pool) = &mut self.pool else { return Some((self.make)(j)) };
        loop {
            if let Some(b) = pool.pending.remove(&j) {
                lock(&pool.gate.state).consumed = j + 1;
                pool.gate.wake.notify_all();
                return Some(b);
            }
            let rx = pool.rx.as_ref().expect("receiver lives as long as the pool");
            match rx.recv() {
                Ok((k, b)) => {
                    pool.pending.insert(k, b);
                }
                // Every worker is gone without sending batch j: one of them panicked.
                Err(_) => panic!("data loader worker stopped before batch {j} (see the panic above)"),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.n - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for BatchIter {}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.gate.state).stop = true;
        self.gate.wake.notify_all();
        self.rx.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::tests::{bccd_yaml, temp_dir, write_sample, TempDir};
    use crate::data::dataset::{DataConfig, Item};
    use std::time::Instant;

    /// n synthetic images (alternating 64x48 and 40x64) with one or two boxes each.
    fn synthetic(name: &str, n: usize) -> (TempDir, Arc<Dataset>) {
        let d = temp_dir(name);
        let items = (0..n)
            .map(|i| {
                let size = if i % 2 == 0 { (64, 48) } else { (40, 64) };
                let labels = if i % 3 == 0 { "0 0.5 0.5 0.4 0.4\n1 0.2 0.3 0.2 0.2\n" } else { "1 0.6 0.4 0.3 0.5\n" };
                let image = write_sample(&d, "train", &format!("im{i:02}"), size, Some(labels));
                let labels = crate::data::dataset::parse_labels(labels.as_bytes(), 2).unwrap().0;
                Item { image, size, labels, ..Default::default() }
            })
            .collect();
        (d, Arc::new(Dataset::from_items(items, 2)))
    }

    #[test]
    fn unlabeled_epochs_have_the_asked_number_of_full_batches() {
        let (_d, ds) = synthetic("unl-epoch", 5);
        let loader = TrainLoader::new(ds, 64, 3, AugConfig::default(), 2, 9).unwrap();
        // 4 batches of 3 from 5 images: the order starts over (reshuffled) twice
        let paths = |e: usize| -> Vec<Vec<PathBuf>> { loader.epoch_batches(e, true, 4).map(|b| b.paths).collect() };
        let first = paths(0);
        assert_eq!(first.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 3]);
        let all: Vec<&PathBuf> = first.iter().flatten().collect();
        let distinct: std::collections::HashSet<_> = all[..5].iter().collect();
        assert_eq!(distinct.len(), 5, "each image once before any repeats");
        assert_eq!(paths(0), first, "a function of (seed, epoch)");
        assert_ne!(paths(1), first, "another epoch, another order");
        // appended as unlabeled images: labels stay those of the first batch
        let mut b = loader.epoch(0, true).next().unwrap();
        let (labeled, boxes) = (b.shape[0], b.cls.len());
        b.append_unlabeled(loader.epoch_batches(0, true, 1).next().unwrap());
        assert_eq!((b.labeled, b.shape[0], b.cls.len(), b.paths.len()), (labeled, labeled + 3, boxes, labeled + 3));
        check_batch(&b);
    }

    fn check_batch(b: &Batch) {
        let [n, c, h, w] = b.shape;
        assert_eq!((c, b.images.len()), (3, n * 3 * h * w));
        assert_eq!((b.paths.len(), b.ori_sizes.len()), (n, n));
        assert_eq!(b.cls.len(), b.bboxes.len());
        assert_eq!(b.cls.len(), b.batch_idx.len());
        assert!(b.batch_idx.iter().all(|&i| i < n));
        assert!(b.images.iter().all(|v| (0.0..=1.0).contains(v)));
        for bb in &b.bboxes {
            assert!(bb.iter().all(|v| (0.0..=1.0).contains(v)), "{bb:?}");
        }
    }

    #[test]
    fn train_loader_count_shape_and_determinism() {
        let (_dir, ds) = synthetic("train-loader", 11);
        let loader = TrainLoader::new(ds.clone(), 64, 4, AugConfig::default(), 2, 7).unwrap();
        assert_eq!(loader.len(), 3);
        let a: Vec<Batch> = loader.epoch(0, true).collect();
        assert_eq!(a.iter().map(|b| b.shape[0]).collect::<Vec<_>>(), vec![4, 4, 3]);
        a.iter().for_each(check_batch);
        assert_eq!(a[0].shape, [4, 3, 64, 64]);
        assert!(a[0].placements.is_empty());
        // Same seed: identical, whatever the worker count; other epoch: different.
        let b: Vec<Batch> =
            TrainLoader::new(ds.clone(), 64, 4, AugConfig::default(), 0, 7).unwrap().epoch(0, true).collect();
        assert_eq!(a, b);
        let c: Vec<Batch> =
            TrainLoader::new(ds.clone(), 64, 4, AugConfig::default(), 3, 7).unwrap().epoch(0, true).collect();
        assert_eq!(a, c);
        let e1: Vec<Batch> = loader.epoch(1, true).collect();
        assert_ne!(a, e1);
        // Every image appears once per epoch.
        let mut seen: Vec<_> = e1.iter().flat_map(|b| b.paths.clone()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 11);
        // close_mosaic epochs still give full-size batches.
        let closed: Vec<Batch> = loader.epoch(2, false).collect();
        closed.iter().for_each(check_batch);
        assert!(closed.iter().map(|b| b.cls.len()).sum::<usize>() > 0);
    }

    #[test]
    fn shards_split_a_batch_and_its_labels() {
        let (_d, ds) = synthetic("shards", 5);
        let mut b = TrainLoader::new(ds.clone(), 64, 5, AugConfig::default(), 0, 3).unwrap().epoch(0, true).next().unwrap();
        let u = TrainLoader::new(ds, 64, 3, AugConfig::default(), 0, 4).unwrap().epoch(0, true).next().unwrap();
        b.append_unlabeled(u);
        let per = 3 * 64 * 64;
        for n in [1, 2, 3] {
            let parts: Vec<Batch> = (0..n).map(|k| b.shard(k, n)).collect();
            // labeled 5 → 2+3 or 1+2+2, unlabeled 3 → 1+2 or 1+1+1, each shard labeled first
            let labeled: Vec<usize> = parts.iter().map(|p| p.labeled).collect();
            assert_eq!(labeled, (0..n).map(|k| shard_range(5, k, n).len()).collect::<Vec<_>>());
            let order: Vec<usize> = (0..n).flat_map(|k| shard_range(5, k, n).chain(shard_range(3, k, n).map(|i| i + 5))).collect();
            let images: Vec<f32> = parts.iter().flat_map(|p| p.images.clone()).collect();
            let want: Vec<f32> = order.iter().flat_map(|&i| b.images[i * per..(i + 1) * per].to_vec()).collect();
            assert_eq!(images, want, "{n} shards");
            let paths: Vec<_> = parts.iter().flat_map(|p| p.paths.clone()).collect();
            assert_eq!(paths, order.iter().map(|&i| b.paths[i].clone()).collect::<Vec<_>>());
            for (k, p) in parts.iter().enumerate() {
                let first = shard_range(5, k, n).start;
                let mine: Vec<_> = (0..p.labeled).flat_map(|j| p.labels_xyxy(j)).collect();
                let theirs: Vec<_> = shard_range(5, k, n).flat_map(|j| b.labels_xyxy(j)).collect();
                assert_eq!(mine, theirs, "labels of shard {k} of {n} (from image {first})");
                assert_eq!(p.shape[0], p.paths.len());
            }
            assert_eq!(parts.iter().map(|p| p.cls.len()).sum::<usize>(), b.cls.len(), "every label in one shard");
        }
    }

    #[test]
    fn a_rank_loads_its_shard_of_every_batch() {
        let (_d, ds) = synthetic("ranks", 7);
        let whole: Vec<Batch> = TrainLoader::new(ds.clone(), 64, 4, AugConfig::default(), 0, 9).unwrap().epoch(1, true).collect();
        for ranks in [2, 3] {
            for rank in 0..ranks {
                let mine: Vec<Batch> = TrainLoader::new(ds.clone(), 64, 4, AugConfig::default(), 1, 9).unwrap().for_rank(rank, ranks, 1).epoch(1, true).collect();
                let want: Vec<Batch> = whole.iter().map(|b| b.shard(rank, ranks)).collect();
                assert_eq!(mine, want, "rank {rank} of {ranks}: same images, same augmentation");
            }
        }
    }

    #[test]
    fn dropping_an_epoch_early_stops_workers() {
        let (_dir, ds) = synthetic("train-drop", 9);
        let loader = TrainLoader::new(ds, 64, 2, AugConfig::default(), 2, 1).unwrap();
        let mut it = loader.epoch(0, true);
        assert!(it.next().is_some());
        assert_eq!(it.len(), 4);
        drop(it);
    }

    #[test]
    fn bad_loader_arguments_are_errors() {
        let (_dir, ds) = synthetic("train-args", 2);
        assert!(TrainLoader::new(ds.clone(), 64, 0, AugConfig::default(), 0, 0).is_err());
        assert!(TrainLoader::new(ds.clone(), 0, 2, AugConfig::default(), 0, 0).is_err());
        assert!(ValLoader::new(ds, 64, 2, 0, 0).is_err());
    }

    #[test]
    fn rect_shapes_match_ultralytics() {
        // 640x480 at 320: ar 0.75 → h = ceil(7.5 + 0.5)·32 = 256, w = ceil(10 + 0.5)·32 = 352.
        let (_, s) = rect_shapes(&[(640, 480); 3], 2, 320, 32, 0.5);
        assert_eq!(s, vec![(256, 352), (256, 352)]);
        // Without the val padding (train rect): exactly 240 → 256 and 320.
        let (_, s) = rect_shapes(&[(640, 480)], 2, 320, 32, 0.0);
        assert_eq!(s, vec![(256, 320)]);
        // Tall, mixed and sorted.
        let sizes = [(480, 640), (640, 640), (640, 320), (300, 600)];
        let (order, s) = rect_shapes(&sizes, 2, 640, 32, 0.5);
        assert_eq!(order, vec![2, 1, 0, 3]);
        assert_eq!(s, vec![(672, 672), (672, 512)]);
    }

    #[test]
    fn val_loader_rect_and_square() {
        let (_dir, ds) = synthetic("val-loader", 5);
        let v = ValLoader::new(ds.clone(), 64, 2, 32, 2).unwrap();
        assert_eq!(v.len(), 3);
        // Sorted by h/w: three 64x48 (0.75) then two 40x64 (1.6); the middle batch mixes both.
        assert_eq!(v.batch_shapes(), &[(64, 96), (96, 96), (96, 64)]);
        let batches: Vec<Batch> = v.batches().collect();
        batches.iter().for_each(check_batch);
        assert_eq!(batches[0].shape, [2, 3, 64, 96]);
        assert_eq!(batches[2].shape, [1, 3, 96, 64]);
        // 64x48 stays 64x48 (no enlarging), centred in 96x64: pad (16, 8).
        let p = batches[0].placements[0];
        assert_eq!((p.gain, p.pad, p.orig), (1.0, (16.0, 8.0), (64, 48)));
        // A box maps back onto the original image.
        let b = batches[0].bboxes[0];
        let (w, h) = (96.0, 64.0);
        let xyxy = [(b[0] - b[2] / 2.0) * w, (b[1] - b[3] / 2.0) * h, (b[0] + b[2] / 2.0) * w, (b[1] + b[3] / 2.0) * h];
        let back = p.to_original(xyxy);
        assert!((back[0] - 0.3 * 64.0).abs() < 1e-3 && (back[3] - 0.7 * 48.0).abs() < 1e-3, "{back:?}");
        let sq = ValLoader::new(ds, 32, 4, 32, 0).unwrap().square();
        let sb: Vec<Batch> = sq.batches().collect();
        assert_eq!(sb.iter().map(|b| b.shape).collect::<Vec<_>>(), vec![[4, 3, 32, 32], [1, 3, 32, 32]]);
        assert_eq!(sb[0].placements[0].gain, 0.5); // area-resized 64 → 32
    }

    /// BCCD: val rect shapes at 320 and train-loader throughput (skipped without the data).
    #[test]
    fn bccd_loader_smoke() {
        let Some(yaml) = bccd_yaml() else { return };
        let c = DataConfig::load(&yaml).unwrap();
        let cache = temp_dir("bccd-loader-cache");
        let val = Arc::new(Dataset::scan(&c.val, c.nc, Some(&cache)).unwrap());
        let v = ValLoader::new(val, 320, 32, 32, 2).unwrap();
        assert!(v.batch_shapes().iter().all(|s| *s == (256, 352)));
        let first = v.batches().next().unwrap();
        assert_eq!(first.shape, [32, 3, 256, 352]);
        let train = Arc::new(Dataset::scan(&c.train, c.nc, Some(&cache)).unwrap());
        let loader = TrainLoader::new(train.clone(), 320, 16, AugConfig::default(), 2, 0).unwrap();
        let t = Instant::now();
        let n: usize = loader.epoch(0, true).map(|b| b.shape[0]).sum();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(n, train.len());
        eprintln!(
            "BCCD train epoch: {n} images in {secs:.2} s = {:.0} images/s (imgsz 320, batch 16, 2 workers, mosaic)",
            n as f64 / secs
        );
    }
}
