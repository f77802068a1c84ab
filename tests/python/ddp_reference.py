"""PyTorch's own DistributedDataParallel on hondo's small CNN, for tests/integration/ddp.rs.

Usage: torchrun --nproc-per-node 2 tests/python/ddp_reference.py DIR
(with PYTHONPATH=<repo>/.pydeps). DIR holds `plan.json` (written by the test: the MNIST
directory, model width, hyperparameters and, per epoch and rank, the sample indices of
each batch, as hondo's loader deals them) and receives `init.safetensors` (the initial
weights, for hondo's `model.pretrained`) and `final.safetensors` (rank 0's weights after
training). Gloo, one thread per process, fp32 NCHW, BatchNorm statistics per process with
rank 0's buffers broadcast before each forward (DDP's default), SGD with momentum.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel as DDP


def small_cnn(width, classes):
    """hondo's SmallCnn: four conv-BN-ReLU stages (max pooling after the first three),
    global average pooling and a linear head, with torchvision's Sequential numbering."""
    layers, c_in = [], 3
    for s in range(4):
        c_out = width << s
        layers += [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        layers.append(nn.MaxPool2d(2) if s < 3 else nn.Identity())
        c_in = c_out

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(c_in, classes)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
            return self.classifier(x)

    return Net()


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main(out):
    with open(os.path.join(out, "plan.json")) as f:
        plan = json.load(f)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    images = read_idx(os.path.join(plan["mnist"], "train-images-idx3-ubyte"))
    labels = read_idx(os.path.join(plan["mnist"], "train-labels-idx1-ubyte")).astype(np.int64)
    mean = torch.tensor(plan["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(plan["std"]).view(1, 3, 1, 1)

    def batch(indices):
        x = torch.from_numpy(images[indices].astype(np.float32) / 255.0)
        x = x.unsqueeze(1).expand(-1, 3, -1, -1)
        return (x - mean) / std, torch.from_numpy(labels[indices])

    torch.manual_seed(0)
    model = small_cnn(plan["width"], 10)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(out, "init.safetensors"))
    ddp = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=plan["lr"], momentum=plan["momentum"],
                          weight_decay=0.0, foreach=False)
    for epoch in plan["epochs"]:
        for indices in epoch[rank]:
            x, y = batch(indices)
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    dist.barrier()
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(out, "final.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
