//! Bring your own model: a network defined here, trained by hondo's loop on hondo's data
//! (the generated shapes set), with an observer of our own, then resumed and exported.
//!
//! ```sh
//! cargo run --release --example custom_model -- OUT_DIR
//! ```
//!
//! It checks what it claims and exits non-zero otherwise: accuracy beats chance, a run
//! stopped after one epoch and resumed ends with bit-identical weights to one that ran
//! straight through, and the checkpoint exports (safetensors and TorchScript).

use hondo::checkpoint;
use hondo::config::Config;
use hondo::export::{self, Format, Input};
use hondo::models::ModelSpec;
use hondo::observe::{EpochEnd, MetricsLog, Observer, ObserverResult};
use hondo::train::Trainer;
use std::path::{Path, PathBuf};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Two convolutions and a linear head: any `ModuleT` built on the `VarStore` path works.
#[derive(Debug)]
struct TinyNet {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    head: nn::Linear,
}

impl TinyNet {
    fn new(p: &nn::Path, classes: i64) -> TinyNet {
        let c = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        TinyNet {
            conv1: nn::conv2d(p / "conv1", 3, 32, 3, c),
            conv2: nn::conv2d(p / "conv2", 32, 64, 3, c),
            head: nn::linear(p / "head", 64 * 6 * 6, classes, Default::default()),
        }
    }
}

impl ModuleT for TinyNet {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        let x = x.apply(&self.conv1).relu().max_pool2d_default(2);
        let x = x.apply(&self.conv2).relu().max_pool2d_default(2);
        x.flatten(1, -1).apply(&self.head)
    }
}

fn spec() -> ModelSpec {
    ModelSpec::custom("tiny_net", TinyNet::new).with_head("head")
}

/// Our own observer: remembers the validation accuracy of each epoch.
#[derive(Default)]
struct Accuracy(std::rc::Rc<std::cell::RefCell<Vec<f64>>>);

impl Observer for Accuracy {
    fn epoch_ended(&mut self, end: &EpochEnd<'_>) -> ObserverResult {
        self.0.borrow_mut().push(end.metrics.val_acc);
        Ok(())
    }
}

fn config(epochs: usize) -> Config {
    let mut c = Config::default();
    c.data.image_size = 24;
    c.data.train_size = 2048;
    c.data.val_size = 256;
    c.data.workers = 2;
    c.train.epochs = epochs;
    c.train.batch_size = 32;
    c.train.threads = 2;
    c.train.channels_last = hondo::config::Auto::Set(false);
    c.optimizer.name = hondo::config::OptimizerKind::Adamw;
    c.optimizer.lr = 0.003;
    c
}

fn weights(path: &Path) -> Vec<(String, Tensor)> {
    checkpoint::read(path).expect("checkpoint reads").model
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "runs/custom-model-example".into()),
    );
    std::fs::create_dir_all(&out)?;

    // 1. Straight through: three epochs.
    let acc = Accuracy::default();
    let seen = acc.0.clone();
    let straight = Trainer::new(config(3))
        .model(spec())
        .observer(MetricsLog)
        .observer(acc)
        .out(out.join("straight"))
        .run()?;
    let accs = seen.borrow().clone();
    let chance = 1.0 / 4.0;
    println!("validation accuracy per epoch: {accs:?} (chance {chance})");
    if accs.last().copied().unwrap_or(0.0) < chance + 0.15 {
        return Err(format!("accuracy {accs:?} does not beat chance").into());
    }

    // 2. One epoch, then resumed to three: the same weights to the bit.
    Trainer::new(config(1))
        .model(spec())
        .out(out.join("resumed"))
        .run()?;
    Trainer::new(config(3))
        .model(spec())
        .resume(out.join("resumed"))
        .run()?;
    let a = weights(&straight.run_dir.join(checkpoint::LAST));
    let b = weights(&out.join("resumed").join(checkpoint::LAST));
    if a.len() != b.len()
        || a.iter()
            .zip(&b)
            .any(|(x, y)| x.0 != y.0 || !x.1.equal(&y.1))
    {
        return Err("the resumed run's weights differ from the straight run's".into());
    }
    println!(
        "resumed run: {} tensors bit-identical to the straight run",
        a.len()
    );

    // 3. Export: safetensors (tensors and metadata) and TorchScript (traced through the spec).
    let last = straight.run_dir.join(checkpoint::LAST);
    let st = export::export_with(
        &last,
        &out.join("tiny.safetensors"),
        Format::Safetensors,
        Input::Unit,
        Some(&spec()),
    )?;
    let ts = export::export_with(
        &last,
        &out.join("tiny.pt"),
        Format::TorchScript,
        Input::Unit,
        Some(&spec()),
    )?;
    let module = tch::CModule::load(&ts.path)?;
    let x = Tensor::rand([2, 3, 24, 24], (tch::Kind::Float, tch::Device::Cpu));
    let restored = checkpoint::restore_with(&last, tch::Device::Cpu, &spec())?;
    let normalized = (&x
        - Tensor::from_slice(&restored.meta.mean.map(|v| v as f32)).view([1, 3, 1, 1]))
        / Tensor::from_slice(&restored.meta.std.map(|v| v as f32)).view([1, 3, 1, 1]);
    let want = tch::no_grad(|| restored.model.forward_t(&normalized, false));
    let got = module.forward_ts(&[x])?;
    let diff = (&got - &want).abs().max().double_value(&[]);
    if diff > 1e-5 {
        return Err(format!("TorchScript logits differ from the model's by {diff}").into());
    }
    println!(
        "exported {} ({} tensors) and {} (max logit difference {diff:.1e})",
        st.path.display(),
        st.tensors,
        ts.path.display()
    );
    Ok(())
}
