//! Reader for `torch.save` files: the zip format (PyTorch >= 1.6) and the legacy format
//! (`_use_new_zipfile_serialization=False`, and torchvision's original 2017 files).
//!
//! Zip: `<prefix>/data.pkl` holds the pickled object, with tensors as
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and storages as
//! persistent ids `('storage', torch.FloatStorage, key, location, numel)` that name the
//! entries `<prefix>/data/<key>` (raw little-endian elements).
//!
//! Legacy: five pickles back to back (magic number, protocol version 1001, sys info, the
//! object, the sorted list of storage keys), then each storage in that order as an 8-byte
//! little-endian element count followed by its raw elements.

use super::pickle::{self, PickleError, StorageRef, TensorSpec, Value};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use tch::{Device, Kind, Tensor};

/// Why a torch file could not be read; the caller adds the path.
#[derive(Debug)]
pub enum ReadError {
    Malformed(String),
    Forbidden(String),
}

impl From<PickleError> for ReadError {
    fn from(e: PickleError) -> Self {
        match e {
            PickleError::Malformed(m) => ReadError::Malformed(m),
            PickleError::Forbidden(g) => ReadError::Forbidden(g),
        }
    }
}

fn malformed<T>(msg: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Malformed(msg.into()))
}

const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// Largest `data.pkl` read (the pickle of a state dict with 100 000 tensors is about 10 MB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// How much a compressed storage entry may expand, at most, over all storages: PyTorch
/// writes storages uncompressed, so a file that re-compressed them cannot reasonably claim
/// more than this many times its own size in tensor data.
const MAX_EXPANSION: u64 = 8;
const LEGACY_PROTOCOL: i128 = 1001;

/// Which variant of the format a file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchFormat {
    Zip,
    Legacy,
}

/// Reads the name -> tensor entries of the state dict a `torch.save` file holds
/// (unwrapping `{"state_dict": ...}` and `{"model": ...}`), in file order.
pub fn read<R: Read + Seek>(mut r: R) -> Result<(TorchFormat, Vec<(String, Tensor)>), ReadError> {
    let io = |e: std::io::Error| ReadError::Malformed(format!("read error: {e}"));
    let mut head = Vec::with_capacity(512);
    r.by_ref().take(512).read_to_end(&mut head).map_err(io)?;
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok((TorchFormat::Zip, read_zip(r)?))
    } else if head.first() == Some(&0x80) {
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes).map_err(io)?;
        Ok((TorchFormat::Legacy, read_legacy(&bytes)?))
    } else if head.len() > 262 && &head[257..262] == b"ustar" {
        malformed("tar-format checkpoint (PyTorch before 0.1.10) is not supported")
    } else {
        // Not what torch.save writes; still report a forbidden global in a bare pickle.
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes).map_err(io)?;
        match pickle::unpickle(&bytes, 0) {
            Err(PickleError::Forbidden(g)) => Err(ReadError::Forbidden(g)),
            _ => malformed("not a PyTorch file (neither a zip archive nor a pickle)"),
        }
    }
}

fn read_zip<R: Read + Seek>(mut r: R) -> Result<Vec<(String, Tensor)>, ReadError> {
    let file_len = r
        .seek(SeekFrom::End(0))
        .and_then(|n| r.seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(|e| ReadError::Malformed(format!("read error: {e}")))?;
    let mut zip = match zip::ZipArchive::new(r) {
        Ok(z) => z,
        Err(e) => return malformed(format!("not a valid zip archive ({e}); truncated file?")),
    };
    let pkl = zip
        .file_names()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(str::to_owned);
    let Some(pkl) = pkl else {
        return malformed("zip archive without a data.pkl entry (not a torch.save file?)");
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if let Ok(b) = read_entry(&mut zip, &format!("{prefix}byteorder"), 64) {
        if b.trim_ascii() != b"little" {
            return malformed(format!(
                "byte order {:?} is not supported",
                String::from_utf8_lossy(&b)
            ));
        }
    }
    let data = read_entry(&mut zip, &pkl, MAX_PICKLE_BYTES)?;
    let u = pickle::unpickle(&data, 0)?;
    drop(data);
    let entries = state_dict(&u.value)?;
    let mut storages: HashMap<(String, Kind), Tensor> = HashMap::new();
    let mut budget = Budget::new(file_len);
    let mut out = Vec::with_capacity(entries.len());
    for (name, spec) in entries {
        let key = (spec.storage.key.clone(), spec.storage.kind);
        if !storages.contains_key(&key) {
            let entry = format!("{prefix}data/{}", spec.storage.key);
            let t = read_storage(&mut zip, &entry, &name, &spec.storage, &mut budget)?;
            storages.insert(key.clone(), t);
        }
        let t = build(&name, &spec, &storages[&key], &mut budget)?;
        out.push((name, t));
    }
    Ok(out)
}

/// Bytes of tensor data a file may make: its storages (at most [`MAX_EXPANSION`] times the
/// file's size) and the copies of strided views (at most the storages' size again).
struct Budget {
    storage_left: u64,
    copies_left: u64,
}

impl Budget {
    fn new(file_len: u64) -> Budget {
        Budget {
            storage_left: file_len.saturating_mul(MAX_EXPANSION),
            copies_left: 1 << 20,
        }
    }
}

/// Reads the storage `entry` of the tensor `name`, after checking that the element count
/// the pickle declares fits in the entry and in the file: nothing is allocated for bytes
/// the file does not hold.
fn read_storage<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    entry: &str,
    name: &str,
    storage: &StorageRef,
    budget: &mut Budget,
) -> Result<Tensor, ReadError> {
    let key = &storage.key;
    let elt = storage.kind.elt_size_in_bytes() as u64;
    let Some(nbytes) = (storage.numel as u64).checked_mul(elt) else {
        return malformed(format!(
            "{name}: storage {key} declares {} elements, which overflows",
            storage.numel
        ));
    };
    let f = match zip.by_name(entry) {
        Ok(f) => f,
        Err(e) => return malformed(format!("{name}: zip entry {entry}: {e}")),
    };
    if f.size() < nbytes {
        return malformed(format!(
            "{name}: storage {key} declares {} elements ({nbytes} bytes) but its zip entry \
             {entry} holds {} bytes",
            storage.numel,
            f.size()
        ));
    }
    if nbytes > budget.storage_left {
        return malformed(format!(
            "{name}: storage {key} declares {} elements ({nbytes} bytes), more tensor data than \
             the file can hold",
            storage.numel
        ));
    }
    budget.storage_left -= nbytes;
    budget.copies_left = budget.copies_left.saturating_add(nbytes);
    // Read what the pickle declares, never more; the buffer grows only with bytes read.
    let mut raw = Vec::new();
    if let Err(e) = f.take(nbytes).read_to_end(&mut raw) {
        return malformed(format!("{name}: zip entry {entry}: {e}; truncated file?"));
    }
    if (raw.len() as u64) < nbytes {
        return malformed(format!(
            "{name}: zip entry {entry} ends after {} of its {nbytes} bytes (truncated file?)",
            raw.len()
        ));
    }
    storage_tensor(&raw, storage.kind, key)
}

/// Reads a small zip entry, refusing one that holds more than `limit` bytes.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, ReadError> {
    let f = match zip.by_name(name) {
        Ok(f) => f,
        Err(e) => return malformed(format!("zip entry {name}: {e}")),
    };
    let mut buf = Vec::new();
    if let Err(e) = f.take(limit + 1).read_to_end(&mut buf) {
        return malformed(format!("zip entry {name}: {e}; truncated file?"));
    }
    if buf.len() as u64 > limit {
        return malformed(format!("zip entry {name} is larger than {limit} bytes"));
    }
    Ok(buf)
}

fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, ReadError> {
    let magic = pickle::unpickle(bytes, 0)?;
    if !matches!(magic.value, Value::Int(LEGACY_MAGIC)) {
        return malformed("not a PyTorch legacy file (bad magic number)");
    }
    let protocol = pickle::unpickle(bytes, magic.end)?;
    if !matches!(protocol.value, Value::Int(LEGACY_PROTOCOL)) {
        return malformed(format!(
            "unsupported legacy protocol version {:?}",
            protocol.value
        ));
    }
    let sys_info = pickle::unpickle(bytes, protocol.end)?;
    if matches!(
        sys_info.value.get("little_endian"),
        Some(Value::Bool(false))
    ) {
        return malformed("big-endian legacy files are not supported");
    }
    let main = pickle::unpickle(bytes, sys_info.end)?;
    let key_list = pickle::unpickle(bytes, main.end)?;
    let keys: Vec<String> = match &key_list.value {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s.to_string()),
                other => malformed(format!("storage key is a {}", other.type_name())),
            })
            .collect::<Result<_, _>>()?,
        other => return malformed(format!("storage key list is a {}", other.type_name())),
    };
    let kinds: HashMap<&str, Kind> = main
        .storages
        .iter()
        .map(|s| (s.key.as_str(), s.kind))
        .collect();
    let mut budget = Budget::new(bytes.len() as u64);
    let mut pos = key_list.end;
    let mut storages: HashMap<String, (Kind, Tensor)> = HashMap::new();
    for key in &keys {
        let Some(&kind) = kinds.get(key.as_str()) else {
            return malformed(format!("storage {key} is listed but never referenced"));
        };
        let Some(header) = bytes.get(pos..pos + 8) else {
            return malformed(format!(
                "storage {key}: unexpected end of file at byte {pos} (truncated file?)"
            ));
        };
        let numel = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        pos += 8;
        let nbytes = numel.checked_mul(kind.elt_size_in_bytes() as u64);
        let end = nbytes
            .and_then(|n| (pos as u64).checked_add(n))
            .filter(|&e| e <= bytes.len() as u64);
        let Some(end) = end else {
            return malformed(format!(
                "storage {key}: {numel} elements at byte {pos} run past the end of the file (truncated file?)"
            ));
        };
        budget.copies_left = budget.copies_left.saturating_add(end - pos as u64);
        let t = storage_tensor(&bytes[pos..end as usize], kind, key)?;
        pos = end as usize;
        storages.insert(key.clone(), (kind, t));
    }
    let entries = state_dict(&main.value)?;
    let mut out = Vec::with_capacity(entries.len());
    for (name, spec) in entries {
        let Some((kind, storage)) = storages.get(&spec.storage.key) else {
            return malformed(format!(
                "{name}: storage {} is missing from the file",
                spec.storage.key
            ));
        };
        if *kind != spec.storage.kind {
            return malformed(format!(
                "{name}: storage {} is read with two element types",
                spec.storage.key
            ));
        }
        out.push((name.clone(), build(&name, &spec, storage, &mut budget)?));
    }
    Ok(out)
}

/// The state dict inside an unpickled object: the object itself, or its `state_dict` or
/// `model` entry when that is a dict (timm, Lightning and training-script checkpoints).
fn state_dict(root: &Value) -> Result<Vec<(String, TensorSpec)>, ReadError> {
    let Value::Dict(_) = root else {
        return malformed(format!(
            "the file holds a {}, not a state dict",
            root.type_name()
        ));
    };
    let dict = ["state_dict", "model"]
        .iter()
        .find_map(|k| root.get(k).filter(|v| matches!(v, Value::Dict(_))))
        .unwrap_or_else(|| root.clone());
    let Value::Dict(d) = &dict else {
        unreachable!("checked to be a dict")
    };
    let mut out = Vec::new();
    for (k, v) in d.borrow().iter() {
        let Value::Str(name) = k else {
            return malformed(format!(
                "state dict key is a {}, not a string",
                k.type_name()
            ));
        };
        match v {
            Value::Tensor(spec) => out.push((name.to_string(), spec.clone())),
            other => {
                return malformed(format!(
                    "state dict entry {name} is a {}, not a tensor",
                    other.type_name()
                ))
            }
        }
    }
    Ok(out)
}

/// A 1-D tensor over a storage's raw little-endian bytes.
fn storage_tensor(raw: &[u8], kind: Kind, key: &str) -> Result<Tensor, ReadError> {
    let elt = kind.elt_size_in_bytes();
    if raw.len() % elt != 0 {
        return malformed(format!(
            "storage {key}: {} bytes is not a whole number of {kind:?} elements",
            raw.len()
        ));
    }
    let numel = (raw.len() / elt) as i64;
    match Tensor::f_from_data_size(raw, &[numel], kind) {
        Ok(t) => Ok(t),
        Err(e) => malformed(format!("storage {key}: {e}")),
    }
}

/// The contiguous tensor `spec` describes over `storage`, after checking it stays in bounds
/// and holds no more elements than the storage (no `expand`ed or overlapping views), with
/// checked arithmetic throughout.
fn build(
    name: &str,
    spec: &TensorSpec,
    storage: &Tensor,
    budget: &mut Budget,
) -> Result<Tensor, ReadError> {
    let StorageRef {
        key, view_offset, ..
    } = &spec.storage;
    let storage_numel = storage.size()[0];
    let bad = |why: &str| {
        malformed(format!(
            "{name}: {why} (size {:?}, stride {:?}, offset {} in storage {key} of {storage_numel} elements)",
            spec.size, spec.stride, spec.offset
        ))
    };
    if spec.offset < 0 || spec.size.iter().any(|&s| s < 0) || spec.stride.iter().any(|&s| s < 0) {
        return bad("negative size, stride or offset");
    }
    let numel = spec.size.iter().try_fold(1i64, |n, &s| n.checked_mul(s));
    let offset = view_offset.checked_add(spec.offset);
    let (Some(numel), Some(offset)) = (numel, offset) else {
        return bad("size overflows");
    };
    if numel > storage_numel {
        return bad(
            "the tensor has more elements than its storage (an expanded or overlapping view)",
        );
    }
    if numel > 0 {
        let last = spec
            .size
            .iter()
            .zip(&spec.stride)
            .try_fold(offset, |acc, (&n, &s)| {
                (n - 1).checked_mul(s).and_then(|d| acc.checked_add(d))
            });
        match last {
            Some(last) if last < storage_numel => {}
            _ => return bad("tensor reaches past the end of its storage"),
        }
    }
    let whole = offset == 0 && numel == storage_numel && is_contiguous(&spec.size, &spec.stride);
    if !whole {
        let bytes = (numel as u64).saturating_mul(storage.kind().elt_size_in_bytes() as u64);
        if bytes > budget.copies_left {
            return bad("the strided views copy out more data than the file's storages hold");
        }
        budget.copies_left -= bytes;
    }
    let result = if whole {
        storage.f_view(spec.size.as_slice())
    } else {
        // Copy out of the storage so a small slice does not keep a large storage alive.
        storage
            .f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), offset)
            .and_then(|v| {
                let mut out = Tensor::f_empty(spec.size.as_slice(), (storage.kind(), Device::Cpu))?;
                out.f_copy_(&v)?;
                Ok(out)
            })
    };
    match result {
        Ok(t) => Ok(t),
        Err(e) => malformed(format!("{name}: {e}")),
    }
}

/// Whether row-major strides describe a dense tensor of `size`.
fn is_contiguous(size: &[i64], stride: &[i64]) -> bool {
    let mut expected = 1;
    for (&n, &s) in size.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::pickle::tests::s;
    use std::io::{Cursor, Write};

    /// `_rebuild_tensor_v2(('storage', torch.FloatStorage, key, 'cpu', numel), offset, size, stride)`.
    fn tensor_pickle(
        out: &mut Vec<u8>,
        key: &str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) {
        // LONG1 with 8 bytes: any i64.
        let int = |out: &mut Vec<u8>, v: i64| {
            out.extend_from_slice(&[0x8a, 8]);
            out.extend_from_slice(&v.to_le_bytes());
        };
        out.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        s(out, "storage");
        out.extend_from_slice(b"ctorch\nFloatStorage\n");
        s(out, key);
        s(out, "cpu");
        int(out, numel);
        out.extend_from_slice(b"tQ");
        int(out, offset);
        out.push(b'(');
        for &n in size {
            int(out, n);
        }
        out.extend_from_slice(b"t(");
        for &n in stride {
            int(out, n);
        }
        out.extend_from_slice(&[b't', 0x89, b'N', b't', b'R']);
    }

    fn zip_file(pkl: &[u8], storages: &[(&str, &[f32])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("archive/data.pkl", opts).unwrap();
        w.write_all(pkl).unwrap();
        for (key, values) in storages {
            w.start_file(format!("archive/data/{key}"), opts).unwrap();
            for v in *values {
                w.write_all(&v.to_le_bytes()).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn zip_with_transposed_and_offset_views() {
        let mut pkl = b"\x80\x02}(".to_vec();
        s(&mut pkl, "t");
        tensor_pickle(&mut pkl, "0", 6, 0, &[3, 2], &[1, 3]);
        s(&mut pkl, "o");
        tensor_pickle(&mut pkl, "0", 6, 4, &[2], &[1]);
        s(&mut pkl, "w");
        tensor_pickle(&mut pkl, "0", 6, 0, &[2, 3], &[3, 1]);
        pkl.extend_from_slice(b"u.");
        let file = zip_file(&pkl, &[("0", &[0., 1., 2., 3., 4., 5.])]);
        let (fmt, tensors) = read(Cursor::new(&file)).unwrap();
        assert_eq!(fmt, TorchFormat::Zip);
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["t", "o", "w"]);
        assert_eq!(tensors[0].1.size(), [3, 2]);
        assert_eq!(values(&tensors[0].1), [0., 3., 1., 4., 2., 5.]);
        assert!(tensors[0].1.is_contiguous());
        assert_eq!(values(&tensors[1].1), [4., 5.]);
        assert_eq!(values(&tensors[2].1), [0., 1., 2., 3., 4., 5.]);
    }

    #[test]
    fn out_of_bounds_view_is_an_error() {
        let mut pkl = b"\x80\x02}(".to_vec();
        s(&mut pkl, "x");
        tensor_pickle(&mut pkl, "0", 4, 2, &[2, 2], &[2, 1]);
        pkl.extend_from_slice(b"u.");
        let file = zip_file(&pkl, &[("0", &[0., 1., 2., 3.])]);
        match read(Cursor::new(&file)) {
            Err(ReadError::Malformed(m)) => {
                assert!(m.contains("x: tensor reaches past the end"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unwraps_state_dict_and_rejects_non_tensor_entries() {
        let mut pkl = b"\x80\x02}(".to_vec();
        s(&mut pkl, "epoch");
        pkl.extend_from_slice(b"K\x03");
        s(&mut pkl, "state_dict");
        pkl.extend_from_slice(b"}(");
        s(&mut pkl, "w");
        tensor_pickle(&mut pkl, "0", 2, 0, &[2], &[1]);
        pkl.extend_from_slice(b"uu.");
        let file = zip_file(&pkl, &[("0", &[7., 8.])]);
        let (_, tensors) = read(Cursor::new(&file)).unwrap();
        assert_eq!(tensors.len(), 1);
        assert_eq!(values(&tensors[0].1), [7., 8.]);

        let mut pkl = b"\x80\x02}(".to_vec();
        s(&mut pkl, "epoch");
        pkl.extend_from_slice(b"K\x03u.");
        let file = zip_file(&pkl, &[]);
        match read(Cursor::new(&file)) {
            Err(ReadError::Malformed(m)) => assert!(m.contains("epoch is a int"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_storage_and_garbage_are_errors() {
        let mut pkl = b"\x80\x02}(".to_vec();
        s(&mut pkl, "w");
        tensor_pickle(&mut pkl, "9", 2, 0, &[2], &[1]);
        pkl.extend_from_slice(b"u.");
        let file = zip_file(&pkl, &[]);
        assert!(
            matches!(read(Cursor::new(&file)), Err(ReadError::Malformed(m)) if m.contains("archive/data/9"))
        );
        assert!(matches!(
            read(Cursor::new(b"hello")),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(Cursor::new(b"")),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(Cursor::new(&file[..file.len() / 2])),
            Err(ReadError::Malformed(_))
        ));
    }

    /// A legacy file as PyTorch 0.1-0.3 under Python 2 wrote them (torchvision's 2017
    /// files): byte strings, `_rebuild_tensor` (v1), storage view metadata, CUDA location.
    #[test]
    fn python2_legacy_file_with_rebuild_tensor_v1_and_storage_view() {
        let mut f = vec![0x80, 2, 0x8a, 10];
        f.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
        f.extend_from_slice(b".\x80\x02M\xe9\x03.");
        f.extend_from_slice(b"\x80\x02}U\x0dlittle_endian\x88s.");
        f.extend_from_slice(b"\x80\x02}(U\x01wctorch._utils\n_rebuild_tensor\n(");
        f.extend_from_slice(b"(U\x07storagectorch\nFloatStorage\nU\x03123U\x06cuda:0K\x06");
        f.extend_from_slice(b"U\x03124K\x02K\x03\x87tQK\x01K\x02\x85K\x01\x85tRu.");
        f.extend_from_slice(b"\x80\x02]q\x00(U\x03123e.");
        f.extend_from_slice(&6u64.to_le_bytes());
        for v in [0f32, 1., 2., 3., 4., 5.] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        let (fmt, tensors) = read(Cursor::new(&f)).unwrap();
        assert_eq!(fmt, TorchFormat::Legacy);
        assert_eq!(tensors[0].0, "w");
        // View at element 2 of the root storage, tensor offset 1 inside the view.
        assert_eq!(values(&tensors[0].1), [3., 4.]);
        // Every cut fails cleanly.
        for len in 0..f.len() {
            assert!(read(Cursor::new(&f[..len])).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(is_contiguous(&[], &[]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]));
    }

    fn error_of(file: &[u8]) -> String {
        match read(Cursor::new(file)) {
            Err(ReadError::Malformed(m)) => m,
            Err(ReadError::Forbidden(g)) => panic!("forbidden {g}"),
            Ok(_) => panic!("a lying file was read"),
        }
    }

    /// One tensor `x` over storage `0` holding `values`.
    fn one_tensor(
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
        values: &[f32],
    ) -> Vec<u8> {
        let mut pkl = b"\x80\x02}(".to_vec();
        s(&mut pkl, "x");
        tensor_pickle(&mut pkl, "0", numel, offset, size, stride);
        pkl.extend_from_slice(b"u.");
        zip_file(&pkl, &[("0", values)])
    }

    #[test]
    fn storage_claiming_more_than_the_file_holds_is_refused_before_allocating() {
        // 2^40 floats (4 TiB) declared, 4 present.
        let m = error_of(&one_tensor(1 << 40, 0, &[4], &[1], &[0.; 4]));
        assert!(
            m.contains("x: storage 0 declares 1099511627776 elements"),
            "{m}"
        );
        // An element count whose byte size overflows.
        let m = error_of(&one_tensor(i64::MAX, 0, &[4], &[1], &[0.; 4]));
        assert!(m.contains("x: storage 0") && m.contains("overflows"), "{m}");
        // Fewer bytes than declared.
        let m = error_of(&one_tensor(8, 0, &[4], &[1], &[0.; 4]));
        assert!(m.contains("holds 16 bytes"), "{m}");
    }

    #[test]
    fn views_that_claim_more_than_their_storage_are_refused() {
        let four = [0f32, 1., 2., 3.];
        // `expand`: a million by a million over four elements, stride 0.
        let m = error_of(&one_tensor(4, 0, &[1 << 20, 1 << 20], &[0, 0], &four));
        assert!(
            m.contains("x: the tensor has more elements than its storage"),
            "{m}"
        );
        // Sizes whose product overflows.
        let m = error_of(&one_tensor(4, 0, &[1 << 62, 8], &[1, 1], &four));
        assert!(m.contains("x: size overflows"), "{m}");
        // Strides whose extent overflows.
        let m = error_of(&one_tensor(4, 0, &[2, 2], &[i64::MAX / 2 + 1, 1], &four));
        assert!(m.contains("x: tensor reaches past the end"), "{m}");
        // An offset past the storage, and an offset that overflows with the view's.
        let m = error_of(&one_tensor(4, 4, &[1], &[1], &four));
        assert!(m.contains("x: tensor reaches past the end"), "{m}");
        let m = error_of(&one_tensor(4, i64::MAX, &[2], &[1], &four));
        assert!(m.contains("x: tensor reaches past the end"), "{m}");
        // Negative strides.
        let m = error_of(&one_tensor(4, 3, &[2], &[-1], &four));
        assert!(m.contains("x: negative"), "{m}");
        // A zero-sized tensor with a huge dimension is fine: it holds nothing.
        let (_, t) = read(Cursor::new(&one_tensor(
            4,
            0,
            &[0, 1 << 40],
            &[1, 1],
            &four,
        )))
        .unwrap();
        assert_eq!(t[0].1.size(), [0, 1 << 40]);
    }

    #[test]
    fn copies_of_strided_views_are_bounded_by_the_storage() {
        // 40 transposed views of one 256 KiB storage would copy 10 MiB out of it.
        let values = vec![1f32; 1 << 16];
        let mut pkl = b"\x80\x02}(".to_vec();
        for i in 0..40 {
            s(&mut pkl, &format!("t{i}"));
            tensor_pickle(&mut pkl, "0", 1 << 16, 0, &[256, 256], &[1, 256]);
        }
        pkl.extend_from_slice(b"u.");
        let m = error_of(&zip_file(&pkl, &[("0", &values)]));
        assert!(
            m.contains("copy out more data than the file's storages hold"),
            "{m}"
        );
        // One transposed view reads.
        let mut pkl = b"\x80\x02}(".to_vec();
        s(&mut pkl, "t");
        tensor_pickle(&mut pkl, "0", 1 << 16, 0, &[256, 256], &[1, 256]);
        pkl.extend_from_slice(b"u.");
        assert!(read(Cursor::new(&zip_file(&pkl, &[("0", &values)]))).is_ok());
    }

    #[test]
    fn deeply_nested_pickle_in_a_zip_is_an_error() {
        let mut pkl = b"\x80\x02".to_vec();
        pkl.extend(std::iter::repeat_n(b']', 50_000));
        pkl.extend(std::iter::repeat_n(b'a', 49_999));
        pkl.push(b'.');
        let m = error_of(&zip_file(&pkl, &[]));
        assert!(m.contains("nest more than"), "{m}");
        // Legacy: the same inside the object pickle.
        let mut f = vec![0x80, 2, 0x8a, 10];
        f.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
        f.extend_from_slice(b".\x80\x02M\xe9\x03.\x80\x02}.");
        f.extend_from_slice(&pkl);
        let m = error_of(&f);
        assert!(m.contains("nest more than"), "{m}");
    }
}
