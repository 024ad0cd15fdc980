#!/usr/bin/env bash
# One command for one H100/H200 (< 10 minutes): 8B LoRA with our trainer (tokens/s, MFU against the
# 989.4 TFLOP/s datasheet dense bf16 peak), the same through TRL's SFTTrainer tuned (packing,
# padding-free, bf16, Liger when installed, no gradient checkpointing) and 8B QLoRA. Random-weight
# models built from Llama-3.1-8B's shape (no download). A missing package (trl, datasets,
# liger-kernel, bitsandbytes) makes its case report "skipped: ... not installed", never fail the rest.
#   OUT=/some/dir tests/gpu/run_training_bench.sh      # results in $OUT/bench.json and a table
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-.}"
STEPS="${STEPS:-8}"
for pkg in trl datasets liger_kernel bitsandbytes; do
  python -c "import $pkg" 2>/dev/null && echo "have $pkg" || echo "missing $pkg (its case is skipped or runs without it)"
done
PYTHONPATH="training:operator:${PYTHONPATH:-}" exec python tests/gpu/bench_lora.py \
  --case 8b-ours --case 8b-trl-tuned --case 8b-qlora --steps "$STEPS" --out "$OUT"
