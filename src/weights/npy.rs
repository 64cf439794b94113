//! Minimal `.npy` (NumPy format 1.0) reading and writing of little-endian f32
//! arrays, for exchanging tensors with dev scripts.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Writes a C-order f32 array.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a C-order little-endian f32 array: (shape, data).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let b = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("{}: not a .npy file", path.display());
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => bail!("{}: unsupported .npy version {v}", path.display()),
    };
    let header = b.get(start..start + hlen).with_context(|| format!("{}: truncated .npy header ({} bytes, the header says {hlen})", path.display(), b.len()))?;
    let header = std::str::from_utf8(header).with_context(|| format!("{}: the .npy header is not text", path.display()))?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        bail!("{}: only C-order little-endian float32 arrays are supported ({header})", path.display());
    }
    let shape_text = header.split("'shape':").nth(1).and_then(|s| s.split(')').next()).with_context(|| format!("{}: no shape in the .npy header", path.display()))?;
    let shape: Vec<usize> = shape_text
        .trim_start_matches([' ', '('])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("{}: bad shape '{shape_text}'", path.display())))
        .collect::<Result<_>>()?;
    let body = &b[start + hlen..];
    let n: usize = shape.iter().product();
    if body.len() != n * 4 {
        bail!("{}: {} data bytes for shape {shape:?}", path.display(), body.len());
    }
    Ok((shape, body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let p = std::env::temp_dir().join(format!("yd-npy-{}.npy", std::process::id()));
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        super::write_f32(&p, &[2, 3, 4], &data).unwrap();
        let (shape, back) = super::read_f32(&p).unwrap();
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(back, data);
        let b = std::fs::read(&p).unwrap();
        assert_eq!((10 + u16::from_le_bytes([b[8], b[9]]) as usize) % 64, 0);
        // a cut header names the file
        std::fs::write(&p, &b[..30]).unwrap();
        let e = format!("{:#}", super::read_f32(&p).unwrap_err());
        assert!(e.contains(&p.display().to_string()) && e.contains("truncated .npy header"), "{e}");
        std::fs::remove_file(&p).ok();
    }
}
