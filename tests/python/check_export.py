"""Checks files written by `hondo export` against hondo's own outputs, in PyTorch.

Usage: check_export.py DIR

DIR holds `io.safetensors` (written by the Rust test: `x_unit`, RGB in [0, 1]; `x_norm`, the
same normalised by hondo; `logits`, hondo's eval-mode output on `x_norm`) and the exports
`model.safetensors`, `model.pt` (TorchScript, takes `x_unit`) and `model-raw.pt`
(TorchScript, takes `x_norm`). Prints one line per check; exits non-zero on a mismatch.
"""

import json
import sys

import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

TOL = 1e-5


def close(name, got, want):
    err = (got - want).abs().max().item()
    print(f"{name}: max abs diff {err:.2e}")
    if not err <= TOL:
        sys.exit(f"{name}: differs from hondo by {err} (> {TOL})")


def main(d):
    torch.set_num_threads(2)
    io = load_file(f"{d}/io.safetensors")
    x_unit, x_norm, logits = io["x_unit"], io["x_norm"], io["logits"]

    with safe_open(f"{d}/model.safetensors", framework="pt") as f:
        meta = f.metadata()
    state = load_file(f"{d}/model.safetensors")
    assert not any(k.startswith("optimizer/") for k in state), "optimizer keys exported"
    classes = json.loads(meta["classes"])
    num_classes = int(meta["num_classes"])
    assert len(classes) == num_classes == logits.shape[1], (classes, logits.shape)
    mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    assert int(meta["image_size"]) == x_unit.shape[-1]

    arch = meta["arch"]
    if arch.startswith("resnet"):
        model = getattr(torchvision.models, arch)(num_classes=num_classes)
        model.load_state_dict(state, strict=True)
        model.eval()
        with torch.no_grad():
            close("torchvision " + arch, model(x_norm), logits)
            # The metadata is enough to preprocess as hondo does.
            m = torch.tensor(mean).view(1, 3, 1, 1)
            s = torch.tensor(std).view(1, 3, 1, 1)
            close("torchvision with metadata normalisation", model((x_unit - m) / s), logits)
        assert any(k.endswith("num_batches_tracked") for k in state)

    with torch.no_grad():
        close("torch.jit.load model.pt", torch.jit.load(f"{d}/model.pt")(x_unit), logits)
        close("torch.jit.load model-raw.pt", torch.jit.load(f"{d}/model-raw.pt")(x_norm), logits)
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
