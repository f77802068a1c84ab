//! ResNet-18 to ResNet-152 ("Deep Residual Learning for Image Recognition", He et al. 2015)
//! in torchvision's layout: parameter and buffer names are exactly torchvision's
//! `state_dict()` keys, so its and timm's weights load as they are.

mod basic_block;
mod bottleneck;

pub use basic_block::BasicBlock;
pub use bottleneck::Bottleneck;

use super::layers::{conv2d, linear, BatchNorm2d};
use crate::config::Arch;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Which residual block a variant stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// [`BasicBlock`]: two 3x3 convolutions, output width `planes` (ResNet-18 and -34).
    Basic,
    /// [`Bottleneck`]: 1x1, 3x3 and 1x1 convolutions, output width `4 * planes`
    /// (ResNet-50, -101 and -152).
    Bottleneck,
}

/// The variant table, as torchvision's `resnet152 = (Bottleneck, [3, 8, 36, 3])`: the block
/// and the number of blocks in `layer1` to `layer4`; `None` for an architecture that is
/// not a ResNet.
pub fn variant(arch: Arch) -> Option<(BlockKind, [usize; 4])> {
    Some(match arch {
        Arch::Resnet18 => (BlockKind::Basic, [2, 2, 2, 2]),
        Arch::Resnet34 => (BlockKind::Basic, [3, 4, 6, 3]),
        Arch::Resnet50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
        Arch::Resnet101 => (BlockKind::Bottleneck, [3, 4, 23, 3]),
        Arch::Resnet152 => (BlockKind::Bottleneck, [3, 8, 36, 3]),
        Arch::SmallCnn => return None,
    })
}

/// The 1x1 convolution + BatchNorm shortcut (`downsample.0`, `downsample.1`) used when a
/// block changes resolution or width.
#[derive(Debug)]
pub struct Downsample {
    conv: nn::Conv2D,
    bn: BatchNorm2d,
}

impl Downsample {
    fn if_needed(p: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Option<Downsample> {
        (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            Downsample {
                conv: conv2d(&d / 0, c_in, c_out, 1, stride, 0),
                bn: BatchNorm2d::new(&d / 1, c_out),
            }
        })
    }
}

impl ModuleT for Downsample {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train)
    }
}

#[derive(Debug)]
enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Block::Basic(b) => b.forward_t(xs, train),
            Block::Bottleneck(b) => b.forward_t(xs, train),
        }
    }
}

/// A ResNet: the stem (`conv1` 7x7 stride 2, `bn1`, ReLU, 3x3 max pool stride 2), four
/// stages `layer1` to `layer4` of 64, 128, 256 and 512 planes (each after the first
/// halving the resolution), global average pooling and the linear `fc` head.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    layers: [Vec<Block>; 4],
    fc: nn::Linear,
}

impl ResNet {
    /// Builds `arch` (a ResNet variant) with a `num_classes`-way `fc` head. With
    /// `zero_init_residual`, the last BatchNorm of every block starts with weight 0, so each
    /// residual branch starts at zero (torchvision's option).
    ///
    /// Panics when `arch` is not a ResNet ([`variant`] is `None`).
    pub fn new(p: &nn::Path, arch: Arch, num_classes: i64, zero_init_residual: bool) -> ResNet {
        let (kind, depths) = variant(arch).expect("a ResNet architecture");
        let expansion = match kind {
            BlockKind::Basic => BasicBlock::EXPANSION,
            BlockKind::Bottleneck => Bottleneck::EXPANSION,
        };
        let mut c_in = 64;
        let layers = std::array::from_fn(|stage| {
            let lp = p / format!("layer{}", stage + 1);
            let planes = 64 << stage;
            (0..depths[stage])
                .map(|i| {
                    let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                    let bp = &lp / i;
                    let block = match kind {
                        BlockKind::Basic => Block::Basic(BasicBlock::new(
                            &bp,
                            c_in,
                            planes,
                            stride,
                            zero_init_residual,
                        )),
                        BlockKind::Bottleneck => Block::Bottleneck(Bottleneck::new(
                            &bp,
                            c_in,
                            planes,
                            stride,
                            zero_init_residual,
                        )),
                    };
                    c_in = planes * expansion;
                    block
                })
                .collect()
        });
        ResNet {
            conv1: conv2d(p / "conv1", 3, 64, 7, 2, 3),
            bn1: BatchNorm2d::new(p / "bn1", 64),
            layers,
            fc: linear(p / "fc", 512 * expansion, num_classes),
        }
    }

    /// Pooled features `[b, 512 * expansion]`.
    pub fn forward_features(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = self.bn1.forward_relu_t(&xs.apply(&self.conv1), None, train);
        x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for layer in &self.layers {
            for block in layer {
                x = block.forward_t(&x, train);
            }
        }
        x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// Logits `[b, num_classes]` from pooled features (the `fc` layer).
    pub fn forward_head(&self, features: &Tensor) -> Tensor {
        features.apply(&self.fc)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_head(&self.forward_features(xs, train))
    }
}
