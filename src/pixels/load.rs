//! Image files: reading them as RGB (EXIF-aware) and finding them in folders.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Image suffixes accepted in folders (the decodable subset of Ultralytics' list).
pub const IMAGE_EXTS: &[&str] = &["bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp"];

/// Reads an image as RGB, applying its EXIF orientation. Errors name the file.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let reader = ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let mut decoder = reader.into_decoder().map_err(|e| anyhow!("{}: unreadable image ({e})", path.display()))?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| anyhow!("{}: corrupt image ({e})", path.display()))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img.to_rgb8())
}

/// Image files of a file or a folder (recursive, sorted).
pub fn list_images(source: &Path) -> Result<Vec<PathBuf>> {
    if source.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    if !source.is_dir() {
        bail!("source {} does not exist", source.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![source.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTS.contains(&x.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("no images found in {}", source.display());
    }
    Ok(out)
}
