#!/usr/bin/env bash
# In-place developer build: compiles the extension modules straight into python/kilnet so that
# `PYTHONPATH=python pytest` tests the working tree without reinstalling.
#   bash .ci/dev_build.sh            # CPU only (fast)
#   KILNET_CUDA=AUTO bash .ci/dev_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=${KILNET_BUILD_DIR:-build/dev}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} \
  -DKILNET_CUDA=${KILNET_CUDA:-OFF} -DPython_EXECUTABLE="$(command -v python3)" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/python/kilnet" >/dev/null
cmake --build "$build" -j "${JOBS:-2}"
