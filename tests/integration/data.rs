//! The real-image data pipeline end to end (issue 4): image folders of every format with
//! bad files mixed in, MNIST and CIFAR-10 fixtures in their binary formats, all written here
//! into temporary directories, read through `data::build` and the parallel loader.

use crate::common::mnist_fixture;
use hondo::config::{DataConfig, DataKind, OnError};
use hondo::data::decode::decode_file;
use hondo::data::loader::{Loader, LoaderOptions};
use hondo::data::{self, Dataset};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn picture(w: u32, h: u32, tint: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, tint])
    })
}

fn save(img: &DynamicImage, path: &Path, format: ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, format).unwrap();
}

/// A valid PNG header for a `w` x `h` RGB image followed by a few bytes of data.
fn huge_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (
            &b"IHDR"[..],
            [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat(),
        ),
        (b"IDAT", vec![0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]),
        (b"IEND", vec![]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let body = [kind, &data].concat();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    }
    out
}

/// A JPEG of `img` with an EXIF APP1 segment carrying `orientation` (1 to 8).
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut jpeg = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut jpeg, ImageFormat::Jpeg)
        .unwrap();
    let jpeg = jpeg.into_inner();
    // "Exif\0\0", a big-endian TIFF header, one IFD with one SHORT entry: 0x0112 Orientation.
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// `train/` with three classes, every format and colour type, four bad files in `cat/`, and
/// a `val/` directory. Returns the names of the bad files.
fn image_tree(root: &Path) -> Vec<&'static str> {
    let t = root.join("train");
    save(
        &DynamicImage::ImageRgb8(picture(40, 30, 0)),
        &t.join("cat/a.jpg"),
        ImageFormat::Jpeg,
    );
    save(
        &DynamicImage::ImageRgb8(picture(30, 40, 50)),
        &t.join("cat/b.PNG"),
        ImageFormat::Png,
    );
    save(
        &DynamicImage::ImageRgb8(picture(50, 50, 90)),
        &t.join("cat/c.webp"),
        ImageFormat::WebP,
    );
    save(
        &DynamicImage::ImageRgb8(picture(33, 21, 130)),
        &t.join("cat/d.bmp"),
        ImageFormat::Bmp,
    );
    let gray = DynamicImage::ImageRgb8(picture(36, 36, 0)).into_luma8();
    save(
        &DynamicImage::ImageLuma8(gray),
        &t.join("dog/gray.png"),
        ImageFormat::Png,
    );
    let rgba = DynamicImage::ImageRgb8(picture(36, 28, 200)).into_rgba8();
    save(
        &DynamicImage::ImageRgba8(rgba),
        &t.join("dog/alpha.png"),
        ImageFormat::Png,
    );
    std::fs::write(
        t.join("dog/rotated.jpeg"),
        jpeg_with_orientation(&picture(48, 24, 10), 6),
    )
    .unwrap();
    save(
        &DynamicImage::ImageRgb8(picture(64, 48, 70)),
        &t.join("Ant/1.jpg"),
        ImageFormat::Jpeg,
    );
    save(
        &DynamicImage::ImageRgb8(picture(64, 48, 170)),
        &t.join("Ant/2.jpg"),
        ImageFormat::Jpeg,
    );
    std::fs::write(t.join("cat/notes.txt"), "not listed: wrong extension").unwrap();
    // Bad files.
    std::fs::write(t.join("cat/zero.jpg"), b"").unwrap();
    let good = std::fs::read(t.join("Ant/1.jpg")).unwrap();
    std::fs::write(t.join("cat/truncated.jpg"), &good[..good.len() * 2 / 3]).unwrap();
    std::fs::write(t.join("cat/text.jpg"), "this is a text file named .jpg\n").unwrap();
    std::fs::write(t.join("cat/huge.png"), huge_png(100_000, 100_000)).unwrap();
    let v = root.join("val");
    save(
        &DynamicImage::ImageRgb8(picture(40, 40, 5)),
        &v.join("dog/v1.png"),
        ImageFormat::Png,
    );
    save(
        &DynamicImage::ImageRgb8(picture(40, 40, 99)),
        &v.join("Ant/v2.jpg"),
        ImageFormat::Jpeg,
    );
    vec!["zero.jpg", "truncated.jpg", "text.jpg", "huge.png"]
}

fn config(root: &Path) -> DataConfig {
    DataConfig {
        kind: DataKind::ImageFolder,
        root: root.display().to_string(),
        image_size: 24,
        ..Default::default()
    }
}

fn loader(ds: Arc<dyn Dataset>, workers: usize, fail: bool) -> Loader {
    let opts = LoaderOptions {
        batch_size: 4,
        shuffle: true,
        drop_last: false,
        seed: 11,
        workers,
        prefetch: 2,
        fail_on_error: fail,
        pin_memory: false,
        shard: None,
        normalize: None,
    };
    Loader::new(ds, opts).unwrap()
}

/// One epoch's batches as (pixels, labels).
type Epoch = Vec<(Vec<u8>, Vec<i64>)>;

/// Every batch of one epoch, and every skipped sample's message.
fn run_epoch(l: &Loader, epoch: usize) -> (Epoch, Vec<String>) {
    let (mut batches, mut skipped) = (Vec::new(), Vec::new());
    for b in l.epoch(epoch, 0) {
        let b = b.unwrap();
        skipped.extend(b.skipped.iter().map(|e| e.to_string()));
        let pixels = Vec::<u8>::try_from(b.images.flatten(0, -1)).unwrap();
        batches.push((pixels, Vec::<i64>::try_from(&b.labels).unwrap()));
    }
    (batches, skipped)
}

/// All labels of an epoch, sorted (batches are shuffled).
fn sorted_labels(batches: &Epoch) -> Vec<i64> {
    let mut y: Vec<i64> = batches.iter().flat_map(|b| b.1.clone()).collect();
    y.sort();
    y
}

#[test]
fn image_folder_reads_every_format_and_skips_bad_files_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let bad = image_tree(dir.path());
    let splits = data::build(&config(dir.path())).unwrap();
    assert_eq!(splits.train.classes(), ["Ant", "cat", "dog"]);
    assert_eq!(splits.val.classes(), ["Ant", "cat", "dog"]);
    assert_eq!((splits.train.len(), splits.val.len()), (9 + 4, 2));

    let (batches, skipped) = run_epoch(&loader(splits.train.clone(), 2, false), 0);
    let images: usize = batches.iter().map(|b| b.1.len()).sum();
    assert_eq!(
        images, 9,
        "every good image, whatever its format or colour type"
    );
    assert_eq!(skipped.len(), 4, "{skipped:#?}");
    for name in bad {
        assert!(
            skipped
                .iter()
                .any(|s| s.contains(name) && s.contains("cat")),
            "{name} not named in {skipped:#?}"
        );
    }
    assert!(batches
        .iter()
        .all(|(px, y)| px.len() == y.len() * 24 * 24 * 3));
    let (val, skipped) = run_epoch(&loader(splits.val.clone(), 1, true), 0);
    assert_eq!((sorted_labels(&val), skipped.len()), (vec![0, 2], 0));
}

#[test]
fn on_error_fail_stops_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    image_tree(dir.path());
    let cfg = DataConfig {
        on_error: OnError::Fail,
        ..config(dir.path())
    };
    let splits = data::build(&cfg).unwrap();
    let l = loader(splits.train, 1, cfg.on_error == OnError::Fail);
    let err = l
        .epoch(0, 0)
        .find_map(|b| b.err())
        .expect("a bad file stops the epoch");
    let msg = err.to_string();
    assert!(
        ["zero.jpg", "truncated.jpg", "text.jpg", "huge.png"]
            .iter()
            .any(|n| msg.contains(n)),
        "{msg}"
    );
}

#[test]
fn huge_headers_are_rejected_fast_without_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.png");
    std::fs::write(&path, huge_png(100_000, 100_000)).unwrap();
    let start = Instant::now();
    let err = decode_file(&path, 16384).unwrap_err().to_string();
    // 100000² RGB would be 30 GB: reaching the decoder's allocation would abort or take seconds.
    assert!(start.elapsed().as_millis() < 200, "{:?}", start.elapsed());
    assert!(
        err.contains("100000x100000") && err.contains("max_image_side"),
        "{err}"
    );
    // Even a modest limit rejects a real image over it.
    let big = dir.path().join("big.png");
    save(
        &DynamicImage::ImageRgb8(picture(300, 20, 0)),
        &big,
        ImageFormat::Png,
    );
    let err = decode_file(&big, 256).unwrap_err();
    assert!(
        matches!(&err, hondo::Error::Data { path, .. } if path == &big),
        "{err}"
    );
    assert!(err.to_string().contains("300x20"), "{err}");
}

#[test]
fn exif_orientation_and_colour_types_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.jpg");
    // Left half red, right half blue; orientation 6 is "rotate 90° clockwise to view".
    let img = RgbImage::from_fn(48, 24, |x, _| {
        if x < 24 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    std::fs::write(&path, jpeg_with_orientation(&img, 6)).unwrap();
    let out = decode_file(&path, 1000).unwrap();
    assert_eq!(out.dimensions(), (24, 48));
    let (top, bottom) = (out.get_pixel(12, 4).0, out.get_pixel(12, 44).0);
    assert!(
        top[0] > 200 && top[2] < 60 && bottom[2] > 200 && bottom[0] < 60,
        "{top:?} {bottom:?}"
    );
    let gray = dir.path().join("g.png");
    save(
        &DynamicImage::ImageLuma8(image::GrayImage::from_pixel(5, 5, image::Luma([77]))),
        &gray,
        ImageFormat::Png,
    );
    assert_eq!(
        decode_file(&gray, 100).unwrap().get_pixel(2, 2).0,
        [77, 77, 77]
    );
}

#[test]
fn batches_are_deterministic_and_independent_of_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    image_tree(dir.path());
    let cfg = DataConfig {
        augment: hondo::config::AugmentConfig {
            color_jitter: 0.3,
            ..Default::default()
        },
        ..config(dir.path())
    };
    let splits = data::build(&cfg).unwrap();
    let one = run_epoch(&loader(splits.train.clone(), 1, false), 3);
    assert_eq!(one, run_epoch(&loader(splits.train.clone(), 2, false), 3));
    assert_eq!(one, run_epoch(&loader(splits.train.clone(), 1, false), 3));
    assert_ne!(
        one.0,
        run_epoch(&loader(splits.train, 1, false), 4).0,
        "augmentation differs per epoch"
    );
}

#[test]
fn layout_errors_name_the_directory_before_training() {
    let dir = tempfile::tempdir().unwrap();
    image_tree(dir.path());
    std::fs::create_dir_all(dir.path().join("train/empty_class")).unwrap();
    let err = data::build(&config(dir.path())).err().unwrap().to_string();
    assert!(
        err.contains("empty_class") && err.contains("no images"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("train")).unwrap();
    std::fs::create_dir_all(empty.path().join("val")).unwrap();
    let err = data::build(&config(empty.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no class directories") && err.contains("train"),
        "{err}"
    );
}

#[test]
fn one_root_is_split_by_val_fraction_per_class() {
    let dir = tempfile::tempdir().unwrap();
    for (class, n) in [("a", 10), ("b", 5)] {
        for i in 0..n {
            save(
                &DynamicImage::ImageRgb8(picture(20, 20, i * 10)),
                &dir.path().join(format!("{class}/{i}.png")),
                ImageFormat::Png,
            );
        }
    }
    let cfg = DataConfig {
        val_fraction: 0.2,
        seed: 3,
        ..config(dir.path())
    };
    let splits = data::build(&cfg).unwrap();
    assert_eq!((splits.train.len(), splits.val.len()), (12, 3));
    let (val, _) = run_epoch(&loader(splits.val, 1, true), 0);
    assert_eq!(sorted_labels(&val), [0, 0, 1]);
}

#[test]
fn mnist_idx_files_load_as_rgb_digits() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("MNIST/raw");
    std::fs::create_dir_all(&raw).unwrap();
    mnist_fixture(&raw, 12);
    let cfg = DataConfig {
        kind: DataKind::Mnist,
        root: dir.path().display().to_string(),
        ..Default::default()
    };
    let splits = data::build(&cfg).unwrap();
    assert_eq!((splits.train.len(), splits.val.len()), (12, 12));
    assert_eq!(splits.train.classes()[3], "3 - three");
    let (batches, skipped) = run_epoch(&loader(splits.val, 2, true), 0);
    assert!(skipped.is_empty());
    assert_eq!(
        sorted_labels(&batches),
        [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    );
    // Grey in, grey RGB out.
    assert!(batches[0]
        .0
        .chunks_exact(3)
        .all(|p| p[0] == p[1] && p[1] == p[2]));
    std::fs::remove_file(raw.join("t10k-labels-idx1-ubyte")).unwrap();
    assert!(data::build(&cfg)
        .err()
        .unwrap()
        .to_string()
        .contains("t10k-labels-idx1-ubyte"));
}

#[test]
fn cifar10_batches_load_with_their_class_names() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
    .iter()
    .enumerate()
    {
        let mut bytes = Vec::new();
        for r in 0..3u8 {
            bytes.push((i as u8 + r) % 10);
            bytes.extend([vec![200u8; 1024], vec![100; 1024], vec![r * 20; 1024]].concat());
        }
        std::fs::write(dir.path().join(format!("{name}.bin")), bytes).unwrap();
    }
    let names = [
        "plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ];
    std::fs::write(
        dir.path().join("batches.meta.txt"),
        names.join("\n") + "\n\n",
    )
    .unwrap();
    let cfg = DataConfig {
        kind: DataKind::Cifar10,
        root: dir.path().display().to_string(),
        ..Default::default()
    };
    let splits = data::build(&cfg).unwrap();
    assert_eq!((splits.train.len(), splits.val.len()), (15, 3));
    assert_eq!(splits.train.classes(), names);
    let (batches, _) = run_epoch(&loader(splits.val, 1, true), 0);
    assert_eq!(sorted_labels(&batches), [5, 6, 7]);
    // The planes are interleaved: every pixel of the first (unflipped eval) image is (200, 100, b).
    assert!(batches[0].0[..32 * 32 * 3]
        .chunks_exact(3)
        .all(|p| p[0] == 200 && p[1] == 100));
}

/// A JPEG much larger than its crop needs is decoded at a reduced DCT scale (1/4 or 1/8):
/// the sample is close to the full decode's (same crop, flip and jitter draws: the random
/// stream is the same), but not bit-identical, which shows that the scaled decoder ran; EXIF
/// orientation holds on that path too. A small image takes the full decode, bit for bit.
#[test]
fn large_jpegs_are_decoded_at_the_scale_their_crop_needs() {
    use hondo::data::image_folder::{scan, ImageFolder};
    use hondo::data::transforms::{RgbRef, Transform};
    let dir = tempfile::tempdir().unwrap();
    let smooth = |w: u32, h: u32| {
        RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            Rgb([
                (fx * 230.0) as u8 + 10,
                (fy * 200.0) as u8 + 20,
                (((fx * 9.0).sin() * (fy * 7.0).cos()) * 100.0 + 128.0) as u8,
            ])
        })
    };
    let big = smooth(1280, 960);
    let root = dir.path().join("train");
    for (class, bytes) in [
        ("a", jpeg_with_orientation(&big, 1)),
        ("b", jpeg_with_orientation(&big, 6)),
        ("c", jpeg_with_orientation(&smooth(120, 90), 1)),
    ] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        std::fs::write(root.join(class).join("x.jpg"), bytes).unwrap();
    }
    let mut cfg = DataConfig {
        image_size: 64,
        ..Default::default()
    };
    cfg.augment.scale = [0.5, 1.0];
    for transform in [Transform::train(&cfg), Transform::eval(&cfg)] {
        let listing = scan(&root, None).unwrap();
        let files: Vec<_> = listing.samples.iter().map(|(p, _)| p.clone()).collect();
        let folder = ImageFolder::new(listing, transform.clone(), 16384);
        for (i, path) in files.iter().enumerate() {
            for draw in 0..4u64 {
                let got = folder.get(i, &mut data::seed::rng(&[draw])).unwrap().image;
                let full = decode_file(path, 16384).unwrap();
                let want = transform.apply(RgbRef::from(&full), &mut data::seed::rng(&[draw]));
                assert_eq!(got.len(), want.len());
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(&a, &b)| (a as f64 - b as f64).abs())
                    .sum::<f64>()
                    / got.len() as f64;
                if i == 2 {
                    assert_eq!(
                        got,
                        want,
                        "{}: a small image is decoded in full",
                        path.display()
                    );
                } else {
                    assert!(
                        diff > 0.0 && diff < 3.0,
                        "{} draw {draw}: mean |scaled - full| = {diff}",
                        path.display()
                    );
                }
            }
        }
    }
}
