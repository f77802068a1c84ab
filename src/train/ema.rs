//! Exponential moving average of the weights (`train.ema_decay`): a second copy of the
//! model whose tensors follow `ema = decay * ema + (1 - decay) * weights` after every
//! optimizer step, buffers (BatchNorm running statistics) included, as timm's `ModelEmaV2`.
//! It is evaluated each epoch beside the model and saved under `ema/<name>`.

use crate::models::ModelSpec;
use crate::shim::{self, ShimError};
use tch::nn::{ModuleT, VarStore};
use tch::Tensor;

pub(crate) struct Ema {
    /// The averaged tensors, under the model's names.
    pub vs: VarStore,
    /// The model built over `vs`, for validation.
    pub model: Box<dyn ModuleT>,
    /// Weight of the old average at each update (`train.ema_decay`, in (0, 1): an `Ema`
    /// exists only when it is > 0).
    decay: f64,
    /// (average, source) pairs of floating-point tensors, in one order.
    dst: Vec<Tensor>,
    src: Vec<Tensor>,
}

impl Ema {
    /// A copy of `vs`'s model (same names and layout), starting at its current weights.
    pub fn new(vs: &VarStore, spec: &ModelSpec, num_classes: i64, decay: f64) -> Ema {
        let ema_vs = VarStore::new(vs.device());
        let model = spec.build(&ema_vs.root(), num_classes);
        let mut ema = Ema {
            vs: ema_vs,
            model,
            decay,
            dst: Vec::new(),
            src: Vec::new(),
        };
        let src = vs.variables();
        let mut names: Vec<String> = src.keys().cloned().collect();
        names.sort();
        let dst = ema.vs.variables();
        tch::no_grad(|| {
            for name in names {
                let (s, mut d) = (&src[&name], dst[&name].shallow_clone());
                // Same strides as the source (channels-last), then the same values.
                d.set_data(&s.detach().copy());
                let _ = d.set_requires_grad(false);
                if s.is_floating_point() {
                    ema.dst.push(d);
                    ema.src.push(s.shallow_clone());
                }
            }
        });
        ema
    }

    /// One update after an optimizer step (one foreach call).
    pub fn update(&self) -> Result<(), ShimError> {
        tch::no_grad(|| shim::foreach_lerp(&self.dst, &self.src, 1.0 - self.decay))
    }

    /// The averaged tensors by name, contiguous, for checkpoints.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.contiguous()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
