//! Reader for `.safetensors` files (Hugging Face's format: a JSON header, then raw
//! little-endian tensors), through the `safetensors` crate.

use safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Tensors in file order (by offset) and the header's `__metadata__`.
pub type Contents = (Vec<(String, Tensor)>, HashMap<String, String>);

/// The tch kind of a safetensors dtype, for the dtypes libtorch has.
fn kind(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Parses a whole `.safetensors` file; the error is a message for the caller to wrap.
pub fn read(bytes: &[u8]) -> Result<Contents, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| match e {
        SafeTensorError::MetadataIncompleteBuffer => "invalid safetensors file: the tensor \
                data runs past the end of the file (truncated file?)"
            .to_string(),
        e => format!("invalid safetensors file: {e}"),
    })?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("invalid safetensors header: {e}"))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut views = st.tensors();
    // File order: by position of the data.
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut tensors = Vec::with_capacity(views.len());
    for (name, view) in views {
        let Some(kind) = kind(view.dtype()) else {
            return Err(format!(
                "tensor {name}: dtype {:?} is not supported",
                view.dtype()
            ));
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| format!("tensor {name}: {e}"))?;
        tensors.push((name, t));
    }
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn round_trip_dtypes_and_metadata() {
        let f: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bf: Vec<u8> = [0x3fc0u16, 0xc000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let i: Vec<u8> = [7i64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b = vec![1u8, 0, 1];
        let views = vec![
            ("f", TensorView::new(Dtype::F32, vec![2], &f).unwrap()),
            ("bf", TensorView::new(Dtype::BF16, vec![2, 1], &bf).unwrap()),
            ("i", TensorView::new(Dtype::I64, vec![], &i).unwrap()),
            ("b", TensorView::new(Dtype::BOOL, vec![3], &b).unwrap()),
        ];
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, &Some(meta)).unwrap();
        let (tensors, metadata) = read(&bytes).unwrap();
        assert_eq!(metadata["format"], "pt");
        let get = |n: &str| &tensors.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(Vec::<f32>::try_from(get("f")).unwrap(), [1.5, -2.0]);
        assert_eq!(get("bf").kind(), Kind::BFloat16);
        assert_eq!(get("bf").size(), [2, 1]);
        let bf32 = get("bf").to_kind(Kind::Float).flatten(0, -1);
        assert_eq!(Vec::<f32>::try_from(&bf32).unwrap(), [1.5, -2.0]);
        assert_eq!(get("i").size(), Vec::<i64>::new());
        assert_eq!(get("i").int64_value(&[]), 7);
        assert_eq!(get("b").kind(), Kind::Bool);
        assert!(read(&bytes[..bytes.len() - 3]).is_err());
        assert!(read(b"garbage!").is_err());
    }
}
