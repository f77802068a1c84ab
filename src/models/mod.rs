//! Model definitions: thin Rust structs over tch tensors with torchvision's parameter names.

pub mod cnn;
pub mod layers;
pub mod resnet;
mod spec;

pub use spec::ModelSpec;

use crate::config::{Arch, ModelConfig};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Per-architecture metadata in one place (timm's `default_cfgs`).
#[derive(Debug, Clone, Copy)]
pub struct ArchInfo {
    /// Name prefix of the classifier head's parameters.
    pub classifier: &'static str,
    /// Name of the first convolution.
    pub first_conv: &'static str,
}

/// The head and first-convolution names of `arch`: `fc` and `conv1` for the ResNets,
/// `classifier` and `features.0` for the small CNN.
pub fn arch_info(arch: Arch) -> ArchInfo {
    match arch {
        Arch::SmallCnn => ArchInfo {
            classifier: "classifier",
            first_conv: "features.0",
        },
        _ => ArchInfo {
            classifier: "fc",
            first_conv: "conv1",
        },
    }
}

#[derive(Debug)]
enum Net {
    Cnn(cnn::SmallCnn),
    ResNet(Box<resnet::ResNet>),
}

/// A classifier built from a [`ModelConfig`].
#[derive(Debug)]
pub struct Model {
    /// The architecture built (`model.arch`).
    pub arch: Arch,
    /// Outputs of the classifier head: logits `[b, num_classes]`.
    pub num_classes: i64,
    net: Net,
}

impl Model {
    /// Builds the model under `p` with `num_classes` outputs.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, num_classes: i64) -> Model {
        let net = match cfg.arch {
            Arch::SmallCnn => Net::Cnn(cnn::SmallCnn::new(p, num_classes, cfg.width, cfg.dropout)),
            arch => Net::ResNet(Box::new(resnet::ResNet::new(
                p,
                arch,
                num_classes,
                cfg.zero_init_residual,
            ))),
        };
        Model {
            arch: cfg.arch,
            num_classes,
            net,
        }
    }

    /// Pooled features before the classifier head.
    pub fn forward_features(&self, xs: &Tensor, train: bool) -> Tensor {
        match &self.net {
            Net::Cnn(m) => m.forward_features(xs, train),
            Net::ResNet(m) => m.forward_features(xs, train),
        }
    }

    /// Classifier head over pooled features.
    pub fn forward_head(&self, features: &Tensor, train: bool) -> Tensor {
        match &self.net {
            Net::Cnn(m) => m.forward_head(features, train),
            Net::ResNet(m) => m.forward_head(features),
        }
    }

    /// The head and first-convolution names of this model's architecture ([`arch_info`]).
    pub fn info(&self) -> ArchInfo {
        arch_info(self.arch)
    }
}

impl ModuleT for Model {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_head(&self.forward_features(xs, train), train)
    }
}

/// ResNet-18 (torchvision's layout and names) with `num_classes` outputs, under `p`.
pub fn resnet18(p: &nn::Path, num_classes: i64) -> Model {
    builtin(p, Arch::Resnet18, num_classes)
}

/// ResNet-34 with `num_classes` outputs.
pub fn resnet34(p: &nn::Path, num_classes: i64) -> Model {
    builtin(p, Arch::Resnet34, num_classes)
}

/// ResNet-50 with `num_classes` outputs.
///
/// ```
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let model = hondo::models::resnet50(&vs.root(), 10);
/// assert_eq!(model.num_classes, 10);
/// assert!(vs.variables().contains_key("layer4.2.conv3.weight"));
/// ```
pub fn resnet50(p: &nn::Path, num_classes: i64) -> Model {
    builtin(p, Arch::Resnet50, num_classes)
}

/// ResNet-101 with `num_classes` outputs.
pub fn resnet101(p: &nn::Path, num_classes: i64) -> Model {
    builtin(p, Arch::Resnet101, num_classes)
}

/// ResNet-152 with `num_classes` outputs.
pub fn resnet152(p: &nn::Path, num_classes: i64) -> Model {
    builtin(p, Arch::Resnet152, num_classes)
}

/// hondo's small CNN (width 32, no dropout) with `num_classes` outputs.
pub fn small_cnn(p: &nn::Path, num_classes: i64) -> Model {
    builtin(p, Arch::SmallCnn, num_classes)
}

fn builtin(p: &nn::Path, arch: Arch, num_classes: i64) -> Model {
    let cfg = ModelConfig {
        arch,
        ..ModelConfig::default()
    };
    Model::new(p, &cfg, num_classes)
}

/// An error when two variables were created under one name (tch silently renames the
/// second to `name__N`, which would break checkpoint compatibility).
pub fn check_unique_names(vs: &nn::VarStore) -> crate::Result<()> {
    let mut dup: Vec<String> = vs
        .variables()
        .into_keys()
        .filter(|k| k.contains("__"))
        .collect();
    dup.sort();
    if dup.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::Other(format!(
            "the model creates variables under one name twice (tch renamed them {dup:?}): give each layer its own path"
        )))
    }
}
