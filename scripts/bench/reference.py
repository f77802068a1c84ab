"""The PyTorch eager reference trainer for hondo's benchmarks (issue 7).

Trains torchvision's ResNets, or a twin of hondo's small CNN, on in-memory synthetic data
with the same settings hondo is given, and prints one JSON line:
{"tool": "pytorch", "images_per_sec": ..., "peak_rss_mb": ..., "step_ms": ...}.

Run with the Python that scripts/setup.sh provides:
  PYTHONPATH=.pydeps python3 scripts/bench/reference.py --model resnet50 --batch 8 --size 224
"""
import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torchvision


def small_cnn(num_classes: int, width: int = 32) -> nn.Module:
    """hondo's SmallCnn: four conv-BN-ReLU stages (max-pool after the first three),
    global average pooling, a linear head; same parameter names."""
    layers, c_in = [], 3
    for s in range(4):
        c_out = width << s
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2) if s < 3 else nn.Identity())
        c_in = c_out

    class SmallCnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(c_in, num_classes)

        def forward(self, x):
            x = self.features(x)
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return SmallCnn()


def build(name: str, num_classes: int) -> nn.Module:
    if name == "small_cnn":
        return small_cnn(num_classes)
    return getattr(torchvision.models, name)(num_classes=num_classes)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = build(a.model, a.classes)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    # A few distinct batches in memory, normalised floats as a loader would hand over.
    xs = [torch.randn(a.batch, 3, a.size, a.size).contiguous(memory_format=fmt) for _ in range(4)]
    ys = [torch.randint(0, a.classes, (a.batch,)) for _ in range(4)]

    def step(i: int) -> None:
        x, y = xs[i % 4], ys[i % 4]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the per-step sync a trainer makes for its progress display

    for i in range(a.warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i)
    dt = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "tool": "pytorch",
        "model": a.model,
        "images_per_sec": a.batch * a.steps / dt,
        "step_ms": 1000 * dt / a.steps,
        "peak_rss_mb": rss_mb,
    }))


if __name__ == "__main__":
    main()
