#!/usr/bin/env bash
# Build kilnet._cpu under AddressSanitizer + UndefinedBehaviorSanitizer and run the kernel tests
# against it (a separate build type: nothing here touches the normal build or install).
#   bash .ci/sanitize.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/sanitize
pkg=$build/pkgroot
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILNET_CUDA=OFF \
  -DKILNET_SANITIZE=address,undefined -DKILNET_SHARED=OFF -DKILNET_INSTALL=OFF -DPython_EXECUTABLE="$(command -v python3)" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/$build/lib" >/dev/null
cmake --build "$build" -j "${JOBS:-2}" --target _cpu
# A package tree of the Python sources with the sanitized module inside.
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r python/kilnet "$pkg/kilnet"
find "$pkg/kilnet" -name '*.so' -delete
cp "$build"/lib/_cpu*.so "$pkg/kilnet/"
# Python itself is not sanitized, so the runtimes are preloaded; leaks are not checked (the
# interpreter keeps objects alive at exit by design).
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# allocator_may_return_null: a huge allocation fails with MemoryError, as it does without ASan.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH="$PWD/$pkg"
kernel_tests=$(ls tests/test_{gemm,conv2d,conv_dense,activation,loss,optim,optimizers_more,rnn,pooling,normalization,dropout_reshape,robustness,embedding,layernorm,hardening_geometry}*.py 2>/dev/null || true)
python3 -c "import kilnet, kilnet._cpu as c; assert kilnet.__file__.startswith('$PWD/$pkg'), kilnet.__file__; print('sanitized build:', c.build_info())"
python3 -m pytest -q -p no:cacheprovider $kernel_tests "$@"
