#!/usr/bin/env bash
# One short run for a lent GPU, about 8 minutes in all: the tests marked `gpu`, then the Stable Diffusion-scale
# cost benchmark on the device (benchmarks/sd_cost.py). Figures and logs land in $OUT (or the folder given).
#
#   bash scripts/device_check.sh [OUT_DIR]
#
# It runs fastgda from src/ with the machine's Python (PYTHON=..., else .venv/bin/python, else python3), which
# needs torch with CUDA, diffusers, transformers and pytest; it installs nothing. Without CUDA it says so and
# exits 3.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-device-check}}"
mkdir -p "$out"
py="${PYTHON:-}"
[ -z "$py" ] && { [ -x .venv/bin/python ] && py=.venv/bin/python || py=python3; }
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" || {
  echo "no CUDA device visible to $py: nothing to check" >&2
  exit 3
}
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt"

status=0
timeout 180 "$py" -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/gpu-tests.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 5 ] && { echo "no tests are marked gpu yet"; rc=0; }  # pytest: nothing collected
[ "$rc" = 0 ] || status=$rc

timeout 300 "$py" benchmarks/sd_cost.py --device cuda --batch 16 --samples 64 --threads 16 \
  --json "$out/sd_cost.json" 2>&1 | tee "$out/sd_cost.md"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || status=$rc
exit "$status"
