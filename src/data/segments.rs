//! Polygon labels as Ultralytics 8.4.190 moves them: resampled to a fixed number of points when
//! loaded, transformed point by point by the augmentation's matrix, their box the extent of the
//! polygon's part inside the image, and their points clipped to that box.

use super::augment::Mat3;

/// Points per polygon after loading (Ultralytics' `segment_resamples`), raised for a polygon with
/// more points.
pub const RESAMPLED_POINTS: usize = 1000;

/// Ultralytics' `resample_segments`: the closed polygon (first point repeated at the end) as `n`
/// points evenly spaced in vertex-index units, with the original vertices inserted among them when
/// there are fewer than `n`; a polygon of exactly `n` points is returned as it is.
pub fn resample(points: &[[f32; 2]], n: usize) -> Vec<[f32; 2]> {
    if points.len() == n || points.is_empty() {
        return points.to_vec();
    }
    let closed: Vec<[f64; 2]> = points.iter().chain(points.first()).map(|p| [p[0] as f64, p[1] as f64]).collect();
    let len = closed.len();
    let count = if len < n { n - len } else { n };
    let last = (len - 1) as f64;
    // numpy's linspace: i · step, the last one exactly `last`
    let step = if count > 1 { last / (count - 1) as f64 } else { 0.0 };
    let mut xs: Vec<f64> = (0..count).map(|i| if i + 1 == count && count > 1 { last } else { i as f64 * step }).collect();
    if len < n {
        // each vertex index inserted before the first sample not below it (numpy's searchsorted)
        let mut with = Vec::with_capacity(n);
        let mut j = 0;
        for v in 0..len {
            while j < xs.len() && xs[j] < v as f64 {
                with.push(xs[j]);
                j += 1;
            }
            with.push(v as f64);
        }
        with.extend_from_slice(&xs[j..]);
        xs = with;
    }
    xs.iter()
        .map(|&x| {
            // numpy's interp over the vertex indices
            let i = (x.floor() as usize).min(len - 2);
            let f = x - i as f64;
            let at = |k: usize| closed[i][k] + (closed[i + 1][k] - closed[i][k]) * f;
            if x >= last {
                [closed[len - 1][0] as f32, closed[len - 1][1] as f32]
            } else {
                [at(0) as f32, at(1) as f32]
            }
        })
        .collect()
}

/// Ultralytics' `segment2box`: the extent (x1, y1, x2, y2) of the polygon's part inside the
/// `width` × `height` image: its points inside, its edges' crossings of the image border, and the
/// image corners inside the polygon; zeros when nothing of it is inside.
pub fn segment_box(points: &[[f32; 2]], width: f32, height: f32) -> [f32; 4] {
    if points.is_empty() {
        return [0.0; 4];
    }
    let (mut x1, mut y1, mut x2, mut y2) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for p in points {
        x1 = x1.min(p[0]);
        y1 = y1.min(p[1]);
        x2 = x2.max(p[0]);
        y2 = y2.max(p[1]);
    }
    if x1 >= 0.0 && y1 >= 0.0 && x2 <= width && y2 <= height {
        return [x1, y1, x2, y2];
    }
    if x2 < 0.0 || y2 < 0.0 || x1 > width || y1 > height {
        return [0.0; 4];
    }
    let inside = |p: [f32; 2]| p[0] >= 0.0 && p[1] >= 0.0 && p[0] <= width && p[1] <= height;
    let mut kept: Vec<[f32; 2]> = points.iter().copied().filter(|&p| inside(p)).collect();
    // crossings of each edge (to the next point, the last to the first) with the border lines
    for (k, &start) in points.iter().enumerate() {
        let end = points[(k + 1) % points.len()];
        let delta = [end[0] - start[0], end[1] - start[1]];
        for (axis, bound, lim) in [(0, 0.0, height), (0, width, height), (1, 0.0, width), (1, height, width)] {
            let t = (bound - start[axis]) / delta[axis];
            let other = start[1 - axis] + t * delta[1 - axis];
            if (0.0..=1.0).contains(&t) && (0.0..=lim).contains(&other) {
                let mut p = [0.0; 2];
                p[axis] = start[axis] + t * delta[axis];
                p[1 - axis] = other;
                kept.push(p);
            }
        }
    }
    for corner in [[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]] {
        if point_in_polygon_or_edge(points, corner) {
            kept.push(corner);
        }
    }
    if kept.is_empty() {
        return [0.0; 4];
    }
    let mut b = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
    for p in kept {
        b = [b[0].min(p[0]), b[1].min(p[1]), b[2].max(p[0]), b[3].max(p[1])];
    }
    b
}

/// Whether `p` is inside the polygon or on its boundary (OpenCV's `pointPolygonTest` ≥ 0).
fn point_in_polygon_or_edge(points: &[[f32; 2]], p: [f32; 2]) -> bool {
    let n = points.len();
    let mut inside = false;
    for k in 0..n {
        let (a, b) = (points[k], points[(k + 1) % n]);
        // on the edge: collinear and within its extent
        let cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]);
        if cross == 0.0 && p[0] >= a[0].min(b[0]) && p[0] <= a[0].max(b[0]) && p[1] >= a[1].min(b[1]) && p[1] <= a[1].max(b[1]) {
            return true;
        }
        if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1]) {
            inside = !inside;
        }
    }
    inside
}

/// The polygon's points moved by `m` (with the perspective division), its box in the `w` × `h`
/// result ([`segment_box`]), and its points clipped to that box (Ultralytics' `apply_segments`).
pub fn transform(points: &[[f32; 2]], m: &Mat3, (w, h): (f32, f32)) -> (Vec<[f32; 2]>, [f32; 4]) {
    let moved: Vec<[f32; 2]> = points
        .iter()
        .map(|p| {
            let (x, y) = (p[0] as f64, p[1] as f64);
            let z = m[2][0] * x + m[2][1] * y + m[2][2];
            [((m[0][0] * x + m[0][1] * y + m[0][2]) / z) as f32, ((m[1][0] * x + m[1][1] * y + m[1][2]) / z) as f32]
        })
        .collect();
    let b = segment_box(&moved, w, h);
    let clipped = moved.iter().map(|p| [p[0].clamp(b[0], b[2]), p[1].clamp(b[1], b[3])]).collect();
    (clipped, b)
}
