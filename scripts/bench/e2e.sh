#!/usr/bin/env bash
# End-to-end training benchmark (issue 7): one epoch from a JPEG image folder, `hondo train`
# (its loader, its defaults) against PyTorch + torchvision (scripts/bench/train_folder.py:
# ImageFolder + DataLoader + the same model), RandomResizedCrop 224 + flip, SGD, 2 threads.
# Every worker count is tried for both; runs alternate hondo / PyTorch (A B, B A, ...);
# medians of training images/s (loading included; hondo's `images_per_sec` in
# metrics.jsonl), their ratio, and the median of the per-round ratios.
#
# Usage: scripts/bench/e2e.sh [rounds=3] [archs="small_cnn resnet18"] [workers="1 2"]
# Env: HONDO_BIN (default: cargo build --release, then target/release/hondo),
#      HONDO_BENCH_DIR (image cache, default ~/.cache/hondo), TORCH_CHANNELS_LAST=1 (PyTorch
#      in channels-last too), PYTHON (default python3 with PYTHONPATH=.pydeps when present).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
rounds="${1:-3}"
archs="${2:-small_cnn resnet18}"
workers="${3:-1 2}"
cache="${HONDO_BENCH_DIR:-$HOME/.cache/hondo}"
. "$root/scripts/bench/common.sh"
if [ -z "${HONDO_BIN:-}" ]; then
    (cd "$root" && cargo build --release --quiet --bin hondo)
    HONDO_BIN="${CARGO_TARGET_DIR:-$root/target}/release/hondo"
fi
torch_cl=""
if [ "${TORCH_CHANNELS_LAST:-0}" = 1 ]; then torch_cl="--channels-last"; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

field() { "$python" -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }

# One run of each tool for $arch, $batch, $w workers, output in $out: sets hr / pr (img/s).
run_hondo() {
    "$HONDO_BIN" train "$root/configs/default.toml" -q --out "$out" \
        --set model.arch="$arch" --set data.kind=image_folder --set data.root="$dir" \
        --set data.image_size=224 --set data.val_fraction=0.02 --set data.workers="$w" \
        --set train.batch_size="$batch" --set train.epochs=1 --set train.device=cpu \
        --set schedule.warmup_epochs=0 >"$out.log" 2>&1 || { cat "$out.log"; exit 1; }
    hr="$(field images_per_sec < "$out/metrics.jsonl" | xargs printf '%.1f')"
}
run_torch() {
    pr="$("$python" "$root/scripts/bench/train_folder.py" "$dir/train" --arch "$arch" \
        --batch "$batch" --workers "$w" $torch_cl | field images_per_sec | xargs printf '%.1f')"
}

echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), rounds=$rounds, $(date -u +%FT%TZ)"
for arch in $archs; do
    # At 224x224 both models are compute-bound (the small CNN's first stage alone is 32
    # channels at full resolution): 512 images give runs of tens of seconds.
    if [ "$arch" = small_cnn ]; then batch=64; else batch=32; fi
    per_class=64
    dir="$cache/bench-e2e-$per_class"
    "$python" "$root/tests/python/make_bench_images.py" "$dir" "$per_class"
    echo "== $arch, batch $batch, $(find "$dir/train" -name '*.jpg' | wc -l) JPEGs in $dir/train"
    printf '%-8s %-22s %-22s %-7s %s\n' workers "hondo img/s (min-max)" "PyTorch img/s (min-max)" \
        ratio "paired ratio (min-max)"
    best_h=0; best_p=0
    for w in $workers; do
        h=""; p=""; q=""
        for r in $(seq "$rounds"); do
            out="$tmp/$arch-$w-$r"
            # A B, then B A: a machine that drifts favours neither tool.
            if [ $((r % 2)) = 1 ]; then run_hondo; run_torch; else run_torch; run_hondo; fi
            h="$h $hr"; p="$p $pr"
            q="$q $(awk -v a="$hr" -v b="$pr" 'BEGIN {printf "%.2f", a / b}')"
        done
        mh=$(echo "$h" | median); mp=$(echo "$p" | median)
        printf '%-8s %-22s %-22s %-7s %s\n' "$w" "$mh ($(range "$h"))" "$mp ($(range "$p"))" \
            "$(awk -v a="$mh" -v b="$mp" 'BEGIN {printf "%.2fx", a / b}')" \
            "$(echo "$q" | median | xargs printf '%.2fx') ($(range "$q"))"
        best_h=$(awk -v a="$mh" -v b="$best_h" 'BEGIN {print (a > b ? a : b)}')
        best_p=$(awk -v a="$mp" -v b="$best_p" 'BEGIN {print (a > b ? a : b)}')
    done
    echo "best worker count each: hondo $best_h, PyTorch $best_p img/s: $(awk -v a="$best_h" -v b="$best_p" 'BEGIN {printf "%.2fx", a / b}')"
done
