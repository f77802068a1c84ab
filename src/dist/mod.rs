//! Data parallelism on libtorch's own distributed engine: c10d's
//! `TCPStore` rendezvous and `ProcessGroupGloo` ([`ProcessGroup`]), DDP's C++ `Reducer`
//! for bucketed gradient all-reduce during backward ([`Reducer`]), and the launch
//! environment of torchrun and Slurm ([`World`]). Bound through `csrc/dist.cpp`; every
//! C++ exception comes back as a [`DistError`].
//!
//! The trainer uses them when it is launched as a rank (torchrun, srun, `hondo train
//! --nproc`; see `docs/distributed.md`); they are public for programs that step their own
//! loop. Gloo only: CPU tensors (the NCCL backend is not built yet).

mod group;
mod reducer;
mod world;

pub use group::{GroupOptions, ProcessGroup};
pub use reducer::Reducer;
pub use world::{Launcher, World, WorldError, MAX_WORLD};

/// The group SyncBatchNorm layers all-reduce their statistics over (`train.sync_batchnorm`
/// in a data-parallel run); `None`: every process normalises with its own batch.
static SYNC_BN: std::sync::RwLock<Option<std::sync::Arc<ProcessGroup>>> =
    std::sync::RwLock::new(None);

/// Sets (or clears) the SyncBatchNorm group for the models of this process.
pub(crate) fn set_sync_batchnorm(group: Option<std::sync::Arc<ProcessGroup>>) {
    *SYNC_BN.write().unwrap_or_else(|e| e.into_inner()) = group;
}

/// The SyncBatchNorm group, if one is set.
pub(crate) fn sync_batchnorm_group() -> Option<std::sync::Arc<ProcessGroup>> {
    SYNC_BN.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The collective backends this build has, for `hondo info`.
pub fn backends() -> Vec<String> {
    vec![
        "gloo (CPU tensors; TCPStore rendezvous, DDP Reducer)".into(),
        "nccl: not built (CUDA tensors across processes are not supported yet)".into(),
    ]
}

/// A distributed call that failed: the call and c10d's message (a timeout, a peer that
/// closed the connection, an address in use).
#[derive(Debug, thiserror::Error)]
#[error("{call}: {message}")]
pub struct DistError {
    /// What hondo asked for (`rendezvous at 127.0.0.1:29500`, `all_reduce`, ...).
    pub call: String,
    /// c10d's message.
    pub message: String,
}

mod ffi {
    use std::ffi::{c_char, c_int};
    use torch_sys::C_tensor;

    #[repr(C)]
    pub struct HondoGroup {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct HondoReducer {
        _private: [u8; 0],
    }

    extern "C" {
        pub fn hondo_free_error(e: *mut c_char);
        #[allow(clippy::too_many_arguments)]
        pub fn hondo_dist_init(
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            is_server: c_int,
            wait_workers: c_int,
            timeout_s: f64,
            prefix: *const c_char,
            ifname: *const c_char,
            out: *mut *mut HondoGroup,
        ) -> *mut c_char;
        pub fn hondo_dist_free(g: *mut HondoGroup);
        pub fn hondo_dist_broadcast(
            g: *mut HondoGroup,
            tensors: *const *mut C_tensor,
            n: usize,
            root: c_int,
        ) -> *mut c_char;
        pub fn hondo_dist_allreduce(g: *mut HondoGroup, t: *mut C_tensor, op: c_int)
            -> *mut c_char;
        pub fn hondo_dist_barrier(g: *mut HondoGroup) -> *mut c_char;
        pub fn hondo_dist_allreduce_autograd(
            g: *mut HondoGroup,
            input: *mut C_tensor,
            out: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn hondo_dist_store_set(
            g: *mut HondoGroup,
            key: *const c_char,
            value: *const u8,
            n: usize,
        ) -> *mut c_char;
        pub fn hondo_dist_store_get(
            g: *mut HondoGroup,
            key: *const c_char,
            found: *mut c_int,
            out: *mut *mut c_char,
            n: *mut usize,
        ) -> *mut c_char;
        pub fn hondo_reducer_new(
            g: *mut HondoGroup,
            params: *const *mut C_tensor,
            n: usize,
            bucket_mib: f64,
            out: *mut *mut HondoReducer,
        ) -> *mut c_char;
        pub fn hondo_reducer_free(r: *mut HondoReducer);
        pub fn hondo_reducer_prepare(r: *mut HondoReducer) -> *mut c_char;
        pub fn hondo_reducer_rebuild(r: *mut HondoReducer, rebuilt: *mut c_int) -> *mut c_char;
        pub fn hondo_reducer_stats(r: *mut HondoReducer, stats: *mut i64, n: usize) -> *mut c_char;
    }
}

/// Turns the shim's returned message (NULL: success) into a result naming `call`.
fn check(e: *mut std::ffi::c_char, call: impl FnOnce() -> String) -> Result<(), DistError> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: a non-NULL result is a NUL-terminated string malloc'ed by the shim, freed here.
    let full = unsafe { std::ffi::CStr::from_ptr(e) }
        .to_string_lossy()
        .into_owned();
    let message = trim_cxx(&full);
    unsafe { ffi::hondo_free_error(e) };
    Err(DistError {
        call: call(),
        message,
    })
}

/// A C++ exception's message without the stack `c10::Error` appends to it.
pub(crate) fn trim_cxx(message: &str) -> String {
    message
        .split("\nException raised from")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The raw handles of `tensors`, for the shim.
fn handles(tensors: &[&tch::Tensor]) -> Vec<*mut torch_sys::C_tensor> {
    tensors
        .iter()
        .map(|t| t.as_ptr() as *mut torch_sys::C_tensor)
        .collect()
}
