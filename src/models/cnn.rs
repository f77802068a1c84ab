//! A small convolutional classifier for small images: four conv-BN-ReLU stages (the first
//! three followed by 2x2 max pooling), global average pooling, dropout and a linear head.
//!
//! Parameter names follow torchvision's `nn.Sequential` numbering: `features.0.weight`
//! (conv), `features.1.*` (BatchNorm), ..., `classifier.weight`, `classifier.bias`.

use super::layers::{conv2d, linear, BatchNorm2d};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Modules per stage in the `features` sequence: conv, bn, relu, maxpool.
const STAGE_LEN: usize = 4;
const STAGES: usize = 4;

/// hondo's small CNN (see the module docs): convolutions `features.{0,4,8,12}` with their
/// BatchNorms at `features.{1,5,9,13}`, then the linear `classifier`.
#[derive(Debug)]
pub struct SmallCnn {
    stages: Vec<(nn::Conv2D, BatchNorm2d)>,
    dropout: f64,
    classifier: nn::Linear,
}

impl SmallCnn {
    /// Builds the network under `p` with `num_classes` outputs: `width` channels in the
    /// first stage, doubled at each of the next (`8 * width` features); `dropout` is the
    /// probability of zeroing a feature before the head while training.
    pub fn new(p: &nn::Path, num_classes: i64, width: i64, dropout: f64) -> SmallCnn {
        let f = p / "features";
        let mut c_in = 3;
        let stages = (0..STAGES)
            .map(|s| {
                let c_out = width << s;
                let i = s * STAGE_LEN;
                let conv = conv2d(&f / i, c_in, c_out, 3, 1, 1);
                let bn = BatchNorm2d::new(&f / (i + 1), c_out);
                c_in = c_out;
                (conv, bn)
            })
            .collect();
        let classifier = linear(p / "classifier", c_in, num_classes);
        SmallCnn {
            stages,
            dropout,
            classifier,
        }
    }

    /// Pooled features `[b, 8 * width]`.
    pub fn forward_features(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for (s, (conv, bn)) in self.stages.iter().enumerate() {
            x = bn.forward_relu_t(&x.apply(conv), None, train);
            if s + 1 < STAGES {
                x = x.max_pool2d_default(2);
            }
        }
        x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// Logits `[b, num_classes]` from pooled features: dropout (when `train`), then the
    /// linear `classifier`.
    pub fn forward_head(&self, features: &Tensor, train: bool) -> Tensor {
        features
            .dropout(self.dropout, train)
            .apply(&self.classifier)
    }
}

impl ModuleT for SmallCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_head(&self.forward_features(xs, train), train)
    }
}
