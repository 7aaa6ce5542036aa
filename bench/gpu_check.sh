#!/usr/bin/env bash
# GPU check: on any machine with an NVIDIA GPU and torch, run the GPU tests and the GPU benchmark (torch CUDA
# fp32/fp16, CUDA graphs, torch.compile; onnxruntime CUDA EP and TensorRT when installed; the end-to-end folder
# section: 2000 photo-like 640x480 JPEGs through the naive loop, a torch DataLoader peer, `cdul-rt label --decode
# cpu` and `--decode gpu`, and the encoder alone) in under 5 minutes and write a JSON report. Needs no network and installs nothing: it runs this checkout through PYTHONPATH and lists
# the packages it found missing in the report (what is missing is skipped, not fatal).
#
#   bench/gpu_check.sh [REPORT.json]          env: PYTHON (interpreter, default python3), BUDGET_S (default 280),
#                                             GPU_CHECK_ARGS (more gpu_bench.py options, e.g. "--e2e-images 4000")
# Without a GPU, GPU_CHECK_ARGS="--device cpu --model cdul-tiny --no-tests" dry-runs every section's code (small).
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
py="${PYTHON:-python3}"
out="${1:-$here/gpu_check.json}"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${CDUL_RT_CACHE:-}" ]; then  # exports and engines of this check stay out of ~/.cache, and are removed
    CDUL_RT_CACHE="$(mktemp -d)"
    trap 'rm -rf "$CDUL_RT_CACHE"' EXIT
fi
export CDUL_RT_CACHE
export PYTHONUNBUFFERED=1

if ! "$py" -c "import torch" 2>/dev/null; then
    echo "gpu_check: $py cannot import torch; run with PYTHON=/path/to/python of an environment that has it" >&2
    printf '{"sections": {"all": "skipped: torch is not importable by %s"}}\n' "$py" > "$out"
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "gpu_check: nvidia-smi not found"
# 290 s hard stop: the driver keeps its own budget (BUDGET_S) and writes the report before this fires
# shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of options
timeout 290 "$py" "$here/bench/gpu_bench.py" --out "$out" --budget "${BUDGET_S:-280}" ${GPU_CHECK_ARGS:-}
rc=$?
[ $rc -eq 124 ] && echo "gpu_check: stopped at the 290 s limit; the report may be missing" >&2
exit $rc
