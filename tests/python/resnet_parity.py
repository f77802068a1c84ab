"""Writes the ResNet parity fixtures for tests/integration/resnet.rs.

Usage: PYTHONPATH=<repo>/.pydeps python3 tests/python/resnet_parity.py OUTDIR

- `keys.json`: for every variant (resnet18, 34, 50, 101, 152, 1000 classes), torchvision's
  `state_dict()` keys in order with their shapes and dtypes (built on the meta device:
  no weights are initialised).
- For resnet18, resnet50 and resnet152, each built with a fixed seed (random init, no
  download):
  - `<arch>.safetensors`: the state dict. BatchNorm affine parameters are randomised and
    the running statistics calibrated on a seeded batch, so eval mode exercises every
    buffer and the logits stay O(1) (exact comparisons at 1e-4 then mean something);
  - `<arch>_io.safetensors`: `input` (2x3x64x64, seeded), `eval_logits` (eval mode),
    `train_logits` (one train-mode forward from the saved state), `train_logits_f64` (the
    same forward in float64, stored as float32: the reference both fp32 results are measured
    against), `after/<name>` for every BatchNorm buffer after the fp32 forward and
    `after_f64/<name>` for the running statistics after the float64 one.

Everything is fp32 on the CPU with torch's default thread count.
"""

import json
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

ALL = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
PARITY = ["resnet18", "resnet50", "resnet152"]
SIDE = 64


def key_table():
    out = {}
    for arch in ALL:
        with torch.device("meta"):
            model = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
        out[arch] = [
            [name, list(t.shape), str(t.dtype).removeprefix("torch.")]
            for name, t in model.state_dict().items()
        ]
    return out


def seeded_model(arch, seed):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
        # Calibrate the running statistics (cumulative average over one batch), as a
        # trained model would have them.
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        model(torch.randn(4, 3, SIDE, SIDE))
        for bn in bns:
            bn.momentum = 0.1
            bn.num_batches_tracked.fill_(1234)
    return model


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "keys.json"), "w") as f:
        json.dump(key_table(), f)

    for i, arch in enumerate(PARITY):
        model = seeded_model(arch, seed=100 + i)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out, f"{arch}.safetensors"), metadata={"format": "pt"})

        g = torch.Generator().manual_seed(7)
        x = torch.randn(2, 3, SIDE, SIDE, generator=g)
        io = {"input": x}
        with torch.no_grad():
            model.eval()
            io["eval_logits"] = model(x)
            model.train()
            io["train_logits"] = model(x)
            # Batch statistics over 8 values per channel in the last stage make deep nets'
            # train-mode logits sensitive to rounding: fp32 ResNet-152 is good to ~3e-3 here.
            exact = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
            exact.load_state_dict(state)
            exact.double().train()
            io["train_logits_f64"] = exact(x.double()).float()
        for name, t in model.state_dict().items():
            if "running_" in name or name.endswith("num_batches_tracked"):
                io[f"after/{name}"] = t.contiguous()
        for name, t in exact.state_dict().items():
            if "running_" in name:
                io[f"after_f64/{name}"] = t.float().contiguous()
        save_file(io, os.path.join(out, f"{arch}_io.safetensors"))


if __name__ == "__main__":
    main()
