//! Mixup (Zhang et al., 2018, arXiv:1710.09412) and CutMix (Yun et al., 2019,
//! arXiv:1905.04899) on a batch, with soft targets for a cross entropy. Each image is mixed
//! with its mirror in the batch (`flip(0)`, as timm does), so the only random draws are the
//! mixing weight, the box and the choice between the two, all from the step's seed: a
//! resumed run repeats them exactly.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// Mixup and CutMix settings (`alpha` 0 turns one off).
#[derive(Debug, Clone, Copy)]
pub struct Mixing {
    /// Mixup's Beta(alpha, alpha) parameter; 0 turns mixup off.
    pub mixup_alpha: f64,
    /// CutMix's Beta(alpha, alpha) parameter; 0 turns CutMix off. With both on, each batch
    /// uses one of the two, chosen with even odds.
    pub cutmix_alpha: f64,
    /// Label smoothing of the soft targets, in [0, 1).
    pub label_smoothing: f64,
    /// Classes, the width of the targets.
    pub num_classes: i64,
}

impl Mixing {
    /// Whether mixup or CutMix is on.
    pub fn enabled(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }

    /// Mixes `x` (`[b, c, h, w]`, modified in place for CutMix) and returns the input and
    /// the soft targets (`[b, classes]`, float) for labels `y`.
    pub fn apply(&self, x: Tensor, y: &Tensor, seed: u64) -> (Tensor, Tensor) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.gen_bool(0.5),
            (false, true) => true,
            _ => false,
        };
        let alpha = if cutmix {
            self.cutmix_alpha
        } else {
            self.mixup_alpha
        };
        let mut lam = beta(&mut rng, alpha);
        let x = tch::no_grad(|| {
            if cutmix {
                let (h, w) = (x.size()[2], x.size()[3]);
                let (y0, y1, x0, x1) = cut_box(&mut rng, h, w, lam);
                if y1 > y0 && x1 > x0 {
                    let src = x.flip([0]).narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0);
                    let mut dst = x.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0);
                    dst.copy_(&src);
                }
                // The weight is the area actually kept after clipping the box.
                lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
                x
            } else {
                &x * lam + x.flip([0]) * (1.0 - lam)
            }
        });
        let t = self.smooth_one_hot(y);
        let targets = &t * lam + t.flip([0]) * (1.0 - lam);
        (x, targets)
    }

    /// One-hot targets with label smoothing (`torch`'s convention: `eps / classes` off,
    /// `1 - eps + eps / classes` on).
    fn smooth_one_hot(&self, y: &Tensor) -> Tensor {
        let off = self.label_smoothing / self.num_classes as f64;
        let on = 1.0 - self.label_smoothing + off;
        y.one_hot(self.num_classes).to_kind(Kind::Float) * (on - off) + off
    }
}

/// Cross entropy against soft targets, averaged over the batch (in float32).
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    -(logits.log_softmax(-1, Kind::Float) * targets)
        .sum_dim_intlist(-1, false, Kind::Float)
        .mean(Kind::Float)
}

/// The CutMix box `[y0, y1) x [x0, x1)`: side ratio `sqrt(1 - lam)`, centre uniform,
/// clipped to the image.
fn cut_box(rng: &mut impl Rng, h: i64, w: i64, lam: f64) -> (i64, i64, i64, i64) {
    let r = (1.0 - lam).sqrt();
    let (ch, cw) = ((h as f64 * r) as i64, (w as f64 * r) as i64);
    let cy = rng.gen_range(0..h.max(1));
    let cx = rng.gen_range(0..w.max(1));
    (
        (cy - ch / 2).clamp(0, h),
        (cy + ch / 2).clamp(0, h),
        (cx - cw / 2).clamp(0, w),
        (cx + cw / 2).clamp(0, w),
    )
}

/// A Beta(alpha, alpha) draw as `g1 / (g1 + g2)` of two Gamma(alpha) draws.
fn beta(rng: &mut impl Rng, alpha: f64) -> f64 {
    let a = gamma(rng, alpha);
    let b = gamma(rng, alpha);
    if a + b > 0.0 {
        a / (a + b)
    } else {
        0.5
    }
}

/// Gamma(shape, 1) by Marsaglia and Tsang (2000); shape < 1 through `G(a + 1) U^(1/a)`.
fn gamma(rng: &mut impl Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let z = normal(rng);
        let v = (1.0 + c * z).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn beta_draws_have_the_right_mean_and_spread() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for alpha in [0.2, 1.0, 3.0] {
            let v: Vec<f64> = (0..20000).map(|_| beta(&mut rng, alpha)).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
            let expect = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((mean - 0.5).abs() < 0.01, "alpha {alpha}: mean {mean}");
            assert!(
                (var - expect).abs() < 0.1 * expect,
                "alpha {alpha}: var {var}"
            );
            assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }

    #[test]
    fn targets_sum_to_one_and_match_the_pixels_mixed() {
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let x = Tensor::arange(4, (Kind::Float, Device::Cpu))
            .view([4, 1, 1, 1])
            .expand([4, 3, 8, 8], true)
            .contiguous();
        for (mixup, cutmix) in [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)] {
            let m = Mixing {
                mixup_alpha: mixup,
                cutmix_alpha: cutmix,
                label_smoothing: 0.1,
                num_classes: 4,
            };
            let (xm, t) = m.apply(x.copy(), &y, 7);
            let sums = t.sum_dim_intlist(-1, false, Kind::Float);
            assert!(sums.allclose(
                &Tensor::ones([4], (Kind::Float, Device::Cpu)),
                1e-5,
                1e-6,
                false
            ));
            // Image 0 is mixed with image 3: its mean pixel equals 3 * (weight of class 3),
            // once label smoothing is taken out.
            let w3 = (t.double_value(&[0, 3]) - 0.025) / 0.9;
            assert!((xm.get(0).mean(Kind::Float).double_value(&[]) - 3.0 * w3).abs() < 1e-4);
            // The same seed mixes the same way.
            let (xm2, t2) = m.apply(x.copy(), &y, 7);
            assert!(xm.equal(&xm2) && t.equal(&t2));
        }
    }
}
