#!/usr/bin/env bash
# The GPU check, run on the lent GPU machine from the repository root:
#   bench/gpu_wheels.sh   (here, once: fetches the wheels it lacks into .whl/)
#   device run, carry [".whl"], command "bash bench/gpu_check.sh"
# Installs the carried wheels beside the machine's own packages, then runs
# bench/gpu_check.py on JAX and torch and prints one summary table.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/service PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 bench/gpu_check.py --device gpu --backends jax torch "$@"
