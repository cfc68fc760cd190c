#!/usr/bin/env bash
# The GPU measurement in one prepared script, for a machine with one H100/H200, CUDA PyTorch and no network:
# installs the wheels hack/gpu-wheels.sh gathered (.whl/) into /tmp/site, then runs bench/gpu_bench.py at the
# Llama-3-8B shape (kubetune's fast path and its unoptimised path, ZeRO-3, TRL's SFTTrainer, the transformers
# Trainer) and writes the figures and the log to $OUT (or ./gpu-out). About 8 minutes on one H200.
#   bash bench/gpu.sh [gpu_bench.py arguments...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/api:$PWD/cli:$PWD/operator:$PWD/trainer" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PATH="/tmp/site/bin:$PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, deepspeed, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'deepspeed', deepspeed.__version__, 'trl', trl.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
work=$(mktemp -d /tmp/kubetune-gpu-XXXX)
python3 bench/gpu_bench.py --work "$work" --json "$OUT/figures.json" "$@" 2>&1 | tee "$OUT/bench.log"
status=${PIPESTATUS[0]}
for f in "$work"/*/*/profile.json; do [ -f "$f" ] && cp "$f" "$OUT/profile.json"; done
exit "$status"
