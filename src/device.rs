//! Device selection: `auto`, `cpu`, `cuda`, `cuda:N`.

use tch::{Cuda, Device};

/// A device as written in configs and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when present, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: use auto, cpu, cuda or cuda:N")),
        }
    }

    /// The libtorch device, or an error when CUDA is asked for and not there.
    pub fn resolve(self) -> Result<Device, String> {
        match self {
            DeviceSpec::Auto => Ok(Device::cuda_if_available()),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                let count = if Cuda::is_available() {
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

/// What this build links and what it sees, for `hondo info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub hondo: String,
    pub tch: String,
    pub libtorch: String,
    pub libtorch_lib: String,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub cuda_devices: Vec<String>,
    pub threads: i32,
    pub interop_threads: i32,
}

pub fn info() -> Info {
    let cuda = Cuda::is_available();
    let count = if cuda { Cuda::device_count() } else { 0 };
    let names = cuda_device_names();
    Info {
        hondo: env!("CARGO_PKG_VERSION").into(),
        tch: env!("HONDO_TCH_VERSION").into(),
        libtorch: env!("HONDO_LIBTORCH_VERSION").into(),
        libtorch_lib: env!("HONDO_LIBTORCH_LIB").into(),
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
        writeln!(
            f,
            "threads   {} intra-op, {} inter-op",
            self.threads, self.interop_threads
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(DeviceSpec::parse("auto"), Ok(DeviceSpec::Auto));
        assert_eq!(DeviceSpec::parse("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert!(DeviceSpec::parse("gpu").is_err());
        assert!(DeviceSpec::parse("cuda:x").is_err());
    }

    #[test]
    fn cpu_always_resolves() {
        assert_eq!(DeviceSpec::Cpu.resolve(), Ok(Device::Cpu));
    }
}
