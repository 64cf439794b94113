//! Instance masks from polygons, as Ultralytics makes a segmentation batch's targets: each polygon
//! filled at the image's size (OpenCV's `fillPoly` on vertices truncated to whole pixels: the
//! pixels strictly inside, plus its 8-connected outline), downsampled by `mask_ratio` (OpenCV's
//! bilinear `resize` of the 0/1 mask, which for ratio 4 keeps a pixel when at least 2 of the 4
//! source pixels at offsets 1 and 2 are set), then merged in overlap form: objects by
//! decreasing mask area, each pixel the id (1-based rank) of the smallest object covering it.

use crate::loss::segment::InstanceMasks;

/// A polygon's filled mask at `(h, w)` (row-major, 0/1).
pub fn fill_polygon(points: &[[f32; 2]], (h, w): (usize, usize)) -> Vec<u8> {
    let mut mask = vec![0u8; h * w];
    // numpy's int32 cast truncates towards zero
    let pts: Vec<[i64; 2]> = points.iter().map(|p| [p[0] as i64, p[1] as i64]).collect();
    let n = pts.len();
    if n == 0 {
        return mask;
    }
    // inside: whole-pixel points with an odd number of edge crossings to their right
    let mut crossings = Vec::new();
    for y in 0..h as i64 {
        crossings.clear();
        for k in 0..n {
            let ([x0, y0], [x1, y1]) = (pts[k], pts[(k + 1) % n]);
            if (y0 >= y) != (y1 >= y) {
                crossings.push(x0 as f64 + (y - y0) as f64 * (x1 - x0) as f64 / (y1 - y0) as f64);
            }
        }
        crossings.sort_by(f64::total_cmp);
        for pair in crossings.chunks_exact(2) {
            // strictly between the two crossings
            let from = (pair[0].floor() as i64 + 1).max(0);
            let to = (pair[1].ceil() as i64 - 1).min(w as i64 - 1);
            for x in from..=to {
                mask[y as usize * w + x as usize] = 1;
            }
        }
    }
    for k in 0..n {
        draw_line(&mut mask, (h, w), pts[k], pts[(k + 1) % n]);
    }
    mask
}

/// OpenCV's 8-connected line (its `LineIterator`, left to right) from `a` to `b`, clipped to the mask.
fn draw_line(mask: &mut [u8], (h, w): (usize, usize), a: [i64; 2], b: [i64; 2]) {
    let (mut p, q) = if b[0] < a[0] { (b, a) } else { (a, b) };
    let dx = q[0] - p[0];
    let (dy, ystep) = if q[1] < p[1] { (p[1] - q[1], -1) } else { (q[1] - p[1], 1) };
    // the major axis steps every pixel; the minor one when the error says so
    let steep = dy > dx;
    let (major, minor) = if steep { (dy, dx) } else { (dx, dy) };
    let mut err = major - 2 * minor;
    for _ in 0..=major {
        if (0..w as i64).contains(&p[0]) && (0..h as i64).contains(&p[1]) {
            mask[p[1] as usize * w + p[0] as usize] = 1;
        }
        let diagonal = err < 0;
        err += -2 * minor + if diagonal { 2 * major } else { 0 };
        if steep {
            p[1] += ystep;
            if diagonal {
                p[0] += 1;
            }
        } else {
            p[0] += 1;
            if diagonal {
                p[1] += ystep;
            }
        }
    }
}

/// `mask` (h × w) downsampled by `ratio` as OpenCV's bilinear `resize` does for a 0/1 mask: the
/// source pixels around each target pixel's centre, set when at least half of them are.
pub fn downsample(mask: &[u8], (h, w): (usize, usize), ratio: usize) -> Vec<u8> {
    if ratio == 1 {
        return mask.to_vec();
    }
    let (nh, nw) = (h / ratio, w / ratio);
    // the centre of target pixel i sits at source (i + 0.5)·ratio − 0.5: between two pixels for
    // an even ratio, on one for an odd ratio
    let odd = ratio % 2;
    let lo = |i: usize| i * ratio + ratio / 2 + odd - 1;
    let hi = |i: usize, n: usize| (i * ratio + ratio / 2).min(n - 1);
    let mut out = vec![0u8; nh * nw];
    for y in 0..nh {
        for x in 0..nw {
            let s: u32 = [(lo(y), lo(x)), (lo(y), hi(x, w)), (hi(y, h), lo(x)), (hi(y, h), hi(x, w))]
                .iter()
                .map(|&(r, c)| mask[r * w + c] as u32)
                .sum();
            out[y * nw + x] = (s >= 2) as u8;
        }
    }
    out
}

/// The overlap-form masks of one image's polygons (pixels) at `(h, w) / ratio`, and the order of
/// the objects (by decreasing mask area) that the ids follow: object `order[i]` has id `i + 1`.
pub fn overlap_masks(polygons: &[Vec<[f32; 2]>], (h, w): (usize, usize), ratio: usize) -> (Vec<u16>, Vec<usize>) {
    let small: Vec<Vec<u8>> = polygons.iter().map(|p| downsample(&fill_polygon(p, (h, w)), (h, w), ratio)).collect();
    let areas: Vec<u32> = small.iter().map(|m| m.iter().map(|&v| v as u32).sum()).collect();
    let mut order: Vec<usize> = (0..polygons.len()).collect();
    order.sort_by(|&a, &b| areas[b].cmp(&areas[a]));
    let mut ids = vec![0u16; (h / ratio) * (w / ratio)];
    for (rank, &k) in order.iter().enumerate() {
        let id = (rank + 1) as u16;
        for (px, &on) in ids.iter_mut().zip(&small[k]) {
            if on == 1 {
                *px = (*px).max(id);
            }
        }
    }
    (ids, order)
}

/// A batch's instance masks from each image's polygons (pixels at `size`), in overlap form at
/// `size / ratio`; also each image's object order (see [`overlap_masks`]).
pub fn batch_masks(images: &[Vec<Vec<[f32; 2]>>], size: (usize, usize), ratio: usize) -> (InstanceMasks, Vec<Vec<usize>>) {
    let mut ids = Vec::new();
    let mut orders = Vec::new();
    for polygons in images {
        let (m, order) = overlap_masks(polygons, size, ratio);
        ids.extend(m);
        orders.push(order);
    }
    (InstanceMasks { size: (size.0 / ratio, size.1 / ratio), ids }, orders)
}
