//! Layers shared by the models, initialised as torchvision does and named as its modules.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Convolution without bias, kaiming-normal (fan-out, ReLU) initialised as torchvision's
/// ResNet: `std = sqrt(2 / (out_channels * k * k))`.
pub fn conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// Fully connected layer with PyTorch's default init: weight and bias `U(-1/sqrt(in), 1/sqrt(in))`.
pub fn linear(p: nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let bound = 1.0 / (c_in as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

/// BatchNorm over channels with torchvision's parameters and buffers: `weight`, `bias`,
/// `running_mean`, `running_var` and `num_batches_tracked` (int64), so state dicts match
/// key for key.
///
/// A frozen layer (its `weight` does not require grad) runs in eval mode even when the model
/// trains, so fine-tuning never moves the running statistics of frozen layers.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
}

impl BatchNorm2d {
    pub const MOMENTUM: f64 = 0.1;
    pub const EPS: f64 = 1e-5;

    pub fn new(p: nn::Path, channels: i64) -> BatchNorm2d {
        BatchNorm2d {
            weight: p.var("weight", &[channels], Init::Const(1.0)),
            bias: p.var("bias", &[channels], Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
            num_batches_tracked: p.add(
                "num_batches_tracked",
                Tensor::zeros([], (Kind::Int64, p.device())),
                false,
            ),
        }
    }

    /// Sets the scale to zero (torchvision's `zero_init_residual`).
    pub fn zero_weight(&mut self) {
        tch::no_grad(|| {
            let _ = self.weight.zero_();
        });
    }

    /// Whether the layer updates its statistics in this pass.
    fn trains(&self, train: bool) -> bool {
        train && self.weight.requires_grad()
    }
}

impl nn::ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let train = self.trains(train);
        if train {
            tch::no_grad(|| {
                let mut n = self.num_batches_tracked.shallow_clone();
                let _ = n.g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            Self::MOMENTUM,
            Self::EPS,
            true,
        )
    }
}
