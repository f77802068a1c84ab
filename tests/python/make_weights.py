"""Writes the weight-file fixtures for tests/integration/weights.rs.

Usage: PYTHONPATH=<repo>/.pydeps python3 tests/python/make_weights.py OUTDIR [MARKER]

MARKER (default OUTDIR/pwned) is the file the malicious pickles would create if a loader
ever ran them.

Everything is derived from one seeded torchvision resnet18 (random init, no download).
`reference.bin` + `reference.json` hold every tensor's raw little-endian bytes in a form
the Rust tests read without any of the loaders under test.
"""

import collections
import json
import os
import pickle
import sys
import zipfile

import torch
import torchvision
from safetensors.torch import save_file


def resnet18_state():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=1000)
    sd = model.state_dict()
    # Non-trivial BatchNorm statistics and counters.
    for name, t in sd.items():
        if name.endswith("running_mean"):
            t.normal_()
        elif name.endswith("running_var"):
            t.uniform_(0.5, 2.0)
        elif name.endswith("num_batches_tracked"):
            t.fill_(1234)
        elif name.endswith("bn2.weight") or name.endswith("bn1.bias"):
            t.normal_()
    return sd


def views():
    """Tensors that are views into shared or larger storages, in several dtypes."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    half = torch.randn(3, 5).half()
    return collections.OrderedDict(
        [
            ("base", base),
            ("transposed", base.t()),
            ("rows", base[1:3]),
            ("strided", base[:, ::2]),
            ("element", base[2, 3]),
            ("empty", base[:0]),
            ("double", torch.randn(5, dtype=torch.float64)[1:]),
            ("long", torch.arange(10, dtype=torch.int64)[3:7]),
            ("int", torch.arange(-6, 6, dtype=torch.int32).reshape(3, 4).t()),
            ("uint8", torch.arange(250, 256, dtype=torch.uint8)),
            ("bool", torch.tensor([True, False, True, True])[1:]),
            ("half_t", half.t()),
            ("bf16", torch.randn(4, 3).bfloat16()[::2]),
            ("param", torch.nn.Parameter(torch.randn(2, 2))),
        ]
    )


def write_reference(out, groups):
    index, blob = {}, bytearray()
    for prefix, sd in groups.items():
        for name, t in sd.items():
            t = t.detach().contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
            index[f"{prefix}/{name}"] = {
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "offset": len(blob),
                "nbytes": len(raw),
            }
            blob += raw
    with open(os.path.join(out, "reference.bin"), "wb") as f:
        f.write(blob)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(index, f)


class Evil:
    """Pickles as a call to os.system: loading it must fail, not run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def legacy_header():
    out = b""
    out += pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    out += pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    return out


def truncate(src, dst, fraction):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


def main(out, marker):
    os.makedirs(out, exist_ok=True)
    p = lambda name: os.path.join(out, name)
    sd = resnet18_state()
    v = views()
    write_reference(out, {"resnet18": sd, "views": v})

    torch.save(sd, p("resnet18_zip.pth"))
    torch.save(sd, p("resnet18_legacy.pth"), _use_new_zipfile_serialization=False)
    save_file(sd, p("resnet18.safetensors"), metadata={"format": "pt", "source": "make_weights.py"})
    half = {k: (t.half() if t.is_floating_point() else t) for k, t in sd.items()}
    bf16 = {k: (t.bfloat16() if t.is_floating_point() else t) for k, t in sd.items()}
    torch.save(half, p("resnet18_fp16.pth"))
    save_file(bf16, p("resnet18_bf16.safetensors"))
    torch.save(bf16, p("resnet18_bf16_legacy.pth"), _use_new_zipfile_serialization=False)
    # A training-script checkpoint of a DataParallel model.
    wrapped = {
        "epoch": 3,
        "arch": "resnet18",
        "best_acc1": 0.5,
        "state_dict": collections.OrderedDict(("module." + k, t) for k, t in half.items()),
    }
    torch.save(wrapped, p("resnet18_wrapped.pth"))
    # Parameters (not plain tensors) through torch._utils._rebuild_parameter.
    params = {k: torch.nn.Parameter(t) for k, t in sd.items() if t.is_floating_point()}
    torch.save(params, p("resnet18_params.pth"))
    # One wrong shape, one missing and one extra tensor.
    damaged = {k: t for k, t in half.items() if k != "layer1.0.bn1.bias"}
    damaged["conv1.weight"] = torch.zeros(64, 3, 5, 5, dtype=torch.float16)
    damaged["extra.weight"] = torch.zeros(2)
    torch.save(damaged, p("resnet18_damaged.pth"))

    torch.save(v, p("views.pth"))
    torch.save(v, p("views_legacy.pth"), _use_new_zipfile_serialization=False)

    truncate(p("resnet18_fp16.pth"), p("truncated_zip.pth"), 0.5)
    truncate(p("resnet18_bf16_legacy.pth"), p("truncated_legacy.pth"), 0.5)
    truncate(p("resnet18_bf16.safetensors"), p("truncated.safetensors"), 0.5)

    with zipfile.ZipFile(p("evil_zip.pth"), "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(Evil(marker), protocol=2))
        z.writestr("archive/version", "3\n")
    with open(p("evil_legacy.pth"), "wb") as f:
        f.write(legacy_header() + pickle.dumps(Evil(marker), protocol=2))
    # Valid tensors first, the call hidden after them.
    torch.save({"w": torch.ones(2), "x": Evil(marker)}, p("evil_nested.pth"))
    # Protocol 0 text pickle, as a hand-made exploit would be.
    with open(p("evil_proto0.pth"), "wb") as f:
        f.write(pickle.dumps(Evil(marker), protocol=0))
    assert not os.path.exists(marker)


if __name__ == "__main__":
    out = sys.argv[1]
    main(out, sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, "pwned"))
