//! Settings whose speed depends on the machine, chosen per machine when the config leaves
//! them `"auto"` (as `torch.backends.cudnn.benchmark` times convolution algorithms).
//!
//! Today that is the memory format, `train.channels_last`. Channels-last is 20-30% faster
//! for ResNet convolutions on a Sapphire Rapids CPU and on CUDA, but on an AVX2 EPYC it gave
//! ResNet-50 nothing while still helping the small CNN (BENCHMARKS.md): no rule from the CPU's
//! flags predicts it. So on the CPU hondo times it: a few training steps (forward,
//! cross-entropy, backward, the configured optimizer with a negligible learning rate) of a
//! throwaway copy of the model on random data, in NCHW and then in channels-last, and keeps
//! the faster (NCHW only when it is clearly faster: within 3%, channels-last). The choice is remembered per CPU (model name and the instruction sets that select
//! libtorch's kernels), hondo and libtorch version, model, batch, image size, precision and
//! thread count in `autotune.json` under hondo's cache directory (`$HONDO_CACHE`, else
//! `$XDG_CACHE_HOME/hondo`, else `~/.cache/hondo`), so a machine pays for the timing once
//! (about six steps) and every later run starts at once. Delete the file to time again.
//!
//! On CUDA channels-last is taken without timing (cuDNN's tensor-core kernels want NHWC),
//! and for a custom model ([`ModelSpec::custom`]: its forward may count or log its calls,
//! so hondo runs it only for training).
//! `HONDO_AUTOTUNE=0` turns the timing off: `auto` is then channels-last, for runs that must
//! not depend on a measurement. An explicit `true` or `false` always wins. The timing runs
//! before the model's seeded initialisation and leaves no state behind; a cache that cannot
//! be read or written is ignored (the run says so), never an error.

use super::{optimizer::Optimizer, param_groups, to_channels_last};
use crate::config::{Config, OptimizerConfig};
use crate::models::ModelSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The cache file's name under [`cache_dir`].
pub const CACHE_FILE: &str = "autotune.json";
/// Largest cache file read (it holds one short line per configuration).
const MAX_CACHE_BYTES: u64 = 1 << 20;
/// Entries kept; past this the cache starts over.
const MAX_ENTRIES: usize = 4096;
/// A first (warm-up) step slower than this is not timed further: channels-last is taken.
const MAX_STEP_S: f64 = 60.0;
/// NCHW is taken only when it is at least this much faster (a step this fraction of
/// channels-last's or less): closer than that, the timing's noise decides.
const NCHW_MARGIN: f64 = 0.97;
/// Timed steps per layout, after one warm-up step each.
const TIMED_STEPS: usize = 2;

/// The memory format a run uses, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Channels-last (NHWC) weights and inputs.
    pub channels_last: bool,
    /// How it was chosen: `set in the config`, or `auto: ...` with the timing.
    pub reason: String,
}

/// One remembered timing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Entry {
    /// Seconds per step in NCHW.
    nchw_s: f64,
    /// Seconds per step in channels-last.
    channels_last_s: f64,
}

impl Entry {
    fn channels_last(&self) -> bool {
        // Within the timing's noise, the format that is faster on most machines.
        self.nchw_s >= NCHW_MARGIN * self.channels_last_s
    }

    fn describe(&self, how: &str) -> String {
        let (fast, slow, name) = if self.channels_last() {
            (self.channels_last_s, self.nchw_s, "NCHW")
        } else {
            (self.nchw_s, self.channels_last_s, "channels-last")
        };
        format!(
            "auto: {:.2}x the speed of {name} on this CPU ({:.3} against {:.3} s/step, {how})",
            slow / fast.max(1e-9),
            fast,
            slow
        )
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

const CACHE_VERSION: u32 = 1;

/// hondo's per-user cache directory: `$HONDO_CACHE`, else `$XDG_CACHE_HOME/hondo`, else
/// `~/.cache/hondo` (where `scripts/setup.sh` keeps libtorch); `None` without a home.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HONDO_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("hondo")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("hondo")))
}

/// This CPU as the cache knows it: the model name from `/proc/cpuinfo` and the instruction
/// sets that decide libtorch's and oneDNN's kernels (a VM may report one generic name for
/// several generations).
pub fn cpu_name() -> String {
    let info = crate::file::read_regular(std::path::Path::new("/proc/cpuinfo"), 16 << 20)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags").unwrap_or_default();
    let have: Vec<&str> = flags.split_whitespace().collect();
    let kinds: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"]
        .into_iter()
        .filter(|f| have.contains(f))
        .collect();
    format!("{model} [{}]", kinds.join(" "))
}

/// What the layout's speed depends on, as the cache's key.
fn key(cfg: &Config, spec: &ModelSpec, num_classes: i64, threads: i32) -> String {
    // The built-in small CNN's cost depends on its width too.
    let model = match spec.arch() {
        Some(crate::config::Arch::SmallCnn) => format!("{} width {}", spec.name(), cfg.model.width),
        _ => spec.name().to_string(),
    };
    format!(
        "{} | {} | hondo {} libtorch {} | {model} {num_classes} classes | batch {} | {} px | {} | {} threads",
        cpu_name(),
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION"),
        env!("HONDO_LIBTORCH_VERSION"),
        cfg.train.batch_size,
        cfg.data.image_size,
        cfg.train.precision.name(),
        threads
    )
}

fn read_cache(path: &std::path::Path) -> CacheFile {
    crate::file::read_regular(path, MAX_CACHE_BYTES)
        .ok()
        .and_then(|b| serde_json::from_slice::<CacheFile>(&b).ok())
        .filter(|c| c.version == CACHE_VERSION)
        .map(|mut c| {
            // Whatever else the file holds, only real timings choose a layout.
            let ok = |s: f64| s.is_finite() && s > 0.0;
            c.entries
                .retain(|_, e| ok(e.nchw_s) && ok(e.channels_last_s));
            c
        })
        .unwrap_or_default()
}

/// Adds `entry` to the cache file (read again first, so that other runs' entries stay), by a
/// private temporary file renamed over it. Returns why it could not.
fn remember(path: &std::path::Path, key: String, entry: Entry) -> Result<(), String> {
    let mut cache = read_cache(path);
    if cache.entries.len() >= MAX_ENTRIES {
        cache.entries.clear();
    }
    cache.version = CACHE_VERSION;
    cache.entries.insert(key, entry);
    let text = serde_json::to_string_pretty(&cache).map_err(|e| e.to_string())?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{CACHE_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("{}: {e}", path.display())
        })
}

/// The run's memory format: the config's value, or for `"auto"` the one chosen for this
/// machine (from the cache, or timed now and remembered when `remember_choice`; ranks other
/// than 0 of a data-parallel job time but leave the file to rank 0).
pub fn choose_layout(
    cfg: &Config,
    spec: &ModelSpec,
    num_classes: i64,
    device: Device,
    remember_choice: bool,
) -> Layout {
    let path = cache_dir().map(|d| d.join(CACHE_FILE));
    choose_layout_with(cfg, spec, num_classes, device, remember_choice, path)
}

fn choose_layout_with(
    cfg: &Config,
    spec: &ModelSpec,
    num_classes: i64,
    device: Device,
    remember_choice: bool,
    path: Option<PathBuf>,
) -> Layout {
    if let Some(channels_last) = cfg.train.channels_last.get() {
        return Layout {
            channels_last,
            reason: "set in the config".into(),
        };
    }
    if device.is_cuda() {
        return Layout {
            channels_last: true,
            reason: "auto: channels-last on CUDA".into(),
        };
    }
    if spec.arch().is_none() {
        // Your model's forward may count or log its calls: hondo runs only its own.
        return Layout {
            channels_last: true,
            reason: "auto: channels-last, not timed for a custom model \
                     (set train.channels_last to choose)"
                .into(),
        };
    }
    if std::env::var("HONDO_AUTOTUNE").is_ok_and(|v| v == "0") {
        return Layout {
            channels_last: true,
            reason: "auto: HONDO_AUTOTUNE=0, not timed".into(),
        };
    }
    let threads = tch::get_num_threads();
    let key = key(cfg, spec, num_classes, threads);
    if let Some(entry) = path
        .as_deref()
        .and_then(|p| read_cache(p).entries.get(&key).copied())
    {
        return Layout {
            channels_last: entry.channels_last(),
            reason: entry.describe("timed earlier on this machine"),
        };
    }
    let started = Instant::now();
    let Some(entry) = time_layouts(cfg, spec, num_classes, device) else {
        return Layout {
            channels_last: true,
            reason: format!(
                "auto: a step takes over {MAX_STEP_S:.0} s here, not timed further: channels-last"
            ),
        };
    };
    let took = started.elapsed().as_secs_f64();
    let saved = match (&path, remember_choice) {
        (Some(p), true) => match remember(p, key, entry) {
            Ok(()) => format!("timed in {took:.1} s, remembered in {}", p.display()),
            Err(e) => format!("timed in {took:.1} s, not remembered: {e}"),
        },
        (None, true) => format!("timed in {took:.1} s, not remembered: no cache directory"),
        (_, false) => format!("timed in {took:.1} s"),
    };
    Layout {
        channels_last: entry.channels_last(),
        reason: entry.describe(&saved),
    }
}

/// Seconds per step of a throwaway copy of the model in each layout: one warm-up step, then
/// the fastest of [`TIMED_STEPS`] timed ones (the least disturbed by the rest of the
/// machine). One copy at a time, so the timing needs no more memory than training does.
/// `None` when a warm-up step alone takes over [`MAX_STEP_S`].
fn time_layouts(cfg: &Config, spec: &ModelSpec, num_classes: i64, device: Device) -> Option<Entry> {
    let batch = cfg.train.batch_size as i64;
    let size = cfg.data.image_size as i64;
    let opt_cfg = OptimizerConfig {
        lr: 1e-9,
        ..cfg.optimizer.clone()
    };
    let mut fastest = [0.0; 2];
    for (i, channels_last) in [false, true].into_iter().enumerate() {
        let mut c = Candidate::new(
            spec,
            num_classes,
            device,
            channels_last,
            &opt_cfg,
            batch,
            size,
        );
        if c.step(cfg) > MAX_STEP_S {
            return None;
        }
        fastest[i] = (0..TIMED_STEPS)
            .map(|_| c.step(cfg))
            .fold(f64::INFINITY, f64::min);
    }
    Some(Entry {
        nchw_s: fastest[0],
        channels_last_s: fastest[1],
    })
}

/// A copy of the model in one layout, its optimizer and a random batch.
struct Candidate {
    _vs: VarStore,
    model: Box<dyn tch::nn::ModuleT>,
    optimizer: Optimizer,
    x: Tensor,
    y: Tensor,
}

impl Candidate {
    fn new(
        spec: &ModelSpec,
        num_classes: i64,
        device: Device,
        channels_last: bool,
        opt_cfg: &OptimizerConfig,
        batch: i64,
        size: i64,
    ) -> Candidate {
        let vs = VarStore::new(device);
        let model = spec.build(&vs.root(), num_classes);
        let mut x = Tensor::randn([batch, 3, size, size], (Kind::Float, device));
        if channels_last {
            to_channels_last(&vs);
            x = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        }
        let y = Tensor::randint(num_classes, [batch], (Kind::Int64, device));
        let optimizer = Optimizer::new(opt_cfg, param_groups::build(&vs, opt_cfg));
        Candidate {
            _vs: vs,
            model,
            optimizer,
            x,
            y,
        }
    }

    /// One training step; its wall time in seconds.
    fn step(&mut self, cfg: &Config) -> f64 {
        let t0 = Instant::now();
        let _ = self.optimizer.zero_grad();
        let loss = {
            let _autocast = crate::ops::autocast(cfg.train.precision, self.x.device()).ok();
            self.model
                .forward_t(&self.x, true)
                .cross_entropy_for_logits(&self.y)
        };
        loss.backward();
        let _ = self.optimizer.step(1e-9, None);
        t0.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Auto;

    fn tiny() -> (Config, ModelSpec) {
        let mut cfg = Config::default();
        cfg.train.batch_size = 4;
        cfg.data.image_size = 16;
        let spec = ModelSpec::builtin(&cfg.model);
        (cfg, spec)
    }

    #[test]
    fn auto_times_once_then_reads_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(CACHE_FILE);
        let (cfg, spec) = tiny();
        let first = choose_layout_with(&cfg, &spec, 4, Device::Cpu, true, Some(path.clone()));
        assert!(
            first.reason.starts_with("auto: ") && first.reason.contains("remembered in"),
            "{first:?}"
        );
        let cache = read_cache(&path);
        assert_eq!(cache.entries.len(), 1);
        let entry = cache.entries.values().next().unwrap();
        assert!(
            entry.nchw_s > 0.0 && entry.channels_last_s > 0.0,
            "{entry:?}"
        );
        assert_eq!(entry.channels_last(), first.channels_last);
        let again = choose_layout_with(&cfg, &spec, 4, Device::Cpu, true, Some(path.clone()));
        assert_eq!(again.channels_last, first.channels_last);
        assert!(again.reason.contains("timed earlier"), "{again:?}");
        // Another batch size is another entry; the first one stays.
        let mut other = cfg.clone();
        other.train.batch_size = 2;
        choose_layout_with(&other, &spec, 4, Device::Cpu, true, Some(path.clone()));
        assert_eq!(read_cache(&path).entries.len(), 2);
    }

    #[test]
    fn the_config_wins_and_bad_caches_are_ignored() {
        let (mut cfg, spec) = tiny();
        let dir = tempfile::tempdir().unwrap();
        cfg.train.channels_last = Auto::Set(false);
        let set = choose_layout_with(&cfg, &spec, 4, Device::Cpu, true, None);
        assert_eq!(
            set,
            Layout {
                channels_last: false,
                reason: "set in the config".into()
            }
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        cfg.train.channels_last = Auto::Auto;
        // Garbage in the file: timed again, and the file is replaced by a good one.
        let path = dir.path().join(CACHE_FILE);
        std::fs::write(&path, b"{ not json").unwrap();
        let l = choose_layout_with(&cfg, &spec, 4, Device::Cpu, true, Some(path.clone()));
        assert!(l.reason.contains("remembered"), "{l:?}");
        assert_eq!(read_cache(&path).entries.len(), 1);
        // Timings that are not times (edited by hand, or another tool's file): ignored.
        let mut hostile = read_cache(&path);
        let key = hostile.entries.keys().next().unwrap().clone();
        hostile.entries.insert(
            key,
            Entry {
                nchw_s: -1.0,
                channels_last_s: 0.0,
            },
        );
        std::fs::write(&path, serde_json::to_string(&hostile).unwrap()).unwrap();
        assert!(read_cache(&path).entries.is_empty());
        let l = choose_layout_with(&cfg, &spec, 4, Device::Cpu, true, Some(path.clone()));
        assert!(l.reason.contains("remembered"), "{l:?}");
        // A directory where the file should be: still a choice, the run goes on.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join(CACHE_FILE)).unwrap();
        let l = choose_layout_with(
            &cfg,
            &spec,
            4,
            Device::Cpu,
            true,
            Some(blocked.join(CACHE_FILE)),
        );
        assert!(l.reason.contains("not remembered"), "{l:?}");
    }

    #[test]
    fn the_faster_layout_wins_and_the_reason_says_by_how_much() {
        let e = Entry {
            nchw_s: 0.2,
            channels_last_s: 0.1,
        };
        assert!(e.channels_last());
        assert!(
            e.describe("x").contains("2.00x the speed of NCHW"),
            "{}",
            e.describe("x")
        );
        let e = Entry {
            nchw_s: 0.1,
            channels_last_s: 0.15,
        };
        assert!(!e.channels_last());
        assert!(e.describe("x").contains("1.50x the speed of channels-last"));
        assert!(cpu_name().contains('['), "{}", cpu_name());
    }
}
