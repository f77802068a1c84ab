"""PyTorch eager twin of examples/train_step.rs, for scripts/bench_resnet152_memory.sh.

Usage: PYTHONPATH=<repo>/.pydeps python3 scripts/bench/train_step.py [--arch resnet152]
       [--batch 8] [--size 224] [--steps 3] [--warmup 1] [--threads 2]

torchvision's model, torch.optim.SGD (momentum 0.9, weight decay 1e-4, one group, PyTorch's
default implementation for CPU tensors), zero_grad / forward / cross-entropy / backward /
step on random data. Prints one JSON line: seconds of each timed step and the peak
resident set size (VmHWM of /proc/self/status).
"""

import argparse
import json
import time

import torch
import torchvision


def status_mib(field):
    """A /proc/self/status field: VmHWM (peak resident set size) or VmRSS."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet152")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.arch)(weights=None, num_classes=1000)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(1000, (a.batch,))

    # Libraries, model, optimizer and data, before the first step.
    start_rss = status_mib("VmRSS")
    seconds = []
    loss = 0.0
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        l = torch.nn.functional.cross_entropy(model(x), y)
        l.backward()
        opt.step()
        loss = l.item()
        if i >= a.warmup:
            seconds.append(time.perf_counter() - t0)
    s = sorted(seconds)
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "torch": torch.__version__,
                "arch": a.arch,
                "batch": a.batch,
                "size": a.size,
                "threads": a.threads,
                "step_seconds": [round(v, 3) for v in seconds],
                "median_step_seconds": round(s[len(s) // 2], 3),
                "start_rss_mib": round(start_rss, 1),
                "peak_rss_mib": round(status_mib("VmHWM"), 1),
                "loss": round(loss, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
