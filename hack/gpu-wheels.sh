#!/usr/bin/env bash
# The Python packages the GPU benchmark (bench/gpu.sh) needs beyond what a bare CUDA + PyTorch machine has (torch,
# triton, numpy, pyarrow, pandas, huggingface_hub, tokenizers, safetensors, accelerate, pyyaml, psutil, tqdm), as
# wheels for CPython 3.12 on x86-64 Linux, in .whl/ (ignored by git; a device run carries it): the versions pinned in pyproject.toml, and
# DeepSpeed built here as a pure-Python wheel (no compiled ops: the trainer uses torch's AdamW). Run once, here:
#   bash hack/gpu-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.whl
rm -rf "$OUT" && mkdir -p "$OUT"

pinned() { grep -o "\"$1==[^\"]*\"" pyproject.toml | head -1 | tr -d '"'; }
installed() { echo "$1==$("$PY" -c "from importlib.metadata import version; print(version('$1'))")"; }

wheels=(
  "$(pinned transformers)" "$(pinned peft)" "$(pinned trl)" "$(pinned pydantic)"
  "$(installed pydantic_core)" "$(installed annotated-types)" "$(installed typing-inspection)" "$(installed hjson)"
  datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18  # TRL's dataset library, for an older pyarrow's sake
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT" "${wheels[@]}"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$(pinned deepspeed)"
ls -la "$OUT"
du -sh "$OUT"
