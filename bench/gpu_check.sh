#!/usr/bin/env bash
# The GPU paths in one run, under 8 minutes on one GPU: bf16 LoRA SFT vs the HF Trainer, QLoRA, flash attention and
# Liger, GRPO with vLLM rollouts, `thinktune serve --backend vllm` through the openai client, the memory planner
# against torch.cuda.max_memory_allocated. Writes bench/results/gpu_check.json and prints a table.
#   bash bench/gpu_check.sh             # a CUDA machine with thinktune installed (pip install -e '.[speed]' vllm)
#   bash bench/gpu_check.sh --dry-run   # any CPU machine: every step's wiring on a tiny random model
# Details of each step: bench/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
# The interpreter: THINKTUNE_PYTHON, else the checkout's .venv, else python on PATH.
PY="${THINKTUNE_PYTHON:-}"
[ -z "$PY" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
PY="${PY:-python}"
if ! "$PY" -c "import torch, thinktune.config" 2>/dev/null; then
  echo "thinktune and torch are not importable by $PY: install them first (make install), or set THINKTUNE_PYTHON" >&2
  exit 2
fi
exec "$PY" bench/gpu_check.py "$@"
