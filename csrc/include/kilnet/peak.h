// peak.h — a probe of this machine's floating-point peak, for `kilnet bench` and the benchmarks.
//   fma_peak_gflops(threads, seconds): runs independent FMA chains (AVX-512: 24 zmm accumulators; AVX2/FMA: 12 ymm ones,
//   unrolled; elsewhere: scalar multiply-add chains) on `threads` OpenMP threads for about
//   `seconds` and returns the measured GFLOP/s summed over the threads (2 flops per FMA lane).
//   The figure is what "% of peak" in `kilnet bench` divides by: measured, not a data-sheet number.
//   threads >= 1, seconds > 0 (the bindings check this; the kernel trusts it).
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu {

double fma_peak_gflops(int threads, double seconds);   // at the level that runs, simd()
// The same at a given level (AVX-512: 24 zmm chains), lowered to simd() if above it: the
// benchmarks measure the peak of every level whose kernels they time.
double fma_peak_gflops(int threads, double seconds, Simd level);
// The bfloat16 dot-product peak: 24 zmm chains of VDPBF16PS (2 multiply-adds per float32 lane:
// 64 flops an instruction), what "% of peak" of the avx512bf16 gemm_bf16 divides by. 0 where
// cpu_has_avx512bf16() (kilnet/gemm_bf16.h) is false.
double bf16_dot_peak_gflops(int threads, double seconds);

}  // namespace kilnet::cpu
