//! Image files to RGB8: the format is recognised from the content (not the extension), the
//! header's dimensions are checked against `data.max_image_side` before any pixel buffer is
//! allocated, EXIF orientation is applied, and grayscale or alpha images become RGB (alpha
//! is dropped, as PIL's `convert("RGB")` does).

use super::transforms::Region;
use crate::file::{read_regular, MAX_IMAGE_BYTES};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;
use std::path::Path;

/// Why encoded bytes are not an image hondo can use (the caller names the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    /// What is wrong: not an image, an unsupported format, truncated, too large, ...
    pub reason: String,
}

/// Reads (only a regular file of at most 64 MiB, never a FIFO or a device) and decodes the
/// image at `path`; the error is [`Error::Data`](crate::Error::Data) naming the file.
pub fn decode_file(path: &Path, max_side: u32) -> crate::Result<RgbImage> {
    decode_path(path, max_side).map_err(|reason| crate::Error::Data {
        path: path.to_path_buf(),
        reason,
    })
}

/// [`decode_file`] with the bare reason, for callers that name the file themselves.
pub(crate) fn decode_path(path: &Path, max_side: u32) -> Result<RgbImage, String> {
    let bytes = read_regular(path, MAX_IMAGE_BYTES)?;
    decode(&bytes, max_side)
}

/// Decodes an encoded image (JPEG, PNG, WebP or BMP) held in memory, refusing one whose
/// header claims a side over `max_side` before any pixel buffer is allocated.
pub fn decode_bytes(bytes: &[u8], max_side: u32) -> Result<RgbImage, DecodeError> {
    decode(bytes, max_side).map_err(|reason| DecodeError { reason })
}

/// An image decoded for one crop: the pixels, and the crop in their coordinates.
#[derive(Debug)]
pub(crate) struct ForCrop {
    /// The decoded image: full size, or a JPEG at a reduced DCT scale.
    pub image: RgbImage,
    /// The crop, in `image`'s pixels.
    pub region: Region,
}

/// Reads the file at `path` (as [`decode_file`]) and decodes it for the crop that `crop`
/// picks from the image's size (after EXIF orientation) and an output of `size` x `size`.
/// A JPEG whose crop is at least eight times the output on both sides (a 12-megapixel photo
/// cropped to 224) is decoded at 1/8 scale by the inverse DCT (libjpeg's scaled decoding, as
/// PIL's `draft` mode), so the crop stays at least `size` pixels on each side and the resize
/// after it still only shrinks: the entropy decoding is the same, the inverse DCT, colour
/// conversion and resize handle 64 times fewer pixels. Other images, and a JPEG the scaled decoder refuses, are decoded
/// in full.
pub(crate) fn decode_path_for_crop(
    path: &Path,
    max_side: u32,
    size: u32,
    crop: impl FnOnce(u32, u32) -> Region,
) -> Result<ForCrop, String> {
    let bytes = read_regular(path, MAX_IMAGE_BYTES)?;
    decode_for_crop(&bytes, max_side, size, crop)
}

pub(crate) fn decode_for_crop(
    bytes: &[u8],
    max_side: u32,
    size: u32,
    crop: impl FnOnce(u32, u32) -> Region,
) -> Result<ForCrop, String> {
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let image = decode(bytes, max_side)?;
        let region = crop(image.width(), image.height());
        return Ok(ForCrop { image, region });
    }
    let (decoder, format, w, h, orientation) = open(bytes, max_side)?;
    let turned = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (ow, oh) = if turned { (h, w) } else { (w, h) };
    let region = crop(ow, oh);
    let eighths = if scaled_enabled() {
        dct_eighths(region, size)
    } else {
        8
    };
    if eighths < 8 {
        if let Some(small) = decode_jpeg_scaled(bytes, w, h, eighths) {
            let mut image = DynamicImage::ImageRgb8(small);
            image.apply_orientation(orientation);
            let image = image.into_rgb8();
            let (sx, sy) = (
                image.width() as f64 / ow as f64,
                image.height() as f64 / oh as f64,
            );
            let left = region.left * sx;
            let top = region.top * sy;
            let scaled = Region {
                left,
                top,
                width: (region.width * sx).min(image.width() as f64 - left),
                height: (region.height * sy).min(image.height() as f64 - top),
            };
            return Ok(ForCrop {
                image,
                region: scaled,
            });
        }
    }
    Ok(ForCrop {
        image: finish(decoder, format, orientation)?,
        region,
    })
}

/// Whether JPEGs may be decoded at a reduced scale: `HONDO_JPEG_SCALED=0` turns it off (to
/// compare, or to decode every image in full).
fn scaled_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("HONDO_JPEG_SCALED").map_or(true, |v| v != "0"))
}

/// The DCT scale, in eighths (1, or 8 for none), at which to decode a JPEG whose crop is
/// `region` for an output of `size`: 1/8 when the crop still spans `size` pixels on both
/// sides at that scale. Not 1/4 or 1/2: the scaled decoder is slower at entropy decoding
/// than the full-size one, and there it gains nothing (BENCHMARKS.md, issue 17).
fn dct_eighths(region: Region, size: u32) -> u32 {
    let side = region.width.min(region.height);
    [1].into_iter()
        .find(|&k| (side * k as f64 / 8.0).floor() >= size as f64)
        .unwrap_or(8)
}

/// Decodes a `w` x `h` JPEG at `eighths`/8 of its size with `jpeg-decoder`'s scaled inverse
/// DCT; `None` if that decoder refuses the file or it is not 8-bit grey or RGB (the caller
/// then decodes it in full).
fn decode_jpeg_scaled(bytes: &[u8], w: u32, h: u32, eighths: u32) -> Option<RgbImage> {
    // Only 8-bit DCT frames (baseline, extended, progressive) of 1 or 3 components.
    match jpeg_frame(bytes) {
        Some((0xC0..=0xC2, 8, 1 | 3)) => {}
        _ => return None,
    }
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    // The header was checked against data.max_image_side; the decoder's own buffers stay
    // under image's default allocation limit.
    d.set_max_decoding_buffer_size(512 << 20);
    let want = |side: u32| u16::try_from((side * eighths).div_ceil(8)).ok();
    let (sw, sh) = d.scale(want(w)?, want(h)?).ok()?;
    let pixels = d.decode().ok()?;
    let info = d.info()?;
    let (sw, sh) = (sw as u32, sh as u32);
    if (info.width as u32, info.height as u32) != (sw, sh) {
        return None;
    }
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => return None,
    };
    RgbImage::from_raw(sw, sh, rgb)
}

/// The checks every decode starts with: a format hondo reads, a complete JPEG, sides within
/// `max_side` and not empty (read from the header, before any pixel buffer exists); the
/// decoder, format, size and EXIF orientation.
fn open(
    bytes: &[u8],
    max_side: u32,
) -> Result<(impl ImageDecoder + '_, ImageFormat, u32, u32, Orientation), String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp)) => {
            f
        }
        Some(f) => {
            return Err(format!(
                "unsupported image format {f:?} (JPEG, PNG, WebP and BMP are read)"
            ))
        }
        None => return Err("not an image: content is not JPEG, PNG, WebP or BMP".into()),
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg pads a cut-off scan with grey and reports success; PIL refuses such files.
        return Err("truncated JPEG (no end-of-image marker after the image data)".into());
    }
    // The decoders' own buffers stay under 512 MiB (image's default allocation limit); the
    // side check below keeps the pixel buffer under max_side² * 4 bytes.
    reader.limits(Limits::default());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode {format:?} header: {e}"))?;
    let (w, h) = decoder.dimensions();
    if w > max_side || h > max_side {
        return Err(format!(
            "header claims {w}x{h} pixels, over data.max_image_side = {max_side}: not decoded"
        ));
    }
    if w == 0 || h == 0 {
        return Err(format!("header claims an empty {w}x{h} image"));
    }
    let orientation = decoder
        .orientation()
        .map_err(|e| format!("cannot read {format:?} metadata: {e}"))?;
    Ok((decoder, format, w, h, orientation))
}

fn decode(bytes: &[u8], max_side: u32) -> Result<RgbImage, String> {
    let (decoder, format, _, _, orientation) = open(bytes, max_side)?;
    finish(decoder, format, orientation)
}

/// Decodes the pixels behind a checked header, oriented, as RGB.
fn finish(
    decoder: impl ImageDecoder,
    format: ImageFormat,
    orientation: Orientation,
) -> Result<RgbImage, String> {
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

/// A JPEG's marker segments before its first scan, as `(marker, offset of the marker's
/// FF, segment length)`; fill bytes skipped. Stops at the first byte that is not a marker,
/// or at the end of the data. Entropy-coded data only follows a start of scan (`DA`).
fn jpeg_segments(bytes: &[u8]) -> impl Iterator<Item = (u8, usize, usize)> + '_ {
    let mut pos = 2; // after SOI
    std::iter::from_fn(move || {
        while pos + 4 <= bytes.len() && bytes[pos] == 0xFF {
            let marker = bytes[pos + 1];
            if marker == 0xFF {
                pos += 1; // fill byte
                continue;
            }
            let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
            let at = pos;
            pos += 2 + len;
            return Some((marker, at, len));
        }
        None
    })
}

/// A JPEG's first frame header: its marker (`C0` baseline, `C1` extended, `C2` progressive,
/// ...), sample precision and number of components.
fn jpeg_frame(bytes: &[u8]) -> Option<(u8, u8, u8)> {
    let (marker, at, len) = jpeg_segments(bytes)
        .take_while(|&(m, _, _)| m != 0xDA)
        .find(|&(m, _, _)| matches!(m, 0xC0..=0xCF) && !matches!(m, 0xC4 | 0xC8 | 0xCC))?;
    // SOFn: length, precision, height, width, components.
    let body = bytes.get(at + 4..at + 2 + len)?;
    Some((marker, *body.first()?, *body.get(5)?))
}

/// Whether a JPEG's data ends with an end-of-image marker: walks the marker segments up to
/// the first scan (skipping APPn segments, which may hold an EXIF thumbnail with its own
/// markers), then looks for `FF D9` after it. Inside entropy-coded data `FF` is always
/// followed by `00` or a restart marker, so any `FF D9` there is a real end of image.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    // Start of scan: the rest is scan data and, for progressive files, more scans.
    jpeg_segments(bytes)
        .find(|&(m, _, _)| m == 0xDA)
        .and_then(|(_, at, len)| bytes.get(at + 2 + len..))
        .is_some_and(|rest| rest.windows(2).rev().any(|w| w == [0xFF, 0xD9]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// A PNG signature, an IHDR for `w` x `h` RGB8, a tiny IDAT and IEND, with valid CRCs.
    pub(crate) fn huge_png_header(w: u32, h: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let body = [kind, data].concat();
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        };
        let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]);
        chunk(b"IEND", &[]);
        out
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 100]))
    }

    #[test]
    fn every_format_and_colour_type_becomes_rgb() {
        let rgb = DynamicImage::ImageRgb8(gradient(20, 12));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::WebP,
            ImageFormat::Bmp,
        ] {
            let out = decode_bytes(&encode(&rgb, format), 100).unwrap();
            assert_eq!(out.dimensions(), (20, 12), "{format:?}");
        }
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_fn(5, 4, |x, _| {
            image::Luma([x as u8 * 40])
        }));
        let out = decode_bytes(&encode(&gray, ImageFormat::Png), 100).unwrap();
        assert_eq!(out.get_pixel(2, 1).0, [80, 80, 80]);
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            3,
            3,
            image::Rgba([10, 20, 30, 0]),
        ));
        let out = decode_bytes(&encode(&rgba, ImageFormat::Png), 100).unwrap();
        assert_eq!(out.get_pixel(1, 1).0, [10, 20, 30]);
    }

    #[test]
    fn bad_files_say_why() {
        assert!(decode_bytes(b"", 100).unwrap_err().reason.contains("empty"));
        assert!(decode_bytes(b"hello, not an image at all", 100)
            .unwrap_err()
            .reason
            .contains("not an image"));
        let jpeg = encode(
            &DynamicImage::ImageRgb8(gradient(64, 64)),
            ImageFormat::Jpeg,
        );
        let cut = &jpeg[..jpeg.len() / 2];
        assert!(
            decode_bytes(cut, 100)
                .unwrap_err()
                .reason
                .contains("truncated"),
            "{:?}",
            decode_bytes(cut, 100).err()
        );
        let png = encode(&DynamicImage::ImageRgb8(gradient(64, 64)), ImageFormat::Png);
        assert!(decode_bytes(&png[..png.len() / 2], 100).is_err());
    }

    #[test]
    fn oversized_headers_are_rejected_unread() {
        let png = encode(&DynamicImage::ImageRgb8(gradient(64, 40)), ImageFormat::Png);
        let err = decode_bytes(&png, 50).unwrap_err();
        assert!(
            err.reason.contains("64x40") && err.reason.contains("max_image_side"),
            "{err}"
        );
        // A valid PNG header claiming 100000 x 100000, with a few bytes of data behind it.
        let enc = huge_png_header(100_000, 100_000);
        let err = decode_bytes(&enc, 16384).unwrap_err();
        assert!(err.reason.contains("100000x100000"), "{err}");
    }

    #[test]
    fn the_dct_scale_keeps_the_crop_at_least_the_output_size() {
        let r = |w: f64, h: f64| Region {
            left: 0.0,
            top: 0.0,
            width: w,
            height: h,
        };
        assert_eq!(dct_eighths(r(3000.0, 1800.0), 224), 1);
        assert_eq!(dct_eighths(r(1792.0, 1800.0), 224), 1);
        // 1/4 and 1/2 are never taken (no faster than the full-size decoder), nor any scale
        // that would leave the crop smaller than the output.
        assert_eq!(dct_eighths(r(1791.0, 1800.0), 224), 8);
        assert_eq!(dct_eighths(r(896.0, 1000.0), 224), 8);
        assert_eq!(dct_eighths(r(100.0, 100.0), 224), 8);
    }

    #[test]
    fn scaled_decoding_gives_the_same_picture_smaller() {
        let img = DynamicImage::ImageRgb8(gradient(800, 640));
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let full = decode_bytes(&jpeg, 10_000).unwrap();
        let small = decode_jpeg_scaled(&jpeg, 800, 640, 1).unwrap();
        assert_eq!(small.dimensions(), (100, 80));
        // Each pixel of the 1/8 decode is the mean of its 8x8 block of the full one.
        let mut worst = 0.0f64;
        for (x, y, p) in small.enumerate_pixels() {
            for c in 0..3 {
                let mean = (0..64)
                    .map(|i| full.get_pixel(x * 8 + i % 8, y * 8 + i / 8).0[c] as f64)
                    .sum::<f64>()
                    / 64.0;
                worst = worst.max((mean - p.0[c] as f64).abs());
            }
        }
        assert!(worst < 12.0, "{worst}");
        // Not a DCT JPEG of 8-bit grey or RGB: the caller decodes it in full.
        assert!(decode_jpeg_scaled(&encode(&img, ImageFormat::Png), 800, 640, 1).is_none());
        let cut = decode_for_crop(&jpeg[..jpeg.len() / 2], 10_000, 64, |w, h| Region {
            left: 0.0,
            top: 0.0,
            width: w as f64,
            height: h as f64,
        });
        assert!(cut.unwrap_err().contains("truncated"));
    }

    #[test]
    fn jpeg_end_marker_check() {
        let jpeg = encode(
            &DynamicImage::ImageRgb8(gradient(16, 16)),
            ImageFormat::Jpeg,
        );
        assert!(jpeg_is_complete(&jpeg));
        // Trailing padding after EOI is accepted.
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0; 10]);
        assert!(jpeg_is_complete(&padded));
        assert!(!jpeg_is_complete(&jpeg[..jpeg.len() - 2]));
    }
}
