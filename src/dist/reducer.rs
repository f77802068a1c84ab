//! DDP's gradient Reducer: hooks on each parameter's gradient accumulator all-reduce full
//! buckets while backward still runs, and leave every `.grad` the average over the ranks.

use super::{check, ffi, handles, DistError, ProcessGroup};
use tch::Tensor;

/// c10d's `Reducer` over a model's trainable parameters.
pub struct Reducer {
    raw: *mut ffi::HondoReducer,
}

// SAFETY: used from the training thread; the handle is only freed in Drop.
unsafe impl Send for Reducer {}

impl Reducer {
    /// A Reducer over `params`, in the same order on every rank (every one must receive a
    /// gradient each synchronised step),
    /// in buckets of `bucket_mib` MiB (PyTorch's default: 25; at most 1024), assigned last
    /// layer first.
    /// It keeps the group alive as long as it lives.
    pub fn new(
        group: &ProcessGroup,
        params: &[&Tensor],
        bucket_mib: f64,
    ) -> Result<Reducer, DistError> {
        if !(bucket_mib > 0.0 && bucket_mib <= 1024.0) {
            return Err(DistError {
                call: "building the gradient reducer".into(),
                message: format!("bucket size {bucket_mib} MiB: must be in (0, 1024]"),
            });
        }
        let h = handles(params);
        let mut raw = std::ptr::null_mut();
        // SAFETY: live handles and an out-pointer; the shim catches every exception.
        let e = unsafe {
            ffi::hondo_reducer_new(group.raw(), h.as_ptr(), h.len(), bucket_mib, &mut raw)
        };
        check(e, || {
            format!(
                "building the gradient reducer over {} parameters",
                params.len()
            )
        })?;
        Ok(Reducer { raw })
    }

    /// Before the forward pass of a step whose backward all-reduces. Not called on the
    /// micro-batches that only accumulate (DDP's `no_sync`): their gradients stay local.
    pub fn prepare(&self) -> Result<(), DistError> {
        // SAFETY: the handle is live.
        check(unsafe { ffi::hondo_reducer_prepare(self.raw) }, || {
            "preparing the reducer".into()
        })
    }

    /// After a synchronised backward: re-forms the buckets in the order the gradients
    /// arrived, once (returns whether it did), as DDP does after its first step.
    pub fn rebuild_buckets(&self) -> Result<bool, DistError> {
        let mut rebuilt = 0;
        // SAFETY: the handle is live; `rebuilt` is an out-parameter.
        let e = unsafe { ffi::hondo_reducer_rebuild(self.raw, &mut rebuilt) };
        check(e, || "rebuilding the reducer's buckets".into())?;
        Ok(rebuilt != 0)
    }

    /// The Reducer's timers of the last synchronised backward, in nanoseconds: forward
    /// compute, backward compute, communication, and backward compute overlapped with it.
    pub fn backward_stats(&self) -> Result<[i64; 4], DistError> {
        let mut s = [0i64; 4];
        // SAFETY: the handle is live; `s` has room for 4 values.
        let e = unsafe { ffi::hondo_reducer_stats(self.raw, s.as_mut_ptr(), s.len()) };
        check(e, || "reading the reducer's timers".into())?;
        Ok(s)
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: created by hondo_reducer_new, freed once.
        unsafe { ffi::hondo_reducer_free(self.raw) }
    }
}
