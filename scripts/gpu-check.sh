#!/usr/bin/env bash
# CUDA checks for a machine with an NVIDIA GPU and PyTorch 2.11 but no Rust toolchain.
# Build here first (`cargo build --release --bin hondo --example train_step`), carry
# target/release/{hondo,examples/train_step} with the checkout, then run there:
#
#   HONDO_BIN_DIR=target/release scripts/gpu-check.sh [OUT_DIR]
#
# It runs `hondo info`, a short shapes training in fp32, bf16 and fp16 with channels-last,
# the export round trip (TorchScript and safetensors checked in PyTorch), and the
# hondo-against-PyTorch benchmark on the card. Everything it prints is also in OUT_DIR/log.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${HONDO_BIN_DIR:-target/release}
OUT=${1:-${OUT:-/tmp/hondo-gpu-check}}
mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
HONDO="$BIN_DIR/hondo"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

"$HONDO" info
"$HONDO" info --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["cuda_available"], "hondo does not see CUDA"'

for p in fp32 bf16 fp16; do
  "$HONDO" train configs/default.toml --device cuda --out "$OUT/run-$p" --overwrite -q \
    --set train.precision=$p --set train.channels_last=true --set train.epochs=3
  python3 - "$OUT/run-$p/metrics.jsonl" "$p" <<'PY'
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
print(f"{sys.argv[2]}: val_acc {m[-1]['val_acc']:.4f}, {m[-1]['images_per_sec']:.0f} img/s")
assert m[-1]["val_acc"] > 0.8, "the run did not learn"
PY
done

CKPT="$OUT/run-fp32/last.safetensors"
"$HONDO" export "$CKPT" --format torchscript --out "$OUT/model.pt"
"$HONDO" export "$CKPT" --format safetensors --out "$OUT/model.safetensors"
python3 - "$OUT/model.pt" <<'PY'
import sys, torch
m = torch.jit.load(sys.argv[1], map_location="cuda")
y = m(torch.rand(4, 3, 32, 32, device="cuda"))
print("torchscript on cuda:", tuple(y.shape))
PY
"$HONDO" eval "$CKPT" --device cuda --png "$OUT/confusion.png"

PYTHONPATH= python3 scripts/bench/compare.py --hondo "$BIN_DIR/examples/train_step" --device cuda --rounds 3 \
  --cases small,resnet18,resnet50,resnet50-bf16-cl,resnet152
