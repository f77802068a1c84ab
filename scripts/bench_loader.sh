#!/usr/bin/env bash
# Input-pipeline benchmark (issue 4): hondo's loader against torchvision's ImageFolder +
# DataLoader on the same JPEG folder, same transforms (RandomResizedCrop 224, flip,
# normalise to float), batch 64, at each worker count; runs alternate hondo / torchvision
# and the medians are printed. Results go to BENCHMARKS.md by hand.
#
# Usage: scripts/bench_loader.sh [runs=3] [workers="1 2"] [epochs=1]
# Env: HONDO_BENCH_SCALE (image sides x N, default 1: about 400x300; 4: 1600x1200),
#      HONDO_BENCH_DIR (image cache, default ~/.cache/hondo/bench-imagefolder[-xN]),
#      PYTHON (default python3 with PYTHONPATH=.pydeps when that exists).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-3}"
workers="${2:-1 2}"
epochs="${3:-1}"
scale="${HONDO_BENCH_SCALE:-1}"
suffix=""; [ "$scale" = 1 ] || suffix="-x$scale"
dir="${HONDO_BENCH_DIR:-$HOME/.cache/hondo/bench-imagefolder$suffix}"
. "$root/scripts/bench/common.sh"

# Large images: fewer of them (32 per class), so that a run stays short.
per_class=128; [ "$scale" = 1 ] || per_class=32
"$python" "$root/tests/python/make_bench_images.py" "$dir" "$per_class" "$scale"
if [ -n "${HONDO_LOADER_BIN:-}" ]; then
    hondo="$HONDO_LOADER_BIN"
else
    cargo build --release --quiet --example bench_loader
    target_dir="${CARGO_TARGET_DIR:-$root/target}"
    hondo="$target_dir/release/examples/bench_loader"
fi

rate() { sed -n 's/.*images_per_s=\([0-9.]*\).*/\1/p'; }

echo "images: $(find "$dir/train" -name '*.jpg' | wc -l) JPEGs in $dir/train; $(nproc) cores; runs=$runs epochs=$epochs"
# The third column: hondo decoding every JPEG in full (HONDO_JPEG_SCALED=0), to show what
# the scaled decoding of large images gives.
printf '%-8s %-14s %-14s %-8s %s\n' workers hondo_img/s torchvision_img/s ratio hondo_full_decode_img/s
for w in $workers; do
    a=""; b=""; c=""
    for i in $(seq "$runs"); do
        # The two hondo runs swap places every round: the run right after torchvision's
        # reads faster on some VMs.
        if [ $((i % 2)) = 1 ]; then
            a="$a $("$hondo" "$dir/train" "$w" "$epochs" | rate)"
            b="$b $("$python" "$root/tests/python/bench_torchvision_loader.py" "$dir/train" "$w" "$epochs" | rate)"
            c="$c $(HONDO_JPEG_SCALED=0 "$hondo" "$dir/train" "$w" "$epochs" | rate)"
        else
            c="$c $(HONDO_JPEG_SCALED=0 "$hondo" "$dir/train" "$w" "$epochs" | rate)"
            b="$b $("$python" "$root/tests/python/bench_torchvision_loader.py" "$dir/train" "$w" "$epochs" | rate)"
            a="$a $("$hondo" "$dir/train" "$w" "$epochs" | rate)"
        fi
    done
    ma=$(echo "$a" | median); mb=$(echo "$b" | median); mc=$(echo "$c" | median)
    printf '%-8s %-14s %-14s %-8s %s\n' "$w" "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.2fx", a / b}')" "$mc"
    echo "         runs: hondo [$a ] torchvision [$b ] hondo full decode [$c ]"
done
