#!/usr/bin/env bash
# Builds the hondo half of the benchmark (release) and runs scripts/bench/compare.py.
#   scripts/bench/compare.sh [--rounds 3] [--cases small,resnet18,resnet50,...]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
cargo build --release --quiet --example train_step
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
PYTHONPATH="$PWD/.pydeps" exec python3 scripts/bench/compare.py --hondo "$TARGET/release/examples/train_step" "$@"
