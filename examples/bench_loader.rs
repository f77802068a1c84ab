//! Times hondo's input pipeline alone (issue 4): an image folder read by the parallel
//! loader with RandomResizedCrop(224) + horizontal flip, batches of 64, normalised to
//! `f32 [64, 3, 224, 224]` (contiguous NCHW, as torchvision's `ToTensor` + `Normalize` +
//! collate give). As when the trainer runs on the CPU, the loader's workers normalise each
//! sample into its row of the batch; `HONDO_BENCH_CONSUMER_NORMALIZE=1` makes u8 batches
//! and normalises them here with libtorch on one thread instead (hondo before 2026-12-03).
//! Run through `scripts/bench_loader.sh`, which sets the same workload against torchvision.
//!
//! Usage: `bench_loader <image-folder split dir> <workers> [epochs]`; prints `images_per_s=`.

use hondo::config::DataConfig;
use hondo::data::image_folder::{scan, ImageFolder};
use hondo::data::loader::{Loader, LoaderOptions};
use hondo::data::normalize::PixelNorm;
use hondo::data::transforms::Transform;
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(workers)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: bench_loader <image-folder split dir> <workers> [epochs]");
    };
    let workers: usize = workers.parse()?;
    let epochs: usize = args.get(3).map_or(Ok(1), |e| e.parse())?;
    // The consumer's normalisation runs on one thread, as a DataLoader's main process does.
    tch::set_num_threads(1);

    let cfg = DataConfig {
        image_size: 224,
        ..Default::default()
    };
    let in_consumer = std::env::var_os("HONDO_BENCH_CONSUMER_NORMALIZE").is_some_and(|v| v == "1");
    let listing = scan(std::path::Path::new(dir), None)?;
    let dataset = Arc::new(ImageFolder::new(
        listing,
        Transform::train(&cfg),
        cfg.max_image_side,
    ));
    let opts = LoaderOptions {
        batch_size: 64,
        shuffle: true,
        drop_last: false,
        seed: 0,
        workers,
        prefetch: 2 * workers.max(1),
        fail_on_error: true,
        pin_memory: false,
        shard: None,
        normalize: (!in_consumer).then(|| PixelNorm::new(cfg.mean, cfg.std, false)),
    };
    let loader = Loader::new(dataset, opts)?;
    let mean = Tensor::from_slice(&cfg.mean.map(|m| (m * 255.0) as f32)).view([1, 3, 1, 1]);
    let inv_std =
        Tensor::from_slice(&cfg.std.map(|s| (1.0 / (s * 255.0)) as f32)).view([1, 3, 1, 1]);

    // Steady state: the clock starts when the first batch arrives (worker start-up and the
    // first batch are excluded, for torchvision too).
    let (mut start, mut images) = (None, 0usize);
    let mut checksum = 0.0;
    for epoch in 0..epochs {
        for batch in loader.epoch(epoch, 0) {
            let batch = batch?;
            // [b, 224, 224, 3] u8 -> [b, 3, 224, 224] f32, normalised, unless done already.
            let x = if in_consumer {
                (batch
                    .images
                    .permute([0, 3, 1, 2])
                    .contiguous()
                    .to_kind(Kind::Float)
                    - &mean)
                    * &inv_std
            } else {
                batch.images
            };
            checksum += x.double_value(&[0, 0, 0, 0]);
            match start {
                None => start = Some(Instant::now()),
                Some(_) => images += x.size()[0] as usize,
            }
        }
    }
    let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "images={images} seconds={secs:.3} images_per_s={:.1} checksum={checksum:.3}",
        images as f64 / secs
    );
    Ok(())
}
