"""hondo against PyTorch eager on the same libtorch, side by side (issue 7).

For each case, runs examples/train_step.rs (hondo) and scripts/bench/train_step.py
(PyTorch eager) alternately (A B B A A B ...), ROUNDS times each, every run a fresh process
with the same model, batch, image size, optimizer (SGD, momentum 0.9, weight decay 1e-4),
precision, memory format and thread count on in-memory synthetic data (the `-defaults`
cases instead run each tool at its own defaults); prints a Markdown
table: median images/s with min-max, peak RSS, the ratio of the medians, the median of
the per-round ratios (each round runs the two tools back to back, A B then B A) and, for
ResNets, hondo's achieved GFLOP/s.

  scripts/bench/compare.sh [--rounds 3] [--cases small,resnet18,...]   (builds, then runs this)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Training GFLOP per image at 224x224: 3x the forward multiply-adds x2 (torchvision's
# GFLOPS figures are multiply-adds: resnet18 1.81, resnet50 4.09, resnet152 11.51).
TRAIN_GFLOP_224 = {"resnet18": 6 * 1.81, "resnet50": 6 * 4.09, "resnet152": 6 * 11.51}

CASES = {
    "small": dict(arch="small_cnn", batch=64, size=64, classes=10, steps=10, warmup=2),
    # Each tool at its defaults: hondo picks the layout for the machine (`train.channels_last
    # = "auto"`, its default: timed once, then cached), PyTorch NCHW.
    # A step of a long run (`run_steps`): hondo's trainer then puts its CPU buffers on huge
    # pages (src/allocator.rs), from the third step on, so hondo warms up one step more.
    "small-defaults": dict(arch="small_cnn", batch=64, size=64, classes=10, steps=10, warmup=2,
                           hondo=dict(auto_layout=True, run_steps=1000, warmup=3)),
    "resnet50-defaults": dict(arch="resnet50", batch=8, size=224, steps=6, warmup=2,
                              hondo=dict(auto_layout=True, run_steps=1000, warmup=3)),
    "resnet18": dict(arch="resnet18", batch=16, size=224, steps=3, warmup=2),
    "resnet18-defaults": dict(arch="resnet18", batch=16, size=224, steps=3, warmup=2,
                              hondo=dict(auto_layout=True, run_steps=1000, warmup=3)),
    "resnet50": dict(arch="resnet50", batch=8, size=224, steps=6, warmup=2),
    "resnet50-bf16": dict(arch="resnet50", batch=8, size=224, steps=6, warmup=2, precision="bf16"),
    "resnet50-cl": dict(arch="resnet50", batch=8, size=224, steps=6, warmup=2, channels_last=True),
    "resnet50-bf16-cl": dict(arch="resnet50", batch=8, size=224, steps=6, warmup=2, precision="bf16", channels_last=True),
    "resnet152": dict(arch="resnet152", batch=4, size=224, steps=2, warmup=1),
    # The second peer (issue 17): PyTorch with torch.compile (inductor) in channels-last,
    # against hondo at its defaults; compilation falls in the warm-up steps, timed apart.
    "small-compiled": dict(arch="small_cnn", batch=64, size=64, classes=10, steps=10, warmup=3,
                           hondo=dict(auto_layout=True),
                           pytorch=dict(channels_last=True, compile=True)),
    "resnet18-compiled": dict(arch="resnet18", batch=16, size=224, steps=3, warmup=3,
                              hondo=dict(auto_layout=True),
                              pytorch=dict(channels_last=True, compile=True)),
    "resnet50-compiled": dict(arch="resnet50", batch=8, size=224, steps=6, warmup=3,
                              hondo=dict(auto_layout=True),
                              pytorch=dict(channels_last=True, compile=True)),
}


def args_of(case, threads, impl):
    case = {**case, **case.get(impl, {})}
    a = ["--arch", case["arch"], "--batch", str(case["batch"]), "--size", str(case["size"]),
         "--steps", str(case["steps"]), "--warmup", str(case["warmup"]), "--threads", str(threads),
         "--classes", str(case.get("classes", 1000)), "--precision", case.get("precision", "fp32")]
    if case.get("channels_last"):
        a.append("--channels-last")
    if case.get("auto_layout"):
        a.append("--auto-layout")
    if case.get("run_steps"):
        a += ["--run-steps", str(case["run_steps"])]
    if case.get("compile"):
        a.append("--compile")
    return a


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hondo", required=True, help="the built examples/train_step binary")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    py = [sys.executable, os.path.join(ROOT, "scripts/bench/train_step.py")]
    rows = []
    for name in a.cases.split(","):
        case = CASES[name]
        results = {"hondo": [], "pytorch": []}
        for i in range(a.rounds):
            # A B, then B A: a machine that drifts during the case favours neither tool.
            order = (("hondo", [a.hondo]), ("pytorch", py))
            for impl, cmd in order if i % 2 == 0 else order[::-1]:
                r = run(cmd + args_of(case, a.threads, impl) + ["--device", a.device])
                results[impl].append(r)
                print(f"{name} {impl}: {case['batch'] / r['median_step_seconds']:.1f} img/s, "
                      f"peak {r['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
        rows.append((name, case, results))

    print("| case | hondo img/s (min-max) | PyTorch img/s (min-max) | hondo/PyTorch | paired ratio (min-max) | hondo peak RSS | PyTorch peak RSS | hondo GFLOP/s | first step s, hondo / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, case, results in rows:
        ips = {k: [case["batch"] / r["median_step_seconds"] for r in v] for k, v in results.items()}
        rss = {k: statistics.median(r["peak_rss_mib"] for r in v) for k, v in results.items()}
        med = {k: statistics.median(v) for k, v in ips.items()}
        # Each round's two runs are neighbours in time: the median of their ratios is the
        # comparison least moved by the machine's drift.
        paired = [h / p for h, p in zip(ips["hondo"], ips["pytorch"])]
        gf = TRAIN_GFLOP_224.get(case["arch"])
        gflops = f"{med['hondo'] * gf * (case['size'] / 224) ** 2:.0f}" if gf else "-"
        label = name
        if case.get("hondo", {}).get("auto_layout"):
            cl = {r["channels_last"] for r in results["hondo"]}
            label += " (hondo auto: " + "/".join("channels-last" if c else "NCHW" for c in sorted(cl)) + ")"
        print(f"| {label} | {med['hondo']:.1f} ({min(ips['hondo']):.1f}-{max(ips['hondo']):.1f}) "
              f"| {med['pytorch']:.1f} ({min(ips['pytorch']):.1f}-{max(ips['pytorch']):.1f}) "
              f"| {med['hondo'] / med['pytorch']:.2f}x "
              f"| {statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f}) "
              f"| {rss['hondo']:.0f} MiB | {rss['pytorch']:.0f} MiB | {gflops} | {first(results)} |")


def first(results):
    """Median first-step seconds (compilation included) of each tool, where reported."""
    f = {k: [r["first_step_seconds"] for r in v if "first_step_seconds" in r]
         for k, v in results.items()}
    if not all(f.values()):
        return "-"
    return f"{statistics.median(f['hondo']):.2f} / {statistics.median(f['pytorch']):.2f}"


if __name__ == "__main__":
    main()
