#!/usr/bin/env bash
# Input-pipeline benchmark (issue 4): hondo's loader against torchvision's ImageFolder +
# DataLoader on the same JPEG folder, same transforms (RandomResizedCrop 224, flip,
# normalise to float), batch 64, at each worker count; runs alternate hondo / torchvision
# and the medians are printed. Results go to BENCHMARKS.md by hand.
#
# Usage: scripts/bench_loader.sh [runs=3] [workers="1 2"] [epochs=1]
# Env: HONDO_BENCH_DIR (image cache, default ~/.cache/hondo/bench-imagefolder),
#      PYTHON (default python3 with PYTHONPATH=.pydeps when that exists).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-3}"
workers="${2:-1 2}"
epochs="${3:-1}"
dir="${HONDO_BENCH_DIR:-$HOME/.cache/hondo/bench-imagefolder}"
. "$root/scripts/bench/common.sh"

"$python" "$root/tests/python/make_bench_images.py" "$dir"
cargo build --release --quiet --example bench_loader
target_dir="${CARGO_TARGET_DIR:-$root/target}"
hondo="$target_dir/release/examples/bench_loader"

rate() { sed -n 's/.*images_per_s=\([0-9.]*\).*/\1/p'; }

echo "images: $(find "$dir/train" -name '*.jpg' | wc -l) JPEGs in $dir/train; $(nproc) cores; runs=$runs epochs=$epochs"
printf '%-8s %-14s %-14s %s\n' workers hondo_img/s torchvision_img/s ratio
for w in $workers; do
    a=""; b=""
    for _ in $(seq "$runs"); do
        a="$a $("$hondo" "$dir/train" "$w" "$epochs" | rate)"
        b="$b $("$python" "$root/tests/python/bench_torchvision_loader.py" "$dir/train" "$w" "$epochs" | rate)"
    done
    ma=$(echo "$a" | median); mb=$(echo "$b" | median)
    printf '%-8s %-14s %-14s %s\n' "$w" "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.2fx", a / b}')"
    echo "         runs: hondo [$a ] torchvision [$b ]"
done
