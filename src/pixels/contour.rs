//! Outer contours of a binary mask, as OpenCV's `findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)`
//! gives them to Ultralytics' `masks2segments`: for each outermost 8-connected component, its
//! boundary pixels in order (counter-clockwise on screen from the component's first pixel in
//! raster order), keeping only the ends of straight (horizontal, vertical, diagonal) runs, the
//! last component found first, all as OpenCV orders them. A component inside another one's hole
//! is not outermost and gives no contour.

/// The 8 neighbour steps, clockwise on screen (y down), from east.
const STEPS: [(i32, i32); 8] = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)];

/// A `w`×`h` mask, row-major.
pub struct Bitmap<'a> {
    pub bits: &'a [bool],
    pub w: usize,
    pub h: usize,
}

impl Bitmap<'_> {
    fn at(&self, x: i32, y: i32) -> bool {
        x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h && self.bits[y as usize * self.w + x as usize]
    }
}

/// The outer contours (pixel coordinates x, y), in OpenCV's order: the component whose first
/// pixel comes last in raster order first.
pub fn outer_contours(mask: &Bitmap) -> Vec<Vec<(i32, i32)>> {
    let filled = fill_holes(mask);
    let solid = Bitmap { bits: &filled, w: mask.w, h: mask.h };
    let mut seen = vec![false; mask.w * mask.h];
    let mut out = Vec::new();
    for y in 0..mask.h {
        for x in 0..mask.w {
            if filled[y * mask.w + x] && !seen[y * mask.w + x] {
                mark_component(&solid, (x, y), &mut seen);
                let mut points = simplify(&trace(&solid, (x as i32, y as i32)));
                // traced clockwise; OpenCV lists the same points counter-clockwise from the start
                points[1..].reverse();
                out.push(points);
            }
        }
    }
    out.reverse();
    out
}

/// The mask with its holes filled: every background pixel that no 4-connected background path
/// joins to the outside becomes foreground, so that components in holes merge into their hosts.
fn fill_holes(mask: &Bitmap) -> Vec<bool> {
    let (w, h) = (mask.w, mask.h);
    let mut outside = vec![false; w * h];
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let push = |x: usize, y: usize, outside: &mut Vec<bool>, stack: &mut Vec<(usize, usize)>| {
        if !mask.bits[y * w + x] && !outside[y * w + x] {
            outside[y * w + x] = true;
            stack.push((x, y));
        }
    };
    for x in 0..w {
        push(x, 0, &mut outside, &mut stack);
        push(x, h.saturating_sub(1), &mut outside, &mut stack);
    }
    for y in 0..h {
        push(0, y, &mut outside, &mut stack);
        push(w.saturating_sub(1), y, &mut outside, &mut stack);
    }
    while let Some((x, y)) = stack.pop() {
        if x > 0 {
            push(x - 1, y, &mut outside, &mut stack);
        }
        if x + 1 < w {
            push(x + 1, y, &mut outside, &mut stack);
        }
        if y > 0 {
            push(x, y - 1, &mut outside, &mut stack);
        }
        if y + 1 < h {
            push(x, y + 1, &mut outside, &mut stack);
        }
    }
    outside.iter().map(|o| !o).collect()
}

/// Marks the 8-connected component of `start` as seen.
fn mark_component(mask: &Bitmap, start: (usize, usize), seen: &mut [bool]) {
    let mut stack = vec![start];
    seen[start.1 * mask.w + start.0] = true;
    while let Some((x, y)) = stack.pop() {
        for (dx, dy) in STEPS {
            let (nx, ny) = (x as i32 + dx, y as i32 + dy);
            if mask.at(nx, ny) && !seen[ny as usize * mask.w + nx as usize] {
                seen[ny as usize * mask.w + nx as usize] = true;
                stack.push((nx as usize, ny as usize));
            }
        }
    }
}

/// Moore-neighbour tracing of the outer boundary from a component's first pixel in raster order
/// (whose west and northern neighbours are background), clockwise on screen, until the first
/// step repeats. Each point comes with the direction of the step that reached it.
fn trace(mask: &Bitmap, start: (i32, i32)) -> Vec<((i32, i32), usize)> {
    let next = |p: (i32, i32), arrived: usize| -> Option<usize> {
        // the search starts just past the background neighbour the last search ended on
        let first = if arrived % 2 == 0 { arrived + 7 } else { arrived + 6 };
        (0..8).map(|k| (first + k) % 8).find(|&d| mask.at(p.0 + STEPS[d].0, p.1 + STEPS[d].1))
    };
    // as if arrived moving east: the search starts at the north-east neighbour
    let Some(first_step) = next(start, 0) else { return vec![(start, 0)] };
    let mut points = vec![(start, first_step)];
    let (mut p, mut d) = (start, first_step);
    loop {
        p = (p.0 + STEPS[d].0, p.1 + STEPS[d].1);
        let nd = next(p, d).expect("a traced pixel has the neighbour it came from");
        if p == start && nd == first_step {
            points[0].1 = d;
            return points;
        }
        points.push((p, d));
        d = nd;
    }
}

/// CHAIN_APPROX_SIMPLE: a point is kept where the direction changes (the step into it differs
/// from the step out of it).
fn simplify(points: &[((i32, i32), usize)]) -> Vec<(i32, i32)> {
    if points.len() < 2 {
        return points.iter().map(|p| p.0).collect();
    }
    (0..points.len())
        .filter(|&i| points[i].1 != points[(i + 1) % points.len()].1)
        .map(|i| points[i].0)
        .collect()
}

/// Ultralytics' `merge_multi_segment`: several polygons joined into one at their closest points
/// (each consecutive pair's nearest vertices), with thin two-way bridges, as `masks2segments`
/// does with a mask's contours under its default strategy ("all").
pub fn merge_polygons(polygons: &[Vec<(i32, i32)>]) -> Vec<(i32, i32)> {
    let n = polygons.len();
    if n <= 1 {
        return polygons.first().cloned().unwrap_or_default();
    }
    let mut at: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 1..n {
        let (a, b) = closest_vertices(&polygons[i - 1], &polygons[i]);
        at[i - 1].push(a);
        at[i].push(b);
    }
    // each polygon turned to start at its first joint (reversed where its two joints run
    // backwards) and closed; the middle ones are walked to their second joint on the way out
    // and the rest of the way back
    let mut closed = Vec::with_capacity(n);
    let mut out = Vec::new();
    for (i, poly) in polygons.iter().enumerate() {
        let mut joints = at[i].clone();
        let mut p = poly.clone();
        if joints.len() == 2 && joints[0] > joints[1] {
            joints = joints.iter().map(|&j| p.len() - 1 - j).collect();
            p.reverse();
        }
        p.rotate_left(joints[0]);
        p.push(p[0]);
        if i == 0 || i == n - 1 {
            out.extend_from_slice(&p);
        } else {
            out.extend_from_slice(&p[..=joints[1] - joints[0]]);
        }
        closed.push(p);
    }
    for i in (1..n - 1).rev() {
        let back = at[i][1].abs_diff(at[i][0]);
        out.extend_from_slice(&closed[i][back..]);
    }
    out
}

/// The vertex indices of `a` and `b` at the least squared distance (the first such pair in
/// row-major order, as numpy's argmin).
fn closest_vertices(a: &[(i32, i32)], b: &[(i32, i32)]) -> (usize, usize) {
    let mut best = (i64::MAX, 0, 0);
    for (i, p) in a.iter().enumerate() {
        for (j, q) in b.iter().enumerate() {
            let d = ((p.0 - q.0) as i64).pow(2) + ((p.1 - q.1) as i64).pow(2);
            if d < best.0 {
                best = (d, i, j);
            }
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    // Every expected contour below is what OpenCV 4's findContours(RETR_EXTERNAL,
    // CHAIN_APPROX_SIMPLE) gives for the same mask.

    fn mask(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        (rows.iter().flat_map(|r| r.chars().map(|c| c == '#')).collect(), rows[0].len(), rows.len())
    }

    fn contours(rows: &[&str]) -> Vec<Vec<(i32, i32)>> {
        let (bits, w, h) = mask(rows);
        outer_contours(&Bitmap { bits: &bits, w, h })
    }

    #[test]
    fn a_rectangle_gives_its_four_corners() {
        let c = contours(&["......", ".####.", ".####.", ".####.", "......"]);
        assert_eq!(c, vec![vec![(1, 1), (1, 3), (4, 3), (4, 1)]]);
    }

    #[test]
    fn diagonal_runs_keep_only_their_ends() {
        // a diamond: every side a diagonal run
        let c = contours(&["..#..", ".###.", "#####", ".###.", "..#.."]);
        assert_eq!(c, vec![vec![(2, 0), (0, 2), (2, 4), (4, 2)]]);
    }

    #[test]
    fn single_pixels_and_lines() {
        assert_eq!(contours(&["...", ".#.", "..."]), vec![vec![(1, 1)]]);
        // a one-pixel-wide line is traced there and back: its two ends
        assert_eq!(contours(&["####"]), vec![vec![(0, 0), (3, 0)]]);
    }

    #[test]
    fn components_give_one_contour_each_and_holes_none() {
        // a ring with a pixel in its hole, and a separate pixel diagonal-adjacent to nothing
        let c = contours(&["#####...", "#...#...", "#.#.#...", "#...#..#", "#####..."]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0], vec![(7, 3)]);
        assert_eq!(c[1], vec![(0, 0), (0, 4), (4, 4), (4, 0)]);
        // 8-connected: two pixels touching at a corner are one component
        assert_eq!(contours(&["#.", ".#"]).len(), 1);
    }

    #[test]
    fn concave_shapes_follow_every_turn() {
        // the expected points are OpenCV 4's for the same mask
        let c = contours(&["#..#", "#..#", "####"]);
        assert_eq!(c, vec![vec![(0, 0), (0, 2), (3, 2), (3, 0), (3, 1), (2, 2), (1, 2), (0, 1)]]);
    }

    #[test]
    fn polygons_merge_as_ultralytics_merges_them() {
        // expected: Ultralytics 8.4.190's merge_multi_segment on the same polygons
        let square = vec![(0, 0), (0, 4), (4, 4), (4, 0)];
        assert_eq!(merge_polygons(&[vec![(7, 3)], square.clone()]), vec![(7, 3), (7, 3), (4, 4), (4, 0), (0, 0), (0, 4), (4, 4)]);
        let four = [vec![(10, 0), (12, 0), (12, 2)], square.clone(), vec![(20, 20), (20, 30), (25, 25)], vec![(6, 10), (6, 12)]];
        let want = [
            (10, 0), (12, 0), (12, 2), (10, 0), (4, 0), (4, 4), (20, 20), (6, 12), (6, 10), (6, 12), (20, 20), (20, 30), (25, 25),
            (20, 20), (4, 4), (0, 4), (0, 0), (4, 0),
        ];
        assert_eq!(merge_polygons(&four), want);
        assert_eq!(merge_polygons(&[square.clone()]), square);
        assert!(merge_polygons(&[]).is_empty());
    }
}
