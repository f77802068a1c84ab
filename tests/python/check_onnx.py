"""Checks hondo's ONNX exports with ONNX's own checker and onnxruntime.

Usage: check_onnx.py DIR
For every DIR/NAME.onnx with DIR/NAME.io.safetensors (tensors x1, logits1, x3, logits3:
the inputs the graph takes and hondo's logits for them), prints one JSON object:
{NAME: {"max_diff": [d1, d3] (over max(1, max |logit|)), "ops": [...], "opset": N, "metadata": {...},
        "input": [dims], "output": [dims]}}.
"""
import glob
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

out = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.onnx"))):
    name = os.path.basename(path)[: -len(".onnx")]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    io = load_file(os.path.join(sys.argv[1], name + ".io.safetensors"))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    diffs = []
    for b in ("1", "3"):
        (logits,) = sess.run(["logits"], {"input": io["x" + b]})
        ref = io["logits" + b]
        # Relative to the logits' scale (at least 1): fp32 rounding grows with magnitude.
        scale = max(1.0, float(np.abs(ref).max()))
        diffs.append(float(np.abs(logits - ref).max()) / scale)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    out[name] = {
        "max_diff": diffs,
        "ops": sorted({n.op_type for n in model.graph.node}),
        "opset": model.opset_import[0].version,
        "metadata": {p.key: p.value for p in model.metadata_props},
        "input": dims(model.graph.input[0]),
        "output": dims(model.graph.output[0]),
        "initializer_types": sorted({t.data_type for t in model.graph.initializer}),
    }
print(json.dumps(out))
