//! ResNet's Bottleneck block (1x1 reduce, 3x3, 1x1 expand), as torchvision's `Bottleneck`:
//! the stride sits on the 3x3 convolution ("ResNet v1.5"), expansion 4.

use super::Downsample;
use crate::models::layers::{conv2d, BatchNorm2d};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// `conv1` (1x1, `c_in` to `planes`), `conv2` (3x3, the stride), `conv3` (1x1, to
/// `4 * planes`), each followed by BatchNorm; ReLU after the first two and after adding
/// the shortcut (`x` itself, or a [`Downsample`] when the block changes resolution or width).
#[derive(Debug)]
pub struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    conv3: nn::Conv2D,
    bn3: BatchNorm2d,
    downsample: Option<Downsample>,
}

impl Bottleneck {
    /// Output channels per plane: a Bottleneck outputs `4 * planes` channels.
    pub const EXPANSION: i64 = 4;

    /// Builds the block under `p`: `c_in` input channels, `planes` channels inside,
    /// `4 * planes` out, `stride` (1 or 2) on `conv2` and the shortcut. With
    /// `zero_init_residual`, `bn3`'s weight starts at 0, so the residual branch starts at zero.
    pub fn new(
        p: &nn::Path,
        c_in: i64,
        planes: i64,
        stride: i64,
        zero_init_residual: bool,
    ) -> Self {
        let c_out = planes * Self::EXPANSION;
        let mut bn3 = BatchNorm2d::new(p / "bn3", c_out);
        if zero_init_residual {
            bn3.zero_weight();
        }
        Bottleneck {
            conv1: conv2d(p / "conv1", c_in, planes, 1, 1, 0),
            bn1: BatchNorm2d::new(p / "bn1", planes),
            conv2: conv2d(p / "conv2", planes, planes, 3, stride, 1),
            bn2: BatchNorm2d::new(p / "bn2", planes),
            conv3: conv2d(p / "conv3", planes, c_out, 1, 1, 0),
            bn3,
            downsample: Downsample::if_needed(p, c_in, c_out, stride),
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = self.bn1.forward_relu_t(&xs.apply(&self.conv1), None, train);
        let out = self
            .bn2
            .forward_relu_t(&out.apply(&self.conv2), None, train);
        let identity = match &self.downsample {
            Some(d) => d.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        self.bn3
            .forward_relu_t(&out.apply(&self.conv3), Some(&identity), train)
    }
}
