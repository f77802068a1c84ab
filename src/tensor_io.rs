//! tch tensors to and from safetensors bytes (with string metadata), through the
//! `safetensors` crate so we control the metadata and the write (tch's writer has neither).

use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Errors name the tensor or the problem in the file.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    /// Writing: the named tensor's kind has no safetensors dtype in [`dtype_of`].
    #[error("tensor `{0}` has dtype {1:?}, which safetensors cannot hold here")]
    UnsupportedKind(String, Kind),
    /// Reading: the named tensor's dtype has no tch kind in [`kind_of`].
    #[error("tensor `{0}` has dtype {1:?}, which hondo cannot read")]
    UnsupportedDtype(String, Dtype),
    /// The bytes are not valid safetensors, or a tensor view could not be built (the
    /// `safetensors` crate's message).
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    /// libtorch failed on the named tensor (copying its data out or in).
    #[error("tensor `{0}`: {1}")]
    Tch(String, tch::TchError),
}

/// The safetensors dtype of a tch kind: floats (f64, f32, f16, bf16), signed ints (8 to 64
/// bits), `u8` and bool; `None` for any other kind.
pub fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// The tch kind of a safetensors dtype, the inverse of [`dtype_of`]; `None` for dtypes it
/// does not map.
pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Raw little-endian bytes of a tensor (moved to the CPU, made contiguous).
pub fn bytes_of(name: &str, t: &Tensor) -> Result<(Dtype, Vec<usize>, Vec<u8>), TensorIoError> {
    let dtype =
        dtype_of(t.kind()).ok_or_else(|| TensorIoError::UnsupportedKind(name.into(), t.kind()))?;
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)
        .map_err(|e| TensorIoError::Tch(name.into(), e))?;
    Ok((dtype, t.size().iter().map(|&d| d as usize).collect(), data))
}

/// Serialises named tensors and metadata to safetensors bytes; names are sorted.
pub fn serialize(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, TensorIoError> {
    let raw = tensors
        .iter()
        .map(|(n, t)| bytes_of(n, t).map(|b| (n.clone(), b)))
        .collect::<Result<Vec<_>, _>>()?;
    let views = raw
        .iter()
        .map(|(n, (dtype, shape, data))| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| TensorIoError::Format(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, &Some(metadata)).map_err(|e| TensorIoError::Format(e.to_string()))
}

/// Tensors with their names.
pub type Named = Vec<(String, Tensor)>;

/// Named tensors (on the CPU) and metadata from safetensors bytes.
pub fn deserialize(bytes: &[u8]) -> Result<(Named, HashMap<String, String>), TensorIoError> {
    let format = |e: safetensors::SafeTensorError| {
        TensorIoError::Format(match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                "the tensor data runs past the end of the file (truncated file?)".to_string()
            }
            e => e.to_string(),
        })
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(format)?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(format)?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype())
            .ok_or_else(|| TensorIoError::UnsupportedDtype(name.clone(), view.dtype()))?;
        let shape: Vec<i64> = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                TensorIoError::Format(format!(
                    "tensor `{name}` has shape {:?}: a dimension over {}",
                    view.shape(),
                    i64::MAX
                ))
            })?;
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| TensorIoError::Tch(name.clone(), e))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_bit_exact_for_several_kinds() {
        let tensors = vec![
            (
                "a".to_string(),
                Tensor::randn([3, 4], (Kind::Float, Device::Cpu)),
            ),
            (
                "b".to_string(),
                Tensor::randn([5], (Kind::BFloat16, Device::Cpu)),
            ),
            ("c".to_string(), Tensor::from(7i64)),
            (
                "d".to_string(),
                Tensor::randn([4, 3], (Kind::Float, Device::Cpu)).transpose(0, 1),
            ),
        ];
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        let bytes = serialize(&tensors, meta.clone()).unwrap();
        let (back, m) = deserialize(&bytes).unwrap();
        assert_eq!(m, meta);
        for ((n1, t1), (n2, t2)) in tensors.iter().zip(&back) {
            assert_eq!(n1, n2);
            assert_eq!(t1.kind(), t2.kind());
            assert!(t1.equal(t2), "{n1}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(deserialize(b"not a safetensors file").is_err());
    }
}
