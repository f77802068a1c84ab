//! Layers shared by the models, initialised as torchvision does and named as its modules.

use crate::shim;
use std::sync::OnceLock;
use tch::nn::{self, Init, ModuleT};
use tch::{Device, Kind, Tensor};

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
    /// Per-channel scale `[channels]`, trainable, initially 1. Turning off its
    /// `requires_grad` freezes the layer (eval mode, see above).
    pub weight: Tensor,
    /// Per-channel shift `[channels]`, trainable, initially 0.
    pub bias: Tensor,
    /// Running mean of the input per channel `[channels]`, a buffer, initially 0.
    pub running_mean: Tensor,
    /// Running (unbiased) variance of the input per channel `[channels]`, a buffer,
    /// initially 1.
    pub running_var: Tensor,
    /// Training batches seen, an int64 scalar buffer. The momentum is fixed, so nothing
    /// reads it: it is there for torchvision's state-dict keys.
    pub num_batches_tracked: Tensor,
}

impl BatchNorm2d {
    /// Weight of each training batch's statistics in the running ones (PyTorch's default).
    pub const MOMENTUM: f64 = 0.1;
    /// Added to the variance before its square root (PyTorch's default).
    pub const EPS: f64 = 1e-5;

    /// A layer over `channels` channels under `p`, initialised as torchvision's (weight 1,
    /// bias 0, running mean 0 and variance 1, no batches tracked).
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

    fn count_batch(&self) {
        tch::no_grad(|| {
            let mut n = self.num_batches_tracked.shallow_clone();
            let _ = n.g_add_scalar_(1);
        });
    }

    /// `relu(self(xs) + residual)`, or `relu(self(xs))` without a residual: the ReLU (and
    /// the add) in place, as torchvision's `ReLU(inplace=True)` and `out += identity`
    /// (BatchNorm's backward needs its input, not its output).
    ///
    /// Training on the CPU (4-D float32 activations, or bfloat16 under autocast in
    /// channels-last) runs it as one fused op (`csrc/batch_norm_relu.cpp`): two passes over
    /// memory each way instead of up to six. `HONDO_FUSED_BN=0` turns that off.
    pub fn forward_relu_t(&self, xs: &Tensor, residual: Option<&Tensor>, train: bool) -> Tensor {
        // SyncBatchNorm (in `forward_t`) has no fused kernel.
        let fused = fused_enabled() && crate::dist::sync_batchnorm_group().is_none();
        if self.trains(train) && fused && fusable(xs, residual) {
            match shim::batch_norm_relu(
                xs,
                &self.weight,
                &self.bias,
                residual,
                &self.running_mean,
                &self.running_var,
                Self::MOMENTUM,
                Self::EPS,
            ) {
                Ok(out) => {
                    self.count_batch();
                    return out;
                }
                Err(e) => {
                    static WARNED: OnceLock<()> = OnceLock::new();
                    WARNED.get_or_init(|| {
                        crate::observe::defer_warning(format!(
                            "fused BatchNorm + ReLU failed, running it unfused: {e}"
                        ))
                    });
                }
            }
        }
        let mut out = self.forward_t(xs, train);
        if let Some(r) = residual {
            let _ = out.g_add_(r);
        }
        out.relu_()
    }
}

/// Whether the fused BatchNorm + ReLU is on (`HONDO_FUSED_BN=0` turns it off).
pub fn fused_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("HONDO_FUSED_BN").as_deref() != Ok("0"))
}

/// Where the fused kernel runs: 4-D CPU activations with more than one value per channel,
/// float32 in NCHW or channels-last, or bfloat16 (autocast) in channels-last.
///
/// In bfloat16 the kernel converts with SSE2 integer ops where libtorch uses AVX-512's
/// conversions: per layer (forward + backward, `examples/bn_relu_bench.rs`) it is 1.5-1.9x
/// faster than libtorch's channels-last ops but 0.8-1.0x of its NCHW ones, so NCHW bfloat16
/// stays unfused.
fn fusable(xs: &Tensor, residual: Option<&Tensor>) -> bool {
    let size = xs.size();
    let layout_ok = match xs.kind() {
        Kind::Float => xs.is_contiguous() || shim::is_channels_last(xs),
        Kind::BFloat16 => shim::is_channels_last(xs),
        _ => false,
    };
    xs.device() == Device::Cpu
        && size.len() == 4
        && size[0] * size[2] * size[3] > 1
        && layout_ok
        && residual.is_none_or(|r| r.kind() == xs.kind() && r.size() == size)
}

impl BatchNorm2d {
    /// SyncBatchNorm's training pass (`train.sync_batchnorm` in a data-parallel run): the
    /// per-channel sum, sum of squares and count of every rank's batch, summed over the
    /// ranks by a differentiable all-reduce (so the backward pass sums the statistics'
    /// gradients over the ranks too, as `torch.nn.SyncBatchNorm`), normalise the global
    /// batch; the running statistics take its mean and unbiased variance.
    fn forward_sync(&self, xs: &Tensor, group: &crate::dist::ProcessGroup) -> Tensor {
        self.count_batch();
        let c = self.weight.size()[0];
        let x = xs.to_kind(Kind::Float);
        let dims: &[i64] = &[0, 2, 3];
        let local = x.size()[0] * x.size()[2] * x.size()[3];
        let stats = Tensor::cat(
            &[
                x.sum_dim_intlist(dims, false, Kind::Double),
                x.square().sum_dim_intlist(dims, false, Kind::Double),
                Tensor::from(local as f64)
                    .reshape([1])
                    .to_device(x.device()),
            ],
            0,
        );
        let total = match group.all_reduce_sum_differentiable(&stats) {
            Ok(t) => t,
            // A layer's forward cannot return an error: unwind without the panic hook's
            // report; `Trainer::run` turns it into the run's error.
            Err(e) => std::panic::resume_unwind(Box::new(format!("SyncBatchNorm: {e}"))),
        };
        let n = total.get(2 * c);
        let mean = total.narrow(0, 0, c) / &n;
        let var = (total.narrow(0, c, c) / &n - mean.square()).clamp_min(0.0);
        tch::no_grad(|| {
            let count = n.double_value(&[]);
            let unbiased = &var * (count / (count - 1.0).max(1.0));
            let m = Self::MOMENTUM;
            let mut rm = self.running_mean.shallow_clone();
            let mut rv = self.running_var.shallow_clone();
            rm.copy_(&(&rm * (1.0 - m) + mean.to_kind(rm.kind()) * m));
            rv.copy_(&(&rv * (1.0 - m) + unbiased.to_kind(rv.kind()) * m));
        });
        let shape = [1, c, 1, 1];
        let scale = (var + Self::EPS).rsqrt().to_kind(Kind::Float) * &self.weight;
        let shift = &self.bias - mean.to_kind(Kind::Float) * &scale;
        (x * scale.reshape(shape) + shift.reshape(shape)).to_kind(xs.kind())
    }
}

impl nn::ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let train = self.trains(train);
        if train {
            if let Some(group) = crate::dist::sync_batchnorm_group() {
                return self.forward_sync(xs, &group);
            }
            self.count_batch();
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn channels_last(t: &Tensor) -> Tensor {
        t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    }

    /// Largest difference relative to the largest magnitude of `want`.
    fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
        let scale = want.abs().max().double_value(&[]).max(1e-12);
        (got - want).abs().max().double_value(&[]) / scale
    }

    /// One forward and backward of `relu(bn(x) [+ r])`, fused or libtorch's ops; returns the
    /// output, the gradients of x, weight, bias and r, and the running statistics after.
    /// With `shared`, the output's gradient is also another leaf's (so the fused backward may
    /// not overwrite it), and that leaf's gradient comes back too.
    fn run(fused: bool, cl: bool, with_residual: bool, mean: f64, shared: bool) -> Vec<Tensor> {
        run_kind(Kind::Float, fused, cl, with_residual, mean, shared)
    }

    /// `relu(bn(x) [+ r])` in training mode (momentum 0.1, eps 1e-5): the fused op, or
    /// libtorch's ops.
    fn bn_relu(
        fused: bool,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        residual: Option<&Tensor>,
        rm: &Tensor,
        rv: &Tensor,
    ) -> Tensor {
        if fused {
            return shim::batch_norm_relu(x, weight, bias, residual, rm, rv, 0.1, 1e-5).unwrap();
        }
        let y = Tensor::batch_norm(
            x,
            Some(weight),
            Some(bias),
            Some(rm),
            Some(rv),
            true,
            0.1,
            1e-5,
            true,
        );
        match residual {
            Some(r) => (y + r).relu(),
            None => y.relu(),
        }
    }

    /// [`run`] with activations of `kind` (parameters and statistics stay float32).
    fn run_kind(
        kind: Kind,
        fused: bool,
        cl: bool,
        with_residual: bool,
        mean: f64,
        shared: bool,
    ) -> Vec<Tensor> {
        // Inputs from a seeded generator of our own: tests run in parallel threads, and
        // libtorch's global generator would give the two runs compared different inputs.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut uniform = |shape: &[i64], lo: f32, hi: f32| {
            let n = shape.iter().product::<i64>() as usize;
            let v: Vec<f32> = (0..n).map(|_| rng.gen_range(lo..hi)).collect();
            Tensor::from_slice(&v).reshape(shape)
        };
        let (n, c, h, w) = (3, 5, 6, 7);
        let mut x = (uniform(&[n, c, h, w], -1.0, 1.0) + mean).to_kind(kind);
        let mut r = uniform(&[n, c, h, w], -1.5, 1.5).to_kind(kind);
        if cl {
            x = channels_last(&x);
            r = channels_last(&r);
        }
        let x = x.set_requires_grad(true);
        let r = r.set_requires_grad(true);
        let weight = uniform(&[c], 0.5, 1.5).set_requires_grad(true);
        let bias = uniform(&[c], -0.3, 0.3).set_requires_grad(true);
        let rm = uniform(&[c], -1.0, 1.0);
        let rv = uniform(&[c], 1.0, 2.0);
        let dy = uniform(&[n, c, h, w], -1.0, 1.0).to_kind(kind);
        let residual = with_residual.then_some(&r);
        let y = bn_relu(fused, &x, &weight, &bias, residual, &rm, &rv);
        let other = Tensor::zeros([n, c, h, w], (kind, Device::Cpu)).set_requires_grad(true);
        let out = if shared {
            &y + &other
        } else {
            y.shallow_clone()
        };
        (&out * &dy).sum(Kind::Float).backward();
        assert_eq!(y.kind(), kind);
        let grad_r = if with_residual {
            r.grad()
        } else {
            r.zeros_like()
        };
        if fused {
            let want = if cl {
                channels_last(&y)
            } else {
                y.contiguous()
            };
            assert_eq!(
                y.stride(),
                want.stride(),
                "the output keeps the input's layout"
            );
        }
        let grad_other = if shared { other.grad() } else { dy.copy() };
        let outputs = [
            y.detach(),
            x.grad(),
            weight.grad(),
            bias.grad(),
            grad_r,
            rm,
            rv,
        ];
        outputs.into_iter().chain([grad_other]).collect()
    }

    #[test]
    fn fused_batch_norm_relu_matches_libtorchs_ops_in_both_layouts() {
        let names = [
            "output",
            "d input",
            "d weight",
            "d bias",
            "d residual",
            "running mean",
            "running var",
            "shared gradient",
        ];
        for cl in [false, true] {
            for residual in [false, true] {
                // A mean 80x the spread checks the statistics lose no precision to it.
                for (mean, shared) in [(0.0, false), (50.0, false), (0.0, true)] {
                    let got = run(true, cl, residual, mean, shared);
                    let want = run(false, cl, residual, mean, shared);
                    // The backward may reuse a gradient buffer only when nothing else holds it.
                    assert!(
                        got[7].equal(&want[7]),
                        "the shared gradient was overwritten"
                    );
                    for ((g, w), name) in got.iter().zip(&want).zip(names) {
                        let err = rel_err(g, w);
                        assert!(
                            err < 1e-4,
                            "{name} (channels-last {cl}, residual {residual}, mean {mean}, shared {shared}): relative error {err}"
                        );
                    }
                    // Half of the outputs are clamped: the masks must agree, not just the sums.
                    let zeros = |t: &Tensor| t.eq(0.0).sum(Kind::Int64).int64_value(&[]);
                    assert_eq!(zeros(&got[0]), zeros(&want[0]));
                    assert!(zeros(&got[0]) > 0);
                }
            }
        }
    }

    #[test]
    fn fused_batch_norm_relu_in_bfloat16_matches_libtorchs_mixed_type_ops() {
        // libtorch rounds BatchNorm's output to bfloat16, then the add, then the ReLU; the
        // fused op rounds once. So the results agree to bfloat16's precision (8 bits), and
        // a clamped output may differ where it rounds to zero in one and not the other.
        for cl in [false, true] {
            for residual in [false, true] {
                for shared in [false, true] {
                    let got = run_kind(Kind::BFloat16, true, cl, residual, 0.0, shared);
                    let want = run_kind(Kind::BFloat16, false, cl, residual, 0.0, shared);
                    assert!(
                        got[7].equal(&want[7]),
                        "the shared gradient was overwritten"
                    );
                    for (i, (g, w)) in got.iter().zip(&want).enumerate().take(7) {
                        let err = rel_err(g, w);
                        assert!(
                            err < 3e-2,
                            "bf16 output/grad/stat {i} (channels-last {cl}, residual {residual}): relative error {err}"
                        );
                    }
                }
            }
        }
    }

    /// At the shapes a ResNet-18 trains with on 32 px images (and a tiny one), the fused op
    /// in bfloat16 is at least as close to float32's answer (the same bfloat16 values,
    /// computed in float32 by libtorch) as libtorch's own bfloat16 ops, output by output: it
    /// rounds once where libtorch rounds after the BatchNorm, the add and the ReLU.
    #[test]
    fn fused_bfloat16_is_as_close_to_float32_as_libtorchs_bfloat16_ops() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let names = [
            "output",
            "d input",
            "d weight",
            "d bias",
            "d residual",
            "mean",
            "var",
        ];
        for &(n, c, h, w) in &[
            (64, 64, 8, 8),
            (64, 256, 2, 2),
            (64, 512, 1, 1),
            (3, 5, 6, 7),
        ] {
            for residual in [false, true] {
                let mut u = |shape: &[i64], lo: f32, hi: f32| {
                    let k = shape.iter().product::<i64>() as usize;
                    let v: Vec<f32> = (0..k).map(|_| rng.gen_range(lo..hi)).collect();
                    Tensor::from_slice(&v).reshape(shape)
                };
                let shape = [n, c, h, w];
                let x0 = (u(&shape, -1.0, 1.0) * 3.0 + 0.5).to_kind(Kind::BFloat16);
                let r0 = u(&shape, -1.5, 1.5).to_kind(Kind::BFloat16);
                let dy0 = (u(&shape, -1.0, 1.0) * 1e-3).to_kind(Kind::BFloat16);
                let (w0, b0) = (u(&[c], 0.5, 1.5), u(&[c], -0.3, 0.3));
                let go = |kind: Kind, fused: bool| {
                    let leaf = |t: &Tensor| channels_last(&t.to_kind(kind)).set_requires_grad(true);
                    let (x, r) = (leaf(&x0), leaf(&r0));
                    let (wt, b) = (
                        w0.copy().set_requires_grad(true),
                        b0.copy().set_requires_grad(true),
                    );
                    let rm = Tensor::zeros([c], (Kind::Float, Device::Cpu));
                    let rv = Tensor::ones([c], (Kind::Float, Device::Cpu));
                    let res = residual.then_some(&r);
                    let y = bn_relu(fused, &x, &wt, &b, res, &rm, &rv);
                    (&y * channels_last(&dy0.to_kind(kind)))
                        .sum(Kind::Float)
                        .backward();
                    let float = |t: Tensor| t.to_kind(Kind::Float);
                    let gr = if residual {
                        float(r.grad())
                    } else {
                        wt.zeros_like()
                    };
                    [float(y), float(x.grad()), wt.grad(), b.grad(), gr, rm, rv]
                };
                let truth = go(Kind::Float, false);
                let fused = go(Kind::BFloat16, true);
                let libtorch = go(Kind::BFloat16, false);
                for i in 0..7 {
                    let (f, l) = (
                        rel_err(&fused[i], &truth[i]),
                        rel_err(&libtorch[i], &truth[i]),
                    );
                    assert!(
                        f <= 1.1 * l + 1e-5 && f < 5e-3,
                        "{} of {shape:?} (residual {residual}): fused {f:.2e}, libtorch {l:.2e}",
                        names[i]
                    );
                }
            }
        }
    }

    #[test]
    fn batch_norm_layer_fuses_only_where_the_kernel_applies_and_counts_batches() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = BatchNorm2d::new(vs.root() / "bn", 4);
        let x = Tensor::randn([2, 4, 3, 3], (Kind::Float, Device::Cpu));
        // A layout the kernel does not take (H and W swapped in memory) runs unfused, same result.
        let strided = x.transpose(2, 3).contiguous().transpose(2, 3);
        assert!(!fusable(&strided, None));
        assert!(fusable(&x, None) && fusable(&channels_last(&x), Some(&x)));
        assert!(fusable(&channels_last(&x.to_kind(Kind::BFloat16)), None));
        assert!(!fusable(&x.to_kind(Kind::BFloat16), None));
        assert!(!fusable(&x.to_kind(Kind::Half), None));
        assert!(!fusable(&x, Some(&x.to_kind(Kind::BFloat16))));
        let a = bn.forward_relu_t(&x, None, true);
        let b = bn.forward_relu_t(&strided, None, true);
        assert!(rel_err(&a, &b) < 1e-5);
        assert_eq!(bn.num_batches_tracked.int64_value(&[]), 2);
        // Eval mode uses the running statistics and leaves them alone.
        let before = bn.running_mean.copy();
        let _ = bn.forward_relu_t(&x, Some(&x), false);
        assert_eq!(bn.num_batches_tracked.int64_value(&[]), 2);
        assert!(bn.running_mean.equal(&before));
    }

    /// The comparisons with libtorch's ops above, on each compilation of the fused kernels
    /// this CPU can run (`HONDO_FUSED_BN_ISA`, chosen once per process, hence this test
    /// binary run again for each one).
    #[test]
    fn fused_kernels_match_libtorch_on_every_instruction_set_this_cpu_has() {
        if std::env::var_os("HONDO_FUSED_BN_ISA").is_some() {
            return; // a child run: the others are what it is for
        }
        let best = crate::shim::fused_bn_isa();
        let all = ["sse2", "avx2", "avx512"];
        let upto = all
            .iter()
            .position(|i| *i == best)
            .expect("a known instruction set");
        let tests = [
            "fused_batch_norm_relu_matches_libtorchs_ops_in_both_layouts",
            "fused_batch_norm_relu_in_bfloat16_matches_libtorchs_mixed_type_ops",
            "fused_bfloat16_is_as_close_to_float32_as_libtorchs_bfloat16_ops",
            "fused_kernel_instruction_set_follows_the_environment",
        ];
        let exe = std::env::current_exe().unwrap();
        for isa in &all[..=upto] {
            let out = std::process::Command::new(&exe)
                .args(tests.iter().map(|t| format!("models::layers::tests::{t}")))
                .args(["--exact", "--test-threads", "1"])
                .env("HONDO_FUSED_BN_ISA", isa)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains(&format!("{} passed", tests.len())),
                "{isa}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn fused_kernel_instruction_set_follows_the_environment() {
        let isa = crate::shim::fused_bn_isa();
        assert!(["sse2", "avx2", "avx512"].contains(&isa), "{isa}");
        if let Ok(want) = std::env::var("HONDO_FUSED_BN_ISA") {
            assert_eq!(
                isa, want,
                "the CPU can run every set the parent test asks for"
            );
        }
    }
}
