#!/usr/bin/env bash
# Builds the hondo half (release) and runs scripts/bench/ddp.py (issue 15).
#   scripts/bench/ddp.sh [--rounds 3] [--cases small,resnet18]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
cargo build --release --quiet --example train_step
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
PYTHONPATH="$PWD/.pydeps" exec python3 scripts/bench/ddp.py --hondo "$TARGET/release/examples/train_step" "$@"
