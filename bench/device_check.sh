#!/usr/bin/env bash
# The GPU device check (bench/device_check.py, docs/gpu.md): on one GPU, at most 8 minutes.
#   bash bench/device_check.sh                 # the device tool: `run` with this command
#   bash bench/device_check.sh --cpu-smoke     # tiny sizes on a CPU (tests/test_device_check.py)
# Python: $PYTHON, else .venv-gpu's (make setup-gpu), else .venv's, else python3 (the lent GPU
# machine's, which holds torch, transformers, peft and accelerate; this repository is not installed
# there, so it runs from the checkout through PYTHONPATH). Nothing is downloaded: the Hub is off.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  for candidate in .venv-gpu/bin/python .venv/bin/python; do
    [ -x "$candidate" ] && PYTHON=$candidate && break
  done
fi
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=${TRANSFORMERS_VERBOSITY:-error}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PYTHON" -m bench.device_check "$@"
