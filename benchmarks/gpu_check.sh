#!/usr/bin/env bash
# GPU check of the vLLM backend against transformers on the same queries (needs a CUDA GPU).
# Installs the vllm extra into the current environment, then runs benchmarks/gpu_check.py:
# episodes/s of the same bench slice through vLLM and through transformers, and how often the two
# agree (identical generations, reward difference). Usage: bash benchmarks/gpu_check.sh [N_QUERIES]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet -e '.[vllm]'
"$PY" benchmarks/gpu_check.py --queries "${1:-119}" --out benchmarks/results/gpu_check.json
