//! Times JPEG decoding alone (issue 17): the `image` crate's decoder (zune-jpeg, full size,
//! what hondo uses for most files) against `jpeg-decoder` at each inverse-DCT scale (hondo
//! decodes at 1/8 a JPEG at least eight times larger than its crop needs), on one synthetic
//! photo-like image of the given size, quality 90. The decoders run on this thread only
//! (`RAYON_NUM_THREADS=1` for `jpeg-decoder`'s own row parallelism, as in a busy loader).
//!
//! `RAYON_NUM_THREADS=1 cargo run --release --example jpeg_decode -- 1600 1200`

use std::time::Instant;

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: jpeg_decode WIDTH HEIGHT"))
        .collect();
    let (w, h) = match args[..] {
        [w, h] => (w, h),
        _ => (1600, 1200),
    };
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = ((x as f32 * 0.05).sin() * 60.0 + (y as f32 * 0.031).cos() * 60.0 + 128.0) as u8;
        image::Rgb([v, (x * 7 % 256) as u8 / 2 + v / 2, ((x ^ y) % 256) as u8])
    });
    let mut buf = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
        .encode_image(&img)
        .expect("encode");
    let bytes = buf.into_inner();
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        let d =
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).expect("decode");
        std::hint::black_box(d);
    }
    let full = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
    println!(
        "{w}x{h}, {} KiB: image (zune-jpeg), full size: {full:.2} ms",
        bytes.len() / 1024
    );
    for eighths in [8u32, 4, 2, 1] {
        let t = Instant::now();
        let mut size = (0, 0);
        for _ in 0..n {
            let mut d = jpeg_decoder::Decoder::new(std::io::Cursor::new(&bytes));
            size = d
                .scale(
                    (w * eighths).div_ceil(8) as u16,
                    (h * eighths).div_ceil(8) as u16,
                )
                .expect("scale");
            std::hint::black_box(d.decode().expect("decode"));
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
        println!(
            "  jpeg-decoder at {eighths}/8 ({}x{}): {ms:.2} ms, {:.2}x the full-size decode's speed",
            size.0,
            size.1,
            full / ms
        );
    }
}
