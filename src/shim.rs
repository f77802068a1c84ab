//! Safe wrappers over `csrc/shim.cpp`: libtorch's fused optimizer kernels, foreach ops and
//! the autocast state, which tch does not bind. Every C++ exception comes back as an
//! [`ShimError`] naming the call; nothing unwinds into Rust.

use std::ffi::{c_char, c_int, CStr};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

mod ffi {
    use super::*;
    extern "C" {
        pub fn hondo_free_error(e: *mut c_char);
        pub fn hondo_fused_sgd(
            params: *const *mut C_tensor,
            grads: *const *mut C_tensor,
            bufs: *const *mut C_tensor,
            steps: *const *mut C_tensor,
            n: usize,
            weight_decay: f64,
            momentum: f64,
            lr: f64,
            nesterov: c_int,
            first_step: c_int,
            found_inf: *mut C_tensor,
        ) -> *mut c_char;
        pub fn hondo_fused_adam(
            params: *const *mut C_tensor,
            grads: *const *mut C_tensor,
            exp_avgs: *const *mut C_tensor,
            exp_avg_sqs: *const *mut C_tensor,
            steps: *const *mut C_tensor,
            n: usize,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            decoupled: c_int,
            found_inf: *mut C_tensor,
        ) -> *mut c_char;
        pub fn hondo_foreach_lerp(
            dst: *const *mut C_tensor,
            src: *const *mut C_tensor,
            n: usize,
            weight: f64,
        ) -> *mut c_char;
        pub fn hondo_set_grads_to_none(params: *const *mut C_tensor, n: usize) -> *mut c_char;
        pub fn hondo_clip_grad_norm(
            grads: *const *mut C_tensor,
            n: usize,
            max_norm: f64,
            total: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn hondo_autocast_enter(device: c_int, dtype: c_int, prev: *mut c_int) -> *mut c_char;
        pub fn hondo_autocast_exit(device: c_int, prev: *const c_int) -> *mut c_char;
        pub fn hondo_amp_unscale(
            grads: *const *mut C_tensor,
            n: usize,
            found_inf: *mut C_tensor,
            inv_scale: *mut C_tensor,
        ) -> *mut c_char;
        pub fn hondo_is_channels_last(t: *mut C_tensor) -> c_int;
        pub fn hondo_view_fits_storage(t: *mut C_tensor) -> c_int;
        pub fn hondo_batch_norm_relu(
            input: *mut C_tensor,
            weight: *mut C_tensor,
            bias: *mut C_tensor,
            residual: *mut C_tensor,
            running_mean: *mut C_tensor,
            running_var: *mut C_tensor,
            momentum: f64,
            eps: f64,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn hondo_fused_bn_isa() -> *const c_char;
    }
}

/// The instruction set the fused BatchNorm + ReLU kernels run with in this process:
/// `"avx512"`, `"avx2"` or `"sse2"`: the widest this CPU has, or a narrower one named by
/// `HONDO_FUSED_BN_ISA`.
pub fn fused_bn_isa() -> &'static str {
    // SAFETY: the shim returns a pointer to a static NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(ffi::hondo_fused_bn_isa()) };
    name.to_str().unwrap_or("unknown")
}

/// A libtorch error raised inside the shim.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {message}")]
pub struct ShimError {
    /// The operation that failed (`batch_norm_relu`, `_fused_sgd_`, `autocast enter`...).
    pub call: &'static str,
    /// libtorch's exception message.
    pub message: String,
}

fn check(call: &'static str, e: *mut c_char) -> Result<(), ShimError> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from malloc in the shim.
    let message = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    unsafe { ffi::hondo_free_error(e) };
    Err(ShimError { call, message })
}

/// Pointers for a tensor list. The shim only reads the pointers (and mutates the tensors
/// in place, as the `_` kernels do), so sharing `&Tensor` is enough.
fn ptrs<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> Vec<*mut C_tensor> {
    ts.into_iter()
        .map(|t| t.as_ptr() as *mut C_tensor)
        .collect()
}

fn opt_ptr(t: Option<&Tensor>) -> *mut C_tensor {
    t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut C_tensor)
}

/// `torch._fused_sgd_` over one group (all lists the same length; `bufs` may be empty when
/// `momentum` is 0). With `first_step` the kernel initialises the buffers from the
/// gradients. `found_inf` (a float scalar) non-zero skips the update on the device;
/// `steps` (float scalars) count the updates done.
#[allow(clippy::too_many_arguments)]
pub fn fused_sgd(
    params: &[Tensor],
    grads: &[Tensor],
    bufs: &[Tensor],
    steps: &[Tensor],
    weight_decay: f64,
    momentum: f64,
    lr: f64,
    nesterov: bool,
    first_step: bool,
    found_inf: Option<&Tensor>,
) -> Result<(), ShimError> {
    // libtorch's foreach and fused kernels reject empty lists (a group that is all frozen).
    if params.is_empty() {
        return Ok(());
    }
    let n = params.len();
    assert!(grads.len() == n && steps.len() == n && (bufs.len() == n || momentum == 0.0));
    let (p, g, b, s) = (ptrs(params), ptrs(grads), ptrs(bufs), ptrs(steps));
    // SAFETY: the pointers are live tch tensors for the duration of the call.
    check("_fused_sgd_", unsafe {
        ffi::hondo_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            s.as_ptr(),
            n,
            weight_decay,
            momentum,
            lr,
            nesterov as c_int,
            first_step as c_int,
            opt_ptr(found_inf),
        )
    })
}

/// `torch._fused_adam_` / `_fused_adamw_` (`decoupled`) over one group, with
/// `torch.optim`'s step bookkeeping: `steps` (float scalars) are incremented, except where
/// `found_inf` skipped the update.
#[allow(clippy::too_many_arguments)]
pub fn fused_adam(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
    decoupled: bool,
    found_inf: Option<&Tensor>,
) -> Result<(), ShimError> {
    // libtorch's foreach and fused kernels reject empty lists (a group that is all frozen).
    if params.is_empty() {
        return Ok(());
    }
    let n = params.len();
    assert!(
        [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()]
            .iter()
            .all(|&l| l == n)
    );
    let (p, g, m, v, s) = (
        ptrs(params),
        ptrs(grads),
        ptrs(exp_avgs),
        ptrs(exp_avg_sqs),
        ptrs(steps),
    );
    // SAFETY: as in `fused_sgd`.
    check(
        if decoupled {
            "_fused_adamw_"
        } else {
            "_fused_adam_"
        },
        unsafe {
            ffi::hondo_fused_adam(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                s.as_ptr(),
                n,
                lr,
                betas.0,
                betas.1,
                weight_decay,
                eps,
                decoupled as c_int,
                opt_ptr(found_inf),
            )
        },
    )
}

/// `dst[i] += weight * (src[i] - dst[i])` in one foreach call.
pub fn foreach_lerp(dst: &[Tensor], src: &[Tensor], weight: f64) -> Result<(), ShimError> {
    // libtorch's foreach and fused kernels reject empty lists (a group that is all frozen).
    if dst.is_empty() {
        return Ok(());
    }
    assert_eq!(dst.len(), src.len());
    let (d, s) = (ptrs(dst), ptrs(src));
    // SAFETY: as in `fused_sgd`.
    check("_foreach_lerp_", unsafe {
        ffi::hondo_foreach_lerp(d.as_ptr(), s.as_ptr(), d.len(), weight)
    })
}

/// Drops the gradients of `params` (PyTorch's `zero_grad(set_to_none=True)`): their memory
/// is freed now, and the next backward writes fresh gradients instead of adding to zeros.
pub fn set_grads_to_none(params: &[Tensor]) -> Result<(), ShimError> {
    let t = ptrs(params);
    // SAFETY: as in `fused_sgd`.
    check("grad reset", unsafe {
        ffi::hondo_set_grads_to_none(t.as_ptr(), t.len())
    })
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm`; returns the
/// norm before clipping, on the device (no host sync).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<Tensor, ShimError> {
    // libtorch's foreach and fused kernels reject empty lists (a group that is all frozen).
    if grads.is_empty() {
        return Ok(Tensor::from(0f32));
    }
    let g = ptrs(grads);
    let mut total: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: as in `fused_sgd`; on success `total` is a new tensor we now own.
    check("clip_grad_norm", unsafe {
        ffi::hondo_clip_grad_norm(g.as_ptr(), g.len(), max_norm, &mut total)
    })?;
    Ok(unsafe { Tensor::from_ptr(total) })
}

/// Whether every element `t`'s sizes, strides and offset address lies inside its storage
/// (no negative stride, nothing past the end).
pub fn view_fits_storage(t: &Tensor) -> bool {
    // SAFETY: reads the tensor's metadata only.
    unsafe { ffi::hondo_view_fits_storage(t.as_ptr() as *mut C_tensor) != 0 }
}

/// Whether `t` has channels-last (NHWC) strides.
pub fn is_channels_last(t: &Tensor) -> bool {
    // SAFETY: reads the tensor's strides only.
    unsafe { ffi::hondo_is_channels_last(t.as_ptr() as *mut C_tensor) != 0 }
}

/// c10::ScalarType's number for the kinds autocast takes (tch keeps its own private).
fn scalar_type(kind: Kind) -> c_int {
    match kind {
        Kind::Half => 5,
        Kind::BFloat16 => 15,
        _ => 6, // Float
    }
}

/// Unscales `grads` in place by `inv_scale` (a float scalar) and sets `found_inf` (a float
/// scalar) to 1 where any is NaN or infinite, in one foreach call on the device.
pub fn amp_unscale(
    grads: &[Tensor],
    found_inf: &Tensor,
    inv_scale: &Tensor,
) -> Result<(), ShimError> {
    // libtorch's foreach and fused kernels reject empty lists (a group that is all frozen).
    if grads.is_empty() {
        return Ok(());
    }
    let g = ptrs(grads);
    // SAFETY: as in `fused_sgd`.
    check("_amp_foreach_non_finite_check_and_unscale_", unsafe {
        ffi::hondo_amp_unscale(
            g.as_ptr(),
            g.len(),
            found_inf.as_ptr() as *mut C_tensor,
            inv_scale.as_ptr() as *mut C_tensor,
        )
    })
}

/// Autocast on `device` with `dtype` while this guard lives, as `torch.autocast` does
/// (the state is thread-local; the cache is cleared when the outermost guard ends).
pub struct Autocast {
    device: c_int,
    prev: [c_int; 3],
}

impl Autocast {
    /// Turns autocast on for `device`'s type (CUDA, or else the CPU) with `dtype`
    /// (`Kind::Half` or `Kind::BFloat16`; any other kind means float32) until the guard
    /// drops, which restores the previous state.
    pub fn new(device: Device, dtype: Kind) -> Result<Autocast, ShimError> {
        let device = if device.is_cuda() { 1 } else { 0 };
        let mut prev = [0; 3];
        // SAFETY: `prev` has room for the three values the shim writes.
        check("autocast enter", unsafe {
            ffi::hondo_autocast_enter(device, scalar_type(dtype), prev.as_mut_ptr())
        })?;
        Ok(Autocast { device, prev })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: restores the state saved on entry.
        if let Err(e) = check("autocast exit", unsafe {
            ffi::hondo_autocast_exit(self.device, self.prev.as_ptr())
        }) {
            crate::observe::defer_warning(e.to_string());
        }
    }
}

/// `relu(batch_norm(input) + residual)` (no residual: `relu(batch_norm(input))`) in training
/// mode as one differentiable op (`csrc/batch_norm_relu.cpp`): float32 or bfloat16 CPU
/// activations, NCHW or channels-last, float32 parameters; updates `running_mean` and
/// `running_var` in place.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_relu(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
    eps: f64,
) -> Result<Tensor, ShimError> {
    let ptr = |t: &Tensor| t.as_ptr() as *mut C_tensor;
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the pointers are live tch tensors for the duration of the call; on success the
    // shim stores a new tensor in `out`, which `from_ptr` takes ownership of.
    check("batch_norm_relu", unsafe {
        ffi::hondo_batch_norm_relu(
            ptr(input),
            ptr(weight),
            ptr(bias),
            opt_ptr(residual),
            ptr(running_mean),
            ptr(running_var),
            momentum,
            eps,
            &mut out,
        )
    })?;
    Ok(unsafe { Tensor::from_ptr(out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_come_back_as_strings() {
        // Mismatched devices or dtypes make libtorch throw; it must not unwind.
        let p = [Tensor::from_slice(&[1.0f32, 2.0])];
        let g = [Tensor::from_slice(&[1i64, 2])];
        let s = [Tensor::from(0.0f32)];
        let e = fused_sgd(&p, &g, &[], &s, 0.0, 0.0, 0.1, false, false, None).unwrap_err();
        assert_eq!(e.call, "_fused_sgd_");
        assert!(!e.message.is_empty());
    }

    #[test]
    fn empty_lists_are_no_ops() {
        // A parameter group that is all frozen has no gradients: nothing to do, no error.
        assert!(set_grads_to_none(&[]).is_ok());
        assert!(foreach_lerp(&[], &[], 0.5).is_ok());
        assert!(fused_sgd(&[], &[], &[], &[], 0.0, 0.9, 0.1, false, false, None).is_ok());
        assert_eq!(clip_grad_norm(&[], 1.0).unwrap().double_value(&[]), 0.0);
    }

    #[test]
    fn autocast_runs_matmul_in_bf16_and_restores() {
        let a = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        {
            let _ac = Autocast::new(Device::Cpu, Kind::BFloat16).unwrap();
            assert_eq!(a.matmul(&a).kind(), Kind::BFloat16);
        }
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
    }

    #[test]
    fn clip_lerp_and_set_to_none() {
        let g = [Tensor::from_slice(&[3.0f32]), Tensor::from_slice(&[4.0f32])];
        let total = clip_grad_norm(&g, 1.0).unwrap();
        assert!((total.double_value(&[]) - 5.0).abs() < 1e-6);
        assert!((g[1].double_value(&[0]) - 0.8).abs() < 1e-5);
        let d = [Tensor::from_slice(&[0.0f32])];
        foreach_lerp(&d, &[Tensor::from_slice(&[1.0f32])], 0.25).unwrap();
        assert!((d[0].double_value(&[0]) - 0.25).abs() < 1e-7);
        let w = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&w * 3.0).sum(Kind::Float).backward();
        assert!(w.grad().defined());
        set_grads_to_none(std::slice::from_ref(&w)).unwrap();
        assert!(!w.grad().defined());
        (&w * 2.0).sum(Kind::Float).backward();
        assert_eq!(
            w.grad().double_value(&[0]),
            2.0,
            "a fresh gradient, not added to 3"
        );
        let x = Tensor::zeros([1, 3, 2, 2], (Kind::Float, Device::Cpu));
        assert!(!is_channels_last(&x));
        assert!(is_channels_last(
            &x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
        ));
    }
}
