#!/usr/bin/env bash
# Downloads, into .whl/ (git-ignored), the wheels the GPU machine lacks for
# bench/gpu_check.sh: it has Python 3.12 with JAX, PyTorch, numpy, h5py and pillow,
# but no Keras, pydantic-settings, or our grpcio / protobuf versions.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pins=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
names = ["keras", "namex", "optree", "grpcio", "grpcio-health-checking",
         "grpcio-reflection", "protobuf", "pydantic", "pydantic-core", "pydantic-settings",
         "annotated-types", "typing-inspection", "python-dotenv", "prometheus-client"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl $pins
du -sh .whl
