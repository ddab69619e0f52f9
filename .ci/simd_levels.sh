#!/usr/bin/env bash
# The kernel tests again at each SIMD level below the machine's: KILNET_SIMD=avx2, then
# KILNET_SIMD=scalar (the variable only lowers the level, so on a machine without AVX-512 the
# avx2 run repeats the default one, and it is skipped). Runs against whatever `import kilnet`
# finds (CI: the installed package; a developer: PYTHONPATH=python after .ci/dev_build.sh).
#   bash .ci/simd_levels.sh [pytest args...]
#   SIMD_LEVELS=scalar bash .ci/simd_levels.sh     # one level only
set -euo pipefail
cd "$(dirname "$0")/.."
# The test files of the kernel families (tests that call kilnet._cpu kernels against the
# reference and PyTorch); test_simd.py checks the dispatch itself at the lowered level.
kernel_tests=$(ls tests/test_{gemm,gemm_bf16,conv2d,conv_dense,conv1d,conv_transpose,depthwise,activation,gelu,loss,optim,rnn,rnn_seq,pooling,normalization,layernorm,embedding,attention,dropout_reshape,random,simd}.py 2>/dev/null || true)
# Deselected: the tests that run Keras 3 (a jax subprocess, or a module fixture training a model
# there) to compare layers, files or accuracy with it: they spend their time in Keras, while
# the kernels they reach are the ones the reference and PyTorch tests of these files check at
# each level. Without them the two levels take about 2 minutes instead of 6 on 2 cores.
deselect="not (keras3 or keras_jax or keras_accuracy or files_both_ways or config_as_keras)"
machine=$(python3 -c "from kilnet import _cpu; print(_cpu.machine_simd_level())")
echo "machine SIMD level: $machine; kernel tests: $(echo $kernel_tests | wc -w) files"
for level in ${SIMD_LEVELS:-avx2 scalar}; do
  if [ "$level" = avx2 ] && [ "$machine" != avx512 ]; then
    echo "== KILNET_SIMD=avx2: skipped (the machine's level is $machine: the default run was this level)"
    continue
  fi
  if [ "$machine" = scalar ]; then
    echo "== KILNET_SIMD=$level: skipped (the machine's level is scalar)"
    continue
  fi
  used=$(KILNET_SIMD=$level python3 -c "from kilnet import _cpu; print(_cpu.simd_level())")
  [ "$used" = "$level" ] || { echo "KILNET_SIMD=$level gave level $used"; exit 1; }
  echo "== KILNET_SIMD=$level"
  start=$(date +%s)
  KILNET_SIMD=$level python3 -m pytest -q -p no:cacheprovider -k "$deselect" $kernel_tests "$@"
  echo "KILNET_SIMD=$level: $(( $(date +%s) - start )) s"
done
# The layout tests again with staging flipped (KILNET_STAGING): the staging buffers run by
# default only on Intel (store_ahead.h), so on other CPUs this is where they are tested, and on
# Intel the unstaged path in that layout.
staging=$(python3 -c "from kilnet import _cpu; print('off' if _cpu.stages_store_ahead() else 'on')")
if [ -z "${SIMD_LEVELS:-}" ]; then
  echo "== KILNET_STAGING=$staging"
  KILNET_STAGING=$staging python3 -m pytest -q -p no:cacheprovider -k "just_ahead or staging" \
    tests/test_activation.py tests/test_gelu.py tests/test_layernorm.py tests/test_loss.py "$@"
fi
# On a machine with AMX, the bfloat16 tests again on the VDPBF16PS kernel (KILNET_BF16 lowers
# the bfloat16 level as KILNET_SIMD does the SIMD one); elsewhere the default run was that level.
bf16=$(python3 -c "from kilnet import _cpu; print(_cpu.bf16_level())")
if [ "$bf16" = amx ] && [ -z "${SIMD_LEVELS:-}" ]; then
  echo "== KILNET_BF16=avx512bf16"
  start=$(date +%s)
  KILNET_BF16=avx512bf16 python3 -m pytest -q -p no:cacheprovider -k "$deselect" tests/test_gemm_bf16.py \
    tests/test_attention_bf16.py tests/test_mixed_precision.py "$@"
  echo "KILNET_BF16=avx512bf16: $(( $(date +%s) - start )) s"
else
  echo "== KILNET_BF16=avx512bf16: skipped (the machine's bfloat16 level is $bf16: the default run was it or below)"
fi
