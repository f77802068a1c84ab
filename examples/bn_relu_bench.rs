//! Times the fused BatchNorm + ReLU (`csrc/batch_norm_relu.cpp`) against libtorch's unfused
//! ops, forward and backward, per activation shape and layout.
use hondo::ops as shim;
use std::time::Instant;
use tch::{Kind, Tensor};

fn time(f: &mut dyn FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e3
}

fn main() {
    tch::set_num_threads(2);
    // Optional: a layout filter (`nchw`, `cl` or `all`), then `bf16` for bfloat16 activations
    // (autocast's; parameters and statistics stay float32).
    let only = std::env::args().nth(1).filter(|o| o != "all");
    let kind = match std::env::args().nth(2).as_deref() {
        Some("bf16") => Kind::BFloat16,
        _ => Kind::Float,
    };
    for &(n, c, h) in &[
        (8i64, 64i64, 112i64),
        (8, 256, 56),
        (8, 128, 28),
        (8, 2048, 7),
    ] {
        for cl in [false, true] {
            if only.as_deref().is_some_and(|o| (o == "cl") != cl) {
                continue;
            }
            for res in [false, true] {
                let mut x = Tensor::randn([n, c, h, h], (kind, tch::Device::Cpu));
                if cl {
                    x = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                }
                let x = x.set_requires_grad(true);
                let r = (&x * 0.5).detach();
                let w = Tensor::ones([c], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
                let b = Tensor::zeros([c], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
                let rm = Tensor::zeros([c], (Kind::Float, tch::Device::Cpu));
                let rv = Tensor::ones([c], (Kind::Float, tch::Device::Cpu));
                let g = Tensor::randn_like(&x);
                let res_opt = if res { Some(&r) } else { None };
                let unfused = |bwd: bool| {
                    let mut y = Tensor::batch_norm(
                        &x,
                        Some(&w),
                        Some(&b),
                        Some(&rm),
                        Some(&rv),
                        true,
                        0.1,
                        1e-5,
                        true,
                    );
                    if let Some(r) = res_opt {
                        let _ = y.g_add_(r);
                    }
                    let y = y.relu_();
                    if bwd {
                        (&y * &g).sum(Kind::Float).backward();
                    }
                };
                let fused = |bwd: bool| {
                    let y =
                        shim::batch_norm_relu(&x, &w, &b, res_opt, &rm, &rv, 0.1, 1e-5).unwrap();
                    if bwd {
                        (&y * &g).sum(Kind::Float).backward();
                    }
                };
                let uf = time(&mut || tch::no_grad(|| unfused(false)));
                let ff = time(&mut || tch::no_grad(|| fused(false)));
                let ub = time(&mut || unfused(true));
                let fb = time(&mut || fused(true));
                println!(
                    "[{n},{c},{h},{h}] cl={cl} res={res}: fwd {uf:.2} -> {ff:.2} ms, fwd+bwd {ub:.2} -> {fb:.2} ms"
                );
            }
        }
    }
}
