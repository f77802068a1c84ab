//! Image files to RGB8: the format is recognised from the content (not the extension), the
//! header's dimensions are checked against `data.max_image_side` before any pixel buffer is
//! allocated, EXIF orientation is applied, and grayscale or alpha images become RGB (alpha
//! is dropped, as PIL's `convert("RGB")` does).

use crate::file::{read_regular, MAX_IMAGE_BYTES};
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

fn decode(bytes: &[u8], max_side: u32) -> Result<RgbImage, String> {
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
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

/// Whether a JPEG's data ends with an end-of-image marker: walks the marker segments up to
/// the first scan (skipping APPn segments, which may hold an EXIF thumbnail with its own
/// markers), then looks for `FF D9` after it. Inside entropy-coded data `FF` is always
/// followed by `00` or a restart marker, so any `FF D9` there is a real end of image.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut pos = 2; // after SOI
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            return false;
        }
        let marker = bytes[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
        pos += 2 + len;
        if marker == 0xDA {
            // Start of scan: the rest is scan data and, for progressive files, more scans.
            return bytes
                .get(pos..)
                .is_some_and(|rest| rest.windows(2).rev().any(|w| w == [0xFF, 0xD9]));
        }
    }
    false
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
