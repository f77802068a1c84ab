//! libtorch operations that tch does not bind, through hondo's C++ shim: the fused
//! BatchNorm + ReLU of hondo's models, gradient clipping in one foreach call, autocast
//! guards and a memory-format check. Every C++ exception comes back as a [`ShimError`].

pub use crate::shim::{batch_norm_relu, clip_grad_norm, is_channels_last, Autocast, ShimError};
pub use crate::train::amp::autocast;
