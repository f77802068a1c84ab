//! ResNet's BasicBlock (two 3x3 convolutions), as torchvision's `BasicBlock` (expansion 1).

use super::Downsample;
use crate::models::layers::{conv2d, BatchNorm2d};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, where the shortcut is `x` itself
/// or a [`Downsample`] when the block changes resolution or width.
#[derive(Debug)]
pub struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    /// Output channels per plane: a BasicBlock outputs `planes` channels.
    pub const EXPANSION: i64 = 1;

    /// Builds the block under `p`: `c_in` input channels, `planes` output channels, `stride`
    /// (1 or 2) on `conv1` and the shortcut. With `zero_init_residual`, `bn2`'s weight
    /// starts at 0, so the residual branch starts at zero.
    pub fn new(
        p: &nn::Path,
        c_in: i64,
        planes: i64,
        stride: i64,
        zero_init_residual: bool,
    ) -> Self {
        let mut bn2 = BatchNorm2d::new(p / "bn2", planes);
        if zero_init_residual {
            bn2.zero_weight();
        }
        BasicBlock {
            conv1: conv2d(p / "conv1", c_in, planes, 3, stride, 1),
            bn1: BatchNorm2d::new(p / "bn1", planes),
            conv2: conv2d(p / "conv2", planes, planes, 3, 1, 1),
            bn2,
            downsample: Downsample::if_needed(p, c_in, planes * Self::EXPANSION, stride),
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = self.bn1.forward_relu_t(&xs.apply(&self.conv1), None, train);
        let identity = match &self.downsample {
            Some(d) => d.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        self.bn2
            .forward_relu_t(&out.apply(&self.conv2), Some(&identity), train)
    }
}
