//! Export a checkpoint's model for use outside hondo.
//!
//! - [`Format::Safetensors`]: the model's tensors under torchvision's `state_dict` names
//!   (`num_batches_tracked` included, no optimizer state), with metadata (architecture,
//!   classes, input size, normalisation) as string key/values; a ResNet loads into
//!   `torchvision.models.resnetXX(num_classes=N)` with `strict=True`.
//! - [`Format::TorchScript`]: the model traced in eval mode. By default the traced
//!   function takes what a user has, `float32 [b, 3, h, w]` RGB in `[0, 1]` (torchvision's
//!   `ToTensor()` output), and normalises inside the graph with the checkpoint's mean and
//!   std; [`Input::Normalized`] traces the bare network (logits of normalised input).
//!   Resizing is not in the graph: feed `image_size` crops, as [`crate::predict`] does.
//! - [`Format::Ot`]: libtorch's tensor archive (`Tensor::save_multi`) with the same names,
//!   readable by `tch::nn::VarStore::load`.
//!
//! - [`Format::Onnx`]: an ONNX graph of standard operators written by hondo ([`onnx`]),
//!   taking RGB in `[0, 1]` and normalising inside by default, as TorchScript; the
//!   metadata are the model's `metadata_props`.
//!
//! TorchScript and `.ot` files cannot hold string metadata: a `FILE.json` sidecar carries it.

pub mod onnx;

use crate::checkpoint::{self, atomic, Meta};
use crate::tensor_io;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.safetensors`: the tensors under torchvision's names, with metadata inside.
    Safetensors,
    /// A TorchScript module traced in eval mode (`.pt`), loadable with `torch.jit.load`,
    /// plus a `FILE.json` metadata sidecar.
    TorchScript,
    /// libtorch's tensor archive (`.ot`), plus a `FILE.json` metadata sidecar.
    Ot,
    /// An ONNX model (`.onnx`, opset [`onnx::OPSET`]) with the metadata inside.
    Onnx,
}

impl Format {
    /// Parses `safetensors`, `torchscript`, `ot` or `onnx`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "safetensors" => Some(Format::Safetensors),
            "torchscript" => Some(Format::TorchScript),
            "ot" => Some(Format::Ot),
            "onnx" => Some(Format::Onnx),
            _ => None,
        }
    }

    /// The format a file name implies: `.safetensors`, `.pt`/`.ts`/`.torchscript`, `.ot`,
    /// `.onnx`.
    pub fn from_extension(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "safetensors" => Some(Format::Safetensors),
            "pt" | "ts" | "torchscript" => Some(Format::TorchScript),
            "ot" => Some(Format::Ot),
            "onnx" => Some(Format::Onnx),
            _ => None,
        }
    }
}

/// What a traced module takes as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `float32 [b, 3, h, w]` RGB in `[0, 1]`; normalisation is part of the graph.
    Unit,
    /// Already normalised `float32 [b, 3, h, w]`: the bare network.
    Normalized,
}

impl Input {
    /// A one-line description of the input tensor, for messages and the sidecar.
    pub fn describe(self) -> &'static str {
        match self {
            Input::Unit => {
                "float32 [batch, 3, image_size, image_size] RGB in [0, 1]; normalised inside"
            }
            Input::Normalized => {
                "float32 [batch, 3, image_size, image_size] RGB, normalised ((x - mean) / std)"
            }
        }
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The file written (`out`).
    pub path: PathBuf,
    /// The metadata sidecar (TorchScript and `.ot`).
    pub sidecar: Option<PathBuf>,
    /// Tensors written: parameters and buffers (`num_batches_tracked` included).
    pub tensors: usize,
}

/// The preprocessing and provenance every export carries, as JSON values: the one list
/// behind the safetensors metadata ([`metadata`]) and the sidecar file.
fn fields(meta: &Meta) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("hondo_version", env!("CARGO_PKG_VERSION").into()),
        ("arch", meta.arch.clone().into()),
        ("num_classes", meta.num_classes.into()),
        ("classes", meta.classes.clone().into()),
        ("image_size", meta.image_size.into()),
        ("crop_fraction", meta.crop_fraction.into()),
        ("mean", meta.mean.to_vec().into()),
        ("std", meta.std.to_vec().into()),
    ]
}

/// The metadata an export carries: string keys and values (strings as they are, numbers
/// and lists as JSON), plus safetensors' `format = pt` and `hondo.exported = model`.
pub fn metadata(meta: &Meta) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = fields(meta)
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            };
            (k.to_string(), v)
        })
        .collect();
    m.insert("format".into(), "pt".into());
    m.insert("hondo.exported".into(), "model".into());
    m
}

/// Exports the checkpoint of a hondo model at `checkpoint` to `out` as `format` (`input`
/// matters only for TorchScript). Errors name the file at fault.
///
/// Every format is serialised in memory first and written atomically (temporary file,
/// fsync, rename), the file and its sidecar both staged before either replaces anything:
/// a full disk or a kill leaves the previous export as it was.
pub fn export(
    checkpoint: &Path,
    out: &Path,
    format: Format,
    input: Input,
) -> crate::Result<Exported> {
    export_impl(checkpoint, out, format, input, None).map_err(crate::Error::from)
}

/// [`export`] for any model: a custom model's checkpoint is rebuilt through `spec` for
/// TorchScript tracing (`None`: hondo's own architectures).
pub fn export_with(
    checkpoint: &Path,
    out: &Path,
    format: Format,
    input: Input,
    spec: Option<&crate::models::ModelSpec>,
) -> crate::Result<Exported> {
    export_impl(checkpoint, out, format, input, spec).map_err(crate::Error::from)
}

fn export_impl(
    checkpoint: &Path,
    out: &Path,
    format: Format,
    input: Input,
    spec: Option<&crate::models::ModelSpec>,
) -> anyhow::Result<Exported> {
    let may_replace = |path: &Path| {
        crate::file::check_output(path, &[checkpoint], crate::file::OutputKind::Export)
            .map_err(|e| anyhow::anyhow!("cannot write {}: it {e}", path.display()))
    };
    may_replace(out)?;
    // The file's bytes, its tensor count, and the sidecar's text for the formats that
    // cannot hold metadata themselves.
    let (bytes, tensors, side_text) = match format {
        Format::Safetensors => {
            let ckpt = checkpoint::read(checkpoint)?;
            let bytes = tensor_io::serialize(&ckpt.model, metadata(&ckpt.meta))
                .map_err(|e| anyhow::anyhow!("{}: {e}", checkpoint.display()))?;
            (bytes, ckpt.model.len(), None)
        }
        Format::Onnx => {
            let ckpt = checkpoint::read(checkpoint)?;
            let named = |e: String| anyhow::anyhow!("{}: {e}", checkpoint.display());
            onnx::supported(&ckpt.meta.arch).map_err(named)?;
            let mut props = metadata(&ckpt.meta);
            props.remove("format");
            props.insert("input".into(), input.describe().into());
            let bytes = onnx::to_bytes(&ckpt.model, &ckpt.meta, input == Input::Unit, props)
                .map_err(named)?;
            (bytes, ckpt.model.len(), None)
        }
        Format::Ot => {
            let ckpt = checkpoint::read(checkpoint)?;
            let bytes = ot_bytes(&ckpt.model)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            (
                bytes,
                ckpt.model.len(),
                Some(sidecar_text(&ckpt.meta, None)?),
            )
        }
        Format::TorchScript => {
            let restored = match spec {
                Some(spec) => checkpoint::restore_with(checkpoint, Device::Cpu, spec)?,
                None => checkpoint::restore(checkpoint, Device::Cpu)?,
            };
            let tensors = restored.vs.variables().len();
            let text = sidecar_text(&restored.meta, Some(input))?;
            let bytes = traced_bytes(restored, input)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e:#}", out.display()))?;
            (bytes, tensors, Some(text))
        }
    };
    if side_text.is_some() {
        may_replace(&sidecar_path(out))?;
    }
    // Both files staged before either replaces anything.
    let main = stage(out, &bytes)?;
    let side = match &side_text {
        Some(text) => {
            let path = sidecar_path(out);
            let staged = stage(&path, text.as_bytes())?;
            Some((staged, path))
        }
        None => None,
    };
    commit(main, out)?;
    let sidecar = match side {
        Some((staged, path)) => {
            commit(staged, &path)?;
            Some(path)
        }
        None => None,
    };
    Ok(Exported {
        path: out.into(),
        sidecar,
        tensors,
    })
}

fn stage(path: &Path, bytes: &[u8]) -> anyhow::Result<atomic::Staged> {
    atomic::stage(path, bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn commit(staged: atomic::Staged, path: &Path) -> anyhow::Result<()> {
    staged
        .commit()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Traces a restored model in eval mode (frozen, as `torch.jit.trace` of the eval-mode
/// module) and loads the result.
pub fn trace(restored: checkpoint::Restored, input: Input) -> crate::Result<tch::CModule> {
    crate::error::boundary(|| {
        let bytes = traced_bytes(restored, input)?;
        Ok(tch::CModule::load_data(&mut std::io::Cursor::new(bytes))?)
    })
}

/// Traces a restored model in eval mode and serialises it as `torch.jit.save` does, in
/// memory. The VarStore is frozen first (tracing rejects tensors that require grad) and
/// stays frozen: it is consumed here, and a module saved after unfreezing would not load
/// (see TCH-NOTES, Export).
pub(crate) fn traced_bytes(
    mut restored: checkpoint::Restored,
    input: Input,
) -> anyhow::Result<Vec<u8>> {
    restored.vs.freeze();
    let meta = &restored.meta;
    let size = meta.image_size as i64;
    let device = restored.vs.device();
    let constant = |v: [f64; 3]| {
        Tensor::from_slice(&v.map(|v| v as f32))
            .view([1, 3, 1, 1])
            .to_device(device)
    };
    let mean = constant(meta.mean);
    let inv_std = constant(meta.std.map(|v| 1.0 / v));
    let example = Tensor::f_rand([2, 3, size, size], (Kind::Float, device))?;
    let model = &restored.model;
    let module = raw::trace("hondo", "forward", &[example], |xs| {
        let x = match input {
            Input::Unit => (&xs[0] - &mean) * &inv_std,
            Input::Normalized => xs[0].shallow_clone(),
        };
        vec![model.forward_t(&x, false)]
    })?;
    module.save_to_memory()
}

/// libtorch's tensor archive of `tensors` (what `Tensor::save_multi` writes), in memory.
pub(crate) fn ot_bytes(tensors: &[(String, Tensor)]) -> anyhow::Result<Vec<u8>> {
    let sink = raw::SharedSink::default();
    Tensor::save_multi_to_stream(tensors, sink.clone())?;
    sink.take()
}

/// What tch does not expose: a traced module's pointer (to serialise it through
/// `csrc/export.cpp`) and an in-memory sink that never fails a libtorch write.
mod raw {
    use std::cell::RefCell;
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::rc::Rc;
    use tch::Tensor;
    use torch_sys::{CModule_, C_tensor};

    type WriteFn = extern "C" fn(ctx: *mut c_void, data: *const c_void, n: usize) -> usize;

    extern "C" {
        fn hondo_module_save(m: *mut CModule_, write: WriteFn, ctx: *mut c_void) -> *mut c_char;
        fn hondo_free_error(e: *mut c_char);
    }

    /// Bytes from libtorch's serialisers. A write that libtorch sees fail ends in
    /// `std::terminate` (its archive writer throws from a destructor, see csrc/export.cpp),
    /// so every write is taken: one that cannot be held (out of memory) marks the sink as
    /// failed, and [`Sink::finish`] reports it.
    #[derive(Default)]
    pub struct Sink {
        bytes: Vec<u8>,
        failed: bool,
    }

    impl Sink {
        pub fn push(&mut self, data: &[u8]) {
            if self.failed {
                return;
            }
            if self.bytes.try_reserve(data.len()).is_err() {
                self.failed = true;
                self.bytes = Vec::new();
                return;
            }
            self.bytes.extend_from_slice(data);
        }

        pub fn finish(self) -> anyhow::Result<Vec<u8>> {
            if self.failed {
                anyhow::bail!("out of memory while serialising");
            }
            Ok(self.bytes)
        }
    }

    /// A [`Sink`] that tch's `save_multi_to_stream` can own (it needs a `'static` writer).
    #[derive(Default, Clone)]
    pub struct SharedSink(Rc<RefCell<Sink>>);

    impl SharedSink {
        pub fn take(self) -> anyhow::Result<Vec<u8>> {
            std::mem::take(&mut *self.0.borrow_mut()).finish()
        }
    }

    impl std::io::Write for SharedSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().push(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// tch's `get_and_reset_last_err`: the message of the exception the last torch-sys
    /// call caught, if any.
    fn torch_error(call: &str) -> anyhow::Result<()> {
        // SAFETY: returns NULL or a string from strdup, ours to free.
        let e = unsafe { torch_sys::get_and_reset_last_err() };
        if e.is_null() {
            return Ok(());
        }
        // SAFETY: non-NULL: a NUL-terminated string.
        let message = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
        unsafe { libc::free(e.cast()) };
        anyhow::bail!("{call}: {message}")
    }

    /// A TorchScript module built by libtorch's tracer (what `CModule::create_by_tracing`
    /// makes), freed on drop.
    pub struct Module(*mut CModule_);

    impl Drop for Module {
        fn drop(&mut self) {
            // SAFETY: a live module from atm_create_for_tracing, freed once.
            unsafe { torch_sys::atm_free(self.0) }
        }
    }

    fn ptrs(ts: &[Tensor]) -> Vec<*mut C_tensor> {
        ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
    }

    /// Traces `f` on `inputs` as the `method` of a new module `name`, as tch's
    /// `CModule::create_by_tracing` does.
    pub fn trace(
        name: &str,
        method: &str,
        inputs: &[Tensor],
        f: impl FnOnce(&[Tensor]) -> Vec<Tensor>,
    ) -> anyhow::Result<Module> {
        let name = CString::new(name)?;
        let method = CString::new(method)?;
        let c_inputs = ptrs(inputs);
        // SAFETY: live tensors for the duration of the call; errors are caught in torch-sys.
        let m = unsafe {
            torch_sys::atm_create_for_tracing(
                name.as_ptr(),
                c_inputs.as_ptr(),
                c_inputs.len() as c_int,
            )
        };
        torch_error("tracing")?;
        anyhow::ensure!(!m.is_null(), "tracing: no module");
        let m = Module(m);
        let outputs = f(inputs);
        let c_outputs = ptrs(&outputs);
        // SAFETY: as above; `m` is live.
        unsafe {
            torch_sys::atm_end_tracing(
                m.0,
                method.as_ptr(),
                c_outputs.as_ptr(),
                c_outputs.len() as c_int,
            )
        };
        torch_error("tracing")?;
        Ok(m)
    }

    extern "C" fn append(ctx: *mut c_void, data: *const c_void, n: usize) -> usize {
        if n > 0 {
            // SAFETY: `ctx` is the `&mut Sink` that `save_to_memory` passes, alive for the
            // call; `data` points at `n` bytes.
            let sink = unsafe { &mut *(ctx as *mut Sink) };
            sink.push(unsafe { std::slice::from_raw_parts(data as *const u8, n) });
        }
        n
    }

    impl Module {
        /// `torch.jit.save` into memory.
        pub fn save_to_memory(&self) -> anyhow::Result<Vec<u8>> {
            let mut sink = Sink::default();
            // SAFETY: `self.0` is live; `append` gets `&mut sink` back, nothing else
            // touches `sink` until the call returns. Errors come back as strings.
            let e =
                unsafe { hondo_module_save(self.0, append, &mut sink as *mut Sink as *mut c_void) };
            if !e.is_null() {
                // SAFETY: a NUL-terminated string from malloc in the shim.
                let message = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
                unsafe { hondo_free_error(e) };
                anyhow::bail!("saving TorchScript: {message}");
            }
            sink.finish()
        }
    }
}

fn sidecar_path(out: &Path) -> PathBuf {
    let mut path = out.as_os_str().to_owned();
    path.push(".json");
    PathBuf::from(path)
}

fn sidecar_text(meta: &Meta, input: Option<Input>) -> anyhow::Result<String> {
    let mut v: serde_json::Map<String, serde_json::Value> = fields(meta)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if let Some(i) = input {
        v.insert("input".into(), i.describe().into());
    }
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_follow_extensions() {
        assert_eq!(Format::parse("ot"), Some(Format::Ot));
        assert_eq!(Format::parse("onnx"), Some(Format::Onnx));
        assert_eq!(Format::parse("tflite"), None);
        assert_eq!(
            Format::from_extension(Path::new("m.pt")),
            Some(Format::TorchScript)
        );
        assert_eq!(
            Format::from_extension(Path::new("m.safetensors")),
            Some(Format::Safetensors)
        );
        assert_eq!(Format::from_extension(Path::new("m")), None);
    }

    #[test]
    fn ot_bytes_are_what_save_multi_writes() {
        let tensors = vec![
            (
                "fc.weight".to_string(),
                Tensor::from_slice(&[1.0f32, -2.0, 3.5]),
            ),
            ("fc.bias".to_string(), Tensor::from_slice(&[7i64])),
        ];
        let bytes = ot_bytes(&tensors).unwrap();
        let back = Tensor::load_multi_from_stream(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!(back.len(), 2);
        for ((n, t), (m, u)) in tensors.iter().zip(&back) {
            assert_eq!(n, m);
            assert!(t.equal(u), "{n}");
        }
    }

    #[test]
    fn sinks_collect_every_write() {
        let mut sink = raw::Sink::default();
        sink.push(b"abc");
        assert_eq!(sink.finish().unwrap(), b"abc");
        let shared = raw::SharedSink::default();
        let mut w = shared.clone();
        use std::io::Write;
        w.write_all(b"xy").unwrap();
        drop(w);
        assert_eq!(shared.take().unwrap(), b"xy");
    }
}
