//! `hondo info`: what this build links and what it sees (versions, CUDA backend and
//! devices, threads, allocator, fused kernels). It sits above [`crate::device`] and the
//! models, so the device layer itself depends on nothing of hondo's.

use crate::device::{cuda_available, cuda_backend, loaded_libtorch_dir};
use tch::Cuda;

/// What this build links and what it sees, for `hondo info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    /// hondo's version (`Cargo.toml`).
    pub hondo: String,
    /// The `tch` version hondo was built against.
    pub tch: String,
    /// The libtorch version built against (from the torch wheel's `version.py`), or
    /// `unknown`.
    pub libtorch: String,
    /// The directory of the `libtorch_cpu.so` this process runs (at build time, if it
    /// cannot be found in the process's memory map).
    pub libtorch_lib: String,
    /// Whether libtorch's CUDA backend loaded, and why not ([`crate::device::CudaBackend`]).
    pub cuda_backend: String,
    /// The CPU allocator in use ([`crate::allocator::policy`]).
    pub allocator: String,
    /// Whether hondo's fused BatchNorm + ReLU kernel is on (`HONDO_FUSED_BN`) and where it
    /// applies.
    pub fused_batch_norm_relu: String,
    /// Whether a CUDA device can be used.
    pub cuda_available: bool,
    /// Whether cuDNN can be used (never without CUDA).
    pub cudnn_available: bool,
    /// One `cuda:N NAME` entry per CUDA device; empty without CUDA.
    pub cuda_devices: Vec<String>,
    /// The collective backends for data-parallel training ([`crate::dist::backends`]).
    pub distributed: Vec<String>,
    /// libtorch's intra-op thread count.
    pub threads: i32,
    /// libtorch's inter-op thread count.
    pub interop_threads: i32,
}

/// Collects [`Info`] for this process. Loads libtorch's CUDA backend when a CUDA driver is
/// installed ([`crate::device::cuda_backend`]).
pub fn info() -> Info {
    let backend = cuda_backend();
    let cuda = cuda_available();
    let count = if cuda { Cuda::device_count() } else { 0 };
    let names = cuda_device_names();
    Info {
        hondo: env!("CARGO_PKG_VERSION").into(),
        tch: env!("HONDO_TCH_VERSION").into(),
        libtorch: env!("HONDO_LIBTORCH_VERSION").into(),
        libtorch_lib: loaded_libtorch_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| env!("HONDO_LIBTORCH_LIB").into()),
        cuda_backend: backend.to_string(),
        allocator: crate::allocator::policy(),
        fused_batch_norm_relu: if crate::models::layers::fused_enabled() {
            format!(
                "on (CPU training: fp32, bf16 channels-last; {} kernels)",
                crate::shim::fused_bn_isa()
            )
        } else {
            "off (HONDO_FUSED_BN=0)".into()
        },
        cuda_available: cuda,
        cudnn_available: cuda && Cuda::cudnn_is_available(),
        cuda_devices: (0..count as usize)
            .map(|i| {
                format!(
                    "cuda:{i} {}",
                    names.get(i).map(String::as_str).unwrap_or("(name unknown)")
                )
            })
            .collect(),
        distributed: crate::dist::backends(),
        threads: tch::get_num_threads(),
        interop_threads: tch::get_num_interop_threads(),
    }
}

impl std::fmt::Display for Info {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "hondo     {}", self.hondo)?;
        writeln!(f, "tch       {}", self.tch)?;
        writeln!(f, "libtorch  {} ({})", self.libtorch, self.libtorch_lib)?;
        writeln!(f, "backend   libtorch_cuda {}", self.cuda_backend)?;
        writeln!(
            f,
            "cuda      {} ({} device(s))",
            yes(self.cuda_available),
            self.cuda_devices.len()
        )?;
        for d in &self.cuda_devices {
            writeln!(f, "  {d}")?;
        }
        writeln!(f, "cudnn     {}", yes(self.cudnn_available))?;
        for (i, b) in self.distributed.iter().enumerate() {
            writeln!(f, "{}{b}", if i == 0 { "dist      " } else { "          " })?;
        }
        writeln!(
            f,
            "threads   {} intra-op, {} inter-op",
            self.threads, self.interop_threads
        )?;
        writeln!(f, "malloc    {}", self.allocator)?;
        writeln!(f, "bn+relu   fused {}", self.fused_batch_norm_relu)
    }
}

/// CUDA device names through the driver API (`libcuda.so.1`), which tch does not expose.
/// Empty when there is no driver.
fn cuda_device_names() -> Vec<String> {
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuCount = unsafe extern "C" fn(*mut i32) -> i32;
    type CuGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuName = unsafe extern "C" fn(*mut std::os::raw::c_char, i32, i32) -> i32;
    // SAFETY: the symbols are the CUDA driver API's documented C functions, called with
    // valid pointers to locals and a buffer of the stated length.
    unsafe {
        let Ok(lib) = libloading::Library::new("libcuda.so.1") else {
            return Vec::new();
        };
        let (Ok(init), Ok(count), Ok(get), Ok(name)) = (
            lib.get::<CuInit>(b"cuInit"),
            lib.get::<CuCount>(b"cuDeviceGetCount"),
            lib.get::<CuGet>(b"cuDeviceGet"),
            lib.get::<CuName>(b"cuDeviceGetName"),
        ) else {
            return Vec::new();
        };
        let mut n = 0;
        if init(0) != 0 || count(&mut n) != 0 {
            return Vec::new();
        }
        (0..n)
            .map(|i| {
                let mut dev = 0;
                let mut buf = [0 as std::os::raw::c_char; 256];
                if get(&mut dev, i) != 0 || name(buf.as_mut_ptr(), buf.len() as i32, dev) != 0 {
                    return "(name unknown)".to_string();
                }
                std::ffi::CStr::from_ptr(buf.as_ptr())
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}
