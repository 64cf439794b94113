//! Image files: reading them as RGB (EXIF-aware) and finding them in folders.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// Image suffixes accepted in folders (the decodable subset of Ultralytics' list).
pub const IMAGE_EXTS: &[&str] = &["bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp"];

/// Reads an image as RGB, applying its EXIF orientation. Errors name the file.
/// JPEGs decode as OpenCV decodes them (see [`libjpeg_rgb`]).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    let reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let jpeg = reader.format() == Some(ImageFormat::Jpeg);
    let mut decoder = reader.into_decoder().map_err(|e| anyhow!("{}: unreadable image ({e})", path.display()))?;
    let orientation = decoder.orientation().ok();
    let mut img = match jpeg.then(|| libjpeg_rgb(&bytes)).flatten() {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder).map_err(|e| anyhow!("{}: corrupt image ({e})", path.display()))?,
    };
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img.into_rgb8())
}

/// A JPEG decoded by libjpeg-turbo's algorithms with its defaults (integer IDCT, fancy
/// upsampling), as OpenCV's `imread` decodes it, so pixels and therefore detections match
/// Ultralytics'. None when libjpeg refuses the file (e.g. CMYK); `image` then decodes it or says
/// why not. libjpeg reports errors by unwinding, which is caught here.
fn libjpeg_rgb(bytes: &[u8]) -> Option<RgbImage> {
    let decode = || -> std::io::Result<RgbImage> {
        let mut started = mozjpeg::Decompress::new_mem(bytes)?.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<[u8; 3]> = started.read_scanlines()?;
        started.finish()?;
        RgbImage::from_raw(w, h, pixels.concat()).ok_or_else(|| std::io::Error::other("short image"))
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).ok()?.ok()
}

/// Image files of a file or a folder (recursive, sorted).
pub fn list_images(source: &Path) -> Result<Vec<PathBuf>> {
    if source.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    if !source.is_dir() {
        bail!("source {} does not exist", source.display());
    }
    let mut out = walk_images(source)?;
    out.sort();
    if out.is_empty() {
        bail!("no images found in {}", source.display());
    }
    Ok(out)
}

/// Image files under the folder `dir`, recursively, unsorted.
pub fn walk_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let (mut out, mut stack) = (Vec::new(), vec![dir.to_path_buf()]);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e.with_context(|| format!("cannot list {}", d.display()))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Whether the file has one of the [`IMAGE_EXTS`] suffixes (any case).
pub fn is_image(p: &Path) -> bool {
    p.extension().and_then(|x| x.to_str()).is_some_and(|x| IMAGE_EXTS.contains(&x.to_ascii_lowercase().as_str()))
}

/// Whether the file ends as its format requires (JPEG EOI marker, PNG IEND chunk).
pub fn tail_ok(path: &Path, format: ImageFormat) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let expected: &[u8] = match format {
        ImageFormat::Jpeg => &[0xff, 0xd9],
        ImageFormat::Png => &[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82],
        _ => return Ok(true),
    };
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < expected.len() as u64 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-(expected.len() as i64)))?;
    let mut tail = vec![0u8; expected.len()];
    f.read_exact(&mut tail)?;
    Ok(tail == expected)
}

/// Why a file that decoded may hold wrong pixels (its end is missing), as the dataset scan
/// words it; None for a whole file.
pub fn truncated(path: &Path) -> Result<Option<String>> {
    let reader = ImageReader::open(path).with_context(|| format!("cannot open image {}", path.display()))?.with_guessed_format()?;
    let Some(format) = reader.format() else { return Ok(None) };
    Ok((!tail_ok(path, format)?).then(|| format!("{format:?} file is truncated but decodes")))
}
