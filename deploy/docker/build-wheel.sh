#!/bin/sh
# Builds the flatscope wheel from a source tree: the build stage of the Dockerfile, also run by
# tests/deploy/test_image_recipe.py.
#
# The generated protobuf code (service/flatscope/v1, service/flatscope/protocols) is committed
# and checked against the protos by tests/test_protos.py, so this needs neither protoc nor
# grpcio-tools: only setuptools, which pip fetches into an isolated build environment.
#
# Usage: build-wheel.sh SOURCE_DIR WHEEL_DIR
set -eu
if [ $# -ne 2 ]; then
  echo "usage: $0 SOURCE_DIR WHEEL_DIR" >&2
  exit 2
fi
python3 -m pip wheel --no-deps --wheel-dir "$2" "$1"
