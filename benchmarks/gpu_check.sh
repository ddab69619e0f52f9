#!/usr/bin/env bash
# gpu_check.sh — the whole GPU check in one command, for a machine with an NVIDIA GPU, CUDA,
# CuPy and PyTorch but no network: build kilnet without build isolation, run the CUDA tests,
# then the GPU benchmarks, and print one table. Budget: under 8 minutes on an H200.
#
#   bash benchmarks/gpu_check.sh             # logs and results under $OUT (default /tmp/kilnet-gpu)
#   ARCH=90 TESTS="tests/test_cuda_gemm.py" BENCH="gemm" bash benchmarks/gpu_check.sh
#
# Each stage has its own time limit, and a stage that fails does not stop the later ones: the
# table at the end says what ran. Everything is also written under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kilnet-gpu}
mkdir -p "$OUT"
ARCH=${ARCH:-90}                       # the device's architecture only: half the compile time
TESTS=${TESTS-$(ls tests/test_cuda_*.py)}
BENCH=${BENCH-"gemm conv2d optim rnn epoch overhead"}   # BENCH="" runs none
export PYTHONUNBUFFERED=1

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import sys, numpy, cupy; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" 2>&1 | tee -a "$OUT/gpu.txt"

echo "== build (sm_$ARCH)"
t0=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout 300 python3 -m pip install --no-build-isolation --no-deps -q \
  -Ccmake.define.KILNET_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -Cbuild-dir=build/gpu . >"$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - t0 )) s"; tail -5 "$OUT/build.log"
# From the repository root `import kilnet` finds the installed package (the sources are under
# python/, which is not on sys.path).
python3 -c "import kilnet, kilnet._cuda as c; print(kilnet.__file__, c.device_count(), c.device_name(0), c.compiled_architectures())" 2>&1 | tee -a "$OUT/gpu.txt"

echo "== CUDA tests"
t0=$(date +%s)
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider -o addopts="" --maxfail=40 $TESTS 2>&1 \
  | tee "$OUT/tests.log" | tail -40
tests_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc in $(( $(date +%s) - t0 )) s"

echo "== benchmarks"
: >"$OUT/bench.md"
for b in $BENCH; do
  f=benchmarks/bench_gpu_$b.py
  [ -f "$f" ] || { echo "| $b | (no $f) |" >>"$OUT/bench.md"; continue; }
  t0=$(date +%s)
  (cd benchmarks && timeout 120 python3 "bench_gpu_$b.py") >"$OUT/bench_$b.log" 2>&1
  rc=$?
  grep '^|' "$OUT/bench_$b.log" | grep -v '^| benchmark ' >>"$OUT/bench.md"
  [ $rc -ne 0 ] && { echo "| $b | FAILED rc=$rc (see bench_$b.log) |" >>"$OUT/bench.md"; tail -5 "$OUT/bench_$b.log"; }
  echo "$b: rc=$rc in $(( $(date +%s) - t0 )) s"
done

echo "== table ($(head -2 "$OUT/gpu.txt" | tail -1 | cut -d, -f1))"
echo "| benchmark | kilnet ms | reference | ref ms | ref/kilnet | kilnet rate |"
echo "|---|---|---|---|---|---|"
cat "$OUT/bench.md"
echo "build rc=$build_rc tests rc=$tests_rc"
