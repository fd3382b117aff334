#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one call of about 8 minutes on an H100 or H200: `python train.py`
# (the default recipe) against the book's loop as whole runs, alternated, at 124M and GPT-2 XL; where the default
# recipe's time goes (bench_startup's phases); prediction in float32 against bf16. Each part prints its ratios.
#   bash benchmarks/gpu_performance.sh [OUT_FOLDER]
# On a machine without internet that has torch, Lightning, torchmetrics, tiktoken and pandas but not Hydra: first
# `bash benchmarks/gpu_wheels.sh` where pip works, carry the .whl folder along; this script installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_performance}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install --quiet --no-index --no-deps .whl/*.whl
fi
python3 -c "import spam_lightning" 2>/dev/null || python3 -m pip install --quiet --no-deps --no-build-isolation -e .
nvidia-smi -L
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
ft() { python3 benchmarks/bench_finetune.py --device cuda --epochs 5 --weights-file random "$@"; }

echo "=== 124M: the book's loop (a) against python train.py (e), same weights file, alternated: a e, then e a"
ft --model gpt2 --runs ae --work-dir "$out/ft-gpt2" --json "$out/ft-gpt2-1.json"
ft --model gpt2 --runs ea --work-dir "$out/ft-gpt2" --json "$out/ft-gpt2-2.json"
echo "=== GPT-2 XL: the same, once each"
ft --model gpt2-xl --runs ae --work-dir "$out/ft-xl" --json "$out/ft-xl.json"
echo "=== 124M: where python train.py's time goes (5 epochs, median of 2)"
python3 benchmarks/bench_startup.py --repeats 2 --epochs 5 --work-dir "$out/startup" --json "$out/startup.json" \
    --weights-file "$out/ft-gpt2/gpt2-random.safetensors"
echo "=== prediction: float32 against bf16 at batch 64 and 256"
python3 benchmarks/bench_predict.py --device cuda --messages 1500 --batch-sizes 64,256 --precisions 32,bf16
