#!/usr/bin/env bash
# The GPU measurements of README's Performance section in one script (run it on a machine with one CUDA GPU and the
# project installed with a CUDA torch; ~10 minutes on an H100). Each line prints its own ratios.
#   bash benchmarks/gpu_performance.sh [OUT_FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_performance}
mkdir -p "$out"
nvidia-smi -L
python -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"

echo "=== 124M: the book's loop against python train.py (default recipe, checkpoints on), same weights file"
python benchmarks/bench_finetune.py --device cuda --model gpt2 --epochs 5 --runs ae --weights-file random \
    --work-dir "$out/ft-gpt2" --json "$out/ft-gpt2.json"
echo "=== GPT-2 XL: the same (the book's loop in full on the GPU)"
python benchmarks/bench_finetune.py --device cuda --model gpt2-xl --epochs 5 --runs ae --weights-file random \
    --work-dir "$out/ft-xl" --json "$out/ft-xl.json"
echo "=== prediction: float32 against bf16 at batch 256, batched against the book's one at a time"
python benchmarks/bench_predict.py --device cuda --messages 1500 --batch-sizes 64,256 --precisions 32,bf16
echo "=== bf16 prediction profiled (kernels by CUDA time): is a plan made per new length?"
python - <<'EOF'
import torch
from torch.profiler import ProfilerActivity, profile

from spam_lightning.model.net import build_net

net = build_net(arch="gpt2", pretrained=None, init_seed=0, pool="last_token").cuda().eval()
lengths = list(range(8, 72, 4))  # a new sequence length per batch, as length-grouped prediction makes
with torch.no_grad(), torch.autocast("cuda", torch.bfloat16), profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    for t in lengths:
        ids = torch.randint(0, 50257, (256, t), device="cuda")
        net(ids, torch.full((256,), t, device="cuda"))
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))
EOF
