//! Device selection (`auto`, `cpu`, `cuda`, `cuda:N`) and libtorch's CUDA backend, which
//! is loaded only when a CUDA device may be used.

use crate::Error;
use std::sync::OnceLock;
use tch::{Cuda, Device};

/// Whether libtorch's CUDA backend (`libtorch_cuda.so`) is in the process.
///
/// hondo links libtorch's CPU library only. Linking `libtorch.so` as well (with
/// `--no-as-needed`, since nothing references it) would load libtorch_cuda, cuBLAS, cuDNN
/// and the rest into every process at start: about 235 MiB of resident memory, on machines
/// without a GPU too. Instead [`cuda_backend`] loads it with `RTLD_GLOBAL` the first time a
/// device that may be CUDA is resolved, and only when a CUDA driver is installed. Its static
/// initialisers register the CUDA kernels and hooks with libtorch's dispatcher exactly as
/// linking it would; it must happen before anything asks libtorch about CUDA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaBackend {
    /// `libtorch_cuda.so` is loaded: CUDA devices can be used if the driver sees any.
    Loaded,
    /// No `libcuda.so.1`: no NVIDIA driver, so the backend is not worth its memory.
    NoDriver,
    /// The driver is there but `libtorch_cuda.so` would not load: the dlopen errors.
    Failed(String),
}

impl std::fmt::Display for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaBackend::Loaded => write!(f, "loaded"),
            CudaBackend::NoDriver => write!(f, "not loaded (no CUDA driver: libcuda.so.1)"),
            CudaBackend::Failed(e) => write!(f, "failed to load: {e}"),
        }
    }
}

static CUDA_BACKEND: OnceLock<CudaBackend> = OnceLock::new();

/// Loads libtorch's CUDA backend once, if a CUDA driver is installed.
pub fn cuda_backend() -> &'static CudaBackend {
    CUDA_BACKEND.get_or_init(|| {
        if !cuda_driver_installed() {
            return CudaBackend::NoDriver;
        }
        load_torch_cuda()
    })
}

/// Whether the NVIDIA driver library (`libcuda.so.1`) can be loaded.
fn cuda_driver_installed() -> bool {
    // SAFETY: loading the driver library runs no code of ours; the handle is dropped.
    unsafe { libloading::Library::new("libcuda.so.1") }.is_ok()
}

/// Whether a CUDA device can be used: the backend loaded and libtorch sees a device.
pub fn cuda_available() -> bool {
    *cuda_backend() == CudaBackend::Loaded && Cuda::is_available()
}

/// dlopens `libtorch_cuda.so` from the directory of the `libtorch_cpu.so` this process
/// runs (so the two always match), else by name (`LD_LIBRARY_PATH`, the rpath), and keeps
/// it loaded for the life of the process.
pub fn load_torch_cuda() -> CudaBackend {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    let mut candidates = Vec::new();
    if let Some(dir) = loaded_libtorch_dir() {
        candidates.push(dir.join("libtorch_cuda.so"));
    }
    candidates.push("libtorch_cuda.so".into());
    let mut errors = Vec::new();
    for path in candidates {
        // SAFETY: libtorch_cuda.so is the CUDA half of the libtorch already loaded; its
        // initialisers only register kernels and hooks with that libtorch.
        match unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) } {
            Ok(lib) => {
                std::mem::forget(lib);
                return CudaBackend::Loaded;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    CudaBackend::Failed(errors.join("; "))
}

/// The directory of the `libtorch_cpu.so` mapped into this process.
pub(crate) fn loaded_libtorch_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()))
}

/// A device as written in configs and on the command line (`auto`, `cpu`, `cuda`, `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N (0-based; `cuda` is `cuda:0`); an error at [`DeviceSpec::resolve`]
    /// when it does not exist.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> crate::Result<DeviceSpec> {
        DeviceSpec::parse(s)
    }
}

impl DeviceSpec {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> crate::Result<DeviceSpec> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    Error::Device(format!(
                        "unknown device `{s}`: use auto, cpu, cuda or cuda:N"
                    ))
                }),
        }
    }

    /// The libtorch device, or [`Error::Device`] when CUDA is asked for and not there.
    pub fn resolve(self) -> crate::Result<Device> {
        self.resolve_inner().map_err(Error::Device)
    }

    fn resolve_inner(self) -> Result<Device, String> {
        match self {
            DeviceSpec::Auto => Ok(if cuda_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                match cuda_backend() {
                    CudaBackend::Loaded => {}
                    CudaBackend::NoDriver => {
                        return Err("CUDA was requested but no CUDA driver is installed \
                                    (libcuda.so.1 not found): use --device cpu"
                            .to_string())
                    }
                    CudaBackend::Failed(e) => {
                        return Err(format!(
                            "CUDA was requested but libtorch's CUDA backend did not load: {e}"
                        ))
                    }
                }
                let count = if cuda_available() {
                    Cuda::device_count() as usize
                } else {
                    0
                };
                if n < count {
                    Ok(Device::Cuda(n))
                } else if count == 0 {
                    Err(
                        "CUDA was requested but no CUDA device is available (check the driver, \
                         or use --device cpu)"
                            .to_string(),
                    )
                } else {
                    Err(format!(
                        "cuda:{n} was requested but only {count} CUDA device(s) exist"
                    ))
                }
            }
        }
    }
}

/// A short name for logs: `cpu`, `cuda:0`.
pub fn name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(DeviceSpec::parse("auto").unwrap(), DeviceSpec::Auto);
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!(matches!(DeviceSpec::parse("gpu"), Err(Error::Device(m)) if m.contains("`gpu`")));
        assert!(DeviceSpec::parse("cuda:x").is_err());
    }

    #[test]
    fn cuda_backend_loads_beside_libtorch_cpu() {
        // Loading needs no driver: without one CUDA is simply not available afterwards.
        assert!(loaded_libtorch_dir().is_some(), "libtorch_cpu.so is mapped");
        assert_eq!(load_torch_cuda(), CudaBackend::Loaded);
        if !cuda_driver_installed() {
            assert_eq!(*cuda_backend(), CudaBackend::NoDriver);
            assert!(!Cuda::is_available());
            let err = DeviceSpec::Cuda(0).resolve().unwrap_err();
            assert!(
                matches!(&err, Error::Device(m) if m.contains("no CUDA driver")),
                "{err}"
            );
            assert_eq!(DeviceSpec::Auto.resolve().unwrap(), Device::Cpu);
        }
    }

    #[test]
    fn cpu_always_resolves() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
    }
}
