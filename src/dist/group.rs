//! A c10d process group: the `TCPStore` rendezvous and Gloo collectives on CPU tensors.

use super::{check, ffi, handles, DistError};
use std::ffi::CString;
use std::time::Duration;
use tch::Tensor;

/// How to join a group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// The store's host (`MASTER_ADDR`).
    pub host: String,
    /// The store's port (`MASTER_PORT`).
    pub port: u16,
    /// This process's rank, 0 to `world - 1`.
    pub rank: usize,
    /// Processes in the group.
    pub world: usize,
    /// Whether this process hosts the store (rank 0, unless a launcher's agent hosts it).
    pub is_server: bool,
    /// Bound on the rendezvous and on every collective (1 ms to 7 days; longer is 7 days).
    pub timeout: Duration,
    /// Key prefix in the store (`default_pg`, as PyTorch's; a restarted attempt uses its
    /// own so it never reads the previous attempt's keys).
    pub prefix: String,
    /// The network interface Gloo uses (`GLOO_SOCKET_IFNAME`); `None`: this host's default.
    pub interface: Option<String>,
}

/// The timeouts c10d is given: its milliseconds are an `int64`, so a huge `Duration` would
/// overflow on the way.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A joined c10d process group with the Gloo backend.
pub struct ProcessGroup {
    raw: *mut ffi::HondoGroup,
    rank: usize,
    world: usize,
}

// SAFETY: c10d's ProcessGroup is thread-safe; the handle is only freed in Drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {} of {})", self.rank, self.world)
    }
}

impl ProcessGroup {
    /// Joins the group (blocks until every rank has, or the timeout passes: then the error
    /// says how many joined).
    pub fn new(o: &GroupOptions) -> Result<ProcessGroup, DistError> {
        let call = || {
            format!(
                "rendezvous at {}:{} (rank {} of {})",
                o.host, o.port, o.rank, o.world
            )
        };
        let bad = |what: &str| DistError {
            call: call(),
            message: format!("{what} contains a NUL byte"),
        };
        let host = CString::new(o.host.as_str()).map_err(|_| bad("the host"))?;
        let prefix = CString::new(o.prefix.as_str()).map_err(|_| bad("the prefix"))?;
        let iface =
            CString::new(o.interface.as_deref().unwrap_or("")).map_err(|_| bad("the interface"))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C strings and an out-pointer; the shim catches every exception.
        let e = unsafe {
            ffi::hondo_dist_init(
                host.as_ptr(),
                i32::from(o.port),
                o.rank as i32,
                o.world as i32,
                i32::from(o.is_server),
                1,
                o.timeout.clamp(MIN_TIMEOUT, MAX_TIMEOUT).as_secs_f64(),
                prefix.as_ptr(),
                iface.as_ptr(),
                &mut raw,
            )
        };
        check(e, call)?;
        Ok(ProcessGroup {
            raw,
            rank: o.rank,
            world: o.world,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the group.
    pub fn world(&self) -> usize {
        self.world
    }

    pub(crate) fn raw(&self) -> *mut ffi::HondoGroup {
        self.raw
    }

    /// Overwrites `tensors` on every rank with `root`'s values (coalesced, as DDP's
    /// start-up broadcast of parameters and buffers). Every rank must pass the same tensors
    /// in the same order: sort a `VarStore`'s `variables()` by name (it is a `HashMap`,
    /// whose order differs between processes).
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), DistError> {
        let h = handles(tensors);
        // SAFETY: live tensor handles for the duration of the call.
        let e = unsafe { ffi::hondo_dist_broadcast(self.raw, h.as_ptr(), h.len(), root as i32) };
        check(e, || format!("broadcast from rank {root}"))
    }

    /// Sums `t` over the ranks, in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<(), DistError> {
        // SAFETY: a live tensor handle.
        let e = unsafe { ffi::hondo_dist_allreduce(self.raw, t.as_ptr() as *mut _, 0) };
        check(e, || "all_reduce (sum)".into())
    }

    /// The maximum of `t` over the ranks, in place.
    pub fn all_reduce_max(&self, t: &Tensor) -> Result<(), DistError> {
        // SAFETY: a live tensor handle.
        let e = unsafe { ffi::hondo_dist_allreduce(self.raw, t.as_ptr() as *mut _, 1) };
        check(e, || "all_reduce (max)".into())
    }

    /// The sum of `t` over the ranks as a new tensor that autograd differentiates: the
    /// gradient of each rank's `t` is the sum of the ranks' gradients of the result
    /// (SyncBatchNorm's statistics).
    pub fn all_reduce_sum_differentiable(&self, t: &Tensor) -> Result<Tensor, DistError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: a live tensor handle and an out-pointer; the shim returns a new tensor.
        let e =
            unsafe { ffi::hondo_dist_allreduce_autograd(self.raw, t.as_ptr() as *mut _, &mut out) };
        check(e, || "all_reduce (differentiable sum)".into())?;
        // SAFETY: the shim allocated a tensor handle that is now ours.
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    /// Sets `key` in the store, outside the group's prefix: keys that a restarted attempt
    /// of the job (a fresh group on the same launcher's store) still finds.
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<(), DistError> {
        let call = || format!("setting {key:?} in the store");
        let k = CString::new(key).map_err(|_| DistError {
            call: call(),
            message: "the key contains a NUL byte".into(),
        })?;
        // SAFETY: a C string and a byte slice valid for the call.
        let e =
            unsafe { ffi::hondo_dist_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len()) };
        check(e, call)
    }

    /// `key`'s value in the store (outside the prefix), without waiting: `None` if unset.
    pub fn store_get(&self, key: &str) -> Result<Option<Vec<u8>>, DistError> {
        let call = || format!("reading {key:?} from the store");
        let k = CString::new(key).map_err(|_| DistError {
            call: call(),
            message: "the key contains a NUL byte".into(),
        })?;
        let (mut found, mut out, mut n) = (0, std::ptr::null_mut(), 0usize);
        // SAFETY: a C string and out-pointers; a found value is malloc'ed by the shim.
        let e = unsafe {
            ffi::hondo_dist_store_get(self.raw, k.as_ptr(), &mut found, &mut out, &mut n)
        };
        check(e, call)?;
        if found == 0 {
            return Ok(None);
        }
        // SAFETY: `out` holds `n` bytes allocated by the shim, freed here once.
        let v = unsafe { std::slice::from_raw_parts(out as *const u8, n) }.to_vec();
        unsafe { ffi::hondo_free_error(out) };
        Ok(Some(v))
    }

    /// Waits until every rank has arrived.
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the group handle is live.
        let e = unsafe { ffi::hondo_dist_barrier(self.raw) };
        check(e, || "barrier".into())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by hondo_dist_init, freed once.
        unsafe { ffi::hondo_dist_free(self.raw) }
    }
}
