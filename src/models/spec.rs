//! The network a run trains: one of hondo's (from `model.arch`) or your own.

use super::{arch_info, Model};
use crate::config::{Arch, ModelConfig};
use std::sync::Arc;
use tch::nn::{self, ModuleT};

type Build = dyn Fn(&nn::Path, i64) -> Box<dyn ModuleT> + Send + Sync;

/// How the trainer builds its network: a name (recorded in checkpoints), the classifier
/// head's parameter prefix (re-initialised when pretrained weights have another class
/// count), and a function from a [`nn::Path`] and a class count to the module. The trainer
/// calls it once, and once more for the weights' moving average (`train.ema_decay`), so it
/// must create the same variables under the same names each time.
///
/// ```
/// use hondo::models::ModelSpec;
/// use tch::nn;
///
/// let spec = ModelSpec::custom("mlp", |p: &nn::Path, classes| {
///     nn::seq_t()
///         .add_fn(|x| x.flatten(1, -1))
///         .add(nn::linear(p / "hidden", 3 * 16 * 16, 64, Default::default()))
///         .add_fn(|x| x.relu())
///         .add(nn::linear(p / "head", 64, classes, Default::default()))
/// })
/// .with_head("head");
/// assert_eq!(spec.name(), "mlp");
/// ```
#[derive(Clone)]
pub struct ModelSpec {
    name: String,
    head: String,
    arch: Option<Arch>,
    build: Arc<Build>,
}

impl std::fmt::Debug for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSpec")
            .field("name", &self.name)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl ModelSpec {
    /// hondo's own network as `cfg` describes it (`model.arch`, `width`, `dropout`, ...).
    pub fn builtin(cfg: &ModelConfig) -> ModelSpec {
        let cfg = cfg.clone();
        ModelSpec {
            name: cfg.arch.name().to_string(),
            head: arch_info(cfg.arch).classifier.to_string(),
            arch: Some(cfg.arch),
            build: Arc::new(move |p, n| Box::new(Model::new(p, &cfg, n))),
        }
    }

    /// Your own network. `name` is what checkpoints record as the architecture; it must
    /// not be one of hondo's (`resnet50`, ...), so a checkpoint is never mistaken for one.
    /// The head prefix defaults to `fc`, as in torchvision's ResNets.
    pub fn custom<F, M>(name: impl Into<String>, build: F) -> ModelSpec
    where
        F: Fn(&nn::Path, i64) -> M + Send + Sync + 'static,
        M: ModuleT + 'static,
    {
        ModelSpec {
            name: name.into(),
            head: "fc".into(),
            arch: None,
            build: Arc::new(move |p, n| Box::new(build(p, n))),
        }
    }

    /// The classifier head's parameter prefix (e.g. `fc`, `classifier`, `head`).
    pub fn with_head(mut self, prefix: impl Into<String>) -> ModelSpec {
        self.head = prefix.into();
        self
    }

    /// The name checkpoints record.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The classifier head's parameter prefix.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// hondo's architecture, for a built-in network.
    pub fn arch(&self) -> Option<Arch> {
        self.arch
    }

    /// Builds the network under `p` with `num_classes` outputs.
    pub fn build(&self, p: &nn::Path, num_classes: i64) -> Box<dyn ModuleT> {
        (self.build)(p, num_classes)
    }

    /// Checks a custom name (not empty, not a built-in architecture's).
    pub(crate) fn check_name(&self) -> Result<(), String> {
        if self.arch.is_none() {
            if self.name.trim().is_empty() {
                return Err("a custom model needs a name".into());
            }
            if Arch::from_name(&self.name).is_some() {
                return Err(format!(
                    "a custom model cannot be named `{}`, which is one of hondo's architectures",
                    self.name
                ));
            }
        }
        Ok(())
    }
}
