"""The PyTorch eager reference trainer: twin of examples/train_step.rs, used by
scripts/bench/compare.py (issue 7) and scripts/bench_resnet152_memory.sh (issue 3).

Usage: PYTHONPATH=<repo>/.pydeps python3 scripts/bench/train_step.py [--arch resnet152]
       [--batch 8] [--size 224] [--steps 3] [--warmup 1] [--threads 2] [--classes 1000]
       [--precision fp32|bf16] [--channels-last] [--compile] [--lr 0.1*batch/256]

`--arch small_cnn` builds the twin of hondo's small CNN (same layers and parameter names);
other names are torchvision's ResNets.

torchvision's model, torch.optim.SGD (momentum 0.9, weight decay 1e-4, one group, PyTorch's
default implementation for CPU tensors), zero_grad / forward / cross-entropy / backward /
step on random data. Prints one JSON line: seconds of each timed step and the peak
resident set size (VmHWM of /proc/self/status). `--compile` trains `torch.compile(model)`
(inductor): the warm-up steps then include compilation, reported apart as
`first_step_seconds` (the first step) and `warmup_seconds` (all warm-up steps); the timed
steps are the steady state.

Launched as a rank (torchrun: `scripts/bench/ddp.sh`), the model is wrapped in
DistributedDataParallel over Gloo (its defaults: 25 MiB buckets, buffers broadcast before
each forward); `--batch` is per process and only rank 0 prints.
"""

import argparse
import json
import os
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


def small_cnn(num_classes, width=32):
    """hondo's SmallCnn: four conv-BN-ReLU stages (max-pool after the first three), global
    average pooling, a linear head; the same parameter names."""
    nn = torch.nn
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
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    return SmallCnn()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet152")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile(model), inductor")
    p.add_argument("--lr", type=float, default=None, help="default 0.1 * batch / 256")
    a = p.parse_args()
    # torchvision's recipe (0.1 at batch 256) scaled to the batch, as examples/train_step.rs:
    # 0.1 itself makes small batches of random data diverge (subnormal gradients, losses that
    # say nothing), and converging runs let the two tools' losses be compared.
    lr = a.lr if a.lr is not None else 0.1 * a.batch / 256

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.arch == "small_cnn":
        model = small_cnn(a.classes)
    else:
        model = getattr(torchvision.models, a.arch)(weights=None, num_classes=a.classes)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(device=a.device, memory_format=fmt).train()
    if a.compile:
        model = torch.compile(model)
    world, rank = 1, 0
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        world, rank = dist.get_world_size(), dist.get_rank()
        model = torch.nn.parallel.DistributedDataParallel(model)
    torch.backends.cudnn.benchmark = True
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.size, a.size, device=a.device).contiguous(memory_format=fmt)
    y = torch.randint(a.classes, (a.batch,), device=a.device)

    # Libraries, model, optimizer and data, before the first step.
    start_rss = status_mib("VmRSS")
    seconds = []
    warmup_seconds = []
    loss = 0.0
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        dtype = torch.float16 if a.precision == "fp16" else torch.bfloat16
        with torch.autocast(a.device.split(":")[0], dtype=dtype, enabled=a.precision != "fp32"):
            l = torch.nn.functional.cross_entropy(model(x), y)
        l.backward()
        opt.step()
        loss = l.item()
        took = time.perf_counter() - t0
        (seconds if i >= a.warmup else warmup_seconds).append(took)
    s = sorted(seconds)
    if rank > 0:
        return
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "torch": torch.__version__,
                "arch": a.arch,
                "batch": a.batch,
                "size": a.size,
                "threads": a.threads,
                "precision": a.precision,
                "channels_last": a.channels_last,
                "compile": a.compile,
                "first_step_seconds": round((warmup_seconds or seconds)[0], 3),
                "warmup_seconds": round(sum(warmup_seconds), 3),
                "lr": lr,
                "step_seconds": [round(v, 3) for v in seconds],
                "median_step_seconds": round(s[len(s) // 2], 3),
                "start_rss_mib": round(start_rss, 1),
                "peak_rss_mib": round(status_mib("VmHWM"), 1),
                "loss": round(loss, 4),
                "world": world,
            }
        )
    )


if __name__ == "__main__":
    main()
