"""Data-parallel training, side by side (issue 15): hondo DDP on 2 processes x 1 thread
against PyTorch DDP (torchrun, Gloo) on 2 x 1, and against hondo in 1 process x 2 threads,
at the same global batch, on in-memory synthetic data. A fourth run, "apart", is the
ceiling of 2 x 1 on these cores: two single-process hondo runs at the per-rank batch and
one thread each, at the same time, with no communication. "DDP / apart" is then what the
data-parallel machinery costs, and "apart / 1x2" what splitting one process's work into two
single-threaded halves costs before any communication.

Each round runs the four in turn (the order rotates every round), each a fresh set of
processes: examples/train_step.rs (hondo; as a rank it steps as the trainer does) and
scripts/bench/train_step.py (PyTorch, wrapped in DistributedDataParallel as a rank).
Prints a Markdown table of median global images/s (min-max over rounds), the ratios, and
the share of hondo's forward + backward time spent waiting for the gradients' all-reduce.

  scripts/bench/ddp.sh [--rounds 3] [--cases small,resnet18]   (builds, then runs this)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {
    "small": dict(arch="small_cnn", batch=64, size=64, classes=10, steps=20, warmup=3),
    "resnet18": dict(arch="resnet18", batch=16, size=224, classes=1000, steps=8, warmup=2),
}
# The same cases in two more layouts: "-cl" runs all three channels-last (matched), and
# "-defaults" runs each tool at its defaults: hondo's `train.channels_last = "auto"`
# (`--auto-layout`: the layout timed once per CPU, batch and size, cached) against
# PyTorch's NCHW. hondo's ranks read the choice from the cache, filled beforehand by one
# process at the per-rank batch (the trainer has rank 0 time it and share the choice).
for _name in list(CASES):
    CASES[_name + "-cl"] = dict(CASES[_name], layout="cl")
    CASES[_name + "-defaults"] = dict(CASES[_name], layout="auto")


def layout_args(case, tool):
    layout = case.get("layout", "nchw")
    if layout == "cl":
        return ["--channels-last"]
    if layout == "auto" and tool == "hondo":
        return ["--auto-layout"]
    return []


def step_args(case, batch, threads):
    return ["--arch", case["arch"], "--batch", str(batch), "--size", str(case["size"]),
            "--steps", str(case["steps"]), "--warmup", str(case["warmup"]),
            "--threads", str(threads), "--classes", str(case["classes"])]


def torchrun(cmd):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2"] + cmd


def result(cmd, returncode, stdout, stderr):
    if returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


def run(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return result(cmd, out.returncode, out.stdout, out.stderr)


def run_apart(cmd, env, batch):
    """Two single-process runs of `cmd` at once, with no communication: the ceiling of a
    2 x 1 data-parallel run on these cores. Returns their step time as one rank would see
    it (the global batch over the summed images/s)."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = [(p, *p.communicate()) for p in procs]
    rate = sum(batch / result(cmd, p.returncode, o, e)["median_step_seconds"] for p, o, e in outs)
    return {"median_step_seconds": 2 * batch / rate}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hondo", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", default="small,resnet18")
    a = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py = [sys.executable, os.path.join(ROOT, "scripts/bench/train_step.py")]
    rows = []
    for name in a.cases.split(","):
        case = CASES[name]
        g = case["batch"]
        runners = {
            "hondo 2x1": lambda: run(torchrun(["--no-python", a.hondo] + step_args(case, g // 2, 1)
                                              + layout_args(case, "hondo")), env),
            "pytorch 2x1": lambda: run(torchrun(py[1:] + step_args(case, g // 2, 1)
                                                + layout_args(case, "pytorch")), env),
            "hondo 1x2": lambda: run([a.hondo] + step_args(case, g, 2) + layout_args(case, "hondo"),
                                     {**env, "OMP_NUM_THREADS": "2"}),
            "apart": lambda: run_apart([a.hondo] + step_args(case, g // 2, 1)
                                       + layout_args(case, "hondo"), env, g // 2),
        }
        if case.get("layout") == "auto":
            # Fill the layout cache once, for the per-rank batch and the whole batch.
            warm = dict(case, steps=1, warmup=0)
            for batch, threads in ((g // 2, 1), (g, 2)):
                out = run([a.hondo] + step_args(warm, batch, threads) + ["--auto-layout"],
                          {**env, "OMP_NUM_THREADS": str(threads)})
                print(f"{name}: batch {batch} x {threads} thread(s): channels_last = "
                      f"{out['channels_last']}", file=sys.stderr)
        names = list(runners)
        res = {n: [] for n in names}
        waits = []
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                out = runners[n]()
                res[n].append(g / out["median_step_seconds"])
                if n == "hondo 2x1":
                    waits.append(out.get("comm_wait_share", 0.0))
                print(f"{name} round {r + 1} {n}: {res[n][-1]:.1f} img/s", file=sys.stderr)
        med = {n: statistics.median(v) for n, v in res.items()}
        cell = lambda n: f"{med[n]:.1f} ({min(res[n]):.1f}-{max(res[n]):.1f})"
        rows.append(f"| {name}, global batch {g} | {cell('hondo 2x1')} | {cell('pytorch 2x1')} | "
                    f"{cell('hondo 1x2')} | {med['hondo 2x1'] / med['pytorch 2x1']:.2f}x | "
                    f"{med['hondo 2x1'] / med['hondo 1x2']:.2f}x | {cell('apart')} | "
                    f"{med['apart'] / med['hondo 1x2']:.2f}x | {med['hondo 2x1'] / med['apart']:.2f}x | "
                    f"{100 * statistics.median(waits):.1f}% |")
    print("| case | hondo DDP 2x1 img/s | PyTorch DDP 2x1 img/s | hondo 1x2 img/s | "
          "hondo / PyTorch DDP | hondo 2x1 / 1x2 | hondo 2 x 1 apart img/s | apart / 1x2 | "
          "DDP / apart | hondo comm wait |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
