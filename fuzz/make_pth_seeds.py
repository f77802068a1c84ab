"""Writes the `.pth` seeds of the `pth` fuzz target with PyTorch: small state dicts in the zip
and the legacy format, with the shapes a reader meets (views, offsets, several dtypes,
`OrderedDict` metadata, wrapped checkpoints).

    PYTHONPATH=../.pydeps python3 make_pth_seeds.py
"""
import collections
import os

import torch

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "pth")
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
conv = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 2))
sd = conv.state_dict()
base = torch.arange(12, dtype=torch.float32)
views = collections.OrderedDict(
    t=base.view(3, 4).t(),
    o=base[4:8],
    h=torch.ones(2, 3, dtype=torch.float16),
    b=torch.zeros(2, dtype=torch.bfloat16),
    i=torch.tensor([1, -2], dtype=torch.int64),
    s=torch.tensor(3.5),
)
for name, obj in [
    ("state_dict", sd),
    ("views", views),
    ("wrapped", {"epoch": 3, "state_dict": sd, "optimizer": {"param_groups": [{"lr": 0.1, "params": [0, 1]}]}}),
]:
    torch.save(obj, os.path.join(out, f"{name}.pth"))
    torch.save(obj, os.path.join(out, f"{name}_legacy.pth"), _use_new_zipfile_serialization=False)
print("seeds written under", out)
