//! ONNX export, written by hondo itself: the network of a checkpoint as a graph of standard
//! operators (opset 17: Conv, BatchNormalization, Relu, Add, MaxPool, GlobalAveragePool,
//! Flatten, Gemm, and Sub/Mul for the normalisation), float32 initializers under
//! torchvision's parameter names, a symbolic batch dimension, and the checkpoint's
//! preprocessing and classes as metadata properties.
//!
//! The protobuf messages are declared below with `prost`'s derive (the subset of
//! `onnx/onnx.proto` that hondo writes, with its field numbers); no code generation, no
//! Python. The graph follows the architecture's structure from the tensor names and shapes
//! (hondo's models are torchvision's), so only hondo's own architectures export.

use crate::checkpoint::Meta;
use crate::config::Arch;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// The opset the graph declares.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 (ONNX 1.13+), the one of opset 17.
const IR_VERSION: i64 = 8;
const FLOAT: i32 = 1;
/// `AttributeProto.AttributeType`.
const ATTR_FLOAT: i32 = 1;
const ATTR_INT: i32 = 2;
const ATTR_INTS: i32 = 7;

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(string, tag = "6")]
    doc_string: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "20")]
    r#type: i32,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dimension {
    #[prost(oneof = "DimValue", tags = "1, 2")]
    value: Option<DimValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum DimValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INT,
        i,
        ..Default::default()
    }
}

fn ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_FLOAT,
        f,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: Vec<DimValue>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|d| Dimension { value: Some(d) })
                        .collect(),
                }),
            }),
        }),
    }
}

/// Why a checkpoint cannot become an ONNX graph.
pub(crate) type BuildError = String;

/// The graph under construction: nodes, initializers, and the checkpoint's tensors.
struct Builder<'a> {
    tensors: HashMap<&'a str, &'a Tensor>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    used: std::collections::HashSet<String>,
    next: usize,
}

impl<'a> Builder<'a> {
    fn tensor(&self, name: &str) -> Result<&'a Tensor, BuildError> {
        self.tensors
            .get(name)
            .copied()
            .ok_or_else(|| format!("the checkpoint has no tensor `{name}`"))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Adds the checkpoint tensor `name` as a float32 initializer (once); returns its name.
    fn init(&mut self, name: &str) -> Result<String, BuildError> {
        if self.used.insert(name.to_string()) {
            let t = self.tensor(name)?;
            let raw = raw_f32(t).map_err(|e| format!("tensor `{name}`: {e}"))?;
            self.initializers.push(TensorProto {
                dims: t.size(),
                data_type: FLOAT,
                name: name.into(),
                raw_data: raw,
            });
        }
        Ok(name.to_string())
    }

    fn constant(&mut self, name: &str, dims: Vec<i64>, values: &[f32]) -> String {
        self.initializers.push(TensorProto {
            dims,
            data_type: FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name.to_string()
    }

    fn node(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        attribute: Vec<AttributeProto>,
        name: &str,
    ) -> String {
        self.next += 1;
        let output = format!("{name}:{}", self.next);
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.clone()],
            name: format!("{op}_{}", self.next),
            op_type: op.into(),
            attribute,
        });
        output
    }

    fn conv(&mut self, x: String, prefix: &str, stride: i64) -> Result<String, BuildError> {
        let w = format!("{prefix}.weight");
        let shape = self.tensor(&w)?.size();
        let [_, _, kh, kw] = shape[..] else {
            return Err(format!(
                "`{w}` has shape {shape:?}, not a 2-d convolution's"
            ));
        };
        let mut inputs = vec![x, self.init(&w)?];
        let bias = format!("{prefix}.bias");
        if self.has(&bias) {
            inputs.push(self.init(&bias)?);
        }
        let attrs = vec![
            ints("kernel_shape", &[kh, kw]),
            ints("strides", &[stride, stride]),
            ints("pads", &[kh / 2, kw / 2, kh / 2, kw / 2]),
            ints("dilations", &[1, 1]),
            int("group", 1),
        ];
        Ok(self.node("Conv", inputs, attrs, prefix))
    }

    fn batch_norm(&mut self, x: String, prefix: &str) -> Result<String, BuildError> {
        let mut inputs = vec![x];
        for part in ["weight", "bias", "running_mean", "running_var"] {
            inputs.push(self.init(&format!("{prefix}.{part}"))?);
        }
        let eps = crate::models::layers::BatchNorm2d::EPS as f32;
        Ok(self.node(
            "BatchNormalization",
            inputs,
            vec![float("epsilon", eps)],
            prefix,
        ))
    }

    fn relu(&mut self, x: String) -> String {
        self.node("Relu", vec![x], vec![], "relu")
    }

    fn conv_bn(
        &mut self,
        x: String,
        conv: &str,
        bn: &str,
        stride: i64,
        relu: bool,
    ) -> Result<String, BuildError> {
        let y = self.conv(x, conv, stride)?;
        let y = self.batch_norm(y, bn)?;
        Ok(if relu { self.relu(y) } else { y })
    }

    fn max_pool(&mut self, x: String, kernel: i64, stride: i64, pad: i64) -> String {
        self.node(
            "MaxPool",
            vec![x],
            vec![
                ints("kernel_shape", &[kernel, kernel]),
                ints("strides", &[stride, stride]),
                ints("pads", &[pad, pad, pad, pad]),
            ],
            "maxpool",
        )
    }

    /// Global average pool, flatten, and the linear classifier under `prefix`.
    fn head(&mut self, x: String, prefix: &str) -> Result<String, BuildError> {
        let x = self.node("GlobalAveragePool", vec![x], vec![], "avgpool");
        let x = self.node("Flatten", vec![x], vec![int("axis", 1)], "flatten");
        let inputs = vec![
            x,
            self.init(&format!("{prefix}.weight"))?,
            self.init(&format!("{prefix}.bias"))?,
        ];
        Ok(self.node("Gemm", inputs, vec![int("transB", 1)], prefix))
    }

    fn small_cnn(&mut self, mut x: String) -> Result<String, BuildError> {
        for s in 0..4 {
            let (conv, bn) = (
                format!("features.{}", s * 4),
                format!("features.{}", s * 4 + 1),
            );
            x = self.conv_bn(x, &conv, &bn, 1, true)?;
            if s < 3 {
                x = self.max_pool(x, 2, 2, 0);
            }
        }
        self.head(x, "classifier")
    }

    fn resnet(&mut self, x: String) -> Result<String, BuildError> {
        let mut x = self.conv_bn(x, "conv1", "bn1", 2, true)?;
        x = self.max_pool(x, 3, 2, 1);
        let bottleneck = self.has("layer1.0.conv3.weight");
        for layer in 1..=4 {
            let mut block = 0;
            while self.has(&format!("layer{layer}.{block}.conv1.weight")) {
                let p = format!("layer{layer}.{block}");
                let stride = if layer > 1 && block == 0 { 2 } else { 1 };
                let identity = if self.has(&format!("{p}.downsample.0.weight")) {
                    self.conv_bn(
                        x.clone(),
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        stride,
                        false,
                    )?
                } else {
                    x.clone()
                };
                let out = if bottleneck {
                    let o = self.conv_bn(x, &format!("{p}.conv1"), &format!("{p}.bn1"), 1, true)?;
                    let o =
                        self.conv_bn(o, &format!("{p}.conv2"), &format!("{p}.bn2"), stride, true)?;
                    self.conv_bn(o, &format!("{p}.conv3"), &format!("{p}.bn3"), 1, false)?
                } else {
                    let o =
                        self.conv_bn(x, &format!("{p}.conv1"), &format!("{p}.bn1"), stride, true)?;
                    self.conv_bn(o, &format!("{p}.conv2"), &format!("{p}.bn2"), 1, false)?
                };
                let sum = self.node("Add", vec![out, identity], vec![], &p);
                x = self.relu(sum);
                block += 1;
            }
            if block == 0 {
                return Err(format!("the checkpoint has no block layer{layer}.0"));
            }
        }
        self.head(x, "fc")
    }
}

/// The contiguous float32 little-endian bytes of `t`.
fn raw_f32(t: &Tensor) -> Result<Vec<u8>, tch::TchError> {
    let t = t.f_to_kind(Kind::Float)?.f_contiguous()?.f_flatten(0, -1)?;
    let v = Vec::<f32>::try_from(&t)?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Checks that `arch` is one the ONNX export builds (hondo's own), returning it.
pub fn supported(arch: &str) -> Result<Arch, BuildError> {
    Arch::from_name(arch).ok_or_else(|| {
        format!(
            "ONNX export builds hondo's own architectures (small_cnn, resnet18 to resnet152); \
             `{arch}` is a custom model: export it as TorchScript or safetensors instead"
        )
    })
}

/// The ONNX model of a checkpoint's network: `tensors` under torchvision's names, `meta`
/// for the input size and metadata. With `normalize_inside`, the graph takes RGB in [0, 1]
/// and normalises with the checkpoint's mean and std first (as the TorchScript export does).
pub(crate) fn to_bytes(
    tensors: &[(String, Tensor)],
    meta: &Meta,
    normalize_inside: bool,
    properties: HashMap<String, String>,
) -> Result<Vec<u8>, BuildError> {
    let arch = supported(&meta.arch)?;
    let mut b = Builder {
        tensors: tensors.iter().map(|(n, t)| (n.as_str(), t)).collect(),
        nodes: Vec::new(),
        initializers: Vec::new(),
        used: Default::default(),
        next: 0,
    };
    let mut x = "input".to_string();
    if normalize_inside {
        let mean = meta.mean.map(|v| v as f32);
        let inv_std = meta.std.map(|v| (1.0 / v) as f32);
        let m = b.constant("normalize.mean", vec![1, 3, 1, 1], &mean);
        let s = b.constant("normalize.inv_std", vec![1, 3, 1, 1], &inv_std);
        let centred = b.node("Sub", vec![x, m], vec![], "normalize");
        x = b.node("Mul", vec![centred, s], vec![], "normalize");
    }
    match arch {
        Arch::SmallCnn => b.small_cnn(x)?,
        _ => b.resnet(x)?,
    };
    // The classifier's output is the graph's.
    if let Some(last) = b.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }
    let size = i64::from(meta.image_size);
    let batch = || DimValue::DimParam("batch".into());
    let mut props: Vec<StringStringEntryProto> = properties
        .into_iter()
        .map(|(key, value)| StringStringEntryProto { key, value })
        .collect();
    props.sort_by(|a, b| a.key.cmp(&b.key));
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "hondo".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} with {} classes, exported by hondo",
            meta.arch, meta.num_classes
        ),
        graph: Some(GraphProto {
            node: b.nodes,
            name: meta.arch.clone(),
            initializer: b.initializers,
            input: vec![value_info(
                "input",
                vec![
                    batch(),
                    DimValue::DimValue(3),
                    DimValue::DimValue(size),
                    DimValue::DimValue(size),
                ],
            )],
            output: vec![value_info(
                "logits",
                vec![batch(), DimValue::DimValue(meta.num_classes)],
            )],
        }),
        metadata_props: props,
    };
    Ok(prost::Message::encode_to_vec(&model))
}
