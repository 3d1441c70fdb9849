#!/bin/sh
# Installs the flatscope wheel with its server set (flatscope[server]: the server on
# TensorFlow; no test tools, no other backend) into a new virtual environment: the runtime
# stage of the Dockerfile, also run by tests/deploy/test_image_recipe.py.
#
#   cpu  TensorFlow's own wheel, which runs on the CPU.
#   gpu  tensorflow[and-cuda]: the CUDA runtime, cuDNN, cuBLAS and the rest as pip packages.
#        The host provides only the NVIDIA driver (the NVIDIA Container Toolkit mounts it into
#        the container).
#
# constraints.txt pins every runtime dependency, the NVIDIA packages included, so that an
# image built later gets the same versions.
#
# Usage: install.sh WHEEL_DIR VENV cpu|gpu
set -eu
if [ $# -ne 3 ]; then
  echo "usage: $0 WHEEL_DIR VENV cpu|gpu" >&2
  exit 2
fi
wheel_dir=$1
venv=$2
variant=$3
here=$(cd "$(dirname "$0")" && pwd)

case $variant in
  cpu) extra="" ;;
  gpu) extra="tensorflow[and-cuda]" ;;
  *)
    echo "$0: VARIANT must be cpu or gpu, not '$variant'" >&2
    exit 2
    ;;
esac

set -- "$wheel_dir"/flatscope-*.whl
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
  echo "$0: expected one flatscope wheel in $wheel_dir" >&2
  exit 2
fi
wheel=$1

python3 -m venv "$venv"
# $extra is empty or one word: unquoted on purpose, so that empty adds no argument.
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --disable-pip-version-check \
  --constraint "$here/constraints.txt" "${wheel}[server]" $extra
"$venv/bin/python" -m pip check
"$venv/bin/flatscope" --help >/dev/null
