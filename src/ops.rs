//! libtorch operations that tch does not bind, through hondo's C++ shim: the fused
//! BatchNorm + ReLU of hondo's models, gradient clipping in one foreach call, autocast
//! guards and a memory-format check. Every C++ exception comes back as a [`ShimError`].

pub use crate::shim::{batch_norm_relu, clip_grad_norm, is_channels_last, Autocast, ShimError};

use crate::config::Precision;
use tch::{Device, Kind};

/// The autocast dtype of a precision setting (`None` for fp32).
pub fn autocast_kind(p: Precision) -> Option<Kind> {
    match p {
        Precision::Fp32 => None,
        Precision::Bf16 => Some(Kind::BFloat16),
        Precision::Fp16 => Some(Kind::Half),
    }
}

/// Autocast at `p`'s dtype on `device` while the returned guard lives (`torch.autocast`);
/// `None` for fp32.
pub fn autocast(p: Precision, device: Device) -> Result<Option<Autocast>, ShimError> {
    autocast_kind(p)
        .map(|k| Autocast::new(device, k))
        .transpose()
}
