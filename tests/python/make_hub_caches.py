"""Builds a torch hub cache and a Hugging Face hub cache holding seeded torchvision
resnet18 weights, laid out as torchvision and huggingface_hub lay them out.

Usage: make_hub_caches.py OUT_DIR
  OUT_DIR/torch/hub/checkpoints/resnet18-f37072fd.pth   torch.save of the state dict (its
                                                        hash is not f37072fd...)
  OUT_DIR/hf/models--timm--resnet18.a1_in1k/
      refs/main                                         the commit
      blobs/<sha256>                                    model.safetensors, config.json
      snapshots/<commit>/{model.safetensors,config.json} links into blobs/
  OUT_DIR/expected.safetensors                          the same tensors, for the test
"""
import hashlib
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(1234)
model = torchvision.models.resnet18()
# Non-trivial running statistics, so that loading them is checked too.
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
state = {k: v.contiguous() for k, v in model.state_dict().items()}

hub = os.path.join(out, "torch", "hub", "checkpoints")
os.makedirs(hub)
torch.save(state, os.path.join(hub, "resnet18-f37072fd.pth"))

repo = os.path.join(out, "hf", "models--timm--resnet18.a1_in1k")
commit = "0123456789abcdef0123456789abcdef01234567"
os.makedirs(os.path.join(repo, "refs"))
os.makedirs(os.path.join(repo, "blobs"))
snapshot = os.path.join(repo, "snapshots", commit)
os.makedirs(snapshot)
with open(os.path.join(repo, "refs", "main"), "w") as f:
    f.write(commit)
tmp = os.path.join(out, "model.tmp")
save_file(state, tmp)
config = {
    "architecture": "resnet18",
    "num_classes": 1000,
    "pretrained_cfg": {
        "input_size": [3, 96, 96],
        "crop_pct": 0.9,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.25, 0.2, 0.15],
    },
}
with open(os.path.join(out, "config.tmp"), "w") as f:
    json.dump(config, f)
for name, src in [("model.safetensors", tmp), ("config.json", os.path.join(out, "config.tmp"))]:
    data = open(src, "rb").read()
    blob = hashlib.sha256(data).hexdigest()
    with open(os.path.join(repo, "blobs", blob), "wb") as f:
        f.write(data)
    os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snapshot, name))
os.replace(tmp, os.path.join(out, "expected.safetensors"))
os.remove(os.path.join(out, "config.tmp"))
