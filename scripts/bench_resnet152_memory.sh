#!/usr/bin/env bash
# ResNet-152 training step, hondo against PyTorch eager on the same libtorch: seconds per
# step and peak resident memory (VmHWM), at 224x224, batch 8, 2 threads, CPU.
#
#   scripts/bench_resnet152_memory.sh [ROUNDS] [STEPS]
#
# Runs examples/train_step.rs (hondo's model and optimizer) and scripts/bench/train_step.py
# (torchvision's resnet152, torch.optim.SGD) alternately, ROUNDS times each (default 3),
# each process doing 1 warm-up step and STEPS timed steps (default 3), and prints the
# medians over rounds. Every process is fresh, so each peak RSS is that run's own.
# Environment as for cargo: LIBTORCH (default .libtorch), CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
STEPS=${2:-3}
ARGS=(--arch resnet152 --batch 8 --size 224 --steps "$STEPS" --warmup 1 --threads 2)
export LIBTORCH=${LIBTORCH:-$PWD/.libtorch}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
# The tensor work is libtorch's: the profile of the Rust crate does not matter here.
cargo build --quiet --example train_step
HONDO=("$TARGET/debug/examples/train_step")
PYTORCH=(env PYTHONPATH="$PWD/.pydeps" python3 scripts/bench/train_step.py)
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2

OUT=$(mktemp -d)
echo "libtorch (hondo): $(ldd "${HONDO[0]}" | awk '/libtorch_cpu/ {print $3}')"
echo "libtorch (torch): $("${PYTORCH[@]:0:2}" python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib/libtorch_cpu.so"))')"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  for impl in hondo pytorch; do
    if [ "$impl" = hondo ]; then cmd=("${HONDO[@]}"); else cmd=("${PYTORCH[@]}"); fi
    /usr/bin/time -f '{"max_rss_kib": %M}' -o "$OUT/time" "${cmd[@]}" "${ARGS[@]}" >"$OUT/line"
    line=$(cat "$OUT/line")
    echo "round $r $impl: $line $(cat "$OUT/time")"
    python3 - "$line" "$(cat "$OUT/time")" >>"$OUT/results.jsonl" <<'PY'
import json, sys
d = json.loads(sys.argv[1]); d.update(json.loads(sys.argv[2])); print(json.dumps(d))
PY
  done
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print("| | median s/step | median peak RSS (MiB) | median RSS before step 1 (MiB) | runs |")
print("|---|---|---|---|---|")
for impl in ("hondo", "pytorch"):
    r = [x for x in rows if x["impl"] == impl]
    s = statistics.median(x["median_step_seconds"] for x in r)
    m = statistics.median(x["peak_rss_mib"] for x in r)
    b = statistics.median(x["start_rss_mib"] for x in r)
    print(f"| {impl} | {s:.2f} | {m:.0f} | {b:.0f} | {len(r)} |")
PY
rm -rf "$OUT"
