//! hondo's parts without its trainer: a ResNet built standalone, weights loaded into a
//! `VarStore` with the report, a checkpoint written and read back, the loader alone, and
//! evaluation and prediction on tensors in memory.
//!
//! ```sh
//! cargo run --release --example parts -- OUT_DIR
//! ```
//!
//! Each step checks what it shows and the program exits non-zero otherwise.

use hondo::checkpoint::{self, Meta};
use hondo::config::DataConfig;
use hondo::data::loader::{Loader, LoaderOptions};
use hondo::data::shapes::{Shapes, Split};
use hondo::data::Dataset;
use hondo::evaluate::Accumulator;
use hondo::{models, predict, tensor_io, weights};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "runs/parts-example".into()),
    );
    std::fs::create_dir_all(&out)?;

    // 1. A ResNet-18 with torchvision's names, standalone.
    let imagenet = VarStore::new(Device::Cpu);
    let net = models::resnet18(&imagenet.root(), 1000);
    let logits = tch::no_grad(|| {
        net.forward_t(
            &Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)),
            false,
        )
    });
    assert_eq!(logits.size(), [2, 1000]);
    println!(
        "resnet18: {} tensors, logits {:?}",
        imagenet.variables().len(),
        logits.size()
    );

    // 2. Its weights as a file (as torchvision's would be), loaded into a 4-class model:
    //    the body matches, the head is re-initialised, and the report says so.
    let file = out.join("resnet18-imagenet.safetensors");
    let mut named: Vec<(String, Tensor)> = imagenet.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::write(&file, tensor_io::serialize(&named, Default::default())?)?;
    let vs = VarStore::new(Device::Cpu);
    let _model = models::resnet18(&vs.root(), 4);
    let report = weights::load_pretrained(&vs, &file, "fc", true)?;
    println!("weights: {}", report.summary());
    assert_eq!(report.head_reinitialised, ["fc.bias", "fc.weight"]);
    let conv1 = |v: &VarStore| v.variables()["conv1.weight"].shallow_clone();
    assert!(conv1(&vs).equal(&conv1(&imagenet)));

    // 3. The loader alone: generated shapes, transformed and batched in worker threads.
    let data = DataConfig {
        image_size: 64,
        val_size: 64,
        ..DataConfig::default()
    };
    let val: Arc<dyn Dataset> = Arc::new(Shapes::new(&data, Split::Val));
    let classes = val.classes().to_vec();
    let loader = Loader::new(
        val,
        LoaderOptions {
            batch_size: 16,
            shuffle: false,
            drop_last: false,
            seed: 0,
            workers: 2,
            prefetch: 2,
            fail_on_error: true,
            pin_memory: false,
            shard: None,
            normalize: None,
        },
    )?;
    let batches: Vec<_> = loader.epoch(0, 0).collect::<Result<_, _>>()?;
    assert_eq!(batches.len(), 4);
    let first = &batches[0];
    println!(
        "loader: {} batches, images {:?} {:?}",
        batches.len(),
        first.images.size(),
        first.images.kind()
    );

    // 4. A checkpoint written and read back, bit for bit.
    let meta = Meta {
        hondo_version: env!("CARGO_PKG_VERSION").into(),
        arch: "resnet18".into(),
        head: None,
        num_classes: 4,
        classes: classes.clone(),
        image_size: 64,
        crop_fraction: 1.0,
        mean: data.mean,
        std: data.std,
        epoch: 0,
        batch: 0,
        step: 0,
        metrics: BTreeMap::new(),
        last_epoch: None,
        best: None,
        epochs_without_improvement: 0,
        world_size: 1,
        config: hondo::config::Config {
            data: data.clone(),
            model: hondo::config::ModelConfig {
                arch: hondo::config::Arch::Resnet18,
                ..Default::default()
            },
            ..Default::default()
        }
        .to_toml(),
    };
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let ckpt = out.join("resnet18-shapes.safetensors");
    std::fs::write(&ckpt, checkpoint::to_bytes(&meta, &tensors, &[])?)?;
    let back = checkpoint::read(&ckpt)?;
    assert_eq!(back.meta, meta);
    assert!(back
        .model
        .iter()
        .zip(&tensors)
        .all(|(a, b)| a.0 == b.0 && a.1.equal(&b.1)));
    println!("checkpoint: {} tensors round-trip", back.model.len());

    // 5. Evaluate and predict on tensors in memory.
    let restored = checkpoint::restore(&ckpt, Device::Cpu)?;
    let mut acc = Accumulator::new(&classes, 4);
    let normalize = hondo::data::normalize::Normalize::new(data.mean, data.std, Device::Cpu, false);
    for b in &batches {
        let logits = tch::no_grad(|| restored.model.forward_t(&normalize.apply(&b.images), false));
        acc.add(&logits, &b.labels)?;
    }
    let r = acc.report();
    assert_eq!(r.images, 64);
    println!(
        "evaluate: {} images, top-1 {:.1}% (an untrained head)",
        r.images,
        r.top1 * 100.0
    );
    let top = predict::classify(&restored, &first.images, 2)?;
    assert_eq!(top.len(), 16);
    assert!(top
        .iter()
        .all(|t| t.len() == 2 && t[0].probability >= t[1].probability));
    println!(
        "predict: first image {} ({:.2})",
        top[0][0].class, top[0][0].probability
    );
    Ok(())
}
